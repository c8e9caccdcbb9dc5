"""trainer against real Redis and Mosquitto with the real ESPNet: horizon
samples in (CamVid frames with their human labels as the teacher's), one
AMS phase per T_update of video time out, and an exact resume after a restart."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from cloudtutor import distill
from cloudtutor.algorithms.coordinates import selection_size
from cloudtutor.algorithms.masked_adam import state_from_bytes
from cloudtutor.bus import Bus
from cloudtutor.config.cloud import CloudConfig
from cloudtutor.framebuffer import FrameBuffer
from cloudtutor.knobs import Knobs
from cloudtutor.messages import ControlState
from cloudtutor.models.registry import build_model
from cloudtutor.modelstate import floating_items, params_sha256
from cloudtutor.streams import SIGNALS, UPDATES, Signal, UpdateRef, label_blob, masks_blob, model_blob, sample_blob
from cloudtutor.testing.services import running_service
from cloudtutor.topics import Topics
from cloudtutor_services.trainer.service import TrainerService, state_key
from test_distill import camvid

pytestmark = pytest.mark.timeout(120)

WAIT = 60.0
DEVICE = "cam-1"
N_COORDS = 364_569  # trainable coordinates of ESPNet p=2 q=8


@pytest.fixture(scope="module")
def samples(data_root):
    return camvid(data_root, 21)


@pytest.fixture(scope="module")
def pretrained(data_root) -> dict[str, torch.Tensor]:
    return distill.bootstrap_view_(build_model("espnet", data_root_path=data_root)).state_dict()


def make_config(mqtt_settings, redis_settings, data_root, **trainer) -> CloudConfig:
    return CloudConfig(
        mqtt=mqtt_settings.model_copy(update={"prefix": f"t{uuid.uuid4().hex[:12]}"}),
        redis=redis_settings.model_copy(update={"key_prefix": f"t{uuid.uuid4().hex[:12]}"}),
        models={"student_width": 256, "threads": 2, "data_root": data_root},
        trainer={"iterations": 3, "batch_size": 2, "poll_s": 0.05, **trainer},
        metrics_port=None,
    )


@pytest.fixture
def config(mqtt_settings, redis_settings, data_root) -> CloudConfig:
    return make_config(mqtt_settings, redis_settings, data_root)


@contextmanager
def running(config: CloudConfig) -> Iterator[TrainerService]:
    with running_service(TrainerService, config, join_s=WAIT) as svc:
        yield svc


@contextmanager
def framebuffer(config: CloudConfig) -> Iterator[FrameBuffer]:
    fb = FrameBuffer(config.redis, config.framebuffer)
    try:
        yield fb
    finally:
        fb.close()


def feed(fb: FrameBuffer, samples, indices: range, step_ms: int = 1000) -> None:
    """What the labeler does: sample and label arrays, a horizon entry at the
    sample's video time, and the device in the devices set."""
    frames, labels = samples
    for i in indices:
        pts = i * step_ms
        fb.put_array(sample_blob(DEVICE, pts), frames[i])
        fb.put_array(label_blob(DEVICE, pts), labels[i])
        fb.horizon_add(DEVICE, pts, {"sample": sample_blob(DEVICE, pts), "label": label_blob(DEVICE, pts), "model_version": 0})
    fb.redis.sadd(fb.devices_key(), DEVICE)


def updates(fb: FrameBuffer) -> list[UpdateRef]:
    return [UpdateRef.from_fields({k.decode(): v for k, v in f.items()}) for _, f in fb.redis.xrange(fb.stream_key(UPDATES))]


def wait_updates(fb: FrameBuffer, count: int) -> list[UpdateRef]:
    deadline = time.monotonic() + WAIT
    while len(found := updates(fb)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} updates after {WAIT} s"
        time.sleep(0.05)
    return found


def signals(fb: FrameBuffer) -> list[Signal]:
    return [Signal.from_fields({k.decode(): v for k, v in f.items()}) for _, f in fb.redis.xrange(fb.stream_key(SIGNALS))]


def masks_of(fb: FrameBuffer, version: int, template) -> dict[str, torch.Tensor]:
    return distill.unpack_masks(fb.get_blob(masks_blob(DEVICE, version)), template)


def test_a_phase_after_t_update_of_video_time(config, samples, pretrained):
    with framebuffer(config) as fb, running(config) as svc:
        feed(fb, samples, range(0, 10))  # 0..9 s: less than T_update (10 s) of video
        deadline = time.monotonic() + WAIT
        while fb.blob_exists(model_blob(DEVICE, 0)) is False:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        assert updates(fb) == [], "no phase before T_update of video time"
        feed(fb, samples, range(10, 11))  # the sample at 10 s makes it due
        [ref] = wait_updates(fb, 1)
        assert svc.metrics.total("cloudtutor_trainer_phases_total") == 1

    # Version 0: the pretrained student rounded to float16.
    with framebuffer(config) as fb:
        v0 = fb.get_blob(model_blob(DEVICE, 0))
        assert distill.vector_sha256(v0) == params_sha256(pretrained)

        assert (ref.device_id, ref.base_version, ref.version, ref.video_ms) == (DEVICE, 0, 1, 10_000)
        assert (ref.state, ref.masks) == (model_blob(DEVICE, 1), masks_blob(DEVICE, 1))
        vector = fb.get_blob(ref.state)
        new = distill.state_from_vector(vector, pretrained)
        assert distill.vector_sha256(vector) == params_sha256(new) == ref.params_sha256
        masks = masks_of(fb, 1, pretrained)
        assert sum(int(m.sum()) for m in masks.values()) == selection_size(N_COORDS, 0.05) == 18_229
        for name, tensor in floating_items(new):
            moved = tensor != pretrained[name]
            assert not bool((moved & ~masks[name]).any()), f"{name} changed outside the mask"
            if "running_" in name:
                assert not bool(masks[name].any())
        assert sum(int((new[n] != pretrained[n]).sum()) for n in masks) > 10_000

        [accuracy] = [s for s in signals(fb) if s.kind == "accuracy"]
        assert accuracy.device_id == DEVICE and accuracy.video_ms == 10_000
        assert 0.0 < accuracy.value < 1.0
        assert ref.metric == pytest.approx(accuracy.value)

        state = fb.redis.hgetall(state_key(fb.prefix, DEVICE))
        assert int(state[b"version"]) == 1 and int(state[b"last_phase_ms"]) == 10_000
        assert state[b"weights"] == vector


def test_control_state_knobs_set_the_period_and_gamma(config, samples):
    bus = Bus(config.mqtt, name="controller").start()
    try:
        assert bus.wait_connected(WAIT)
        knobs = Knobs(t_update_s=4.0, coord_fraction=0.01)
        bus.publish(Topics(config.mqtt.prefix).control_state(DEVICE), ControlState(knobs=knobs).to_bytes(), qos=1,
                    retain=True, wait=True)
        with framebuffer(config) as fb, running(config) as svc:
            deadline = time.monotonic() + WAIT
            while svc.knobs_of(DEVICE) != knobs:
                assert time.monotonic() < deadline, "retained control/state not received"
                time.sleep(0.05)
            feed(fb, samples, range(0, 5))  # 0..4 s = T_update
            [ref] = wait_updates(fb, 1)
            assert ref.video_ms == 4_000
            template = build_model("espnet", data_root_path=config.models.data_root).state_dict()
            assert sum(int(m.sum()) for m in masks_of(fb, 1, template).values()) == selection_size(N_COORDS, 0.01)
    finally:
        bus.close()


def run_two_phases(config: CloudConfig, samples, *, restart: bool) -> tuple[list[UpdateRef], dict[bytes, bytes]]:
    """Phase 1 at 10 s, then phase 2 at 20 s, with or without a new trainer in between."""
    with framebuffer(config) as fb:
        feed(fb, samples, range(0, 11))
        with running(config):
            wait_updates(fb, 1)
            after_one = fb.redis.hgetall(state_key(fb.prefix, DEVICE))
            if not restart:
                feed(fb, samples, range(11, 21))
                refs = wait_updates(fb, 2)
        if restart:
            feed(fb, samples, range(11, 21))
            with running(config):
                refs = wait_updates(fb, 2)
        return refs, after_one


def test_a_restarted_trainer_resumes_exactly(mqtt_settings, redis_settings, data_root, samples, pretrained):
    restarted = make_config(mqtt_settings, redis_settings, data_root)
    reference = make_config(mqtt_settings, redis_settings, data_root)
    refs, after_one = run_two_phases(restarted, samples, restart=True)
    expected, _ = run_two_phases(reference, samples, restart=False)

    assert [(r.base_version, r.version, r.video_ms) for r in refs] == [(0, 1, 10_000), (1, 2, 20_000)]
    # Same inputs, same state: bit-identical weights and the same selection.
    assert [r.params_sha256 for r in refs] == [r.params_sha256 for r in expected]
    with framebuffer(restarted) as fb, framebuffer(reference) as fb_ref:
        assert fb.get_blob(masks_blob(DEVICE, 2)) == fb_ref.get_blob(masks_blob(DEVICE, 2))
        # Phase 2 trained the gamma fraction with the largest |u| of phase 1,
        # read from the optimizer state the first trainer left in Redis
        # (Algorithm 2 line 1).
        signal = state_from_bytes(after_one[b"optimizer"])["signal"]
        k = selection_size(N_COORDS, 0.05)
        expected_mask = np.zeros(signal.size, dtype=bool)
        expected_mask[np.argsort(-np.abs(signal), kind="stable")[:k]] = True
        masks = masks_of(fb, 2, pretrained)
        names = [n for n, _ in build_model("espnet", data_root_path=data_root).named_parameters()]
        assert np.array_equal(np.concatenate([masks[n].reshape(-1).numpy() for n in names]), expected_mask)
        final = fb.redis.hgetall(state_key(fb.prefix, DEVICE))
        assert int(final[b"version"]) == 2
        assert state_from_bytes(final[b"optimizer"])["phase"] == 2


def test_a_stop_mid_phase_stores_nothing_and_the_next_trainer_redoes_it(config, samples):
    # A phase can outlast the pod's grace period on a busy CPU; a stop ends it
    # between iterations instead, and Redis keeps the last published version.
    slow = config.model_copy(update={"trainer": config.trainer.model_copy(update={"iterations": 200})})
    with framebuffer(slow) as fb:
        with running(slow) as svc:
            feed(fb, samples, range(0, 11))
            deadline = time.monotonic() + WAIT
            while not fb.redis.xlen(fb.stream_key(SIGNALS)):  # the phase's accuracy signal: training starts next
                assert time.monotonic() < deadline, "the phase never started"
                time.sleep(0.05)
            started = time.monotonic()
        assert time.monotonic() - started < 20, "the stop waited for 200 iterations"
        assert svc.metrics.total("cloudtutor_trainer_phases_abandoned_total") == 1
        assert updates(fb) == []
        state = fb.redis.hgetall(state_key(fb.prefix, DEVICE))
        assert int(state[b"version"]) == 0 and state[b"last_phase_ms"] == b""
    with framebuffer(config) as fb, running(config):
        [ref] = wait_updates(fb, 1)
        assert (ref.base_version, ref.version, ref.video_ms) == (0, 1, 10_000)
