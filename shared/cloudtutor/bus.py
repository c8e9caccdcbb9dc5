"""The one MQTT client wrapper every process uses (edge agent and cloud services).

A thin layer over paho-mqtt 2.x (MQTT v5, ``CallbackAPIVersion.VERSION2``)
that adds what every cloudtutor process needs and paho leaves to the caller:

Connection
    ``start()`` returns at once; paho's network thread connects and
    reconnects on its own with exponential backoff
    (``reconnect_min_s`` doubling up to ``reconnect_max_s``), including when
    the broker is not up yet. ``wait_connected(timeout)`` blocks until it is.
    Clean start and session expiry come from the settings: the edge uses
    ``clean_start=False`` with a session expiry (brief §10.4) so the broker
    keeps its subscriptions and queues QoS 1 messages while it is away;
    services use clean sessions (the expiry is then 0).

Status and retained state
    With a ``status_topic`` the bus sets a last will (``{"state":
    "offline"}``, QoS 1, retained) and publishes a retained ``online`` status
    on every (re)connect. The JSON is ``{state, since, **status_fields}``;
    ``since`` is when the state began (the connect time for ``online``), and
    null in the will, which is fixed at CONNECT and cannot know. ``close()`` publishes ``stopped`` and disconnects
    cleanly (a clean DISCONNECT does not fire the will). ``set_retained()``
    registers other retained state that is republished on every reconnect,
    because a broker restarted from an old (or no) database has lost it.

Subscriptions
    ``subscribe(filter, handler, qos)`` registers the handler; every
    (re)connect resubscribes everything registered. Shared subscriptions
    (``$share/group/filter``) dispatch on the filter without the prefix
    (``paho.topic_matches_sub``). Overlapping filters in one Bus each get the
    message (and the broker may send it twice): avoid them.

Handlers run on a worker thread, not on paho's network thread
    paho calls ``on_message`` on its network thread; a slow handler there
    would also stall the PUBACKs of our own publishes (and a handler that
    publishes would wait for acks that thread can no longer read). So
    messages go to one worker thread per Bus, in arrival order. The queue is
    bounded without dropping QoS 1 messages: the bus acknowledges a QoS 1
    message only after its handler returned (paho ``manual_ack``) and
    advertises ``Receive Maximum = handler_queue_size``, so the broker never
    has more than that many unacknowledged messages out to us and keeps the
    rest (up to its ``max_queued_messages``). QoS 0 messages beyond
    ``handler_queue_size`` waiting are dropped and counted (at-most-once is
    their contract). A handler that raises is logged with the topic and
    counted; the message is still acknowledged (a poison message must not
    come back forever) and the next message is handled as usual. A process
    that dies before acknowledging gets the message again on reconnect when
    its session persists (the edge); for clean sessions it is lost like any
    in-flight message of a dead replica.

Publishing and backpressure
    QoS is given on every call (callers use ``topics.qos_of(topic)``). At
    most ``max_inflight`` QoS>0 publishes accepted by this Bus may await
    their PUBACK; a publish beyond that blocks until one is acknowledged, up
    to ``publish_timeout_s``, then raises :class:`BackpressureError`. Nothing
    is dropped silently: a QoS>0 message that ``publish()`` returned for is
    either acknowledged by the broker eventually (paho resends it after a
    reconnect) or counted as failed when the broker refuses it. While the
    broker is unreachable the window fills and publishers block, which is
    the signal the edge's spool needs. ``publish(..., wait=True)`` also waits
    for the message's own PUBACK and raises :class:`PublishError` if the
    broker refused it.

Counters (in the ``Metrics`` given): ``cloudtutor_mqtt_*``, see ``_M``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloudtutor.config.common import MqttSettings
from cloudtutor.metrics import Metrics

log = logging.getLogger("cloudtutor.bus")

Payload = bytes | bytearray | memoryview | str | None


class BusError(RuntimeError):
    """The bus cannot do what was asked (closed, not connected in time, refused)."""


class BackpressureError(BusError):
    """No in-flight slot became free within the publish timeout: the broker is not acknowledging."""


class PublishError(BusError):
    """The broker refused a publish (failure PUBACK), or its PUBACK did not come in time."""

    def __init__(self, message: str, reason: ReasonCode | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class PublishTimeoutError(PublishError):
    """``publish(wait=True)``: no PUBACK within the timeout (the message stays in flight)."""


@dataclass(frozen=True)
class Message:
    """A received message, as handed to handlers."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None = None

    def json(self) -> Any:
        return json.loads(self.payload)


Handler = Callable[[Message], None]


class _M:
    """Metric names (Prometheus conventions)."""

    PUBLISHED = "cloudtutor_mqtt_publish_total"            # {qos}: handed to the broker connection
    ACKED = "cloudtutor_mqtt_puback_total"                 # QoS>0 publishes acknowledged with success
    FAILED = "cloudtutor_mqtt_publish_failed_total"        # {reason}: refused by broker / QoS 0 while offline
    BACKPRESSURE = "cloudtutor_mqtt_backpressure_total"    # publishes that gave up waiting for a slot
    INFLIGHT = "cloudtutor_mqtt_inflight"                  # gauge: QoS>0 publishes awaiting PUBACK
    RECEIVED = "cloudtutor_mqtt_received_total"            # messages received from the broker
    HANDLED = "cloudtutor_mqtt_handled_total"              # messages whose handlers ran
    HANDLER_ERRORS = "cloudtutor_mqtt_handler_errors_total"  # {subscription}: handler raised
    DROPPED = "cloudtutor_mqtt_dropped_total"              # {reason}: qos0_queue_full, unrouted, closing
    QUEUE = "cloudtutor_mqtt_handler_queue"                # gauge: messages waiting for the worker
    CONNECTS = "cloudtutor_mqtt_connects_total"
    CONNECT_FAILURES = "cloudtutor_mqtt_connect_failures_total"  # {reason}
    DISCONNECTS = "cloudtutor_mqtt_disconnects_total"
    CONNECTED = "cloudtutor_mqtt_connected"                # gauge 0/1


class Publication:
    """What ``publish()`` returns: the packet id and, for QoS>0, the broker's answer."""

    __slots__ = ("mid", "qos", "reason", "_done", "_cond")

    def __init__(self, mid: int, qos: int, cond: threading.Condition) -> None:
        self.mid = mid
        self.qos = qos
        self.reason: ReasonCode | None = None
        self._done = qos == 0  # QoS 0 has no acknowledgement: done once handed over
        self._cond = cond

    @property
    def done(self) -> bool:
        return self._done

    @property
    def failed(self) -> bool:
        return self.reason is not None and self.reason.is_failure

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the PUBACK; True once it came (check ``failed``), False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._done:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True


class _Window:
    """Bounded set of QoS>0 publishes awaiting PUBACK, matched to acks by packet id.

    paho can deliver a PUBACK (``on_publish``, network thread) before the
    publishing thread has even seen the packet id that ``client.publish()``
    returns. Such an early ack is parked, stamped with a sequence number, and
    claimed by the publisher when it registers the id; a parked ack older
    than the publisher's snapshot belongs to an earlier use of the same id
    (ids are recycled) and is ignored. Lock order: paho calls ``on_publish``
    holding its own message lock, so nothing here may call into paho while
    holding ``_cond``.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.cond = threading.Condition()
        self._inflight: dict[int, Publication] = {}
        self._early: dict[int, tuple[int, ReasonCode]] = {}
        self._snaps: dict[int, int] = {}  # reservation ticket -> ack sequence at reservation
        self._epochs: dict[int, int] = {}  # reservation ticket -> fail_all() count at reservation
        self._epoch = 0
        self._failed_with: ReasonCode | None = None
        self._seq = 0
        self._tickets = 0
        self._closed = False

    def __len__(self) -> int:
        with self.cond:
            return len(self._inflight) + len(self._snaps)

    def reserve(self, timeout: float) -> int:
        """Take a slot (blocking up to ``timeout``); returns a ticket for register()/cancel()."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self._closed:
                    raise BusError("bus is closed")
                if self.limit is None or len(self._inflight) + len(self._snaps) < self.limit:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BackpressureError(
                        f"{len(self._inflight)} publishes await PUBACK (max_inflight={self.limit}) "
                        f"and none was acknowledged within {timeout:g} s"
                    )
                self.cond.wait(remaining)
            self._tickets += 1
            self._snaps[self._tickets] = self._seq
            self._epochs[self._tickets] = self._epoch
            return self._tickets

    def register(self, ticket: int, mid: int, qos: int) -> Publication:
        with self.cond:
            snap = self._snaps.pop(ticket)
            epoch = self._epochs.pop(ticket)
            pub = Publication(mid, qos, self.cond)
            early = self._early.pop(mid, None)
            if early is not None and early[0] > snap:
                pub.reason, pub._done = early[1], True
            elif epoch != self._epoch:
                # fail_all() ran while this was being sent: its ack will not come either.
                pub.reason, pub._done = self._failed_with, True
            else:
                self._inflight[mid] = pub
            self._prune_early()
            self.cond.notify_all()
            return pub

    def cancel(self, ticket: int) -> None:
        with self.cond:
            self._snaps.pop(ticket, None)
            self._epochs.pop(ticket, None)
            self._prune_early()
            self.cond.notify_all()

    def acked(self, mid: int, reason: ReasonCode) -> Publication | None:
        """Network thread: a PUBACK/SUBACK for ``mid``; returns the publication it completed."""
        with self.cond:
            self._seq += 1
            pub = self._inflight.pop(mid, None)
            if pub is None and self._snaps:
                # Not registered (yet): an early ack, or one for a message
                # this window does not track (QoS 0, on_connect republish).
                # With no reservation open it cannot be claimed: dropped.
                self._early[mid] = (self._seq, reason)
            elif pub is not None:
                pub.reason, pub._done = reason, True
            self.cond.notify_all()
            return pub

    def _prune_early(self) -> None:
        # A parked ack can only be claimed by a reservation taken before it
        # arrived; anything at or below the oldest open reservation's
        # snapshot (or everything, with none open) is garbage.
        if self._early:
            floor = min(self._snaps.values(), default=self._seq)
            self._early = {m: e for m, e in self._early.items() if e[0] > floor}

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self._inflight or self._snaps:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True

    def fail_all(self, reason: ReasonCode) -> None:
        """Complete every tracked entry with ``reason`` (their acks will never come)."""
        with self.cond:
            for pub in self._inflight.values():
                pub.reason, pub._done = reason, True
            self._inflight.clear()
            self._epoch += 1
            self._failed_with = reason
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self._closed = True
            self.cond.notify_all()


@dataclass
class _Subscription:
    topic_filter: str  # as subscribed, possibly $share/group/...
    match_filter: str  # what a topic is matched against
    handler: Handler
    qos: int


@dataclass
class _Incoming:
    message: Message
    mid: int
    generation: int  # connection it arrived on: acks only go back on that one


class _PahoLog(logging.LoggerAdapter):
    """paho's log, less the ERROR its network thread logs when it notices
    our own clean disconnect (it is not one)."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(logging.getLogger("cloudtutor.bus.paho"), {})
        self._bus = bus

    def log(self, level, msg, *args, **kwargs) -> None:
        if self._bus._closing and "not connected" in str(msg):
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


_STOP = object()
# Stands for a SUBACK that can no longer come: the connection was lost first.
_LOST = ReasonCode(PacketTypes.SUBACK, "Unspecified error")


def _unshare(topic_filter: str) -> str:
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2]:
            raise ValueError(f"malformed shared subscription {topic_filter!r}")
        return parts[2]
    return topic_filter


def _to_bytes(payload: Payload) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return bytes(payload)


@dataclass
class _StatusConfig:
    topic: str
    fields: dict[str, Any] = field(default_factory=dict)


class Bus:
    """One MQTT connection with registered subscriptions, retained state and a publish window.

    ``status_topic``: the device's or service's status topic (last will
    ``offline``, ``online`` on each connect, ``stopped`` on close);
    ``status_fields``: extra fields of that JSON (``agent_version``,
    ``model_version``, ...). ``now``: the clock for the status ``since`` field
    (wall seconds by default). ``handler_queue_size``: see the module doc.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str | None = None,
        name: str = "bus",
        status_topic: str | None = None,
        status_fields: Mapping[str, Any] | None = None,
        metrics: Metrics | None = None,
        handler_queue_size: int = 100,
        now: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= handler_queue_size <= 65535:
            raise ValueError("handler_queue_size must be within 1..65535 (it is the MQTT Receive Maximum)")
        self.settings = settings
        self.name = name
        self.metrics = metrics if metrics is not None else Metrics()
        self.client_id = client_id or settings.client_id or f"{name}-{uuid.uuid4().hex[:12]}"
        if not settings.clean_start and not (client_id or settings.client_id):
            raise BusError("a persistent session (clean_start=false) needs a stable client_id")
        self._status = _StatusConfig(status_topic, dict(status_fields or {})) if status_topic else None
        self._now = now
        self._queue_size = handler_queue_size

        self._window = _Window(settings.max_inflight)
        self._subacks = _Window(None)

        self._lock = threading.Lock()  # registries and connection state; never held while calling paho
        self._subs: dict[str, _Subscription] = {}
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._conn = threading.Condition(self._lock)
        self._connected = False
        self._connections = 0  # successful connects so far
        self._generation = 0
        self._since: float | None = None
        self._closing = False
        self._started = False

        self._queue: queue.Queue[_Incoming | object] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name=f"{name}-handlers", daemon=True)
        self._client = self._make_client()

    # ---- set-up -------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.enable_logger(_PahoLog(self))
        # A bug in one of our callbacks must not end the network thread (paho
        # re-raises by default); paho logs it instead.
        client.suppress_exceptions = True
        # paho sends at most this many QoS>0 publishes before PUBACKs (it
        # queues the rest). It cannot change on an open connection, so it is
        # our window; on_connect warns when the broker's Receive Maximum is lower.
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)  # our window bounds the queue; paho must not drop
        client.reconnect_delay_set(min_delay=s.reconnect_min_s, max_delay=s.reconnect_max_s)  # type: ignore[arg-type]
        if s.username is not None:
            client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        if s.tls.ca_file is not None:
            client.tls_set(
                ca_certs=str(s.tls.ca_file),
                certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                keyfile=str(s.tls.key_file) if s.tls.key_file else None,
            )
            client.tls_insecure_set(s.tls.insecure)
        if self._status is not None:
            client.will_set(self._status.topic, self._status_payload("offline", since=None), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        # A clean session should vanish with the connection; a persistent one
        # (the edge) outlives it so that QoS 1 messages wait for us.
        props.SessionExpiryInterval = 0 if self.settings.clean_start else self.settings.session_expiry_s
        props.ReceiveMaximum = self._queue_size
        return props

    def start(self) -> Bus:
        """Start connecting in the background (returns at once; see wait_connected)."""
        with self._lock:
            if self._started:
                return self
            if self._closing:
                raise BusError("bus is closed")
            self._started = True
        self._worker.start()
        self._client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=self.settings.clean_start,
            properties=self._connect_properties(),
        )
        self._client.loop_start()
        return self

    def wait_connected(self, timeout: float | None = None, *, after: int = 0) -> bool:
        """Block until connected (and, with ``after=n``, until more than n connects happened)."""
        timeout = self.settings.connect_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._conn:
            while not (self._connected and self._connections > after):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    return False
                self._conn.wait(remaining)
            return True

    def wait_ready(self, timeout: float | None = None, *, after: int = 0) -> bool:
        """wait_connected(), then until the broker acknowledged every subscription."""
        timeout = self.settings.connect_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if not self.wait_connected(max(0.0, deadline - time.monotonic()), after=after):
                return False
            if self._subacks.wait_idle(max(0.0, deadline - time.monotonic())) and self._connected:
                return True
            if time.monotonic() >= deadline:
                return False

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def connections(self) -> int:
        """How many times the bus has connected (1 after the first connect)."""
        return self._connections

    @property
    def inflight(self) -> int:
        """QoS>0 publishes awaiting their PUBACK."""
        return len(self._window)

    def __enter__(self) -> Bus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- status and retained state ------------------------------------------------

    def _status_payload(self, state: str, since: float | None) -> bytes:
        assert self._status is not None
        body = dict(self._status.fields)
        body.update(state=state, since=since)
        return json.dumps(body, sort_keys=True).encode()

    def set_status_fields(self, **fields: Any) -> None:
        """Update fields of the status JSON (e.g. model_version) and republish ``online``."""
        if self._status is None:
            raise BusError("this bus has no status topic")
        with self._lock:
            self._status.fields.update(fields)
            since, connected = self._since, self._connected
        # The will is fixed at CONNECT; the new fields reach it on the next connect.
        self._client.will_set(self._status.topic, self._status_payload("offline", since=None), qos=1, retain=True)
        if connected:
            self.publish(self._status.topic, self._status_payload("online", since), qos=1, retain=True)

    def set_retained(self, topic: str, payload: Payload, *, qos: int = 1, wait: bool = False) -> Publication:
        """Publish retained state now and again after every reconnect."""
        data = _to_bytes(payload)
        with self._lock:
            self._retained[topic] = (data, qos)
        return self.publish(topic, data, qos=qos, retain=True, wait=wait)

    def clear_retained(self, topic: str, *, qos: int = 1, wait: bool = False) -> Publication:
        """Stop republishing ``topic`` and delete its retained message on the broker."""
        with self._lock:
            self._retained.pop(topic, None)
        return self.publish(topic, b"", qos=qos, retain=True, wait=wait)

    # ---- publishing ---------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: Payload,
        qos: int,
        retain: bool = False,
        *,
        wait: bool = False,
        timeout: float | None = None,
        properties: Properties | None = None,
    ) -> Publication:
        """Publish; for QoS>0 block while ``max_inflight`` publishes await PUBACK.

        Raises BackpressureError when no slot frees within ``publish_timeout_s``.
        With ``wait=True`` also wait (up to ``timeout``, default
        ``publish_timeout_s``) for this message's PUBACK: PublishTimeoutError if
        it does not come, PublishError if the broker refused the message.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {qos!r}")
        if self._closing:
            raise BusError("bus is closed")
        data = _to_bytes(payload)
        timeout = self.settings.publish_timeout_s if timeout is None else timeout
        if qos == 0:
            info = self._client.publish(topic, data, qos=0, retain=retain, properties=properties)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                # QoS 0 is at most once: paho drops it when not connected.
                self.metrics.inc(_M.FAILED, reason=mqtt.error_string(info.rc))
            else:
                self.metrics.inc(_M.PUBLISHED, qos=0)
            return Publication(info.mid, 0, self._window.cond)
        try:
            ticket = self._window.reserve(self.settings.publish_timeout_s)
        except BackpressureError:
            self.metrics.inc(_M.BACKPRESSURE)
            raise
        try:
            info = self._client.publish(topic, data, qos=qos, retain=retain, properties=properties)
        except BaseException:
            self._window.cancel(ticket)
            raise
        # NO_CONN is fine for QoS>0: paho keeps the message and sends it on reconnect.
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self._window.cancel(ticket)
            self.metrics.inc(_M.FAILED, reason=mqtt.error_string(info.rc))
            raise PublishError(f"publish to {topic!r} not queued: {mqtt.error_string(info.rc)}")
        pub = self._window.register(ticket, info.mid, qos)
        self.metrics.inc(_M.PUBLISHED, qos=qos)
        self.metrics.set(_M.INFLIGHT, len(self._window))
        if wait:
            if not pub.wait(timeout):
                raise PublishTimeoutError(f"no PUBACK for {topic!r} (mid {pub.mid}) within {timeout:g} s")
            if pub.failed:
                raise PublishError(f"broker refused publish to {topic!r}: {pub.reason}", pub.reason)
        return pub

    def publish_json(self, topic: str, obj: Any, qos: int, retain: bool = False, **kwargs: Any) -> Publication:
        return self.publish(topic, json.dumps(obj, sort_keys=True).encode(), qos, retain, **kwargs)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every QoS>0 publish so far was acknowledged; False on timeout."""
        return self._window.wait_idle(self.settings.publish_timeout_s if timeout is None else timeout)

    # ---- subscriptions ------------------------------------------------------------

    def subscribe(
        self, topic_filter: str, handler: Handler, qos: int = 1, *, wait: bool = False, timeout: float | None = None,
    ) -> None:
        """Register ``handler`` for ``topic_filter`` (plain or ``$share/group/...``).

        Sent now when connected and again on every reconnect. With
        ``wait=True``, wait for the connection and the broker's SUBACK (BusError
        on timeout or refusal).
        """
        sub = _Subscription(topic_filter, _unshare(topic_filter), handler, qos)
        with self._lock:
            self._subs[topic_filter] = sub
            connected = self._connected
        timeout = self.settings.connect_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if wait and not connected:
            if not self.wait_connected(timeout):
                raise BusError(f"not connected within {timeout:g} s to subscribe to {topic_filter!r}")
            connected = True
        if not connected:
            return  # on_connect subscribes it
        ticket = self._subacks.reserve(timeout)
        rc, mid = self._client.subscribe(topic_filter, options=SubscribeOptions(qos=qos))
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            self._subacks.cancel(ticket)
            if wait:
                raise BusError(f"subscribe to {topic_filter!r} failed: {mqtt.error_string(rc)}")
            return  # lost the connection meanwhile; on_connect subscribes it
        pub = self._subacks.register(ticket, mid, qos)
        if wait:
            if not pub.wait(max(0.0, deadline - time.monotonic())):
                raise BusError(f"no SUBACK for {topic_filter!r} within {timeout:g} s")
            if pub.reason is _LOST:
                raise BusError(f"connection lost before the SUBACK for {topic_filter!r} (resubscribed on reconnect)")
            if pub.failed:
                raise BusError(f"broker refused subscription {topic_filter!r}: {pub.reason}")

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subs.pop(topic_filter, None)
            connected = self._connected
        if connected:
            self._client.unsubscribe(topic_filter)

    # ---- paho callbacks (network thread: never block here) -----------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, props: Properties | None) -> None:
        if reason.is_failure:
            self.metrics.inc(_M.CONNECT_FAILURES, reason=str(reason))
            log.warning("%s: broker %s:%s refused the connection: %s", self.name,
                        self.settings.host, self.settings.port, reason)
            return
        server_max = getattr(props, "ReceiveMaximum", 65535) if props is not None else 65535
        if server_max < self.settings.max_inflight:
            log.warning("%s: broker Receive Maximum %d < max_inflight %d: lower max_inflight "
                        "(Mosquitto: raise max_inflight_messages)", self.name, server_max, self.settings.max_inflight)
        with self._conn:
            self._connected = True
            self._generation += 1
            self._since = self._now()
            since = self._since
            subs = list(self._subs.values())
            retained = list(self._retained.items())
        self.metrics.inc(_M.CONNECTS)
        self.metrics.set(_M.CONNECTED, 1)
        log.info("%s: connected to %s:%s as %s (session present: %s)", self.name, self.settings.host,
                 self.settings.port, self.client_id, flags.session_present)
        # Resubscribe everything, even with a session present: the broker may
        # have lost it (restart without a saved database). Retained messages are
        # sent again; they are state, so handlers see the same state twice.
        # The SUBACK is tracked so that wait_ready() can wait for it.
        if subs:
            ticket = self._subacks.reserve(0.0)  # unlimited window: never blocks
            rc, mid = client.subscribe([(s.topic_filter, SubscribeOptions(qos=s.qos)) for s in subs])
            if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._subacks.register(ticket, mid, 1)
            else:
                self._subacks.cancel(ticket)
        # Straight to paho, outside the window: this is the network thread,
        # which must not wait for acks only it can read.
        if self._status is not None:
            client.publish(self._status.topic, self._status_payload("online", since), qos=1, retain=True)
        for topic, (data, qos) in retained:
            client.publish(topic, data, qos=qos, retain=True)
        # Announce the connection only now, so that wait_connected() returns
        # after the subscriptions and the retained state were queued.
        with self._conn:
            self._connections += 1
            self._conn.notify_all()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.metrics.inc(_M.CONNECT_FAILURES, reason="unreachable")
        log.debug("%s: broker %s:%s unreachable, retrying with backoff", self.name,
                  self.settings.host, self.settings.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, props: Properties | None) -> None:
        with self._conn:
            was_connected, self._connected = self._connected, False
            self._conn.notify_all()
        # SUBACKs of a dead connection never come; on_connect subscribes again.
        self._subacks.fail_all(_LOST)
        self.metrics.set(_M.CONNECTED, 0)
        if was_connected:
            self.metrics.inc(_M.DISCONNECTS)
            if not self._closing:
                log.warning("%s: disconnected from %s:%s (%s); reconnecting", self.name,
                            self.settings.host, self.settings.port, reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason: ReasonCode, props: Properties | None) -> None:
        pub = self._window.acked(mid, reason)
        if pub is None:
            return  # QoS 0, or an on_connect republish: not counted per message
        if reason.is_failure:
            self.metrics.inc(_M.FAILED, reason=str(reason))
            log.warning("%s: broker refused publish mid %d: %s", self.name, mid, reason)
        else:
            self.metrics.inc(_M.ACKED)
        self.metrics.set(_M.INFLIGHT, len(self._window))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reasons: list[ReasonCode], props: Properties | None) -> None:
        worst = next((r for r in reasons if r.is_failure), reasons[0] if reasons else ReasonCode(PacketTypes.SUBACK))
        if worst.is_failure:
            log.error("%s: broker refused a subscription (mid %d): %s", self.name, mid, worst)
        self._subacks.acked(mid, worst)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.metrics.inc(_M.RECEIVED)
        message = Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.properties)
        if msg.qos == 0 and self._queue.qsize() >= self._queue_size:
            self.metrics.inc(_M.DROPPED, reason="qos0_queue_full")
            return
        # QoS>0 messages are always queued: the Receive Maximum bounds them.
        self._queue.put(_Incoming(message, msg.mid, self._generation))
        self.metrics.set(_M.QUEUE, self._queue.qsize())

    # ---- handler worker -----------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, _Incoming)
            self.metrics.set(_M.QUEUE, self._queue.qsize())
            self._dispatch(item.message)
            if item.message.qos > 0 and item.generation == self._generation:
                # Only on the connection it came on: a packet id of an old
                # connection means nothing on a new one (the broker resends).
                self._client.ack(item.mid, item.message.qos)

    def _dispatch(self, message: Message) -> None:
        with self._lock:
            subs = [s for s in self._subs.values() if mqtt.topic_matches_sub(s.match_filter, message.topic)]
        if not subs:
            self.metrics.inc(_M.DROPPED, reason="unrouted")
            log.debug("%s: no handler for %s", self.name, message.topic)
            return
        for sub in subs:
            try:
                sub.handler(message)
            except Exception:
                # Never let a handler kill the worker: log, count, go on.
                self.metrics.inc(_M.HANDLER_ERRORS, subscription=sub.topic_filter)
                log.exception("%s: handler for %s failed on topic %s", self.name, sub.topic_filter, message.topic)
        self.metrics.inc(_M.HANDLED)

    # ---- shutdown -----------------------------------------------------------------

    def close(self, timeout: float = 5.0, *, state: str = "stopped") -> None:
        """Finish queued handlers, publish the ``state`` status, disconnect cleanly.

        Bounded by ``timeout``. Messages that arrive after this call starts are
        not handled (nor acknowledged: a persistent session gets them again).
        """
        with self._conn:
            if self._closing:
                return
            self._closing = True
            started = self._started
            self._conn.notify_all()
        deadline = time.monotonic() + timeout
        if started:
            self._queue.put(_STOP)
            if threading.current_thread() is not self._worker:  # close() from inside a handler
                self._worker.join(max(0.0, deadline - time.monotonic()))
            if self._worker.is_alive() and threading.current_thread() is not self._worker:
                log.warning("%s: a handler is still running after %.1f s; closing anyway", self.name, timeout)
            if self._status is not None and self._connected:
                info = self._client.publish(
                    self._status.topic, self._status_payload(state, self._now()), qos=1, retain=True,
                )
                try:
                    info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                except (RuntimeError, ValueError):
                    pass  # connection gone: the broker publishes the will instead
            self._client.disconnect()
            self._client.loop_stop()
        self._window.close()
        self._subacks.close()
        with self._conn:
            self._connected = False
        self.metrics.set(_M.CONNECTED, 0)
        left = self._queue.qsize() - (1 if self._worker.is_alive() else 0)  # minus the _STOP marker
        if left > 0:
            self.metrics.inc(_M.DROPPED, amount=left, reason="closing")


__all__ = [
    "BackpressureError",
    "Bus",
    "BusError",
    "Handler",
    "Message",
    "Publication",
    "PublishError",
    "PublishTimeoutError",
]
