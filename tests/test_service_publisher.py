"""publisher against real Redis and Mosquitto: signed deltas that apply on
the edge's weights, one unacknowledged update per device, coalescing,
snapshots on resync/rejection/mismatch/timeout, malformed input, restart.

The updates are real: three AMS phases of the real ESPNet on CamVid frames
(small, to be quick), stored the way the trainer stores them."""

from __future__ import annotations

import copy
import queue
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cloudtutor import distill
from cloudtutor.algorithms.masked_adam import MaskedAdam
from cloudtutor.bus import Bus, Message
from cloudtutor.config.cloud import CloudConfig
from cloudtutor.delta import apply_delta, apply_snapshot, decode_update
from cloudtutor.framebuffer import FrameBuffer, StreamEntry
from cloudtutor.headers import DeltaHeader, SnapshotHeader
from cloudtutor.messages import ModelReported, ResyncRequest
from cloudtutor.models.labels import CITYSCAPES19
from cloudtutor.models.preprocess import espnet_normalize
from cloudtutor.models.registry import build_model
from cloudtutor.modelstate import model_id, params_sha256
from cloudtutor.service import REJECTED
from cloudtutor.signing import generate_key, save_private_key, verify_header
from cloudtutor.streams import SIGNALS, UPDATES, Signal, UpdateRef, masks_blob, model_blob
from cloudtutor.testing.services import running_service
from cloudtutor.topics import Topics
from cloudtutor_services.publisher.link import Link
from cloudtutor_services.publisher.service import COALESCED, SNAPSHOTS, PublisherService, link_key
from test_distill import camvid

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0
QUIET = 1.0  # how long "nothing is sent" is watched for
DEVICE = "cam-7"


@dataclass
class Versions:
    """Edge views v0..v3 (float16 vectors), masks m1..m3 (packed), and states."""

    model_id: str
    vectors: list[bytes]
    masks: list[bytes | None]
    states: list[dict[str, torch.Tensor]]

    def sha(self, v: int) -> str:
        return distill.vector_sha256(self.vectors[v])

    def selected(self, *versions: int) -> int:
        union = distill.union_masks(distill.unpack_masks(self.masks[v], self.states[0]) for v in versions)
        return sum(int(m.sum()) for m in union.values())


@pytest.fixture(scope="module")
def versions(data_root) -> Versions:
    """Three real phases (K=2, batch 1, 128-wide CamVid frames with human labels)."""
    torch.set_flush_denormal(True)
    model = distill.bootstrap_view_(build_model("espnet", data_root_path=data_root))
    frames, labels = camvid(data_root, 4, width=128)
    optimizer = MaskedAdam(model, gamma=0.05, seed=5)
    vectors, masks, states = [distill.state_vector(model)], [None], [copy.deepcopy(model.state_dict())]
    for phase in range(1, 4):
        report = distill.distill_phase(
            model, optimizer, frames, labels, iterations=2, batch_size=1, rng=distill.phase_rng(0, 0, phase),
            normalize=espnet_normalize, lut=distill.target_lut(CITYSCAPES19),
        )
        vectors.append(distill.state_vector(model))
        masks.append(distill.pack_masks(report.masks, model.state_dict()))
        states.append(copy.deepcopy(model.state_dict()))
    return Versions(model_id(model), vectors, masks, states)


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    key = generate_key()
    path = tmp_path_factory.mktemp("keys") / "fleet.pem"
    save_private_key(key, path)
    return path, key.public_key()


def make_config(mqtt_settings, redis_settings, data_root, key_path: Path, **publisher) -> CloudConfig:
    return CloudConfig(
        mqtt=mqtt_settings.model_copy(update={"prefix": f"t{uuid.uuid4().hex[:12]}"}),
        redis=redis_settings,
        models={"threads": 1, "data_root": data_root},
        publisher={"signing_key": str(key_path), "ack_timeout_s": 30.0, "poll_ms": 50, **publisher},
        metrics_port=None,
    )


@contextmanager
def running(config: CloudConfig) -> Iterator[PublisherService]:
    with running_service(PublisherService, config, join_s=WAIT) as svc:
        yield svc


class Edge:
    """The device's side of the link: receives updates, reports, asks for resyncs."""

    def __init__(self, config: CloudConfig) -> None:
        self.topics = Topics(config.mqtt.prefix)
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.bus = Bus(config.mqtt, name="edge").start()
        assert self.bus.wait_connected(WAIT)
        for topic in (self.topics.model_delta(DEVICE), self.topics.model_snapshot(DEVICE)):
            self.bus.subscribe(topic, self.inbox.put, qos=1, wait=True, timeout=WAIT)

    def receive(self):
        message = self.inbox.get(timeout=WAIT)
        return decode_update(message.payload), len(message.payload)

    def quiet(self, seconds: float = QUIET) -> None:
        with pytest.raises(queue.Empty):
            message = self.inbox.get(timeout=seconds)
            pytest.fail(f"unexpected {message.topic}")

    def report(self, version: int, sha256: str, status: str = "applied") -> None:
        payload = ModelReported(version=version, sha256=sha256, status=status).to_bytes()  # type: ignore[arg-type]
        self.raw(self.topics.model_reported(DEVICE), payload, retain=True)

    def resync(self, have: int) -> None:
        self.raw(self.topics.model_resync(DEVICE), ResyncRequest(have_version=have, reason="test").to_bytes())

    def raw(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.bus.publish(topic, payload, qos=1, retain=retain, wait=True)

    def close(self) -> None:
        self.bus.close()


@pytest.fixture
def setup(mqtt_settings, redis_settings, data_root, keypair, versions):
    """(make_config, framebuffer with v0..v3 stored, edge factory)."""
    fb = FrameBuffer(redis_settings)
    fb.put_blob(model_blob(DEVICE, 0), versions.vectors[0])
    for v in range(1, 4):
        fb.put_blobs({model_blob(DEVICE, v): versions.vectors[v], masks_blob(DEVICE, v): versions.masks[v]})
    edges: list[Edge] = []

    def config(**publisher) -> CloudConfig:
        return make_config(mqtt_settings, redis_settings, data_root, keypair[0], **publisher)

    def edge(cfg: CloudConfig) -> Edge:
        edges.append(Edge(cfg))
        return edges[-1]

    yield config, fb, edge
    for e in edges:
        e.close()
    fb.close()


def add_update(fb: FrameBuffer, versions: Versions, v: int) -> None:
    ref = UpdateRef(
        device_id=DEVICE, model_id=versions.model_id, base_version=v - 1, version=v,
        state=model_blob(DEVICE, v), masks=masks_blob(DEVICE, v), params_sha256=versions.sha(v), video_ms=v * 10_000,
    )
    fb.add(UPDATES, ref.to_fields())


def apply(versions: Versions, env, base: int, public_key) -> dict[str, torch.Tensor]:
    verify_header(env.header, public_key)
    return apply_delta(versions.states[base], env, device_id=DEVICE, model_id=versions.model_id, version=base,
                       key=public_key)


def fb_entries(fb: FrameBuffer, stream: str) -> list[StreamEntry]:
    return [StreamEntry(i.decode(), {k.decode(): v for k, v in f.items()}) for i, f in fb.redis.xrange(fb.stream_key(stream))]


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_signed_deltas_wait_for_the_ack_and_coalesce(setup, versions, keypair):
    make, fb, make_edge = setup
    config = make()
    edge = make_edge(config)
    public = keypair[1]
    edge.report(0, versions.sha(0))  # the edge booted on version 0 (retained)
    with running(config) as svc:
        add_update(fb, versions, 1)
        env, size = edge.receive()
        assert isinstance(env.header, DeltaHeader)
        assert (env.header.base_version, env.header.version, env.header.seq) == (0, 1, 0)
        assert env.header.selected == versions.selected(1)
        v1 = apply(versions, env, 0, public)
        assert params_sha256(v1) == versions.sha(1)
        [signal] = [Signal.from_fields(e.fields) for e in fb_entries(fb, SIGNALS)]
        assert (signal.kind, signal.value, signal.bytes, signal.video_ms) == ("update", 1.0, size, 10_000)

        # v2 and v3 wait behind the unacknowledged v1 ...
        add_update(fb, versions, 2)
        add_update(fb, versions, 3)
        edge.quiet()
        # ... and go as one delta 1 -> 3 once v1 is applied.
        edge.report(1, versions.sha(1))
        env, _ = edge.receive()
        assert (env.header.base_version, env.header.version) == (1, 3)
        assert env.header.selected == versions.selected(2, 3) > versions.selected(3)
        assert params_sha256(apply(versions, env, 1, public)) == versions.sha(3)
        assert svc.metrics.total(COALESCED) == 1
        edge.report(3, versions.sha(3))
        wait_for(lambda: svc.links[DEVICE].applied_version == 3, "ack of v3")
        edge.quiet(0.3)
    stored = Link.model_validate_json(fb.redis.get(link_key(fb.prefix, DEVICE)))
    assert (stored.applied_version, stored.awaiting, stored.waiting, stored.seq) == (3, None, [], 2)


def check_snapshot(versions: Versions, env, version: int, public_key) -> None:
    assert isinstance(env.header, SnapshotHeader) and env.header.version == version
    verify_header(env.header, public_key)
    state = apply_snapshot(versions.states[0], env, device_id=DEVICE, model_id=versions.model_id, version=0,
                           key=public_key)
    assert params_sha256(state) == versions.sha(version)


def test_resync_rejection_and_mismatch_get_snapshots(setup, versions, keypair):
    make, fb, make_edge = setup
    config = make()
    edge = make_edge(config)
    with running(config) as svc:
        add_update(fb, versions, 1)
        env, _ = edge.receive()
        assert isinstance(env.header, DeltaHeader)
        edge.report(0, versions.sha(0), status="rejected")  # e.g. a signature it could not verify
        env, _ = edge.receive()
        check_snapshot(versions, env, 1, keypair[1])
        edge.report(1, versions.sha(1))
        wait_for(lambda: svc.links[DEVICE].awaiting is None, "snapshot acknowledged")

        edge.resync(have=1)
        env, _ = edge.receive()
        check_snapshot(versions, env, 1, keypair[1])
        edge.resync(have=1)  # the snapshot in flight answers this one too
        edge.quiet(0.5)

        edge.report(1, "0" * 64)  # right version, wrong weights
        env, _ = edge.receive()
        check_snapshot(versions, env, 1, keypair[1])
        edge.report(1, versions.sha(1))
        wait_for(lambda: svc.links[DEVICE].awaiting is None, "snapshot acknowledged")
        reasons = {k: v for k, v in svc.metrics.snapshot()[SNAPSHOTS].items()}
        assert reasons == {"reason=rejected": 1, "reason=resync": 1, "reason=sha_mismatch": 1}


def test_an_ack_timeout_gets_a_snapshot(setup, versions, keypair):
    make, fb, make_edge = setup
    config = make(ack_timeout_s=1.0)
    edge = make_edge(config)
    with running(config) as svc:
        add_update(fb, versions, 1)
        env, _ = edge.receive()
        assert isinstance(env.header, DeltaHeader)
        start = time.monotonic()
        env, _ = edge.receive()  # no report: the snapshot follows
        assert time.monotonic() - start > 0.5
        check_snapshot(versions, env, 1, keypair[1])
        assert svc.metrics.get(SNAPSHOTS, reason="timeout") >= 1


def test_malformed_reports_are_rejected_and_counted(setup, versions):
    make, fb, make_edge = setup
    config = make()
    edge = make_edge(config)
    with running(config) as svc:
        edge.raw(edge.topics.model_reported(DEVICE), b"{not json", retain=True)
        edge.raw(edge.topics.model_reported(DEVICE), b'{"version": -1, "sha256": "x", "status": "applied"}')
        edge.raw(edge.topics.model_resync(DEVICE), b'{"have_version": "one"}')
        wait_for(lambda: svc.metrics.total(REJECTED) >= 3, "three rejections")
        assert svc.metrics.get(REJECTED, service="publisher", what="model_reported", reason="not_json") == 1
        assert svc.metrics.get(REJECTED, service="publisher", what="model_reported", reason="invalid") == 1
        assert svc.metrics.get(REJECTED, service="publisher", what="model_resync", reason="invalid") == 1
        add_update(fb, versions, 1)  # and it keeps serving
        env, _ = edge.receive()
        assert env.header.version == 1


def test_a_restarted_publisher_resumes_its_links(setup, versions, keypair):
    make, fb, make_edge = setup
    config = make()
    edge = make_edge(config)
    with running(config):
        add_update(fb, versions, 1)
        env, _ = edge.receive()
        assert env.header.version == 1
    add_update(fb, versions, 2)  # arrives while no publisher runs
    with running(config) as svc:
        edge.quiet()  # v1 is still unacknowledged: v2 waits
        assert svc.links[DEVICE].awaiting is not None and svc.links[DEVICE].awaiting.version == 1
        edge.report(1, versions.sha(1))
        env, _ = edge.receive()
        assert (env.header.base_version, env.header.version, env.header.seq) == (1, 2, 1)
        assert params_sha256(apply(versions, env, 1, keypair[1])) == versions.sha(2)
