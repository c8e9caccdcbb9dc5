"""MQTT topic names (brief §2): the only place topic strings are written.

Device topics are ``{prefix}/devices/{device_id}/{leaf}``; every other module
asks this one for a name, a wildcard filter or a topic's QoS and retain flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Leaf(str, Enum):
    """The last part of a device topic."""

    STATUS = "status"
    CHUNKS = "chunks"
    CHUNKS_ACK = "chunks/ack"
    ACTIVATIONS = "activations"
    RESULTS = "results"
    TELEMETRY = "telemetry"
    MODEL_DELTA = "model/delta"
    MODEL_SNAPSHOT = "model/snapshot"
    MODEL_RESYNC = "model/resync"
    MODEL_REPORTED = "model/reported"
    CONTROL_STATE = "control/state"
    CONTROL_SET = "control/set"


@dataclass(frozen=True)
class Delivery:
    qos: int
    retain: bool


# The brief's §2 table, plus `results` (§10.8: split-mode labels, QoS 0).
DELIVERY: dict[Leaf, Delivery] = {
    Leaf.STATUS: Delivery(1, True),
    Leaf.CHUNKS: Delivery(1, False),
    Leaf.CHUNKS_ACK: Delivery(1, False),
    Leaf.ACTIVATIONS: Delivery(1, False),
    Leaf.RESULTS: Delivery(0, False),
    Leaf.TELEMETRY: Delivery(0, False),
    Leaf.MODEL_DELTA: Delivery(1, False),
    Leaf.MODEL_SNAPSHOT: Delivery(1, False),
    Leaf.MODEL_RESYNC: Delivery(1, False),
    Leaf.MODEL_REPORTED: Delivery(1, True),
    Leaf.CONTROL_STATE: Delivery(1, True),
    Leaf.CONTROL_SET: Delivery(1, False),
}
_FLEET_DELIVERY = Delivery(1, True)  # fleet/status and services/{name}/status

# Device ids and service names become single topic levels and Redis key
# parts: no wildcards, separators or spaces.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class TopicError(ValueError):
    """A name that cannot be a topic level, or a topic this scheme does not know."""


def check_name(name: str, what: str = "device id") -> str:
    if not _NAME.fullmatch(name):
        raise TopicError(f"invalid {what} {name!r}: use 1-64 of A-Z a-z 0-9 _ . - (starting with a letter or digit)")
    return name


def shared(group: str, topic_filter: str) -> str:
    """An MQTT v5 shared subscription: replicas in ``group`` split the messages."""
    return f"$share/{check_name(group, 'share group')}/{topic_filter}"


def unshare(topic_filter: str) -> str:
    """The plain filter inside ``$share/{group}/...`` (identity for a plain one)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[2]:
            raise TopicError(f"malformed shared subscription {topic_filter!r}")
        return parts[2]
    return topic_filter


@dataclass(frozen=True)
class DeviceTopic:
    device_id: str
    leaf: Leaf


class Topics:
    """Builds and parses every topic under one prefix."""

    def __init__(self, prefix: str = "cloudtutor") -> None:
        if not prefix or any(c in prefix for c in "+#") or prefix.startswith("$") or prefix.endswith("/"):
            raise TopicError(f"invalid topic prefix {prefix!r}")
        self.prefix = prefix

    def device(self, device_id: str, leaf: Leaf) -> str:
        return f"{self.prefix}/devices/{check_name(device_id)}/{Leaf(leaf).value}"

    def all_devices(self, leaf: Leaf | str) -> str:
        """Filter matching ``leaf`` of every device."""
        return f"{self.prefix}/devices/+/{Leaf(leaf).value}"

    def status(self, device_id: str) -> str:
        return self.device(device_id, Leaf.STATUS)

    def chunks(self, device_id: str) -> str:
        return self.device(device_id, Leaf.CHUNKS)

    def chunks_ack(self, device_id: str) -> str:
        return self.device(device_id, Leaf.CHUNKS_ACK)

    def activations(self, device_id: str) -> str:
        return self.device(device_id, Leaf.ACTIVATIONS)

    def results(self, device_id: str) -> str:
        return self.device(device_id, Leaf.RESULTS)

    def telemetry(self, device_id: str) -> str:
        return self.device(device_id, Leaf.TELEMETRY)

    def model_delta(self, device_id: str) -> str:
        return self.device(device_id, Leaf.MODEL_DELTA)

    def model_snapshot(self, device_id: str) -> str:
        return self.device(device_id, Leaf.MODEL_SNAPSHOT)

    def model_resync(self, device_id: str) -> str:
        return self.device(device_id, Leaf.MODEL_RESYNC)

    def model_reported(self, device_id: str) -> str:
        return self.device(device_id, Leaf.MODEL_REPORTED)

    def control_state(self, device_id: str) -> str:
        return self.device(device_id, Leaf.CONTROL_STATE)

    def control_set(self, device_id: str) -> str:
        return self.device(device_id, Leaf.CONTROL_SET)

    def fleet_status(self) -> str:
        return f"{self.prefix}/fleet/status"

    def service_status(self, name: str) -> str:
        return f"{self.prefix}/services/{check_name(name, 'service name')}/status"

    def parse_device(self, topic: str) -> DeviceTopic:
        """Split a concrete device topic into (device id, leaf); TopicError otherwise."""
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            raise TopicError(f"not a device topic under {self.prefix!r}: {topic!r}")
        device_id, _, rest = topic[len(head):].partition("/")
        try:
            leaf = Leaf(rest)
        except ValueError:
            raise TopicError(f"unknown device topic leaf {rest!r} in {topic!r}") from None
        return DeviceTopic(check_name(device_id), leaf)

    def delivery(self, topic: str) -> Delivery:
        """QoS and retain flag of a concrete topic, from the brief's table."""
        if topic == self.fleet_status():
            return _FLEET_DELIVERY
        if topic.startswith(f"{self.prefix}/services/") and topic.endswith("/status"):
            return _FLEET_DELIVERY
        return DELIVERY[self.parse_device(topic).leaf]

    def qos_of(self, topic: str) -> int:
        return self.delivery(topic).qos

    def retain_of(self, topic: str) -> bool:
        return self.delivery(topic).retain


def delivery_of(topic: str) -> Delivery:
    """QoS and retain of a concrete topic under any prefix (read from its shape)."""
    if topic.endswith("/fleet/status") or re.search(r"/services/[^/]+/status$", topic):
        return _FLEET_DELIVERY
    head, sep, rest = topic.rpartition("/devices/")
    if not sep or not head:
        raise TopicError(f"not a cloudtutor topic: {topic!r}")
    return Topics(head).delivery(topic)


def qos_of(topic: str) -> int:
    return delivery_of(topic).qos


def retain_of(topic: str) -> bool:
    return delivery_of(topic).retain
