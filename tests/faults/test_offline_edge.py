"""An edge whose broker is unreachable for a minute of video (brief §10.4).

A real edge agent (real ESPNet, real H.264) and the real ingest service,
both in this process, on a private Mosquitto that the test kills -9 after
the first acknowledged chunk and brings back a minute of video time later.
The agent plays as fast as it can (the simulated clock of brief §10.1), so
the minute costs a few wall seconds. Meanwhile:

* the agent keeps labelling frames (the label sink grows through the outage);
* chunks go to the on-disk spool, bounded at 1 MiB: the oldest are dropped
  first and counted (``cloudtutor_edge_chunks_dropped_total{reason="spool_full"}``);
* after the reconnect the spool drains oldest first, and ingest stores every
  surviving chunk exactly once, in seq order.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from cloudtutor.config.cloud import CloudConfig
from cloudtutor.config.edge import EdgeConfig
from cloudtutor.framebuffer import FrameBuffer
from cloudtutor.labelsink import read_labels
from cloudtutor.testing import loopcheck
from cloudtutor.testing.servers import MosquittoServer
from cloudtutor.testing.services import running_service
from cloudtutor_edge.agent import EdgeAgent
from cloudtutor_services.ingest.service import IngestService

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

VIDEOS = ["video/highway-solidWhiteRight-960x540-25fps.mp4", "video/camvid-0016E5-480x360-15fps.mp4"]
OUTAGE_S = 60.0  # video seconds without a broker


def test_offline_edge_keeps_inferring_spools_bounded_and_drains_in_order(tmp_path: Path, data_root: Path,
                                                                          redis_settings, long_run: bool) -> None:
    device = f"edge-{uuid.uuid4().hex[:6]}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    duration = OUTAGE_S + (60.0 if long_run else 20.0)
    with MosquittoServer() as broker:
        mqtt = broker.mqtt_settings(prefix=prefix, reconnect_min_s=0.1, reconnect_max_s=0.5, connect_timeout_s=20.0)
        edge = EdgeConfig.model_validate(dict(
            device_id=device, sources=[str(data_root / v) for v in VIDEOS], loop=True, duration_s=duration,
            speed=0.0, sink_path=tmp_path / "labels.ctls", spool_dir=tmp_path / "spool",
            spool_max_bytes=1024 * 1024, ack_timeout_s=30.0, drain_timeout_s=60.0, telemetry_every_s=1.0,
            mqtt={**mqtt.model_dump(), "clean_start": False},
            models={"data_root": data_root, "student_width": 256, "threads": 1},
            initial_knobs={"sample_fps": 1.0, "infer_fps": 1.0, "t_update_s": 5.0,
                            # High quality and every sampled frame sent: about 0.2 MB a chunk, so the
                            # minute's 12 chunks overflow the 1 MiB spool.
                            "crf": 8.0, "useful_threshold": 0.0},
        ))
        cloud = CloudConfig(mqtt=mqtt, redis=redis_settings)
        with running_service(IngestService, cloud) as ingest:
            agent = EdgeAgent(edge)
            thread = threading.Thread(target=agent.run, name="agent")
            started = time.monotonic()
            thread.start()
            timings = {}
            try:
                assert _wait(lambda: agent.uplink is not None and agent.uplink.stats()["chunks_acked"] >= 1, 60)
                broker.kill()
                timings["first_ack"] = time.monotonic() - started
                down_at = agent._last_pts
                labelled_at_kill = agent.metrics.get("cloudtutor_edge_inferences_total")
                assert _wait(lambda: agent._last_pts >= down_at + OUTAGE_S * 1000, 120)
                labelled_offline = agent.metrics.get("cloudtutor_edge_inferences_total") - labelled_at_kill
                spooled = len(agent.spool)
                dropped = agent.metrics.get("cloudtutor_edge_chunks_dropped_total", reason="spool_full")
                assert agent.spool.bytes <= edge.spool_max_bytes
                timings["outage"] = time.monotonic() - started
                broker.start()
                thread.join(180)
                timings["drained"] = time.monotonic() - started
                assert not thread.is_alive()
            finally:
                agent.stop()
                thread.join(10)
            summary = agent.summary()
            fb = FrameBuffer(redis_settings)
            try:
                frames = loopcheck.ingested_frames(fb)
            finally:
                fb.close()
            assert ingest.metrics.get("cloudtutor_ingest_chunks_total", result="ingested") >= 1

    # Inference went on through the outage: about OUTAGE_S x infer_fps frames.
    assert labelled_offline >= 0.9 * OUTAGE_S * 1.0, labelled_offline
    assert len(list(read_labels(edge.sink_path))) == summary["inferences"]
    # A minute of 5-s chunks does not fit in 1 MiB: the oldest were dropped, and counted.
    # The spool can still overflow once more while the broker restarts: the final count is the one to check.
    assert dropped >= 1 and summary["chunks_dropped"] >= dropped, (dropped, spooled, summary, timings)
    dropped = summary["chunks_dropped"]
    assert spooled >= 2
    delivery = loopcheck.check_delivery(frames, summary)
    assert not delivery.duplicated and not delivery.unexpected, (delivery, timings)
    # What was lost is exactly what the spool dropped, and it was the oldest of the outage.
    assert len(delivery.lost) == dropped, delivery
    assert delivery.lost == list(range(delivery.lost[0], delivery.lost[0] + len(delivery.lost)))
    assert summary["spool_chunks"] == 0
    # Ingested in seq order: the FRAMES stream holds the chunks in arrival order.
    order = [seq for (dev, boot, seq, index) in frames if dev == device and index == 0]
    assert order == sorted(order), order


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
