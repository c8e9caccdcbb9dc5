"""trainer in mode shadowtutor, against real Redis and Mosquitto with the real
ESPNet: each key frame gets Algorithm 1 and one update carrying only the
trainable part (dense) and the key frame's metric; the frozen front never moves."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cloudtutor import distill
from cloudtutor.bus import Bus
from cloudtutor.knobs import Knobs
from cloudtutor.messages import ControlState
from cloudtutor.models.registry import build_model
from cloudtutor.shadowtutor.partial import trainable_names
from cloudtutor.topics import Topics
from test_service_trainer import (  # noqa: F401 (fixtures)
    DEVICE, WAIT, feed, framebuffer, make_config, masks_of, pretrained, running, samples, wait_updates,
)

pytestmark = pytest.mark.timeout(180)


def test_each_key_frame_gets_a_partial_update_with_its_metric(mqtt_settings, redis_settings, data_root, samples, pretrained):
    config = make_config(mqtt_settings, redis_settings, data_root, shadowtutor={"max_updates": 3, "threshold": 0.99})
    bus = Bus(config.mqtt, name="controller").start()
    try:
        assert bus.wait_connected(WAIT)
        knobs = Knobs(mode="shadowtutor")
        bus.publish(Topics(config.mqtt.prefix).control_state(DEVICE), ControlState(knobs=knobs).to_bytes(), qos=1,
                    retain=True, wait=True)
        with framebuffer(config) as fb, running(config) as svc:
            deadline = time.monotonic() + WAIT
            while svc.knobs_of(DEVICE) != knobs:
                assert time.monotonic() < deadline, "retained control/state not received"
                time.sleep(0.05)
            feed(fb, samples, range(0, 1))  # the first key frame, at 0 ms
            [ref] = wait_updates(fb, 1)
            assert (ref.base_version, ref.version, ref.video_ms) == (0, 1, 0)
            assert ref.metric is not None and 0.0 <= ref.metric <= 1.0
            template = build_model("espnet", data_root_path=data_root).state_dict()
            trainable = set(trainable_names(build_model("espnet", data_root_path=data_root), "level3.5"))
            masks = masks_of(fb, 1, template)
            selected = {n for n, m in masks.items() if bool(m.any())}
            assert selected == trainable, "a dense update of exactly the trainable part"
            assert all(bool(masks[n].all()) for n in selected)
            weights = svc.load_state(DEVICE).weights
            view = distill.state_from_vector(weights, template)
            for name, tensor in pretrained.items():
                if name not in trainable and tensor.is_floating_point():
                    assert np.array_equal(view[name].numpy(), tensor.numpy()), f"frozen {name} moved"
            assert any(not np.array_equal(view[n].numpy(), pretrained[n].numpy()) for n in trainable)
            feed(fb, samples, range(8, 9), step_ms=1000)  # the next key frame, 8 s later
            refs = wait_updates(fb, 2)
            assert (refs[1].base_version, refs[1].version, refs[1].video_ms) == (1, 2, 8000)
    finally:
        bus.close()
