"""Two replicas of one service share the work without duplicates (brief §10.4,
§10.6): ingest through the MQTT shared subscription, superres through its
Redis consumer group. Real broker, Redis, H.264."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from cloudtutor.bus import Bus
from cloudtutor.config.cloud import CloudConfig
from cloudtutor.framebuffer import FrameBuffer
from cloudtutor.streams import FRAMES, UPSCALED, FrameRef
from cloudtutor.testing.services import running_service
from cloudtutor_services.ingest.service import CHUNKS, IngestService
from cloudtutor_services.superres.service import UPSCALED_FRAMES, SuperresService

pytestmark = pytest.mark.timeout(180)

WAIT = 60.0


def wait_until(predicate, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def refs(fb: FrameBuffer, stream: str) -> list[FrameRef]:
    return [FrameRef.from_fields({k.decode(): v for k, v in f.items()}) for _, f in fb.redis.xrange(fb.stream_key(stream))]


@pytest.fixture
def config(mqtt_settings, redis_settings, topics) -> CloudConfig:
    return CloudConfig(mqtt=mqtt_settings.model_copy(update={"prefix": topics.prefix}), redis=redis_settings,
                       framebuffer={"block_ms": 200}, metrics_port=None)


def test_two_ingest_replicas_split_the_chunks_and_add_each_once(config, topics, data_root):
    import cv2
    from test_service_ingest import SENT, chunk

    from cloudtutor.bench.throughput import read_video
    from cloudtutor.h264 import encode_chunk

    rgb, _ = read_video(data_root / "video/camvid-0016E5-480x360-15fps.mp4", 4, 1)
    body = encode_chunk([cv2.resize(f, SENT, interpolation=cv2.INTER_AREA) for f in rgb])
    n = 12
    with FrameBuffer(config.redis, config.framebuffer) as fb, running_service(IngestService, config) as one, \
            running_service(IngestService, config) as two:
        edge = Bus(config.mqtt, name="edge").start()
        try:
            assert edge.wait_connected(WAIT)
            for seq in range(n):
                edge.publish(topics.chunks("cam-1"), chunk(body, seq=seq), qos=1, wait=True)
            wait_until(lambda: len(refs(fb, FRAMES)) >= 4 * n)
            time.sleep(0.5)
        finally:
            edge.close()
        got = refs(fb, FRAMES)
        assert len(got) == 4 * n
        assert not [k for k, c in Counter((r.chunk_seq, r.index) for r in got).items() if c > 1], "a frame added twice"
        per_replica = [svc.metrics.total(CHUNKS) for svc in (one, two)]
        assert sum(per_replica) == n and min(per_replica) > 0, per_replica


def test_two_superres_replicas_split_the_frames_and_write_each_once(config, data_root):
    import test_service_superres as ts

    from cloudtutor.bench.throughput import read_video

    originals, _ = read_video(data_root / "video/camvid-0016E5-480x360-15fps.mp4", 3, 1)
    n = 24
    with FrameBuffer(config.redis, config.framebuffer) as fb:
        with running_service(SuperresService, config) as one, running_service(SuperresService, config) as two:
            for i in range(n):
                ts.add_frame(fb, i, originals[i % len(originals)][::2, ::2].copy(), source=ts.SOURCE)
            wait_until(lambda: len(refs(fb, UPSCALED)) >= n)
            time.sleep(0.5)
            per_replica = [svc.metrics.total(UPSCALED_FRAMES) for svc in (one, two)]
        got = refs(fb, UPSCALED)
        assert sorted(r.index for r in got) == list(range(n)), "each frame upscaled exactly once"
        assert sum(per_replica) == n and min(per_replica) > 0, per_replica
        assert fb.redis.xpending(fb.stream_key(FRAMES), "superres")["pending"] == 0
