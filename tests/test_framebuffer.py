"""cloudtutor.framebuffer against a real Redis: blobs, arrays, work streams, horizon streams."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from cloudtutor.config.common import FrameBufferSettings
from cloudtutor.framebuffer import FrameBuffer, FrameBufferError, HorizonOrderError
from cloudtutor.testing.servers import RedisServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def make_fb(redis_settings) -> Iterator[Any]:
    made: list[FrameBuffer] = []

    def make(**settings: Any) -> FrameBuffer:
        fb = FrameBuffer(redis_settings, FrameBufferSettings(**settings))
        made.append(fb)
        return fb

    yield make
    for fb in made:
        fb.close()


def expire_now(fb: FrameBuffer, key: str) -> None:
    """Make a key expire as its TTL would, and wait (bounded) until Redis says it is gone."""
    fb.redis.pexpire(key, 1)
    deadline = time.monotonic() + 10
    while fb.redis.pttl(key) != -2:
        assert time.monotonic() < deadline, f"{key} did not expire"
        time.sleep(0.005)


def test_blob_round_trip_with_ttl(make_fb):
    fb = make_fb(blob_ttl_s=600)
    data = bytes(range(256)) * 1000  # binary-safe: every byte value
    fb.put_blob("cam1/0/7/frame", data)
    assert fb.get_blob("cam1/0/7/frame") == data
    pttl = fb.redis.pttl(fb.blob_key("cam1/0/7/frame"))
    assert 0 < pttl <= 600_000
    fb.put_blobs({"a": b"1", "b": b"2"}, ttl_s=30)
    assert (fb.get_blob("a"), fb.get_blob("b")) == (b"1", b"2")
    assert 0 < fb.redis.pttl(fb.blob_key("b")) <= 30_000
    assert fb.metrics.total("cloudtutor_framebuffer_blob_missing_total") == 0


def test_an_expired_blob_reads_as_none_and_is_counted(make_fb):
    fb = make_fb()
    fb.put_blob("gone", b"x")
    expire_now(fb, fb.blob_key("gone"))
    assert fb.get_blob("gone") is None
    assert fb.get_array("never-written") is None
    assert fb.metrics.get("cloudtutor_framebuffer_blob_missing_total", kind="blob") == 1
    assert fb.metrics.get("cloudtutor_framebuffer_blob_missing_total", kind="array") == 1


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).integers(0, 256, size=(360, 480, 3), dtype=np.uint8),  # a frame
        np.random.default_rng(1).random((19, 64, 128), dtype=np.float32),  # logits
        np.arange(24, dtype=">f8").reshape(2, 3, 4),  # big-endian in, little-endian out
        np.array([[True, False], [False, True]]),
        np.array(3.5, dtype=np.float16),  # 0-d
        np.zeros((0, 5), dtype=np.int64),  # empty
        np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),  # not C-contiguous
    ],
)
def test_array_round_trip(make_fb, array):
    fb = make_fb()
    fb.put_array("x", array)
    back = fb.get_array("x", shape=array.shape)
    assert back is not None
    assert back.shape == array.shape
    assert back.dtype == array.dtype.newbyteorder("<")
    assert back.dtype.byteorder in ("<", "|", "=")
    np.testing.assert_array_equal(back, array)
    back[...] = 0  # a writable copy, not a view of Redis's bytes
    assert 0 < fb.redis.pttl(fb.array_key("x"))


def test_array_validation(make_fb):
    fb = make_fb()
    fb.put_array("x", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(FrameBufferError, match="shape"):
        fb.get_array("x", shape=(2, 8))
    with pytest.raises(FrameBufferError, match="float32"):
        fb.get_array("x", dtype=np.float32)
    with pytest.raises(FrameBufferError):
        fb.put_array("o", np.array([object()]))
    fb.redis.hset(fb.array_key("x"), "data", b"\x00" * 15)  # one byte short
    with pytest.raises(FrameBufferError, match="15 bytes"):
        fb.get_array("x")
    fb.redis.hset(fb.array_key("x"), mapping={"data": b"\x00" * 16, "dtype": "|O"})
    with pytest.raises(FrameBufferError, match="dtype"):
        fb.get_array("x")


def test_entries_of_a_dead_consumer_are_reclaimed(make_fb):
    fb = make_fb(claim_idle_ms=100)
    fb.ensure_group("frames", "labeler")
    fb.ensure_group("frames", "labeler")  # idempotent (BUSYGROUP ignored)
    ids = [fb.add("frames", {"frame": f"cam1/{i}", "video_ms": 1000 * i}) for i in range(5)]

    # Consumer A reads and dies before XACK.
    got = fb.read("frames", "labeler", "A", count=10, block_ms=0)
    assert [e.id for e in got] == ids
    assert got[2].text("frame") == "cam1/2" and got[2].integer("video_ms") == 2000
    assert fb.pending_by_consumer("frames", "labeler") == {"A": 5}
    assert fb.read("frames", "labeler", "B", block_ms=0) == []  # nothing new for B
    assert fb.claim("frames", "labeler", "B", min_idle_ms=60_000).entries == []  # not idle long enough

    time.sleep(0.15)  # idle time is the rule under test: it only grows
    result = fb.claim("frames", "labeler", "B")
    assert [e.id for e in result.entries] == ids
    assert result.deleted == [] and result.cursor == "0-0"
    assert fb.pending_by_consumer("frames", "labeler") == {"B": 5}
    assert fb.metrics.get("cloudtutor_framebuffer_claimed_total", stream="frames") == 5

    assert fb.ack("frames", "labeler", [e.id for e in result.entries]) == 5
    assert fb.pending("frames", "labeler") == 0


def test_claim_reports_entries_trimmed_while_pending(make_fb):
    fb = make_fb(claim_idle_ms=100)
    fb.ensure_group("frames", "labeler")
    ids = [fb.add("frames", {"frame": f"f{i}"}) for i in range(4)]
    fb.read("frames", "labeler", "A", count=10, block_ms=0)
    fb.redis.xdel(fb.stream_key("frames"), ids[0], ids[1])  # what MAXLEN trimming does to old entries

    result = fb.claim("frames", "labeler", "B", min_idle_ms=0)
    assert sorted(result.deleted) == sorted(ids[:2])
    assert [e.id for e in result.entries] == ids[2:]
    assert fb.metrics.get("cloudtutor_framebuffer_dropped_total", stream="frames", reason="trimmed") == 2
    assert fb.pending("frames", "labeler") == 2  # Redis dropped the deleted ones from the pending list


def test_references_to_expired_blobs_are_dropped_and_acked(make_fb):
    fb = make_fb(claim_idle_ms=100)
    fb.ensure_group("frames", "superres")
    for i in range(4):
        fb.put_blob(f"f{i}", b"frame")
        fb.add("frames", {"frame": f"f{i}"})
    expire_now(fb, fb.blob_key("f1"))
    expire_now(fb, fb.blob_key("f3"))

    got = fb.read("frames", "superres", "A", count=10, block_ms=0, blob_field="frame")
    assert [e.text("frame") for e in got] == ["f0", "f2"]
    assert fb.metrics.get("cloudtutor_framebuffer_dropped_total", stream="frames", reason="blob_expired") == 2
    assert fb.pending("frames", "superres") == 2  # the dropped ones were acknowledged

    # The same rule on reclaim: A dies, f2's blob expires meanwhile.
    expire_now(fb, fb.blob_key("f2"))
    result = fb.claim("frames", "superres", "B", min_idle_ms=0, blob_field="frame")
    assert [e.text("frame") for e in result.entries] == ["f0"]
    assert fb.metrics.get("cloudtutor_framebuffer_dropped_total", stream="frames", reason="blob_expired") == 3
    assert fb.pending_by_consumer("frames", "superres") == {"B": 1}


def test_stream_maxlen_bounds_the_stream_and_counts_what_it_trimmed(make_fb):
    fb = make_fb(stream_maxlen=50)
    for i in range(1000):
        fb.add("chunks", {"i": i})
    n = fb.stream_len("chunks")
    # Approximate trimming removes whole nodes (100 entries by default): at most one node over.
    assert 50 <= n <= 150
    assert fb.metrics.get("cloudtutor_framebuffer_trimmed_total", stream="chunks") == 1000 - n
    for i in range(10):
        fb.add("exact", {"i": i}, maxlen=10, approximate=False)
    fb.add("exact", {"i": 10}, maxlen=10, approximate=False)
    assert fb.stream_len("exact") == 10
    assert fb.metrics.get("cloudtutor_framebuffer_trimmed_total", stream="exact") == 1


# Video times (ms) of the horizon samples, several in one millisecond.
SAMPLES = [1000, 1000, 1000, 1500, 2000, 2000, 2999, 3000, 3001]


def fill_horizon(fb: FrameBuffer, device: str = "cam1") -> list[str]:
    return [fb.horizon_add(device, ms, {"frame": f"{device}/{ms}/{k}"}) for k, ms in enumerate(SAMPLES)]


def test_horizon_ids_are_video_milliseconds(make_fb):
    fb = make_fb()
    ids = fill_horizon(fb)
    assert ids == ["1000-0", "1000-1", "1000-2", "1500-0", "2000-0", "2000-1", "2999-0", "3000-0", "3001-0"]
    with pytest.raises(HorizonOrderError):
        fb.horizon_add("cam1", 2500, {"frame": "late"})
    fb.horizon_add("cam1", 3001, {"frame": "same ms as the newest"})  # equal time is fine
    fb.horizon_clear("cam1")  # e.g. a demo restarting its video clock
    assert fb.horizon_add("cam1", 0, {"frame": "again"}) == "0-1"  # Redis forbids ID 0-0
    assert [s.video_ms for s in fb.horizon_range("cam1", 0, 0)] == [0]


def test_horizon_last_returns_exactly_the_window(make_fb):
    fb = make_fb()
    fill_horizon(fb)
    fill_horizon(fb, "cam2")  # another device's horizon must not leak in
    # Inclusive at both ends: 2000 <= video_ms <= 3000.
    last = fb.horizon_last("cam1", 1.0, now_ms=3000)
    assert [s.id for s in last] == ["2000-0", "2000-1", "2999-0", "3000-0"]
    assert [(s.video_ms, s.seq) for s in last] == [(2000, 0), (2000, 1), (2999, 0), (3000, 0)]
    assert last[1].text("frame") == "cam1/2000/5"
    assert [s.id for s in fb.horizon_range("cam1", 1000, 1000)] == ["1000-0", "1000-1", "1000-2"]
    assert [s.id for s in fb.horizon_range("cam1", 1001, 1999)] == ["1500-0"]
    assert fb.horizon_last("cam1", 0.0, now_ms=2000) == fb.horizon_range("cam1", 2000, 2000)
    assert fb.horizon_last("cam1", 0.5, now_ms=999) == []


def test_trim_horizon_drops_exactly_the_older_samples(make_fb):
    fb = make_fb()
    fill_horizon(fb)
    assert fb.trim_horizon("cam1", 2000) == 4  # 1000 x3 and 1500
    remaining = fb.horizon_range("cam1", 0, 10_000)
    assert [s.id for s in remaining] == ["2000-0", "2000-1", "2999-0", "3000-0", "3001-0"]
    assert fb.trim_horizon("cam1", 2000) == 0
    assert fb.metrics.get("cloudtutor_framebuffer_horizon_trimmed_total") == 4
    # After trimming at now - T, the stream is what horizon_last(T, now) returns, plus samples newer than now.
    assert fb.horizon_last("cam1", 1.0, now_ms=3000) == remaining[:-1]
    assert fb.horizon_last("cam1", 1.001, now_ms=3001) == remaining


def test_horizon_hard_cap(make_fb):
    fb = make_fb(horizon_maxlen=10)
    for ms in range(25):
        fb.horizon_add("cam1", ms * 100, {"frame": str(ms)})
    assert fb.horizon_len("cam1") == 10
    assert [s.video_ms for s in fb.horizon_range("cam1", 0, 10_000)] == [ms * 100 for ms in range(15, 25)]
    assert fb.metrics.get("cloudtutor_framebuffer_horizon_capped_total") == 15


def test_password_and_appendonly_survive_a_restart():
    with RedisServer(password="s3cret", appendonly=True) as server:
        fb = FrameBuffer(server.redis_settings(), FrameBufferSettings())
        fb.put_blob("kept", b"frame")
        fb.horizon_add("cam1", 40, {"frame": "kept"})
        server.restart()  # SIGTERM, same port and folder: the AOF brings the data back
        assert fb.get_blob("kept") == b"frame"
        assert [s.id for s in fb.horizon_range("cam1", 0, 100)] == ["40-0"]
        fb.close()
        wrong = FrameBuffer(server.redis_settings(password="nope"), FrameBufferSettings())
        with pytest.raises(redis.AuthenticationError):
            wrong.get_blob("kept")
        wrong.close()
