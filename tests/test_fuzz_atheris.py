"""A short coverage-guided run (atheris, libFuzzer) over the decoders, from
valid seeds; libFuzzer stops with a non-zero exit at the first crash.
Longer runs: ``python -m cloudtutor.testing.fuzz --target NAME --runs N``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("atheris", reason="atheris (a [dev] extra on x86-64) is not installed")

RUNS = int(os.environ.get("CLOUDTUTOR_ATHERIS_RUNS", "2000"))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["envelope", "update", "activations", "control_set"])
def test_atheris_finds_no_crash(target):
    proc = subprocess.run(
        [sys.executable, "-m", "cloudtutor.testing.fuzz", "--target", target, "--runs", str(RUNS)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert f"stat::number_of_executed_units: {RUNS}" in proc.stderr, tail
