"""ingest against real Mosquitto and Redis with real H.264 chunks of a real
video: frames land in FRAMES, chunks are acknowledged, redeliveries are
ingested once, malformed chunks are refused with their own reason."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator

import av
import numpy as np
import pytest

from cloudtutor.bus import Bus, Message
from cloudtutor.config.cloud import CloudConfig
from cloudtutor.envelope import encode
from cloudtutor.framebuffer import FrameBuffer
from cloudtutor.h264 import encode_chunk
from cloudtutor.headers import ChunkHeader
from cloudtutor.messages import ChunkAck
from cloudtutor.service import REJECTED
from cloudtutor.streams import FRAMES, SIGNALS, FrameRef, Signal, frame_blob
from cloudtutor.testing.services import running_service
from cloudtutor_services.ingest.service import CHUNKS, IngestService

WAIT = 20.0
SENT = (240, 176)  # 480x360 at scale 2, rounded to macroblocks
SOURCE = (480, 360)
BOOT = "boot-0123456789"


@pytest.fixture(scope="module")
def frames(data_root) -> list[np.ndarray]:
    """Four real CamVid frames at the sent size."""
    import cv2

    with av.open(str(data_root / "video/camvid-0016E5-480x360-15fps.mp4")) as container:
        rgb = [f.to_ndarray(format="rgb24") for _, f in zip(range(4), container.decode(video=0))]
    return [cv2.resize(f, SENT, interpolation=cv2.INTER_AREA) for f in rgb]


@pytest.fixture(scope="module")
def h264(frames) -> bytes:
    return encode_chunk(frames)


def chunk(body: bytes, *, device: str = "cam-1", seq: int = 0, frames: int = 4, **fields) -> bytes:
    header = ChunkHeader(
        device_id=device, seq=seq, boot_id=BOOT, frame_pts_ms=[seq * 1000 + 250 * i for i in range(frames)],
        source_size=SOURCE, sent_size=SENT, fps=15.0, model_version=3, **fields,
    )
    return encode(header, body)


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
def ingest(config) -> Iterator[IngestService]:
    with running_service(IngestService, config, join_s=WAIT) as svc:
        yield svc


@pytest.fixture
def edge(config, topics) -> Iterator[tuple[Bus, queue.Queue[Message]]]:
    """cam-1's side: publishes chunks, collects chunks/ack."""
    acks: queue.Queue[Message] = queue.Queue()
    bus = Bus(config.mqtt, name="edge").start()
    assert bus.wait_connected(WAIT)
    bus.subscribe(topics.chunks_ack("cam-1"), acks.put, qos=1, wait=True, timeout=WAIT)
    yield bus, acks
    bus.close()


@pytest.fixture
def fb(config) -> Iterator[FrameBuffer]:
    with FrameBuffer(config.redis, config.framebuffer) as buffer:
        yield buffer


def send(bus: Bus, topics, payload: bytes, device: str = "cam-1") -> None:
    bus.publish(topics.chunks(device), payload, qos=1, wait=True)


def next_ack(acks: queue.Queue[Message]) -> ChunkAck:
    return ChunkAck.model_validate_json(acks.get(timeout=WAIT).payload)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def stream(fb: FrameBuffer, name: str) -> list[dict[str, bytes]]:
    return [{k.decode(): v for k, v in fields.items()} for _, fields in fb.redis.xrange(fb.stream_key(name))]


def test_a_chunk_becomes_frame_refs_with_decodable_frames_and_is_acked(ingest, edge, topics, fb, h264, frames):
    bus, acks = edge
    payload = chunk(h264, seq=7, key_frames=[True, False, False, True])
    send(bus, topics, payload)
    assert next_ack(acks) == ChunkAck(boot_id=BOOT, seq=7)

    refs = [FrameRef.from_fields(f) for f in stream(fb, FRAMES)]
    assert [r.index for r in refs] == [0, 1, 2, 3]
    assert [r.pts_ms for r in refs] == [7000, 7250, 7500, 7750]
    assert [r.key_frame for r in refs] == [True, False, False, True]
    for ref, original in zip(refs, frames):
        assert (ref.device_id, ref.boot_id, ref.chunk_seq, ref.model_version) == ("cam-1", BOOT, 7, 3)
        assert (ref.width, ref.height, ref.source_width, ref.source_height) == (*SENT, *SOURCE)
        assert ref.frame == frame_blob("cam-1", BOOT, 7, ref.index, "lr") and ref.upscaled_by is None
        decoded = fb.get_array(ref.frame)
        assert decoded.shape == (SENT[1], SENT[0], 3) and decoded.dtype == np.uint8
        assert np.abs(decoded.astype(int) - original).mean() < 8  # the same picture, through H.264

    (signal,) = [Signal.from_fields(f) for f in stream(fb, SIGNALS)]
    assert signal.model_dump(include={"device_id", "kind", "value", "video_ms", "bytes"}) == dict(
        device_id="cam-1", kind="chunk", value=4, video_ms=7750, bytes=len(payload))
    # what the bitrate controller reads: the encoded and source sizes, and the send and arrival times
    assert (signal.sent_width, signal.sent_height, signal.source_width, signal.source_height) == (*SENT, *SOURCE)
    assert signal.sent_at is not None and signal.arrived_at is not None and signal.arrived_at >= signal.sent_at - 1
    record = json.loads(fb.redis.get(ingest.dedup_key("cam-1", BOOT, 7)))
    assert record["frames"] == 4 and record["ingested_at"] >= record["created_at"] - 5
    assert 0 < fb.redis.ttl(ingest.dedup_key("cam-1", BOOT, 7)) <= ingest.settings.dedup_ttl_s


def test_a_redelivered_chunk_is_ingested_once_and_acked_twice(ingest, edge, topics, fb, h264):
    bus, acks = edge
    payload = chunk(h264, seq=1)
    send(bus, topics, payload)
    send(bus, topics, payload)
    assert next_ack(acks) == next_ack(acks) == ChunkAck(boot_id=BOOT, seq=1)
    assert fb.stream_len(FRAMES) == 4
    assert fb.stream_len(SIGNALS) == 1
    assert ingest.metrics.get(CHUNKS, result="ingested") == 1
    assert ingest.metrics.get(CHUNKS, result="duplicate") == 1


def bad_magic(h264: bytes) -> bytes:
    return b"XX" + chunk(h264)[2:]


def wrong_digest(h264: bytes) -> bytes:
    data = bytearray(chunk(h264))
    data[-1] ^= 0xFF
    return bytes(data)


def corrupt_h264(h264: bytes) -> bytes:
    return chunk(b"not h264" * 200)  # a valid envelope around garbage


def wrong_frame_count(h264: bytes) -> bytes:
    return chunk(h264, frames=5)


def other_device(h264: bytes) -> bytes:
    return chunk(h264, device="cam-2")  # on cam-1's topic


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (bad_magic, "bad_magic"),
        (wrong_digest, "digest_mismatch"),
        (corrupt_h264, "bad_h264"),
        (wrong_frame_count, "frame_count"),
        (other_device, "device_mismatch"),
    ],
)
def test_malformed_chunks_are_rejected_unacked_and_a_good_one_still_goes_through(
    ingest, edge, topics, fb, h264, make, reason,
):
    bus, acks = edge
    send(bus, topics, make(h264))
    wait_until(lambda: ingest.metrics.get(REJECTED, service="ingest", what="chunk", reason=reason) == 1)
    assert ingest.metrics.total(REJECTED) == 1
    assert fb.stream_len(FRAMES) == 0

    send(bus, topics, chunk(h264, seq=2))
    assert next_ack(acks).seq == 2  # handled in order: the bad one before it got no ack
    assert acks.empty()
    assert fb.stream_len(FRAMES) == 4


def test_a_chunk_that_would_decode_too_large_is_refused_before_decoding(make_config, edge, topics, h264):
    svc = IngestService(make_config(ingest={"max_decoded_mb": 1}), health_port=None)
    svc.start()
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    try:
        bus, acks = edge
        send(bus, topics, chunk(h264, frames=10))  # 10 x 240x176x3 = 1.2 MiB
        wait_until(lambda: svc.metrics.get(REJECTED, service="ingest", what="chunk", reason="oversize") == 1)
        send(bus, topics, chunk(h264, seq=3))  # 0.5 MiB: fine
        assert next_ack(acks).seq == 3
    finally:
        svc.stop()
        thread.join(WAIT)
        svc.close()
