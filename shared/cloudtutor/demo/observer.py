"""An MQTT client that watches the whole fleet, as an operator would, and
counts what crosses the broker: chunks (by boot and seq) and their bytes,
acks, model updates and their bytes, the edges' telemetry and the
services' status. The demo's bandwidth and loss figures come from here,
not from the processes' own claims."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from cloudtutor import envelope
from cloudtutor.bus import Bus, Message
from cloudtutor.config.common import MqttSettings
from cloudtutor.headers import ChunkHeader, Kind
from cloudtutor.messages import ChunkAck, ControlState, MessageError, ModelReported, Telemetry, decode_json
from cloudtutor.topics import Leaf, Topics, TopicError


@dataclass
class DeviceTraffic:
    chunks: dict[tuple[str, int], int] = field(default_factory=dict)  # (boot, seq) -> bytes
    chunk_last_pts: dict[tuple[str, int], int] = field(default_factory=dict)
    acked: set[tuple[str, int]] = field(default_factory=set)
    chunk_messages: int = 0  # including resends
    activation_bytes: int = 0  # split mode: compressed activations up (brief §10.8)
    activation_messages: int = 0
    result_bytes: int = 0  # split mode: labels down
    # (wall s, kind, bytes, video ms the update was trained through)
    updates: list[tuple[float, str, int, int]] = field(default_factory=list)
    telemetry: Telemetry | None = None
    reported: ModelReported | None = None
    reported_history: list[ModelReported] = field(default_factory=list)
    states: list[ControlState] = field(default_factory=list)  # control/state as published (the knobs over time)

    @property
    def uplink_bytes(self) -> int:
        return sum(self.chunks.values()) + self.activation_bytes

    @property
    def downlink_bytes(self) -> int:
        return sum(u[2] for u in self.updates) + self.result_bytes


class FleetObserver:
    def __init__(self, settings: MqttSettings) -> None:
        self.topics = Topics(settings.prefix)
        self.devices: dict[str, DeviceTraffic] = defaultdict(DeviceTraffic)
        self.services: dict[str, dict] = {}
        self.malformed = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.bus = Bus(settings, name="demo-observer", handler_queue_size=1000)

    def start(self, timeout: float = 30.0) -> FleetObserver:
        self.bus.start()
        if not self.bus.wait_connected(timeout):
            raise RuntimeError("demo observer: no connection to the broker")
        t = self.topics
        for leaf in (Leaf.CHUNKS, Leaf.CHUNKS_ACK, Leaf.MODEL_DELTA, Leaf.MODEL_SNAPSHOT, Leaf.TELEMETRY, Leaf.MODEL_REPORTED,
                     Leaf.ACTIVATIONS, Leaf.RESULTS, Leaf.CONTROL_STATE):
            self.bus.subscribe(t.all_devices(leaf), self._on_device, qos=1, wait=True, timeout=timeout)
        self.bus.subscribe(f"{t.prefix}/services/+/status", self._on_service, qos=1, wait=True, timeout=timeout)
        return self

    def close(self) -> None:
        self.bus.close()

    def _on_service(self, message: Message) -> None:
        name = message.topic.split("/")[-2]
        try:
            doc = json.loads(message.payload) if message.payload else {}
        except ValueError:
            doc = {}
        with self._changed:
            self.services[name] = doc
            self._changed.notify_all()

    def _on_device(self, message: Message) -> None:
        try:
            dt = self.topics.parse_device(message.topic)
        except TopicError:
            return
        try:
            with self._changed:
                self._record(self.devices[dt.device_id], dt.leaf, message)
                self._changed.notify_all()
        except (envelope.EnvelopeError, MessageError):
            self.malformed += 1

    def _record(self, dev: DeviceTraffic, leaf: Leaf, message: Message) -> None:
        if leaf is Leaf.CHUNKS:
            env = envelope.decode(message.payload, expect=Kind.CHUNK)
            header: ChunkHeader = env.header  # type: ignore[assignment]
            key = (header.boot_id, header.seq)
            dev.chunk_messages += 1
            dev.chunks[key] = len(message.payload)
            dev.chunk_last_pts[key] = header.frame_pts_ms[-1]
        elif leaf is Leaf.CHUNKS_ACK:
            ack = decode_json(ChunkAck, message.payload)
            dev.acked.add((ack.boot_id, ack.seq))
        elif leaf in (Leaf.MODEL_DELTA, Leaf.MODEL_SNAPSHOT):
            kind = Kind.DELTA if leaf is Leaf.MODEL_DELTA else Kind.SNAPSHOT
            header = envelope.decode(message.payload, expect=kind).header
            dev.updates.append((time.time(), leaf.value, len(message.payload), header.video_ms or 0))
        elif leaf is Leaf.ACTIVATIONS:
            envelope.decode(message.payload, expect=Kind.ACTIVATIONS)
            dev.activation_messages += 1
            dev.activation_bytes += len(message.payload)
        elif leaf is Leaf.RESULTS:
            dev.result_bytes += len(message.payload)
        elif leaf is Leaf.TELEMETRY:
            dev.telemetry = decode_json(Telemetry, message.payload)
        elif leaf is Leaf.CONTROL_STATE and message.payload:
            dev.states.append(decode_json(ControlState, message.payload))
        elif leaf is Leaf.MODEL_REPORTED and message.payload:
            dev.reported = decode_json(ModelReported, message.payload)
            dev.reported_history.append(dev.reported)

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (checked on every message)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    def services_online(self, names) -> bool:
        return all(self.services.get(n, {}).get("state") == "online" for n in names)
