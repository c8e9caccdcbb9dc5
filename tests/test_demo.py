"""The closed loop end to end: ``cloudtutor demo`` as a user runs it.

Its own Mosquitto and Redis, the six services and one edge agent as
separate processes, the real videos, teacher and student; a short run with a
short update period, so that a few signed deltas make the round trip.

The run is CloudSeg-style: the edge sends frames at half resolution and
superres serves a CARN-M x2 checkpoint (an untrained one, which is exactly
bicubic, see ``models/carn.py``: the test is about the wiring, the bench
about the model), and the report is set beside an earlier run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


# An earlier run at scale 1 to compare with: only the fields the comparison reads.
EARLIER = {"duration_s": 30.0, "videos": [], "knobs": {"scale": 1.0, "crf": 23.0},
           "devices": [{"device_id": "edge-0", "uplink_kbps": 400.0, "downlink_kbps": 30.0,
                        "miou_vs_teacher": {"adapted": 0.3, "no_customization": 0.2}}]}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, data_root):
    import torch

    from cloudtutor.models.carn import carn_m
    from cloudtutor.models.sr_checkpoint import save_sr_checkpoint

    out = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    sr = save_sr_checkpoint(out / "carn-m-x2.pt", carn_m(2), config={"scale": 2}, step=0)
    earlier = out / "earlier.json"
    earlier.write_text(json.dumps(EARLIER))
    proc = subprocess.run(
        [sys.executable, "-m", "cloudtutor.cli", "demo", "--devices", "1", "--minutes", "0.5", "--t-update", "5",
         "--infer-fps", "2", "--scale", "2", "--sr-model", str(sr), "--compare-to", str(earlier), "--out", str(out)],
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
    # CloudSeg in the loop: half-resolution chunks, upscaled by the SR model.
    assert report["knobs"]["scale"] == 2.0 and report["superres"]["method"] == "model"
    superres = (out / "metrics" / "superres.prom").read_text()
    assert 'cloudtutor_superres_frames_total{method="model"}' in superres
    (versus,) = report["compared_to"]["devices"]
    assert versus["other_uplink_kbps"] == 400.0
    assert versus["uplink_ratio"] == pytest.approx(report["devices"][0]["uplink_kbps"] / 400.0, abs=1e-3)
    assert "## Against" in (out / "report.md").read_text()
    # Every service logged its start and a clean stop (SIGTERM, not a kill).
    for service in ("ingest", "superres", "labeler", "trainer", "publisher", "controller"):
        text = (out / "logs" / f"{service}.log").read_text()
        assert f"{service} started" in text and f"{service} stopped" in text, service
        assert "Traceback" not in text, text[-2000:]
