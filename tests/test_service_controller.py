"""controller against real Mosquitto and Redis: ASR from phi signals,
operator overrides, retained control/state, restart, fleet/status."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator

import pytest

from cloudtutor.bus import Bus, Message
from cloudtutor.config.cloud import CloudConfig
from cloudtutor.framebuffer import FrameBuffer
from cloudtutor.messages import ControlState, Status
from cloudtutor.service import REJECTED
from cloudtutor.streams import SIGNALS, Signal
from cloudtutor.testing.services import running_service
from cloudtutor_services.controller.service import ControllerService

WAIT = 20.0


@pytest.fixture
def config(mqtt_settings, redis_settings, topics) -> CloudConfig:
    return CloudConfig(
        mqtt=mqtt_settings.model_copy(update={"prefix": topics.prefix}),
        redis=redis_settings,
        controller={"fleet_status_every_s": 0.2},
    )


def running(config: CloudConfig) -> Iterator[ControllerService]:
    with running_service(ControllerService, config, join_s=WAIT) as svc:
        yield svc


@pytest.fixture
def controller(config) -> Iterator[ControllerService]:
    yield from running(config)


@pytest.fixture
def operator(config) -> Iterator[tuple[Bus, queue.Queue]]:
    """An MQTT client watching control/state and fleet/status, as an operator would."""
    inbox: queue.Queue[Message] = queue.Queue()
    bus = Bus(config.mqtt, name="operator").start()
    assert bus.wait_connected(WAIT)
    yield bus, inbox
    bus.close()


def watch(bus: Bus, inbox: queue.Queue, topic: str) -> None:
    bus.subscribe(topic, inbox.put, qos=1, wait=True, timeout=WAIT)


def next_state(inbox: queue.Queue, predicate) -> ControlState:
    while True:
        msg = inbox.get(timeout=WAIT)
        state = ControlState.model_validate_json(msg.payload)
        if predicate(state):
            return state


def test_phi_signals_drive_the_sampling_rate(config, controller, operator):
    bus, inbox = operator
    watch(bus, inbox, controller.topics.control_state("cam-1"))
    fb = FrameBuffer(config.redis, config.framebuffer)
    try:
        # 20 s of video with phi 0.1, target 0.5, eta 1: r = 1.0 + (0.1 - 0.5) = 0.6
        for t in range(0, 21, 2):
            fb.add(SIGNALS, Signal(device_id="cam-1", kind="phi", value=0.1, video_ms=t * 1000).to_fields())
        state = next_state(inbox, lambda s: s.knobs.sample_fps < 1.0)
        assert state.knobs.sample_fps == pytest.approx(0.6)
        assert "ASR" in state.reason and state.version >= 1
        state = next_state(inbox, lambda s: s.knobs.sample_fps < 0.6)
        assert state.knobs.sample_fps == pytest.approx(0.2)
    finally:
        fb.close()


def test_operator_overrides_are_validated(controller, operator):
    bus, inbox = operator
    topic = controller.topics.control_state("cam-2")
    watch(bus, inbox, topic)
    bus.publish(controller.topics.control_set("cam-2"), json.dumps({"crf": 30, "sample_fps": 0.5}), qos=1)
    state = next_state(inbox, lambda s: s.knobs.crf == 30)
    assert state.knobs.sample_fps == 0.5 and state.rejected == []
    bus.publish(controller.topics.control_set("cam-2"), json.dumps({"sample_fps": 50, "warp": 1}), qos=1)
    state = next_state(inbox, lambda s: s.rejected)
    assert state.knobs.sample_fps == 0.5 and any("warp" in r for r in state.rejected)
    bus.publish(controller.topics.control_set("cam-2"), b"{nope", qos=1)
    state = next_state(inbox, lambda s: any("not JSON" in r for r in s.rejected))
    assert controller.metrics.get(REJECTED, service="controller", what="control_set", reason="not_json") == 1
    # ... and it still serves a good override afterwards
    bus.publish(controller.topics.control_set("cam-2"), json.dumps({"crf": 28}), qos=1)
    assert next_state(inbox, lambda s: s.knobs.crf == 28).rejected == []


def test_knobs_survive_a_restart_and_a_device_gets_them_retained(config, operator):
    bus, inbox = operator
    gen = running(config)
    svc = next(gen)
    watch(bus, inbox, svc.topics.control_state("cam-3"))
    bus.publish(svc.topics.control_set("cam-3"), json.dumps({"crf": 35}), qos=1)
    next_state(inbox, lambda s: s.knobs.crf == 35)
    gen.close()  # stop and close the first controller

    gen2 = running(config)
    svc2 = next(gen2)
    try:
        # A device coming online later finds its knobs retained on the broker...
        device_inbox: queue.Queue[Message] = queue.Queue()
        device = Bus(config.mqtt, name="cam-3").start()
        device.subscribe(svc2.topics.control_state("cam-3"), device_inbox.put, qos=1, wait=True, timeout=WAIT)
        assert ControlState.model_validate_json(device_inbox.get(timeout=WAIT).payload).knobs.crf == 35
        device.close()
        # ...and the new controller continues from Redis, not from defaults.
        bus.publish(svc2.topics.control_set("cam-3"), json.dumps({"sample_fps": 0.3}), qos=1)
        state = next_state(inbox, lambda s: s.knobs.sample_fps == 0.3)
        assert state.knobs.crf == 35
    finally:
        gen2.close()


def test_fleet_status_summarises_devices(controller, operator):
    bus, inbox = operator
    watch(bus, inbox, controller.topics.fleet_status())
    status = Status(state="online", model_version=4, agent_version="0.1.0")
    bus.publish(controller.topics.status("cam-4"), status.to_bytes(), qos=1, retain=True)
    while True:
        doc = json.loads(inbox.get(timeout=WAIT).payload)
        if doc["devices"].get("cam-4", {}).get("online"):
            break
    assert doc["devices"]["cam-4"]["model_version"] == 4 and doc["online"] >= 1
    bus.publish(controller.topics.status("cam-4"), b"", qos=1, retain=True)  # clear the retained status


def chunk_signal(device: str, t_s: int, nbytes: int, crf: float = 18, sent=(960, 544)) -> dict:
    """ingest's chunk signal: 10 frames ending at ``t_s`` of video, encoded at ``sent`` and ``crf``."""
    return Signal(device_id=device, kind="chunk", value=10, video_ms=t_s * 1000, bytes=nbytes, sent_at=1000.0 + t_s,
                  arrived_at=1000.2 + t_s, source_width=960, source_height=540, sent_width=sent[0], sent_height=sent[1],
                  crf=crf).to_fields()


def test_a_budget_drop_moves_quality_first_and_the_rate_last(config, controller, operator):
    """End to end over the real broker and Redis: chunks at x1 CRF 18 (about 90 Kbps at
    1 fps), then the operator drops the budget: the controller lowers scale or CRF at once
    and keeps the rate; a budget no quality fits at 1 fps lowers the rate too."""
    bus, inbox = operator
    watch(bus, inbox, controller.topics.control_state("cam-5"))
    bus.publish(controller.topics.control_set("cam-5"), json.dumps({"crf": 18, "uplink_budget_kbps": 200}), qos=1)
    next_state(inbox, lambda s: s.knobs.crf == 18 and s.knobs.uplink_budget_kbps == 200)
    fb = FrameBuffer(config.redis, config.framebuffer)
    try:
        for t in range(10, 60, 10):
            fb.add(SIGNALS, chunk_signal("cam-5", t, 110_000))
        # the chunks are read and fit 200 Kbps: nothing to change, and the estimate shows in fleet/status
        fleet: queue.Queue[Message] = queue.Queue()
        watch(bus, fleet, controller.topics.fleet_status())
        while True:
            doc = json.loads(fleet.get(timeout=WAIT).payload)
            est = doc["devices"].get("cam-5", {}).get("uplink_estimate", {})
            if est.get("sent_kbps"):
                break
        assert est["sent_kbps"] == pytest.approx(88.0) and est["link_kbps"] == pytest.approx(4400.0)
        bus.publish(controller.topics.control_set("cam-5"), json.dumps({"uplink_budget_kbps": 20}), qos=1)
        state = next_state(inbox, lambda s: "bitrate" in (s.reason or ""))
        k = state.knobs
        assert (k.scale, k.crf) != (1, 18) and k.sample_fps == 1.0 and k.uplink_budget_kbps == 20
        assert "downgrade" in state.reason and "budget 200 -> 20" in state.reason and state.video_ms == 50_000
        # the new quality's expected uplink: its prior share of the level this device showed (11 KB/frame at x1 CRF 18)
        prior = {(p.scale, p.crf): p.relative_bytes for p in config.controller.bitrate.prior}
        assert 1.0 * 11_000 * prior[(k.scale, k.crf)] * 8 / 1000 <= 0.9 * 20
        bus.publish(controller.topics.control_set("cam-5"), json.dumps({"uplink_budget_kbps": 1}), qos=1)
        state = next_state(inbox, lambda s: s.knobs.uplink_budget_kbps == 1 and s.knobs.sample_fps < 1.0)
        assert (state.knobs.scale, state.knobs.crf) == (4, 33) and "rate_limited" in state.reason
    finally:
        fb.close()
