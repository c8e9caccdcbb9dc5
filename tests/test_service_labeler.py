"""labeler against real Mosquitto and Redis with the real TFLite teacher on
real video frames: horizon samples at the student's size, φ signals, the
devices set, and trimming of the horizon by video time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import av
import numpy as np
import pytest

from cloudtutor.config.cloud import CloudConfig
from cloudtutor.framebuffer import FrameBuffer
from cloudtutor.models.labels import IGNORE
from cloudtutor.models.preprocess import student_size
from cloudtutor.streams import (
    SIGNALS,
    UPSCALED,
    FrameRef,
    Signal,
    frame_blob,
    label_blob,
    sample_blob,
)
from cloudtutor.testing.services import running_service
from cloudtutor_services.labeler.service import (
    LABELED,
    TEACHER_SECONDS,
    LabelerService,
)

WAIT = 30.0
SOURCE = (480, 360)
STUDENT = (512, 384)  # student_size(480, 360): 512 wide, 384 = 360 * 512 / 480
BOOT = "boot-0123456789"
STEP_MS = 4000  # frames 4 s of video apart
HORIZON_S = 10.0


@pytest.fixture(scope="module")
def originals(data_root) -> list[np.ndarray]:
    """Frames 4 s apart would be 60 frames apart at 15 fps; the clip has 101: take every 20th."""
    with av.open(str(data_root / "video/camvid-0016E5-480x360-15fps.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return frames[::20][:5]


@pytest.fixture
def config(mqtt_settings, redis_settings, topics, data_root) -> CloudConfig:
    return CloudConfig(
        mqtt=mqtt_settings.model_copy(update={"prefix": topics.prefix}),
        redis=redis_settings,
        # One TFLite thread: this pytest process also runs torch tests (data README pitfall).
        models={"data_root": data_root, "teacher_threads": 1},
        labeler={"t_horizon_s": HORIZON_S, "batch_size": 4},
        framebuffer={"block_ms": 200},  # quick shutdown of blocking reads
    )


@pytest.fixture
def fb(config) -> Iterator[FrameBuffer]:
    with FrameBuffer(config.redis, config.framebuffer) as buffer:
        yield buffer


@pytest.fixture
def labeler(config) -> Iterator[LabelerService]:
    with running_service(LabelerService, config, join_s=WAIT) as svc:
        yield svc


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def add_upscaled(fb: FrameBuffer, device: str, index: int, pts_ms: int, frame: np.ndarray | None) -> FrameRef:
    """What superres writes: the frame at source size and its FrameRef."""
    name = frame_blob(device, BOOT, 0, index, "hr")
    if frame is not None:
        fb.put_array(name, frame)
    ref = FrameRef(
        device_id=device, boot_id=BOOT, chunk_seq=0, index=index, pts_ms=pts_ms, frame=name,
        width=SOURCE[0], height=SOURCE[1], source_width=SOURCE[0], source_height=SOURCE[1],
        model_version=2, upscaled_by="bicubic", lowres=frame_blob(device, BOOT, 0, index, "lr"),
    )
    fb.add(UPSCALED, ref.to_fields())
    return ref


def signals(fb: FrameBuffer) -> list[Signal]:
    return [Signal.from_fields({k.decode(): v for k, v in f.items()}) for _, f in fb.redis.xrange(fb.stream_key(SIGNALS))]


def test_frames_become_horizon_samples_phi_signals_and_a_trimmed_horizon(labeler, fb, originals):
    assert student_size(*SOURCE) == STUDENT
    # cam-a: five frames 4 s apart; cam-b: one frame in between.
    for i, frame in enumerate(originals):
        add_upscaled(fb, "cam-a", i, i * STEP_MS, frame)
        if i == 1:
            add_upscaled(fb, "cam-b", 0, 500, originals[0])
    wait_until(lambda: labeler.metrics.get(LABELED) == 6)
    wait_until(lambda: fb.pending(UPSCALED, labeler.group) == 0)

    # Horizon of cam-a: newest at 16 s, T = 10 s: samples at >= 6 s are kept.
    samples = fb.horizon_range("cam-a", 0, 10**9)
    assert [s.video_ms for s in samples] == [8000, 12000, 16000]
    for s in samples:
        assert s.text("sample") == sample_blob("cam-a", s.video_ms)
        assert s.text("label") == label_blob("cam-a", s.video_ms)
        assert int(s.fields["model_version"]) == 2 and int(s.fields["pts_ms"]) == s.video_ms
        labels = fb.get_array(s.text("label"))
        assert labels.shape == (STUDENT[1], STUDENT[0]) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= set(range(19)) | {IGNORE}
        assert len(np.unique(labels)) >= 3  # a street scene: road, building, sky, ...
        sample = fb.get_array(s.text("sample"))
        assert sample.shape == (STUDENT[1], STUDENT[0], 3) and sample.dtype == np.uint8
    # The trimmed samples' blobs went with them.
    for ms in (0, 4000):
        assert fb.get_array(sample_blob("cam-a", ms)) is None and fb.get_array(label_blob("cam-a", ms)) is None
    assert [s.video_ms for s in fb.horizon_range("cam-b", 0, 10**9)] == [500]

    # phi: none for each device's first frame, one per later frame, in [0, 1].
    phis = [s for s in signals(fb) if s.kind == "phi"]
    assert [(s.device_id, s.video_ms) for s in phis] == [("cam-a", ms) for ms in (4000, 8000, 12000, 16000)]
    assert all(0.0 <= s.value <= 1.0 for s in phis)
    assert any(s.value > 0.0 for s in phis)  # the scene moves over 4 s

    members = fb.redis.smembers(fb.devices_key())
    assert {m.decode() for m in members} == {"cam-a", "cam-b"}

    per_frame = labeler.metrics.get(TEACHER_SECONDS) / labeler.metrics.get(LABELED)
    print(f"teacher: {per_frame * 1000:.0f} ms per frame")


def test_expired_stale_and_redelivered_frames(labeler, fb, originals):
    add_upscaled(fb, "cam-a", 0, 1000, None)  # its blob expired
    add_upscaled(fb, "cam-a", 1, 2000, originals[0])
    wait_until(lambda: labeler.metrics.get(LABELED) == 1)
    add_upscaled(fb, "cam-a", 2, 1500, originals[1])  # older than the newest labeled frame
    add_upscaled(fb, "cam-a", 1, 2000, originals[0])  # the same frame again (a redelivery)
    wait_until(lambda: labeler.metrics.get(LABELED) == 2)
    wait_until(lambda: fb.pending(UPSCALED, labeler.group) == 0)

    dropped = "cloudtutor_framebuffer_dropped_total"
    assert labeler.metrics.get(dropped, stream=UPSCALED, reason="blob_expired") == 1
    assert labeler.metrics.get(dropped, stream=UPSCALED, reason="stale") == 1
    assert [s.video_ms for s in fb.horizon_range("cam-a", 0, 10**9)] == [2000]  # not added twice
    assert [s for s in signals(fb) if s.kind == "phi"] == []  # nothing to compare with yet

    # Even when the previous-label record is lost, nothing goes into the horizon out of order.
    fb.redis.delete(f"{fb.prefix}:labeler:prev:cam-a")
    add_upscaled(fb, "cam-a", 3, 1800, originals[2])
    wait_until(lambda: labeler.metrics.get(dropped, stream=UPSCALED, reason="stale") == 2)
    assert [s.video_ms for s in fb.horizon_range("cam-a", 0, 10**9)] == [2000]
    assert fb.get_array(label_blob("cam-a", 1800)) is None
