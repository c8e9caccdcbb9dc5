"""Bad input against running services, over the real broker and Redis (issue 10).

ingest gets a storm of hostile chunks (corrupt H.264 inside valid envelopes,
wrong resolutions, oversized bodies and frame counts, mutated envelopes,
garbage activations); the controller gets hostile ``control/set``
overrides (out-of-range knobs, wrong types, not JSON, nested too deeply,
oversized). For each: no handler raised, no step failed, every refusal was
counted with a reason and logged exactly once, and the good message sent
right after is served.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import time
from collections.abc import Callable

import numpy as np
import pytest

from cloudtutor.bus import Bus, Message
from cloudtutor.config.cloud import CloudConfig
from cloudtutor.envelope import encode
from cloudtutor.h264 import encode_chunk
from cloudtutor.headers import ChunkHeader
from cloudtutor.messages import ChunkAck, ControlState
from cloudtutor.service import ERRORS, REJECTED
from cloudtutor.testing.services import running_service
from cloudtutor_services.controller.service import ControllerService
from cloudtutor_services.ingest.service import IngestService
from test_service_ingest import frames, h264  # noqa: F401 (fixtures: four real CamVid frames at SENT, one chunk)

WAIT = 60.0  # generous: on a machine shared by many, a service can stall for tens of seconds
SENT = (240, 176)
BOOT = "boot-fuzz-services"
MAX_CHUNK = 256 * 1024
HANDLER_ERRORS = "cloudtutor_mqtt_handler_errors_total"  # the bus counts a handler that raised


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def chunk(body: bytes, *, seq: int, frames: int = 4, sent=SENT, **fields) -> bytes:
    header = ChunkHeader(
        device_id="cam-1", seq=seq, boot_id=BOOT, frame_pts_ms=[seq * 1000 + 250 * i for i in range(frames)],
        source_size=(480, 360), sent_size=sent, fps=15.0, model_version=0, **fields,
    )
    return encode(header, body)


def nal_zeroed(h264: bytes) -> bytes:
    """Every NAL unit's header byte zeroed: start codes intact, nothing decodable."""
    data = bytearray(h264)
    i = data.find(b"\x00\x00\x01")
    while i >= 0 and i + 3 < len(data):
        data[i + 3] = 0
        i = data.find(b"\x00\x00\x01", i + 3)
    return bytes(data)


def hostile_chunks(h264: bytes, frames: list[np.ndarray]) -> list[tuple[str, bytes, str]]:
    """(what, payload, expected reason): each must be refused for exactly that reason."""
    bigger = encode_chunk([np.ascontiguousarray(np.pad(f, ((0, 16), (0, 16), (0, 0)))) for f in frames])  # 256x192
    return [
        ("garbage body", chunk(b"\x00\x00\x00\x01" + bytes(range(256)) * 8, seq=1), "bad_h264"),
        ("NAL headers zeroed", chunk(nal_zeroed(h264), seq=2), "bad_h264"),
        ("truncated stream", chunk(h264[: len(h264) // 3], seq=3), "frame_count"),
        ("more frames than announced", chunk(h264, seq=4, frames=2), "frame_count"),
        ("another resolution than announced", chunk(bigger, seq=5), "frame_size"),
        ("announces a resolution not on macroblocks", _raw_header_edit(chunk(h264, seq=6), sent_size=[250, 176]), "invalid_header"),
        ("body over max_chunk_bytes", chunk(b"\x00" * (MAX_CHUNK + 1), seq=7), "oversize"),
        ("would decode past max_decoded_mb", chunk(h264, seq=8, frames=600, sent=(4096, 2304)), "oversize"),
        ("digest of another body", _raw_header_edit(chunk(h264, seq=9), body_sha256="0" * 64), "digest_mismatch"),
        ("not an envelope", b"GET / HTTP/1.1\r\n\r\n", "bad_magic"),
        ("empty", b"", "too_short"),
    ]


def _raw_header_edit(data: bytes, **fields) -> bytes:
    """The envelope with header fields replaced, lengths kept consistent, no re-validation."""
    import struct

    (n,) = struct.unpack_from(">I", data, 3)
    header = json.loads(data[7:7 + n]) | fields
    hb = json.dumps(header).encode()
    return data[:3] + struct.pack(">I", len(hb)) + hb + data[7 + n:]


@pytest.fixture
def config(mqtt_settings, redis_settings, topics) -> CloudConfig:
    return CloudConfig(
        mqtt=mqtt_settings.model_copy(update={"prefix": topics.prefix}), redis=redis_settings,
        framebuffer={"block_ms": 200}, ingest={"max_chunk_bytes": MAX_CHUNK, "max_decoded_mb": 64},
        controller={"fleet_status_every_s": 5.0},
    )


@pytest.fixture
def client(config):
    bus = Bus(config.mqtt, name="fuzzer").start()
    assert bus.wait_connected(WAIT)
    yield bus
    bus.close()


def rejections(caplog, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.getMessage().startswith("rejected")]


def no_crash(svc) -> None:
    assert svc.metrics.total(HANDLER_ERRORS) == 0, svc.metrics.snapshot()
    assert svc.metrics.total(ERRORS) == 0, svc.metrics.snapshot()


def test_ingest_refuses_each_hostile_chunk_with_its_reason_and_serves_the_next(config, client, topics, h264, frames, caplog):
    caplog.set_level(logging.INFO)
    acks: queue.Queue[Message] = queue.Queue()
    client.subscribe(topics.chunks_ack("cam-1"), acks.put, qos=1, wait=True, timeout=WAIT)
    cases = hostile_chunks(h264, frames)
    with running_service(IngestService, config, join_s=WAIT) as svc:
        assert svc.bus.wait_ready(WAIT)  # its subscriptions acknowledged: nothing published before is lost
        for i, (what, payload, reason) in enumerate(cases, start=1):
            client.publish(topics.chunks("cam-1"), payload, qos=1, wait=True)
            wait_until(lambda: svc.metrics.total(REJECTED) >= i)
            assert svc.metrics.get(REJECTED, service="ingest", what="chunk", reason=reason) >= 1, (what, svc.metrics.snapshot())
            client.publish(topics.chunks("cam-1"), chunk(h264, seq=100 + i), qos=1, wait=True)
            ack = ChunkAck.model_validate_json(acks.get(timeout=WAIT).payload)
            assert ack.seq == 100 + i, what  # the bad one got no ack; the next good one is served
        assert svc.metrics.total(REJECTED) == len(cases)
        no_crash(svc)
    logged = rejections(caplog, "cloudtutor.ingest")
    assert len(logged) == len(cases)  # one line per refusal, each with its reason
    assert [r.fields["reason"] for r in logged] == [reason for _, _, reason in cases]


def test_ingest_survives_a_storm_of_mutated_chunks_and_activations(config, client, topics, h264):
    """Random edits of a real chunk (and random activations): each is either
    served (acked) or refused with a reason; none makes a handler raise."""
    rng = random.Random(10)
    good = chunk(h264, seq=0)
    acks: queue.Queue[Message] = queue.Queue()
    client.subscribe(topics.chunks_ack("cam-1"), acks.put, qos=1, wait=True, timeout=WAIT)
    n = 60
    with running_service(IngestService, config, join_s=WAIT) as svc:
        assert svc.bus.wait_ready(WAIT)  # its subscriptions acknowledged: nothing published before is lost
        for i in range(n):
            data = bytearray(chunk(h264, seq=1000 + i))
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(data))
                if rng.random() < 0.7:
                    data[pos] ^= 1 << rng.randrange(8)
                else:
                    del data[pos:pos + rng.randint(1, 200)]
            client.publish(topics.chunks("cam-1"), bytes(data), qos=1)
            client.publish(topics.activations("cam-1"), bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))), qos=1)
        client.publish(topics.chunks("cam-1"), good, qos=1, wait=True)
        acked: list[int] = []
        while 0 not in acked:
            acked.append(ChunkAck.model_validate_json(acks.get(timeout=WAIT).payload).seq)

        def refused(what: str) -> float:
            return sum(v for k, v in svc.metrics.snapshot().get(REJECTED, {}).items() if f"what={what}" in k)

        # Every mutated chunk is served (acked) or refused, none lost (QoS 1 keeps
        # no order across the broker's in-flight window, so wait for the count).
        try:
            wait_until(lambda: refused("chunk") + len(acked) + acks.qsize() - 1 >= n, timeout=3 * WAIT)
        except AssertionError:
            pytest.fail(f"{refused('chunk')} refused, {len(acked) + acks.qsize() - 1} acked of {n}: {svc.metrics.snapshot()}")
        assert refused("chunk") + len(acked) + acks.qsize() - 1 == n
        wait_until(lambda: refused("activations") == n)
        assert svc.metrics.total(REJECTED) == refused("chunk") + n
        no_crash(svc)


HOSTILE_SETS: list[tuple[bytes, str]] = [
    (json.dumps({"sample_fps": 1000}).encode(), "out_of_range"),
    (json.dumps({"scale": 0.5, "crf": 99}).encode(), "out_of_range"),
    (json.dumps({"stride": 10**30}).encode(), "out_of_range"),
    (json.dumps({"mode": "root"}).encode(), "out_of_range"),
    (json.dumps({"warp": 9}).encode(), "out_of_range"),
    (json.dumps([1, 2, 3]).encode(), "out_of_range"),
    (b'{"crf": NaN}', "out_of_range"),
    (b"{not json", "not_json"),
    (b"\xff\xfe\x00", "not_json"),
    (b"[" * 50_000, "not_json"),
    (b" " * (70 * 1024), "oversize"),
]


def test_controller_refuses_hostile_control_set_and_applies_the_next_good_one(config, client, topics, caplog):
    caplog.set_level(logging.INFO)
    states: queue.Queue[Message] = queue.Queue()
    client.subscribe(topics.control_state("cam-9"), states.put, qos=1, wait=True, timeout=WAIT)
    with running_service(ControllerService, config, join_s=WAIT) as svc:
        assert svc.bus.wait_ready(WAIT)  # its subscriptions acknowledged: nothing published before is lost
        for i, (payload, reason) in enumerate(HOSTILE_SETS, start=1):
            client.publish(topics.control_set("cam-9"), payload, qos=1, wait=True)
            wait_until(lambda: svc.metrics.total(REJECTED) >= i)
            assert svc.metrics.get(REJECTED, service="controller", what="control_set", reason=reason) >= 1, payload[:40]
        client.publish(topics.control_set("cam-9"), json.dumps({"crf": 31}).encode(), qos=1, wait=True)
        deadline = time.monotonic() + WAIT
        while True:
            state = ControlState.model_validate_json(states.get(timeout=max(deadline - time.monotonic(), 0.1)).payload)
            if state.knobs.crf == 31:
                break
        assert not state.rejected
        assert svc.metrics.total(REJECTED) == len(HOSTILE_SETS)
        no_crash(svc)
    assert len(rejections(caplog, "cloudtutor.controller")) == len(HOSTILE_SETS)
