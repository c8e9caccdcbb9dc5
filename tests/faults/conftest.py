"""The fault/load suite: ``make faults`` (= ``pytest tests/faults --long``)
runs every fault and the long load; plain ``make test`` runs a short version
of each part (see each module's docstring for what "short" leaves out)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="tests/faults: every fault in turn and the long load run (make faults)")


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    """True under ``--long``; the option exists only when pytest was started on tests/faults."""
    try:
        return bool(request.config.getoption("--long"))
    except ValueError:
        return False
