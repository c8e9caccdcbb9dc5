"""cloudtutor.bus against a real Mosquitto: payloads, will, restarts, shared subscriptions, backpressure."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cloudtutor import envelope
from cloudtutor.bus import BackpressureError, Bus, Message
from cloudtutor.config.common import MqttSettings
from cloudtutor.headers import ChunkHeader, Kind
from cloudtutor.testing.servers import MosquittoServer, free_port
from cloudtutor.topics import qos_of, retain_of, shared

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0  # generous bound for anything that should take milliseconds


class Inbox:
    """A handler that records messages and lets the test wait for a condition on them."""

    def __init__(self, cond: threading.Condition | None = None) -> None:
        self.messages: list[Message] = []
        self._cond = cond or threading.Condition()  # inboxes may share one, to wait on them together

    def __call__(self, message: Message) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Message]], bool], timeout: float = WAIT) -> list[Message]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), timeout):
                raise AssertionError(f"condition not met within {timeout} s; got {len(self.messages)} messages")
            return list(self.messages)

    def wait_count(self, n: int, timeout: float = WAIT) -> list[Message]:
        return self.wait_for(lambda msgs: len(msgs) >= n, timeout)

    def wait_json(self, **expected: Any) -> dict[str, Any]:
        """Wait for a JSON message whose fields include ``expected``; return it."""
        def match(m: Message) -> bool:
            body = m.json()
            return all(body.get(k) == v for k, v in expected.items())
        msgs = self.wait_for(lambda msgs: any(match(m) for m in msgs))
        return next(m.json() for m in msgs if match(m))


@pytest.fixture
def make_bus() -> Iterator[Callable[..., Bus]]:
    """Start buses and close them all at the end of the test."""
    buses: list[Bus] = []

    def make(settings: MqttSettings, **kwargs: Any) -> Bus:
        bus = Bus(settings, **kwargs).start()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close(timeout=5.0)


@pytest.fixture
def private_broker() -> Iterator[MosquittoServer]:
    """A broker of this test's own, for killing, pausing and restarting."""
    with MosquittoServer() as server:
        yield server


def fast(server: MosquittoServer, **overrides: Any) -> MqttSettings:
    base: dict[str, Any] = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "connect_timeout_s": WAIT}
    base.update(overrides)
    return server.mqtt_settings(**base)


def test_two_megabyte_envelope_crosses_the_broker_intact(mqtt_settings, topics, make_bus):
    topic = topics.chunks("cam1")
    inbox = Inbox()
    sub = make_bus(mqtt_settings, name="sub")
    sub.subscribe(topic, inbox, qos=qos_of(topic), wait=True, timeout=WAIT)
    pub = make_bus(mqtt_settings, name="pub")
    assert pub.wait_connected(WAIT)

    body = os.urandom(2 * 1024 * 1024)
    header = ChunkHeader(
        device_id="cam1", seq=0, boot_id="b00710ff", frame_pts_ms=[0, 1000], source_size=(960, 540),
        sent_size=(480, 272), fps=25.0, model_version=0,
    )
    payload = envelope.encode(header, body)
    pub.publish(topic, payload, qos=qos_of(topic), wait=True, timeout=WAIT)

    (msg,) = inbox.wait_count(1)
    assert msg.topic == topic and msg.qos == 1
    assert hashlib.sha256(msg.payload).hexdigest() == hashlib.sha256(payload).hexdigest()
    received = envelope.decode(msg.payload, expect=Kind.CHUNK)  # digest checked inside
    assert received.body == body and received.header.frame_pts_ms == [0, 1000]
    assert pub.metrics.get("cloudtutor_mqtt_puback_total") == 1
    assert pub.metrics.total("cloudtutor_mqtt_publish_failed_total") == 0


_VICTIM = """
import sys, time
from cloudtutor.bus import Bus
from cloudtutor.config.common import MqttSettings
settings = MqttSettings(host=sys.argv[1], port=int(sys.argv[2]))
bus = Bus(settings, name="victim", status_topic=sys.argv[3], status_fields={"agent_version": "9.9"}).start()
assert bus.wait_connected(30)
time.sleep(600)
"""


def test_a_killed_client_leaves_its_offline_will(mqtt_settings, topics, make_bus):
    status = topics.status("victim")
    assert retain_of(status)
    inbox = Inbox()
    watcher = make_bus(mqtt_settings, name="watcher")
    watcher.subscribe(status, inbox, qos=qos_of(status), wait=True, timeout=WAIT)

    proc = subprocess.Popen(
        [sys.executable, "-c", _VICTIM, mqtt_settings.host, str(mqtt_settings.port), status],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        online = inbox.wait_json(state="online")
        assert online["agent_version"] == "9.9" and online["since"] > 0
        proc.kill()  # SIGKILL: no DISCONNECT packet, the broker sees the socket die
        proc.wait(timeout=WAIT)
        offline = inbox.wait_json(state="offline")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
        if proc.stderr is not None:
            proc.stderr.close()
    assert offline["agent_version"] == "9.9"
    assert offline["since"] is None  # the will is fixed at CONNECT: it cannot know when

    # The will is retained: a latecomer sees the device as offline.
    late = Inbox()
    make_bus(mqtt_settings, name="late").subscribe(status, late, wait=True, timeout=WAIT)
    assert late.wait_count(1)[0].json()["state"] == "offline"


def test_close_publishes_stopped_instead_of_the_will(mqtt_settings, topics, make_bus):
    status = topics.service_status("ingest")
    inbox = Inbox()
    make_bus(mqtt_settings, name="watcher").subscribe(status, inbox, wait=True, timeout=WAIT)
    bus = Bus(mqtt_settings, name="svc", status_topic=status).start()
    inbox.wait_json(state="online")
    bus.close(timeout=WAIT)

    inbox.wait_json(state="stopped")
    late = Inbox()
    make_bus(mqtt_settings, name="late").subscribe(status, late, wait=True, timeout=WAIT)
    assert late.wait_count(1)[0].json()["state"] == "stopped"
    assert not any(m.json()["state"] == "offline" for m in inbox.messages)


def test_connects_to_a_broker_that_starts_later(topics, make_bus):
    port = free_port()
    bus = make_bus(MqttSettings(port=port, host="127.0.0.1", reconnect_min_s=0.1, reconnect_max_s=0.5))
    inbox = Inbox()
    bus.subscribe(topics.control_state("cam1"), inbox)
    assert not bus.wait_connected(0.5)
    with MosquittoServer(port=port) as server:
        assert bus.wait_ready(WAIT)
        assert bus.metrics.total("cloudtutor_mqtt_connect_failures_total") >= 1
        other = make_bus(fast(server), name="other")
        topic = topics.control_state("cam1")
        other.publish(topic, b'{"rate": 1}', qos=qos_of(topic), retain=retain_of(topic), wait=True, timeout=WAIT)
        assert inbox.wait_count(1)[0].payload == b'{"rate": 1}'


def test_resubscribes_and_republishes_after_a_broker_restart(private_broker, topics, make_bus):
    status = topics.status("cam1")
    reported = topics.model_reported("cam1")
    state = topics.control_state("cam1")
    inbox = Inbox()
    bus = make_bus(fast(private_broker), name="edge", status_topic=status)
    bus.subscribe(state, inbox, qos=qos_of(state))
    assert bus.wait_ready(WAIT)
    bus.set_retained(reported, json.dumps({"version": 3}), qos=qos_of(reported), wait=True)
    connects = bus.connections

    restarted_at = time.time()
    private_broker.restart(kill=True)  # kill -9: the broker saves nothing, forgets everything
    assert bus.wait_ready(WAIT, after=connects), "the bus did not reconnect on its own"
    assert bus.connections == connects + 1

    # The new broker knows the bus's retained state only because the bus republished it.
    probe = Inbox()
    watcher = make_bus(fast(private_broker), name="watcher")
    watcher.subscribe(status, probe, wait=True, timeout=WAIT)
    watcher.subscribe(reported, probe, wait=True, timeout=WAIT)
    online = probe.wait_json(state="online")
    assert online["since"] >= restarted_at
    assert probe.wait_json(version=3)

    # ... and still receives on its subscription.
    watcher.publish(state, b'{"rate": 2}', qos=qos_of(state), wait=True, timeout=WAIT)
    assert inbox.wait_count(1)[0].payload == b'{"rate": 2}'


def test_shared_subscription_splits_messages_between_replicas(mqtt_settings, topics, make_bus):
    group_filter = shared("ingest", topics.all_devices("chunks"))
    both = threading.Condition()
    inboxes = [Inbox(both), Inbox(both)]
    for i, inbox in enumerate(inboxes):
        make_bus(mqtt_settings, name=f"ingest-{i}").subscribe(group_filter, inbox, qos=1, wait=True, timeout=WAIT)
    pub = make_bus(mqtt_settings, name="edge")
    assert pub.wait_connected(WAIT)

    n = 40
    for i in range(n):
        topic = topics.chunks(f"cam{i % 3}")
        pub.publish(topic, f"chunk-{i}".encode(), qos=qos_of(topic))
    assert pub.flush(WAIT)

    inboxes[0].wait_for(lambda _: sum(len(b.messages) for b in inboxes) >= n)
    got = [{m.payload for m in b.messages} for b in inboxes]
    assert sum(len(b.messages) for b in inboxes) == n, "a message was lost or duplicated"
    assert got[0].isdisjoint(got[1])
    assert got[0] | got[1] == {f"chunk-{i}".encode() for i in range(n)}
    assert got[0] and got[1], "one replica got nothing"


def test_backpressure_blocks_then_raises_instead_of_dropping(private_broker, topics, make_bus):
    topic = topics.chunks("cam1")
    inbox = Inbox()
    sub = make_bus(fast(private_broker), name="ingest")
    sub.subscribe(topic, inbox, qos=1, wait=True, timeout=WAIT)
    bus = make_bus(fast(private_broker, max_inflight=4, publish_timeout_s=1.0), name="edge")
    assert bus.wait_connected(WAIT)

    with private_broker.paused_for():  # SIGSTOP ... always SIGCONT
        for i in range(4):
            bus.publish(topic, f"m{i}".encode(), qos=1)  # fills the window without waiting
        assert bus.inflight == 4
        started = time.monotonic()
        with pytest.raises(BackpressureError):
            bus.publish(topic, b"m4", qos=1)
        waited = time.monotonic() - started
        assert 0.9 <= waited < WAIT
        assert bus.metrics.get("cloudtutor_mqtt_backpressure_total") == 1

    assert bus.flush(WAIT), "publishes were not acknowledged after the broker resumed"
    assert bus.metrics.get("cloudtutor_mqtt_puback_total") == 4
    assert bus.metrics.total("cloudtutor_mqtt_publish_failed_total") == 0
    msgs = inbox.wait_count(4)
    assert sorted(m.payload for m in msgs) == [b"m0", b"m1", b"m2", b"m3"]
    # The window is free again.
    bus.publish(topic, b"m5", qos=1, wait=True, timeout=WAIT)


def test_a_failing_handler_is_counted_and_the_next_message_arrives(mqtt_settings, topics, make_bus):
    topic = topics.model_resync("cam1")
    seen = Inbox()

    def handler(message: Message) -> None:
        seen(message)
        if message.payload == b"boom":
            raise ValueError("handler bug")

    bus = make_bus(mqtt_settings, name="publisher-svc")
    bus.subscribe(topic, handler, qos=1, wait=True, timeout=WAIT)
    pub = make_bus(mqtt_settings, name="edge")
    assert pub.wait_connected(WAIT)
    for payload in (b"boom", b"fine", b"last"):
        pub.publish(topic, payload, qos=1, wait=True, timeout=WAIT)

    # One worker handles messages in order: once "last" is seen, the first two are done.
    assert [m.payload for m in seen.wait_count(3)] == [b"boom", b"fine", b"last"]
    assert bus.metrics.get("cloudtutor_mqtt_handler_errors_total", subscription=topic) == 1
    assert bus.metrics.get("cloudtutor_mqtt_handled_total") >= 2


def test_a_slow_handler_is_bounded_by_receive_maximum_without_losing_messages(mqtt_settings, topics, make_bus):
    topic = topics.chunks("cam1")
    release = threading.Event()
    inbox = Inbox()

    def slow(message: Message) -> None:
        release.wait(WAIT)
        inbox(message)

    bus = make_bus(mqtt_settings, name="slow", handler_queue_size=5)
    bus.subscribe(topic, slow, qos=1, wait=True, timeout=WAIT)
    pub = make_bus(mqtt_settings, name="edge")
    assert pub.wait_connected(WAIT)
    n = 30
    try:
        for i in range(n):
            pub.publish(topic, str(i).encode(), qos=1)
        assert pub.flush(WAIT)  # the broker took them all: its queue holds what we may not receive yet

        received = lambda: bus.metrics.get("cloudtutor_mqtt_received_total")  # noqa: E731
        deadline = time.monotonic() + WAIT
        while received() < 5:  # no event to wait on: the network thread only counts
            assert time.monotonic() < deadline, "the broker did not deliver"
            time.sleep(0.01)
        time.sleep(0.3)  # a negative check: nothing beyond the Receive Maximum arrives meanwhile
        assert received() == 5, "the broker sent more unacknowledged messages than Receive Maximum"
    finally:
        release.set()
    msgs = inbox.wait_count(n)
    assert [m.payload for m in msgs] == [str(i).encode() for i in range(n)]  # all of them, in order
    assert bus.metrics.total("cloudtutor_mqtt_dropped_total") == 0
