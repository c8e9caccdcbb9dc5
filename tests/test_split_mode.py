"""Split mode end to end (brief §10.8): the real edge agent runs the real
ESPNet's front on a real video and publishes compressed activations; the
real ingest service resumes the student and returns labels on `results`,
through a real Mosquitto; the edge's label sink gets them. Plus the
cloud's refusals of bad activations."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from cloudtutor.accuracy import frame_miou
from cloudtutor.bus import Bus
from cloudtutor.config.cloud import CloudConfig
from cloudtutor.config.edge import EdgeConfig
from cloudtutor.labelsink import read_labels
from cloudtutor.models.registry import build_student
from cloudtutor.service import REJECTED
from cloudtutor.testing.services import running_service
from cloudtutor.split.results import SplitResult, decode_result, encode_result
from cloudtutor.topics import Topics
from cloudtutor.video import read_frames
from cloudtutor_edge.agent import EdgeAgent
from cloudtutor_services.ingest.service import IngestService
from cloudtutor_services.ingest.split import ACTIVATIONS

pytestmark = pytest.mark.timeout(180)

VIDEO = "video/camvid-0016E5-480x360-15fps.mp4"
WAIT = 60.0


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def ingest(mqtt_settings, redis_settings, data_root, prefix) -> Iterator[IngestService]:
    config = CloudConfig(mqtt=mqtt_settings.model_copy(update={"prefix": prefix}), redis=redis_settings,
                         framebuffer={"block_ms": 200}, models={"student_width": 256, "threads": 1, "data_root": data_root},
                         metrics_port=None)
    with running_service(IngestService, config, join_s=WAIT) as svc:
        yield svc


def test_edge_front_cloud_back_labels_every_frame(ingest, mqtt_settings, data_root, prefix, tmp_path) -> None:
    config = EdgeConfig.model_validate(dict(
        device_id="split-1", sources=[str(data_root / VIDEO)], speed=0, duration_s=2.0, sink_path=tmp_path / "l.ctls",
        spool_dir=tmp_path / "spool", drain_timeout_s=30.0, telemetry_every_s=0.5,
        mqtt={**mqtt_settings.model_dump(), "prefix": prefix, "clean_start": False},
        models={"data_root": data_root, "student_width": 256, "threads": 1},
        initial_knobs={"mode": "split", "split_layer": 17, "infer_fps": 5.0},  # after up_l2: 36 ch at 1/2
        split_codec="q4-uniform+dct8+zstd+delta", split_intra_every=4,
    ))
    agent = EdgeAgent(config)
    assert agent.run() == 0
    records = list(read_labels(config.sink_path, strict=True))
    stats = agent.summary()
    assert stats["split_sent"] == len(records) == stats["inferences"] >= 8
    assert stats["split_lost"] == 0 and stats.get("chunks_published", 0) == 0
    assert ingest.metrics.get(ACTIVATIONS, result="resumed") == stats["split_sent"]
    # The cloud's labels are the student's, up to the codec's loss.
    local = build_student("cityscapes19", data_root_path=data_root, width=256, threads=1)
    frames = {pts: f for pts, f in read_frames(str(data_root / VIDEO), max_frames=40)}
    agree = [frame_miou(local.predict(frames[r.pts_ms]), r.labels, 19) for r in records[:6]]
    assert np.nanmean(agree) > 0.5
    torch.set_flush_denormal(False)


def test_bad_activations_are_refused_with_a_reason(ingest, mqtt_settings, prefix) -> None:
    bus = Bus(mqtt_settings.model_copy(update={"prefix": prefix}), name="bad-edge").start()
    try:
        assert bus.wait_connected(WAIT)
        topic = Topics(prefix).activations("split-2")
        bus.publish(topic, b"not an envelope", qos=1, wait=True)
        deadline = time.monotonic() + WAIT
        while not ingest.metrics.get(REJECTED, service="ingest", what="activations", reason="malformed_bad_magic"):
            assert time.monotonic() < deadline, "malformed activations not refused"
            time.sleep(0.05)
    finally:
        bus.close()


def test_result_round_trip_and_refusals() -> None:
    r = SplitResult("boot-1", 3, 400, np.arange(12, dtype=np.uint8).reshape(3, 4))
    back = decode_result(encode_result(r))
    assert (back.boot_id, back.seq, back.pts_ms) == ("boot-1", 3, 400) and np.array_equal(back.labels, r.labels)
    data = encode_result(r)
    with pytest.raises(ValueError, match="magic"):
        decode_result(b"XXXX" + data[4:])
    with pytest.raises(ValueError, match="labels|corrupt"):
        decode_result(data[:-3])


def test_report_does_not_call_a_split_device_that_got_no_model_a_mismatch() -> None:
    from cloudtutor.demo.report import _match

    split = {"weights_sha256_match": False, "model_version": 0, "model_updates_applied": 0}
    assert _match(split).startswith("n/a")
    assert _match({**split, "model_version": 3, "model_updates_applied": 2}) == "False"  # a real mismatch stays visible
    assert _match({**split, "weights_sha256_match": True}) == "True"
