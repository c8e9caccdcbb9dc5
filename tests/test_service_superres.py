"""superres against real Mosquitto and Redis on real video frames: FRAMES
entries become UPSCALED entries at source size (bicubic, or a CARN-M model), acknowledged;
references to expired frames are dropped and counted."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator

import av
import cv2
import numpy as np
import pytest

from cloudtutor import upscale
from cloudtutor.bus import Bus, Message
from cloudtutor.config.cloud import CloudConfig
from cloudtutor.framebuffer import FrameBuffer
from cloudtutor.streams import FRAMES, UPSCALED, FrameRef, frame_blob
from cloudtutor.testing.services import running_service
from cloudtutor_services.superres.service import UPSCALED_FRAMES, SuperresService

WAIT = 20.0
SOURCE = (480, 360)
SENT = (240, 176)
BOOT = "boot-0123456789"
DROPPED = "cloudtutor_framebuffer_dropped_total"


@pytest.fixture(scope="module")
def originals(data_root) -> list[np.ndarray]:
    with av.open(str(data_root / "video/camvid-0016E5-480x360-15fps.mp4")) as container:
        return [f.to_ndarray(format="rgb24") for _, f in zip(range(3), container.decode(video=0))]


@pytest.fixture
def make_config(mqtt_settings, redis_settings, topics) -> Callable[..., CloudConfig]:
    def make(**sections) -> CloudConfig:
        sections.setdefault("framebuffer", {"block_ms": 200})  # quick shutdown of blocking reads
        return CloudConfig(mqtt=mqtt_settings.model_copy(update={"prefix": topics.prefix}), redis=redis_settings, **sections)

    return make


@pytest.fixture
def config(make_config) -> CloudConfig:
    return make_config()


@pytest.fixture
def fb(config) -> Iterator[FrameBuffer]:
    with FrameBuffer(config.redis, config.framebuffer) as buffer:
        yield buffer


@pytest.fixture
def superres(config) -> Iterator[SuperresService]:
    with running_service(SuperresService, config, join_s=WAIT) as svc:
        yield svc


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def add_frame(fb: FrameBuffer, index: int, frame: np.ndarray | None, *, source=SOURCE) -> FrameRef:
    """What ingest writes: the decoded frame (unless None: an expired blob) and its FrameRef."""
    name = frame_blob("cam-1", BOOT, 0, index, "lr")
    if frame is not None:
        fb.put_array(name, frame)
    height, width = (frame.shape[:2] if frame is not None else (SENT[1], SENT[0]))
    ref = FrameRef(
        device_id="cam-1", boot_id=BOOT, chunk_seq=0, index=index, pts_ms=100 * index, frame=name,
        width=width, height=height, source_width=source[0], source_height=source[1], model_version=0,
    )
    fb.add(FRAMES, ref.to_fields())
    return ref


def upscaled(fb: FrameBuffer) -> list[FrameRef]:
    return [FrameRef.from_fields({k.decode(): v for k, v in f.items()}) for _, f in fb.redis.xrange(fb.stream_key(UPSCALED))]


def test_frames_are_upscaled_to_source_size_and_acknowledged(superres, fb, originals):
    lows = [cv2.resize(f, SENT, interpolation=cv2.INTER_AREA) for f in originals]
    refs = [add_frame(fb, i, low) for i, low in enumerate(lows)]
    wait_until(lambda: fb.stream_len(UPSCALED) == len(refs))

    for ref, out, original in zip(refs, upscaled(fb), originals):
        assert out.upscaled_by == "bicubic" and out.lowres == ref.frame
        assert out.frame == frame_blob("cam-1", BOOT, 0, ref.index, "hr")
        assert (out.width, out.height) == SOURCE == (out.source_width, out.source_height)
        assert (out.pts_ms, out.index, out.device_id) == (ref.pts_ms, ref.index, ref.device_id)
        high = fb.get_array(out.frame)
        assert high.shape == (SOURCE[1], SOURCE[0], 3) and high.dtype == np.uint8
        # Bicubic from a quarter of the pixels: close to the original, closer than a blank frame.
        assert np.abs(high.astype(int) - original).mean() < 12
    wait_until(lambda: fb.pending(FRAMES, superres.group) == 0)
    assert superres.metrics.get(UPSCALED_FRAMES, method="bicubic") == len(refs)


def test_a_frame_already_at_source_size_passes_through(superres, fb, originals):
    ref = add_frame(fb, 0, originals[0][:352], source=(480, 352))
    wait_until(lambda: fb.stream_len(UPSCALED) == 1)
    (out,) = upscaled(fb)
    assert out.upscaled_by == "none" and out.frame == ref.frame == out.lowres
    # The count follows the stream write: wait for it rather than race it.
    wait_until(lambda: superres.metrics.get(UPSCALED_FRAMES, method="none") == 1)


def test_a_reference_to_an_expired_frame_is_dropped_and_counted(superres, fb, originals):
    add_frame(fb, 0, None)  # its blob is gone
    add_frame(fb, 1, cv2.resize(originals[1], SENT))
    wait_until(lambda: fb.stream_len(UPSCALED) == 1)
    assert [r.index for r in upscaled(fb)] == [1]
    wait_until(lambda: superres.metrics.get(DROPPED, stream=FRAMES, reason="blob_expired") == 1)
    wait_until(lambda: fb.pending(FRAMES, superres.group) == 0)


def test_a_dead_replicas_pending_frames_are_reclaimed(make_config, fb, originals):
    fb.ensure_group(FRAMES, "superres")
    add_frame(fb, 0, cv2.resize(originals[0], SENT))
    # A replica read the frame and died before acknowledging it.
    assert len(fb.read(FRAMES, "superres", "dead-replica", count=10, block_ms=0)) == 1
    fast = make_config(framebuffer={"claim_idle_ms": 100, "block_ms": 200}, superres={"claim_every_s": 0.2})
    svc = SuperresService(fast, health_port=None).start()
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: fb.stream_len(UPSCALED) == 1)
        wait_until(lambda: fb.pending(FRAMES, "superres") == 0)
    finally:
        svc.stop()
        thread.join(WAIT)
        svc.close()


def test_status_says_bicubic(superres, config, topics):
    inbox: queue.Queue[Message] = queue.Queue()
    with Bus(config.mqtt, name="watcher") as bus:
        bus.subscribe(topics.service_status("superres"), inbox.put, qos=1, wait=True, timeout=WAIT)
        while True:
            status = json.loads(inbox.get(timeout=WAIT).payload)
            if status.get("superres_method"):
                break
    assert status["state"] == "online" and status["superres_method"] == "bicubic"
    assert "fallback" in status["note"]
    assert superres.metrics.get("cloudtutor_superres_method", method="bicubic") == 1


@pytest.fixture
def sr_checkpoint(tmp_path):
    """A CARN-M x2 checkpoint; a few L1 steps on the test's own frames make it
    better than the identity, not good: what is tested is the wiring."""
    import torch

    from cloudtutor.models.carn import carn_m
    from cloudtutor.models.sr_checkpoint import save_sr_checkpoint

    torch.manual_seed(0)
    path = tmp_path / "carn-m-x2.pt"
    save_sr_checkpoint(path, carn_m(2, channels=16, groups=4), config={"scale": 2}, step=0)
    return path


def test_an_sr_model_upscales_frames_sent_at_its_scale_and_says_so(make_config, fb, originals, sr_checkpoint, topics):
    config = make_config(superres={"method": "model", "model_path": sr_checkpoint})
    svc = SuperresService(config, health_port=None).start()
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    try:
        add_frame(fb, 0, cv2.resize(originals[0], SENT))  # 240x176 of 480x360: x2
        add_frame(fb, 1, cv2.resize(originals[1], (128, 96)))  # another scale: bicubic
        wait_until(lambda: fb.stream_len(UPSCALED) == 2)
        by_index = {r.index: r for r in upscaled(fb)}
        assert by_index[0].upscaled_by == "model" and by_index[1].upscaled_by == "bicubic"
        high = fb.get_array(by_index[0].frame)
        assert high.shape == (SOURCE[1], SOURCE[0], 3) and high.dtype == np.uint8
        wait_until(lambda: svc.metrics.get(UPSCALED_FRAMES, method="model") == 1)
        assert svc.metrics.get("cloudtutor_superres_method", method="model") == 1
    finally:
        svc.stop()
        thread.join(WAIT)
        svc.close()


def test_a_missing_sr_checkpoint_stops_the_service_at_start(make_config, tmp_path):
    config = make_config(superres={"method": "model", "model_path": tmp_path / "nothing.pt"})
    svc = SuperresService(config, health_port=None)
    try:
        with pytest.raises((FileNotFoundError, ValueError)):
            svc.start()
    finally:
        svc.close()


def test_bicubic_keeps_uint8_and_sizes():
    frame = np.zeros((10, 20, 3), np.uint8)
    frame[:, 10:] = 255  # a hard edge: cubic overshoot must saturate, not wrap
    out = upscale.bicubic(frame, (40, 20))
    assert out.shape == (20, 40, 3) and out.dtype == np.uint8
    assert out[:, :15].max() < 64 and out[:, 25:].min() > 192
    assert upscale.method_for((480, 352), (480, 352)) == "none"
    assert upscale.method_for((960, 544), (960, 540)) == "bicubic"
