"""The broker's TLS listener with a CA generated in the test: a client that
trusts the CA connects and its messages flow; one that trusts another CA, the
system's CAs, or speaks plain MQTT to the TLS port, gets no connection."""

from __future__ import annotations

import queue
import ssl
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloudtutor.bus import Bus
from cloudtutor.config.common import MqttSettings, TlsSettings
from cloudtutor.testing.servers import MosquittoServer, free_port
from cloudtutor.testing.tls import make_ca, mosquitto_tls_listener

WAIT = 15.0


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    files = make_ca(folder / "pki")
    port = free_port()
    with MosquittoServer(extra_config=mosquitto_tls_listener(port, files)) as broker:
        yield broker, port, files, folder


def paho_outcome(port: int, configure) -> str:
    """'connected', or why not: what a raw client sees within a few seconds."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tls-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    configure(client)
    events: queue.Queue = queue.Queue()
    client.on_connect = lambda _c, _u, _f, rc, _p: events.put(f"connack {rc}")
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {type(exc).__name__}"
    client.loop_start()
    try:
        return "connected" if events.get(timeout=3.0) == "connack Success" else "refused: connack"
    except queue.Empty:
        return "refused: no connack"
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_client_trusting_the_ca_connects_and_messages_flow(tls_broker):
    broker, port, files, _ = tls_broker
    settings = MqttSettings(host="127.0.0.1", port=port, prefix="tls", tls=TlsSettings(ca_file=files.ca_cert))
    inbox: queue.Queue = queue.Queue()
    with Bus(settings, name="tls-client") as bus:
        assert bus.wait_connected(WAIT)
        bus.subscribe("tls/echo", inbox.put, qos=1, wait=True, timeout=WAIT)
        bus.publish("tls/echo", b"over tls", qos=1, wait=True)
        assert inbox.get(timeout=WAIT).payload == b"over tls"
    assert paho_outcome(port, lambda c: c.tls_set(ca_certs=str(files.ca_cert))) == "connected"


def test_a_client_trusting_another_ca_is_refused(tls_broker):
    _, port, _, folder = tls_broker
    other = make_ca(folder / "other", name="someone else's CA")
    assert paho_outcome(port, lambda c: c.tls_set(ca_certs=str(other.ca_cert))).startswith("refused")
    settings = MqttSettings(host="127.0.0.1", port=port, tls=TlsSettings(ca_file=other.ca_cert), reconnect_min_s=0.2, reconnect_max_s=0.5)
    with Bus(settings, name="wrong-ca") as bus:
        assert not bus.wait_connected(3.0)


def test_system_cas_and_plain_mqtt_are_refused_on_the_tls_port(tls_broker):
    broker, port, _, _ = tls_broker
    assert paho_outcome(port, lambda c: c.tls_set()).startswith("refused")  # the system store does not know our CA
    assert paho_outcome(port, lambda c: None).startswith("refused")  # plain MQTT to a TLS listener
    assert paho_outcome(broker.port, lambda c: None) == "connected"  # the plain test listener is another port


def test_the_ca_and_key_files_are_what_a_device_bundle_needs(tls_broker):
    _, _, files, _ = tls_broker
    assert files.key.stat().st_mode & 0o077 == 0  # the broker's key is private
    assert b"BEGIN CERTIFICATE" in files.ca_cert.read_bytes() and b"PRIVATE KEY" not in files.ca_cert.read_bytes()
