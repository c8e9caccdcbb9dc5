"""The edge agent end to end: real Mosquitto, real H.264, real ESPNet, a real video.

The test plays the cloud with the library only: it decodes the chunk
envelopes and their H.264, acknowledges chunks, and encodes signed deltas
and snapshots against its own edge view of the weights.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cloudtutor import envelope
from cloudtutor.bus import Bus, Message
from cloudtutor.config.common import MqttSettings
from cloudtutor.config.edge import EdgeConfig
from cloudtutor.delta import encode_delta, encode_snapshot
from cloudtutor.distill import bootstrap_view_
from cloudtutor.h264 import decode_chunk, sent_size
from cloudtutor.headers import ChunkHeader
from cloudtutor.knobs import Knobs
from cloudtutor.labelsink import read_labels
from cloudtutor.messages import ChunkAck, ControlState
from cloudtutor.models.espnet import load_espnet
from cloudtutor.models.labels import IGNORE
from cloudtutor.modelstate import model_id, params_sha256
from cloudtutor.signing import generate_key, save_public_key
from cloudtutor.testing.servers import MosquittoServer
from cloudtutor.topics import Topics
from cloudtutor_edge.agent import AGENT_VERSION, EdgeAgent, load_student

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

VIDEO = "video/camvid-0016E5-480x360-15fps.mp4"
STUDENT = "models/student-espnet-p2-q8-cityscapes.pth"
WAIT = 30.0
# Light knobs for 2 CPU cores: the student labels 5 frames per second of video.
KNOBS = {"sample_fps": 2.0, "infer_fps": 5.0, "t_update_s": 1.0}


class Cloud:
    """Ingest's and the publisher's role: decode and ack chunks, watch the device's topics."""

    def __init__(self, settings: MqttSettings, topics: Topics, device_id: str) -> None:
        self.topics, self.device_id = topics, device_id
        self.cond = threading.Condition()
        self.chunks: list[tuple[ChunkHeader, int]] = []  # (header, decoded frame count), in arrival order
        self.errors: list[str] = []
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.should_ack: Callable[[ChunkHeader], bool] = lambda header: True
        self.bus = Bus(settings, name=f"cloud-{uuid.uuid4().hex[:6]}")
        self.bus.subscribe(topics.chunks(device_id), self._on_chunk)
        for name in ("model_reported", "model_resync", "status", "telemetry"):
            self.bus.subscribe(getattr(topics, name)(device_id), self._recorder(name))
        self.bus.start()
        assert self.bus.wait_ready(WAIT)

    def _on_chunk(self, message: Message) -> None:
        try:
            env = envelope.decode(message.payload)
            header = env.header
            assert isinstance(header, ChunkHeader)
            frames = decode_chunk(env.body, expect_frames=len(header.frame_pts_ms), expect_size=header.sent_size)
        except Exception as exc:  # recorded, so the test fails with the reason
            with self.cond:
                self.errors.append(repr(exc))
                self.cond.notify_all()
            return
        with self.cond:
            self.chunks.append((header, len(frames)))
            self.cond.notify_all()
        if self.should_ack(header):
            self.bus.publish(self.topics.chunks_ack(self.device_id),
                             ChunkAck(boot_id=header.boot_id, seq=header.seq).to_bytes(), qos=1)

    def _recorder(self, name: str) -> Callable[[Message], None]:
        def record(message: Message) -> None:
            if message.payload:
                with self.cond:
                    self.received.setdefault(name, []).append(message.json())
                    self.cond.notify_all()
        return record

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out waiting for {what}; errors: {self.errors}")

    def wait_for(self, name: str, timeout: float = WAIT, **fields: Any) -> dict[str, Any]:
        def match() -> dict[str, Any] | None:
            return next((m for m in reversed(self.received.get(name, []))
                         if all(m.get(k) == v for k, v in fields.items())), None)
        self.wait(lambda: match() is not None, timeout, f"{name} with {fields}")
        return match()

    def last(self, name: str) -> dict[str, Any]:
        with self.cond:
            return self.received[name][-1]

    def send(self, leaf: str, data: bytes) -> None:
        self.bus.publish(getattr(self.topics, leaf)(self.device_id), data, qos=1)

    def seqs(self) -> list[int]:
        with self.cond:
            return [h.seq for h, _ in self.chunks]


@pytest.fixture
def device_id() -> str:
    return f"edge-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_config(tmp_path: Path, mqtt_settings: MqttSettings, topics: Topics, data_root: Path, device_id: str):
    def make(settings: MqttSettings = mqtt_settings, **overrides: Any) -> EdgeConfig:
        mqtt = {**settings.model_dump(), "prefix": topics.prefix, "clean_start": False}
        base: dict[str, Any] = dict(
            device_id=device_id, sources=[data_root / VIDEO], speed=0, duration_s=3.0,
            sink_path=tmp_path / "labels.ctls", spool_dir=tmp_path / "spool", telemetry_every_s=0.5,
            drain_timeout_s=15.0, mqtt=mqtt,
            models={"data_root": data_root, "student_width": 256, "threads": 2},
            initial_knobs=KNOBS,
        )
        base.update(overrides)
        return EdgeConfig.model_validate(base)
    return make


@pytest.fixture
def cloud(mqtt_settings: MqttSettings, topics: Topics, device_id: str) -> Iterator[Cloud]:
    c = Cloud(mqtt_settings, topics, device_id)
    yield c
    c.bus.close()


@pytest.fixture(scope="module")
def edge_view_v0(data_root: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The cloud's bootstrap edge view, as the trainer makes it (brief §10.5)."""
    model = bootstrap_view_(load_espnet(data_root / STUDENT))
    return {k: v.clone() for k, v in model.state_dict().items()}, model_id(model)


def run_in_thread(agent: EdgeAgent) -> tuple[threading.Thread, list[int]]:
    rc: list[int] = []
    thread = threading.Thread(target=lambda: rc.append(agent.run()), name="agent")
    thread.start()
    return thread, rc


def spool_files(config: EdgeConfig) -> list[str]:
    return sorted(p.name for p in config.spool_dir.iterdir())


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flush", [False, True])
def test_version_0_is_the_cloud_bootstrap_view_in_any_denormal_mode(make_config, edge_view_v0, flush):
    # The mode is per thread and inherited by threads started later: an agent
    # may load in either, and must name version 0 as the trainer does.
    view, mid = edge_view_v0
    torch.set_flush_denormal(flush)
    try:
        student, got_id = load_student(make_config())
    finally:
        torch.set_flush_denormal(True)
    assert got_id == mid and params_sha256(student.model) == params_sha256(view)



def test_agent_streams_decodable_chunks_and_labels_every_processed_frame(make_config, cloud, topics, device_id,
                                                                         edge_view_v0):
    # The controller's retained knobs reach the agent before its first frame.
    knobs = Knobs(**KNOBS, scale=2.0, crf=30)
    cloud.bus.publish(topics.control_state(device_id), ControlState(knobs=knobs, version=3).to_bytes(),
                      qos=1, retain=True, wait=True)
    config = make_config()
    agent = EdgeAgent(config)
    started = time.monotonic()
    assert agent.run() == 0
    elapsed = time.monotonic() - started
    summary = agent.summary()

    # Chunks: one per second of video (t_update 1 s), 2 samples each, all decodable.
    assert not cloud.errors
    cloud.wait(lambda: len(cloud.chunks) >= 3, what="chunks")
    headers = [h for h, _ in cloud.chunks]
    assert sorted({h.seq for h in headers}) == list(range(len({h.seq for h in headers})))
    unique = {h.seq: h for h in headers}
    assert len(unique) == summary["chunks_published"] == summary["chunks_acked"] == 3
    pts = [t for seq in sorted(unique) for t in unique[seq].frame_pts_ms]
    assert pts == [0, 533, 1000, 1533, 2000, 2533]  # 2 fps on a 15 fps grid, split per second
    assert summary["samples"] == len(pts) and summary["skipped_frames"] == 0
    # The 2-level selector: the first frame has no reference and is KEY; the
    # rest of this clip changes enough to be useful, not enough to be key.
    assert [k for seq in sorted(unique) for k in unique[seq].key_frames] == [True] + [False] * 5
    assert summary["key_frames"] == 1
    for header, frames in cloud.chunks:
        assert frames == len(header.frame_pts_ms)  # the H.264 holds the announced frames
        assert header.boot_id == agent.boot_id and header.device_id == device_id
        assert header.source_size == (480, 360) and header.sent_size == sent_size((480, 360), 2.0) == (240, 176)
        assert header.crf == 30 and header.model_version == 0
        assert header.fps == pytest.approx(15, abs=0.1)

    # The label sink: one record per processed frame (5 fps of 3 s), increasing video time.
    records = list(read_labels(config.sink_path, strict=True))
    assert len(records) == summary["inferences"] == 15
    assert [r.pts_ms for r in records] == sorted({r.pts_ms for r in records})
    assert records[1].pts_ms - records[0].pts_ms == 200
    assert all(r.labels.shape == (192, 256) and r.model_version == 0 for r in records)
    classes = set(np.unique(records[0].labels).tolist())
    assert len(classes) > 2 and classes <= set(range(19)) | {IGNORE}  # a real segmentation

    # Delivery: everything acked, so the spool is empty.
    assert spool_files(config) == []

    # Retained model state and status; telemetry.
    view, _ = edge_view_v0
    reported = cloud.wait_for("model_reported", version=0)
    assert reported["status"] == "applied" and reported["sha256"] == params_sha256(view)
    status = cloud.wait_for("status", state="stopped")
    assert status["agent_version"] == AGENT_VERSION and status["model_version"] == 0
    final = cloud.wait_for("telemetry", uplink_bytes=summary["uplink_bytes"])  # the last one, at the end
    assert final["model_version"] == 0 and final["video_ms"] == 2933 and final["queue_depth"] == 0
    print(f"agent run: {elapsed:.1f} s wall for 3 s of video; {summary}")


def test_frame_selector_drops_stale_frames_with_thresholds_from_control_state(make_config, cloud, topics, device_id):
    # Thresholds at the top of their range: nothing after the first frame is
    # "changed enough", so the selector skips every later proposal.
    knobs = Knobs(**{**KNOBS, "key_threshold": 1.0, "useful_threshold": 1.0})
    cloud.bus.publish(topics.control_state(device_id), ControlState(knobs=knobs, version=1).to_bytes(),
                      qos=1, retain=True, wait=True)
    agent = EdgeAgent(make_config())
    assert agent.run() == 0
    summary = agent.summary()
    cloud.wait(lambda: len(cloud.chunks) >= 1, what="chunk")
    headers = {h.seq: h for h, _ in cloud.chunks}
    assert len(headers) == 1 and headers[0].frame_pts_ms == [0] and headers[0].key_frames == [True]
    assert summary["samples"] == 6 and summary["skipped_frames"] == 5 and summary["key_frames"] == 1


def test_unacked_chunk_is_resent_and_kept_in_the_spool(make_config, cloud):
    cloud.should_ack = lambda header: header.seq != 0  # ingest never confirms chunk 0
    config = make_config(ack_timeout_s=0.4, drain_timeout_s=2.0)
    agent = EdgeAgent(config)
    assert agent.run() == 0
    summary = agent.summary()
    seqs = cloud.seqs()
    assert seqs.count(0) >= 2, seqs  # resent after the ack timeout
    assert summary["chunks_resent"] >= 1 and summary["chunks_acked"] == 2
    # Only the unacknowledged chunk is left on disk, for the next run.
    assert spool_files(config) == [f"{agent.boot_id}.{0:010d}.chunk"]

    # A new run (new boot) takes it over and delivers it once it is acknowledged.
    cloud.should_ack = lambda header: True
    again = EdgeAgent(make_config(duration_s=1.0))
    assert again.run() == 0
    assert again.boot_id != agent.boot_id
    assert spool_files(config) == []
    resent = [h for h, _ in cloud.chunks if h.boot_id == agent.boot_id and h.seq == 0]
    assert len(resent) >= 3


def test_unacked_chunks_are_resent_after_a_broker_restart(make_config, topics, device_id, tmp_path):
    with MosquittoServer() as broker:
        settings = broker.mqtt_settings(reconnect_min_s=0.1, reconnect_max_s=0.5, connect_timeout_s=20.0)
        # The cloud keeps a session too, so that nothing the edge sends while the
        # cloud is reconnecting is lost (only the agent's resends are under test).
        cloud_settings = settings.model_copy(update={"clean_start": False, "client_id": f"ingest-{device_id}"})
        cloud = Cloud(cloud_settings, topics, device_id)
        restarted = threading.Event()
        # Nothing is acknowledged before the restart: only a reconnect can make
        # the agent send chunk 0 again (the ack timeout is far away).
        cloud.should_ack = lambda header: restarted.is_set()
        config = make_config(settings, speed=2.0, duration_s=6.0, ack_timeout_s=120.0, drain_timeout_s=20.0)
        agent = EdgeAgent(config)
        thread, rc = run_in_thread(agent)
        try:
            cloud.wait(lambda: 0 in cloud.seqs(), what="the first chunk")
            broker.restart()
            restarted.set()
            assert cloud.bus.wait_connected(WAIT, after=1)
            thread.join(60)
            assert rc == [0]
        finally:
            agent.stop()
            thread.join(10)
            cloud.bus.close()
        seqs = cloud.seqs()
        assert seqs.count(0) >= 2, seqs
        assert set(seqs) == set(range(6)), seqs  # every chunk arrived
        assert spool_files(config) == []  # and every one was acked
        assert agent.summary()["chunks_resent"] >= 1


def test_model_updates_are_verified_applied_between_frames_and_reported(make_config, cloud, tmp_path, edge_view_v0):
    key = generate_key()
    save_public_key(key.public_key(), tmp_path / "update.pub")
    config = make_config(speed=1.0, loop=True, duration_s=120.0, update_public_key=tmp_path / "update.pub",
                         drain_timeout_s=5.0, initial_knobs={**KNOBS, "t_update_s": 2.0})
    view0, mid = edge_view_v0
    agent = EdgeAgent(config)
    thread, rc = run_in_thread(agent)
    dev = config.device_id
    try:
        first = cloud.wait_for("model_reported", version=0)
        assert first["sha256"] == params_sha256(view0) and first["status"] == "applied"

        model = load_espnet(config.models.data_root / STUDENT)
        gen = torch.Generator().manual_seed(0)
        masks = {n: torch.rand(p.shape, generator=gen) < 0.05 for n, p in model.named_parameters()}
        trained = {n: t + torch.randn(t.shape, generator=gen) * 0.01 if n in masks else t for n, t in view0.items()}

        def delta(base, base_version, version, signer=key):
            return encode_delta(base, trained, masks, device_id=dev, seq=version, model_id=mid,
                                base_version=base_version, version=version, key=signer)

        # A valid signed delta: applied, reported with the cloud's edge view sha256.
        data1, view1 = delta(view0, 0, 1)
        cloud.send("model_delta", data1)
        applied = cloud.wait_for("model_reported", version=1)
        assert applied["status"] == "applied" and applied["sha256"] == params_sha256(view1)
        cloud.wait_for("status", state="online", model_version=1)

        # Tampered, gapped and forged updates: rejected, resync asked, old model kept.
        tampered = bytearray(delta(view1, 1, 2)[0])
        tampered[-10] ^= 0x01
        cases = {"digest_mismatch": bytes(tampered), "version_gap": delta(view0, 0, 2)[0],
                 "bad_signature": delta(view1, 1, 2, signer=generate_key())[0]}
        for n, (reason, data) in enumerate(cases.items(), start=1):
            cloud.send("model_delta", data)
            cloud.wait(lambda n=n: len(cloud.received.get("model_resync", [])) >= n, what=f"resync after {reason}")
            resync = cloud.last("model_resync")
            assert resync["have_version"] == 1 and reason in resync["reason"]
            rejected = cloud.wait_for("model_reported", status="rejected", version=1)
            assert reason in rejected["reason"] and rejected["sha256"] == params_sha256(view1)
        assert agent.slot.latest_version == 1 and agent.slot.latest_sha256() == params_sha256(view1)

        # A snapshot brings the edge to any version (what the cloud sends on a resync).
        target = {k: (v * 0.5).to(torch.float16).float() if torch.is_floating_point(v) else v for k, v in view1.items()}
        cloud.send("model_snapshot", encode_snapshot(target, device_id=dev, seq=9, model_id=mid, version=5, key=key))
        back = cloud.wait_for("model_reported", version=5)
        assert back["status"] == "applied" and back["sha256"] == params_sha256(target)

        # Frames labelled after the swap carry the new version in the sink.
        deadline = time.monotonic() + WAIT
        while not any(r.model_version == 5 for r in read_labels(config.sink_path)):
            assert time.monotonic() < deadline, "no frame was labelled by version 5"
            time.sleep(0.2)
    finally:
        agent.stop()
        thread.join(60)
    assert rc == [0]
    versions = [r.model_version for r in read_labels(config.sink_path, strict=True)]
    assert versions == sorted(versions) and {0, 1, 5} <= set(versions)
    assert agent.summary()["updates_applied"] == 2 and agent.summary()["updates_rejected"] == 3
    assert cloud.wait_for("status", state="stopped")["model_version"] == 5
