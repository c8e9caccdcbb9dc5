"""kill -9 and restart, in turn, the broker, Redis and each of the six
services while the closed loop runs with two devices (brief §10.4-10.5).

Everything is a real process (``cloudtutor.testing.liveloop``: the demo's
fleet with quicker reconnects, see its docstring). After each fault the loop
must resume: every device gets a chunk acknowledged that was published after
the fault, and applies a model version newer than before it, within
``RESUME_LIMIT_S`` (measured from the kill). At the end the edges stop (each
sends its last chunk and waits for its acks) and, per device:

* every chunk of its boot (seq 0..n-1) is on the FRAMES stream exactly
  once: none lost, none ingested twice (resends deduplicated);
* the updates it applied (its log) start from the version it had and move
  strictly forward: no version applied twice, none applied on a gap; the
  label sink's per-frame model version never goes back;
* its reported sha256 equals the sha256 of the cloud's edge view at that version.

The default suite (``make test``) injects the faults that test delivery
across persistence: broker, Redis, ingest and publisher. ``make faults``
(``--long``) injects all eight and writes ``out/faults/faults.{json,md}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cloudtutor.demo.run import default_videos
from cloudtutor.testing.liveloop import TARGETS, LiveLoop, loop_plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SHORT = ("broker", "redis", "ingest", "publisher")
RESUME_LIMIT_S = 240.0  # wall seconds on a shared 2-core machine; the report gives each measured time


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        long_run = metafunc.config.getoption("--long", default=False)
        metafunc.parametrize("target", TARGETS if long_run else SHORT)


@pytest.fixture(scope="module")
def loop(tmp_path_factory, data_root: Path):
    out = os.environ.get("FAULTS_OUT")
    out = Path(out).resolve() if out else tmp_path_factory.mktemp("faults")
    plan = loop_plan(default_videos(data_root), out, devices=2, duration_s=3600.0)
    live = LiveLoop(plan)
    try:
        live.start()
        yield live
    finally:
        live.close()


def test_loop_resumes_after_kill_9(loop: LiveLoop, target: str) -> None:
    record = loop.inject(target)
    assert record["resume_s"] is not None, record
    assert record["resume_s"] < RESUME_LIMIT_S, record
    assert record["dead_services"] == [], record


def test_nothing_lost_nothing_applied_twice_weights_match(loop: LiveLoop) -> None:
    assert loop.faults, "no fault was injected"
    codes = loop.stop_edges()
    result = loop.check()
    result["edge_exit_codes"] = codes
    write_report(result, loop.plan.out)
    assert codes == {d: 0 for d in loop.devices}, codes
    for device in result["devices"]:
        delivery = device["delivery"]
        assert device["delivery_ok"] and delivery["lost"] == 0 and delivery["left_in_spool"] == 0, device
        assert delivery["made"] >= 3 and delivery["dropped_by_edge"] == 0, device
        assert device["version_problems"] == [] and device["sink_version_problems"] == [], device
        assert device["updates_applied"] >= len(loop.faults), device
        assert device["weights_match"], device


def write_report(result: dict, out: Path) -> None:
    (out / "faults.json").write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    lines = ["# Fault injection: kill -9 and restart, 2 devices", "",
             "| target | resume s (from the kill) |", "| --- | --- |"]
    lines += [f"| {f['target']} | {f['resume_s']} |" for f in result["faults"]]
    lines += ["", "| device | chunks made | ingested | lost | ingested twice | updates applied | final version | "
              "repeats ignored | version problems | weights match |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d in result["devices"]:
        c = d["delivery"]
        lines.append(f"| {c['device_id']} | {c['made']} | {c['ingested']} | {c['lost']} | {c['duplicated']} | "
                     f"{d['updates_applied']} | {d['final_version']} | {d['repeated_updates_ignored']} | "
                     f"{len(d['version_problems']) + len(d['sink_version_problems'])} | {d['weights_match']} |")
    lines += ["", f"Resent chunks ingest had already stored (deduplicated, acked again): {result['duplicates_reacked']}"]
    (out / "faults.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
