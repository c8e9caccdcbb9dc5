"""controller: owns every device's knobs (brief §6, §10.6).

- A device's knobs live in Redis (so a restarted controller keeps them) and
  on the device's retained ``control/state`` topic (so a device that
  connects gets them at once).
- ``phi`` signals from the labeler drive AMS's adaptive sampling rate
  (eq. 1) per device, in video time; each change is published with the
  reason and logged as one structured line.
- ``chunk`` signals (ingest: wire bytes, video time, the header's size,
  CRF and ROI offset, send and arrival times) feed each device's uplink
  estimate and accuracy/bytes profile; ``accuracy`` signals (trainer) the
  profile's accuracy. Every δt of video time, and at once when the budget
  changes, the bitrate policy keeps ASR's rate and picks scale, CRF and ROI
  offset under ``uplink_budget_kbps``, lowering the rate only when even the
  cheapest quality does not fit (brief §10.6; ``policy.py``).
- ATR (brief §10.10) sets ``t_update_s``: longer while a device's mean
  sampling rate says its scene is stationary (hibernation), the base again
  when it wakes.
- ``control/set`` overrides are validated and merged all-or-nothing
  (knobs.merge_knobs); refused ones are explained in ``rejected``.
- ``fleet/status`` (retained) summarises the devices every few seconds.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from cloudtutor.algorithms.asr import AdaptiveSamplingRate
from cloudtutor.algorithms.bitrate import Quality
from cloudtutor.bus import Message
from cloudtutor.knobs import merge_knobs
from cloudtutor.messages import ControlState, MessageError, Status, decode_json, parse_json
from cloudtutor.service import Service
from cloudtutor.streams import SIGNALS, Signal, StreamEntryError
from cloudtutor.topics import Leaf, TopicError, shared
from cloudtutor_services.controller.policy import Change, DevicePolicy

KNOB_CHANGES = "cloudtutor_controller_knob_changes_total"


@dataclass
class DeviceView:
    """What the controller knows of one device."""

    state: ControlState
    asr: AdaptiveSamplingRate
    policy: DevicePolicy
    online: bool = False
    model_version: int | None = None
    last: dict[str, float] = field(default_factory=dict)  # latest value per signal kind
    uplink_bytes: int = 0
    downlink_bytes: int = 0


class ControllerService(Service):
    name = "controller"

    def setup(self) -> None:
        self.settings = self.config.controller
        self.devices: dict[str, DeviceView] = {}
        # Handlers run on the bus's worker thread, step() on the main one.
        self._lock = threading.RLock()
        self._next_fleet = 0.0
        self.fb.ensure_group(SIGNALS, self.group)
        self.bus.subscribe(shared(self.group, self.topics.all_devices(Leaf.STATUS)), self._on_status, qos=1)
        self.bus.subscribe(shared(self.group, self.topics.all_devices(Leaf.CONTROL_SET)), self._on_set, qos=1)

    # -- state ----------------------------------------------------------------------

    def _key(self, device_id: str) -> str:
        return f"{self.fb.prefix}:controller:{device_id}"

    def device(self, device_id: str) -> DeviceView:
        with self._lock:
            return self._device(device_id)

    def _device(self, device_id: str) -> DeviceView:
        view = self.devices.get(device_id)
        if view is None:
            raw = self.fb.redis.get(self._key(device_id))
            state = ControlState(knobs=self.settings.default_knobs)
            if raw:
                try:
                    state = ControlState.model_validate_json(raw)
                except ValueError:
                    self.log.warning("stored knobs of %s unreadable; using defaults", device_id)
            s = self.settings
            asr = AdaptiveSamplingRate(
                eta=s.asr_eta, phi_target=s.asr_phi_target, initial_rate=state.knobs.sample_fps,
                r_min=s.asr_min_fps, r_max=s.asr_max_fps, delta_t_s=s.delta_t_s,
            )
            view = self.devices[device_id] = DeviceView(state, asr, DevicePolicy(s))
            if not raw:
                self._publish(device_id, view)
        return view

    def _publish(self, device_id: str, view: DeviceView) -> None:
        payload = view.state.to_bytes()
        self.fb.redis.set(self._key(device_id), payload)
        # set_retained: republished on every reconnect, in case the broker lost it
        self.bus.set_retained(self.topics.control_state(device_id), payload, qos=1)

    def _change(self, device_id: str, view: DeviceView, override: dict, reason: str,
                video_ms: int | None = None, fields: dict | None = None) -> None:
        knobs, rejected = merge_knobs(view.state.knobs, override)
        if rejected:
            view.state = view.state.model_copy(update={"rejected": rejected})
            self.reject("control_set", "out_of_range", "; ".join(rejected), device_id=device_id)
        elif knobs != view.state.knobs:
            view.state = ControlState(knobs=knobs, version=view.state.version + 1, reason=reason[:2000], video_ms=video_ms)
            self.metrics.inc(KNOB_CHANGES, device_id=device_id)
            self.log.info("knobs changed", extra={"fields": {
                "device_id": device_id, "reason": reason, "set": override, **(fields or {})}})
        else:
            return
        self._publish(device_id, view)

    # -- MQTT handlers (bus worker thread) ------------------------------------------

    def _device_of(self, message: Message) -> str | None:
        try:
            return self.topics.parse_device(message.topic).device_id
        except TopicError as exc:
            self.reject("topic", "bad_topic", str(exc))
            return None

    def _on_status(self, message: Message) -> None:
        device_id = self._device_of(message)
        if device_id is None or not message.payload:
            return
        try:
            status = decode_json(Status, message.payload)
        except MessageError as exc:
            # Status messages carry extra fields (agent_version...) the model knows;
            # anything else is a malformed message.
            self.reject("status", exc.reason, exc.detail, device_id=device_id)
            return
        with self._lock:
            view = self.device(device_id)
            view.online = status.state == "online"
            view.model_version = status.model_version

    def _on_set(self, message: Message) -> None:
        device_id = self._device_of(message)
        if device_id is None:
            return
        with self._lock:
            view = self.device(device_id)
            try:
                override = parse_json(message.payload)  # size-limited; deep nesting is "not_json", not a crash
            except MessageError as exc:
                view.state = view.state.model_copy(update={"rejected": [f"{'not JSON' if exc.reason == 'not_json' else exc.reason}: {exc.detail}"]})
                self._publish(device_id, view)
                self.reject("control_set", exc.reason, exc.detail, device_id=device_id)
                return
            budget_before = view.state.knobs.uplink_budget_kbps
            self._change(device_id, view, override, reason="operator override (control/set)")
            if view.state.knobs.uplink_budget_kbps != budget_before:  # act on a new budget now, not at the next δt
                self._apply(device_id, view, view.policy.decide(
                    view.state.knobs, view.asr.rate, self.settings.default_knobs,
                    f"budget {budget_before:g} -> {view.state.knobs.uplink_budget_kbps:g} Kbps"))

    # -- the loop -------------------------------------------------------------------

    def step(self) -> bool:
        entries = self.fb.read(SIGNALS, self.group, self.consumer, count=100)
        for entry in entries:
            try:
                signal = Signal.from_fields(entry.fields)
            except StreamEntryError as exc:
                self.reject("signal", "invalid", str(exc))
                continue
            with self._lock:
                self._on_signal(signal)
        if entries:
            self.fb.ack(SIGNALS, self.group, [e.id for e in entries])
        if time.monotonic() >= self._next_fleet:
            with self._lock:
                self._publish_fleet()
            self._next_fleet = time.monotonic() + self.settings.fleet_status_every_s
        return bool(entries)

    def _on_signal(self, signal: Signal) -> None:
        view = self.device(signal.device_id)
        view.last[signal.kind] = signal.value
        policy = view.policy
        policy.advance(signal.video_ms / 1000.0)
        if signal.kind == "chunk" and signal.bytes:
            view.uplink_bytes += signal.bytes
            policy.on_chunk(signal)
        elif signal.kind == "update" and signal.bytes:
            view.downlink_bytes += signal.bytes
        elif signal.kind == "accuracy":
            policy.on_accuracy(signal)
        elif signal.kind == "phi":
            rate = view.asr.observe(signal.video_ms / 1000.0, signal.value)
            if rate is not None and abs(rate - view.state.knobs.sample_fps) > 1e-9:
                reason = (
                    f"ASR: mean phi {view.asr.last_phi_mean:.3f} vs target {self.settings.asr_phi_target:.3f} "
                    f"-> {rate:.3f} fps"
                )
                if policy.engaged:  # ASR proposes; the bitrate policy decides what fits (brief §10.6)
                    self._apply(signal.device_id, view, policy.decide(
                        view.state.knobs, rate, self.settings.default_knobs, reason))
                else:
                    self._change(signal.device_id, view, {"sample_fps": round(rate, 4)}, reason, signal.video_ms)
        if policy.due():
            self._apply(signal.device_id, view, policy.decide(
                view.state.knobs, view.asr.rate, self.settings.default_knobs, "delta-t"))
        self._apply(signal.device_id, view, policy.atr_step(view.state.knobs))

    def _apply(self, device_id: str, view: DeviceView, change: Change | None) -> None:
        if change is not None:
            video_ms = None if view.policy.now_s is None else round(view.policy.now_s * 1000)
            self._change(device_id, view, change.override, change.reason, video_ms, change.fields)

    def _publish_fleet(self) -> None:
        summary = {
            "devices": {
                device_id: {
                    "online": view.online,
                    "model_version": view.model_version,
                    "sample_fps": view.state.knobs.sample_fps,
                    "knobs_version": view.state.version,
                    "phi": view.last.get("phi"),
                    "accuracy": view.last.get("accuracy"),
                    "uplink_bytes": view.uplink_bytes,
                    "uplink_estimate": view.policy.uplink.snapshot(),
                    "budget_kbps": view.state.knobs.uplink_budget_kbps,
                    "quality": str(Quality(view.state.knobs.scale, view.state.knobs.crf, view.state.knobs.roi_qoffset)),
                    "training": "hibernating" if view.policy.atr.hibernating else "awake",
                    "downlink_bytes": view.downlink_bytes,
                }
                for device_id, view in sorted(self.devices.items())
            },
            "online": sum(v.online for v in self.devices.values()),
            "updated": time.time(),
        }
        self.bus.publish(self.topics.fleet_status(), json.dumps(summary).encode(), qos=1, retain=True)


SERVICE = ControllerService
