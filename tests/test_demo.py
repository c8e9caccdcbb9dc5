"""The closed loop end to end: ``cloudtutor demo`` as a user runs it.

Its own Mosquitto and Redis, the six services and one edge agent as
separate processes, the real videos, teacher and student; a short run with a
short update period, so that a few signed deltas make the round trip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "cloudtutor.cli", "demo", "--devices", "1", "--minutes", "0.5", "--t-update", "5",
         "--infer-fps", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "CLOUDTUTOR_DATA": str(data_root)},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "report.json").read_text()), proc.stdout


def test_the_demo_closes_the_loop(demo) -> None:
    _, report, _ = demo
    assert report["schema"] == "cloudtutor.report/v1"
    (device,) = report["devices"]
    assert device["device_id"] == "edge-0"
    assert device["chunks"]["lost"] == 0 and device["chunks"]["published"] >= 5
    assert device["model_updates_applied"] >= 2
    assert device["weights_sha256_match"] is True
    assert device["updates"]["mean_delta_bytes"] < device["updates"]["full_model_bytes"] / 4
    assert device["uplink_kbps"] > 0 and device["downlink_kbps"] > 0
    # Every processed frame was scored: 30 s of video at 2 fps.
    assert report["frames"] == device["evaluation"]["frames_in_sink"] >= 55


def test_the_demo_writes_its_report_and_plots(demo) -> None:
    out, report, stdout = demo
    assert "weights match True" in stdout
    for name in ("report.md", "miou.png", "bandwidth.png"):
        assert (out / name).stat().st_size > 1000, name
    assert "edge-0" in (out / "report.md").read_text()
    # Every service served Prometheus metrics: the loop's own counters moved.
    ingest = (out / "metrics" / "ingest.prom").read_text()
    assert "cloudtutor_ingest_chunks_total" in ingest
    assert "cloudtutor_trainer" in (out / "metrics" / "trainer.prom").read_text()
    # Every service logged its start and a clean stop (SIGTERM, not a kill).
    for service in ("ingest", "superres", "labeler", "trainer", "publisher", "controller"):
        text = (out / "logs" / f"{service}.log").read_text()
        assert f"{service} started" in text and f"{service} stopped" in text, service
        assert "Traceback" not in text, text[-2000:]
