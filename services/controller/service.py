"""controller: owns every device's knobs (brief §6, §10.6).

- A device's knobs live in Redis (so a restarted controller keeps them) and
  on the device's retained ``control/state`` topic (so a device that
  connects gets them at once).
- ``phi`` signals from the labeler drive AMS's adaptive sampling rate
  (eq. 1) per device, in video time; each change is published with the
  reason and logged as one structured line.
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
from cloudtutor.bus import Message
from cloudtutor.knobs import merge_knobs
from cloudtutor.messages import ControlState, MessageError, Status, decode_json
from cloudtutor.service import Service
from cloudtutor.streams import SIGNALS, Signal, StreamEntryError
from cloudtutor.topics import Leaf, TopicError, shared

KNOB_CHANGES = "cloudtutor_controller_knob_changes_total"


@dataclass
class DeviceView:
    """What the controller knows of one device."""

    state: ControlState
    asr: AdaptiveSamplingRate
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
            view = self.devices[device_id] = DeviceView(state, asr)
            if not raw:
                self._publish(device_id, view)
        return view

    def _publish(self, device_id: str, view: DeviceView) -> None:
        payload = view.state.to_bytes()
        self.fb.redis.set(self._key(device_id), payload)
        # set_retained: republished on every reconnect, in case the broker lost it
        self.bus.set_retained(self.topics.control_state(device_id), payload, qos=1)

    def _change(self, device_id: str, view: DeviceView, override: dict, reason: str) -> None:
        knobs, rejected = merge_knobs(view.state.knobs, override)
        if rejected:
            view.state = view.state.model_copy(update={"rejected": rejected})
            self.reject("control_set", "out_of_range", "; ".join(rejected), device_id=device_id)
        elif knobs != view.state.knobs:
            view.state = ControlState(knobs=knobs, version=view.state.version + 1, reason=reason)
            self.metrics.inc(KNOB_CHANGES, device_id=device_id)
            self.log.info("knobs changed", extra={"fields": {"device_id": device_id, "reason": reason, **override}})
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
                override = json.loads(message.payload)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                view.state = view.state.model_copy(update={"rejected": [f"not JSON: {exc}"]})
                self._publish(device_id, view)
                self.reject("control_set", "not_json", str(exc), device_id=device_id)
                return
            self._change(device_id, view, override, reason="operator override (control/set)")

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
        if signal.kind == "chunk" and signal.bytes:
            view.uplink_bytes += signal.bytes
        elif signal.kind == "update" and signal.bytes:
            view.downlink_bytes += signal.bytes
        elif signal.kind == "phi":
            rate = view.asr.observe(signal.video_ms / 1000.0, signal.value)
            if rate is not None and abs(rate - view.state.knobs.sample_fps) > 1e-9:
                reason = (
                    f"ASR: mean phi {view.asr.last_phi_mean:.3f} vs target {self.settings.asr_phi_target:.3f} "
                    f"-> {rate:.3f} fps"
                )
                self._change(signal.device_id, view, {"sample_fps": round(rate, 4)}, reason)

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
                    "downlink_bytes": view.downlink_bytes,
                }
                for device_id, view in sorted(self.devices.items())
            },
            "online": sum(v.online for v in self.devices.values()),
            "updated": time.time(),
        }
        self.bus.publish(self.topics.fleet_status(), json.dumps(summary).encode(), qos=1, retain=True)


SERVICE = ControllerService
