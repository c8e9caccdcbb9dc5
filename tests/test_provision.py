"""`cloudtutor device provision`: password hashes, ACL lines and the bundle,
then two provisioned devices against a real Mosquitto that loads the
generated password and ACL files."""

from __future__ import annotations

import queue
import subprocess
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cloudtutor import provision
from cloudtutor.cli import main
from cloudtutor.config.edge import load_edge_config
from cloudtutor.signing import generate_key, load_private_key, load_public_key
from cloudtutor.testing.servers import MosquittoServer, find_binary
from cloudtutor.topics import Leaf, Topics


def test_hash_is_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    # The real tool hashes a password; we recompute it from its salt and
    # iteration count, and check our own hash the same way.
    passwd = tmp_path / "pw"
    subprocess.run([find_binary("mosquitto_passwd"), "-c", "-b", str(passwd), "alice", "s3cret"], check=True)
    user, hashed = passwd.read_text().strip().split(":", 1)
    assert user == "alice" and hashed.startswith("$7$")
    assert provision.verify_mosquitto_hash("s3cret", hashed)
    assert not provision.verify_mosquitto_hash("s3cre7", hashed)
    ours = provision.mosquitto_hash("s3cret")
    assert ours.split("$")[1:3] == hashed.split("$")[1:3]  # algorithm 7, same iteration count
    assert len(ours) == len(hashed)  # same salt and digest lengths
    assert provision.verify_mosquitto_hash("s3cret", ours)


def test_acl_lines_use_the_topic_builder_and_deny_control_set() -> None:
    lines = provision.acl_lines("edge-a", prefix="fleet1")
    topics = Topics("fleet1")
    assert lines[1] == "user edge-a"
    assert f"topic write {topics.chunks('edge-a')}" in lines
    assert f"topic read {topics.control_state('edge-a')}" in lines
    assert f"topic read {topics.chunks_ack('edge-a')}" in lines
    assert not any(topics.control_set("edge-a") in line for line in lines)
    assert all("#" not in line and "+" not in line for line in lines[1:])  # no wildcards: exactly its own topics
    with pytest.raises(ValueError, match="invalid device id"):
        provision.acl_lines("edge/+")


def test_provision_bundle_is_valid_and_holds_no_private_key(tmp_path: Path, capsys) -> None:
    fleet_key = tmp_path / "fleet" / "signing-key.pem"
    args = ["device", "provision", "--out", str(tmp_path / "devices"), "--mqtt-host", "mqtt.example.com",
            "--fleet-key", str(fleet_key)]
    assert main([*args, "edge-a"]) == 0
    assert main([*args, "edge-b"]) == 0
    assert "created the fleet's signing key" in capsys.readouterr().err
    device = tmp_path / "devices" / "edge-a" / "device"
    config = load_edge_config(device / "edge.yaml")
    assert (config.device_id, config.mqtt.username, config.mqtt.client_id) == ("edge-a", "edge-a", "edge-a")
    assert config.mqtt.port == 1884  # the chart's device listener
    assert str(config.update_public_key) == "/etc/cloudtutor/update-public-key.pem"
    assert (device / "edge.yaml").stat().st_mode & 0o077 == 0  # the MQTT password is readable by its owner only
    public = load_public_key(device / "update-public-key.pem")
    assert public.public_bytes_raw() == load_private_key(fleet_key).public_key().public_bytes_raw()
    for path in (tmp_path / "devices" / "edge-a").rglob("*"):
        assert b"PRIVATE KEY" not in (path.read_bytes() if path.is_file() else b"")
    passwd = (tmp_path / "devices" / "broker" / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in passwd] == ["edge-a", "edge-b"]
    assert provision.verify_mosquitto_hash(config.mqtt.password.get_secret_value(), passwd[0].split(":", 1)[1])
    # Provisioning again without --force would silently cut the device off.
    assert main([*args, "edge-a"]) == 2
    assert "provisioned already" in capsys.readouterr().err


def test_bundle_with_tls_points_at_the_bundled_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n")
    pem = provision.public_key_pem(fleet_key=_key(tmp_path))
    broker = provision.Broker("mqtt.example.com", 8883, "cloudtutor", ca)
    out = provision.provision("edge-t", tmp_path / "devices", broker, public_key=pem)
    config = yaml.safe_load((out / "device" / "edge.yaml").read_text())
    assert config["mqtt"]["tls"]["ca_file"] == "/etc/cloudtutor/ca.crt"
    assert (out / "device" / "ca.crt").read_bytes() == ca.read_bytes()


def _key(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.pem"
    provision.ensure_fleet_key(path)
    return path


# ---- against a real broker ----------------------------------------------------------

CLOUD_USER = "cloudtutor-services"


class Client:
    """A bare paho MQTT v5 client that records messages, PUBACK and SUBACK reason codes."""

    def __init__(self, port: int, client_id: str, username: str, password: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.acked = threading.Condition()
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.username_pw_set(username, password)
        c.on_connect = self._on_connect
        c.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload))
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        self.client = c
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()

    def _on_connect(self, _c, _u, _flags, reason_code, _props) -> None:
        self.connack = reason_code
        self.connected.set()

    def _on_publish(self, _c, _u, mid, reason_code, _props) -> None:
        with self.acked:
            self.pubacks[mid] = reason_code
            self.acked.notify_all()

    def _on_subscribe(self, _c, _u, mid, reason_codes, _props) -> None:
        with self.acked:
            self.subacks[mid] = list(reason_codes)
            self.acked.notify_all()

    def wait_connack(self) -> ReasonCode:
        assert self.connected.wait(10), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """QoS 1 publish; the PUBACK's reason code (MQTT v5 tells a denied publish)."""
        info = self.client.publish(topic, payload, qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, 10), f"no PUBACK for {topic}"
            return self.pubacks[info.mid]

    def subscribe(self, topic_filter: str) -> ReasonCode:
        _rc, mid = self.client.subscribe(topic_filter, qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.subacks, 10), f"no SUBACK for {topic_filter}"
            return self.subacks[mid][0]

    def received(self, until: bytes, timeout: float = 10.0) -> list[str]:
        """Topics received up to and including the message whose payload is ``until``."""
        seen = []
        while True:
            topic, payload = self.messages.get(timeout=timeout)
            seen.append(topic)
            if payload == until:
                return seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet(tmp_path: Path):
    """Two provisioned devices and a broker loading the fleet's generated files,
    plus the services' account (as the chart's ACL grants it: the whole prefix)."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    root = tmp_path / "devices"
    pem = provision.public_key_pem(fleet_key=_key(tmp_path))
    broker = provision.Broker("127.0.0.1", 1883, prefix)
    for name in ("edge-a", "edge-b"):
        provision.provision(name, root, broker, public_key=pem)
    cloud_password = "cloud-" + uuid.uuid4().hex
    passwd = tmp_path / "passwd"
    passwd.write_text((root / "broker" / "passwd").read_text() + provision.password_line(CLOUD_USER, cloud_password) + "\n")
    acl = tmp_path / "acl"
    acl.write_text((root / "broker" / "acl").read_text() + f"\nuser {CLOUD_USER}\ntopic readwrite {prefix}/#\n")
    passwords = {
        name: yaml.safe_load((root / name / "device" / "edge.yaml").read_text())["mqtt"]["password"]
        for name in ("edge-a", "edge-b")
    }
    with MosquittoServer(password_file=passwd, acl_file=acl, persistence=False) as server:
        clients: list[Client] = []

        def connect(user: str, password: str | None = None, client_id: str | None = None) -> Client:
            secret = password if password is not None else (cloud_password if user == CLOUD_USER else passwords[user])
            client = Client(server.port, client_id or user, user, secret)
            clients.append(client)
            return client

        yield Topics(prefix), connect
        for client in clients:
            client.close()


def test_wrong_password_is_refused(fleet) -> None:
    _topics, connect = fleet
    assert connect("edge-a").wait_connack().is_failure is False
    assert connect("edge-a", password="guess", client_id="x1").wait_connack().is_failure
    assert connect("edge-b", password="guess", client_id="x2").wait_connack().is_failure


def test_device_publishes_only_its_own_uplink_topics(fleet) -> None:
    topics, connect = fleet
    cloud = connect(CLOUD_USER)
    cloud.wait_connack()
    assert not cloud.subscribe(f"{topics.prefix}/#").is_failure
    a = connect("edge-a")
    assert not a.wait_connack().is_failure
    for leaf in provision.DEVICE_WRITES:
        assert not a.publish(topics.device("edge-a", leaf), b"x").is_failure, leaf
    forbidden = [
        topics.chunks("edge-b"), topics.status("edge-b"), topics.model_reported("edge-b"),  # as another device
        topics.control_set("edge-a"), topics.control_set("edge-b"), topics.control_state("edge-a"),  # any control
        topics.model_delta("edge-a"),  # forging its own model
        topics.fleet_status(),
    ]
    for topic in forbidden:
        assert a.publish(topic, b"forged").getName() == "Not authorized", topic
    a.publish(topics.telemetry("edge-a"), b"end")
    # QoS 1 from one client arrives in order: everything the broker let
    # through came before the sentinel, and none of it is forbidden.
    seen = cloud.received(until=b"end")
    assert seen == [topics.device("edge-a", leaf) for leaf in provision.DEVICE_WRITES] + [topics.telemetry("edge-a")]


def test_device_reads_only_its_own_model_and_control(fleet) -> None:
    topics, connect = fleet
    a = connect("edge-a")
    a.wait_connack()
    for leaf in provision.DEVICE_READS:
        assert not a.subscribe(topics.device("edge-a", leaf)).is_failure, leaf
    # Mosquitto 2.0 grants these subscriptions but checks read access on
    # every delivery: A must receive nothing through them.
    for topic_filter in (topics.model_delta("edge-b"), topics.all_devices(Leaf.MODEL_SNAPSHOT),
                         topics.control_set("edge-a"), topics.control_state("edge-b"), f"{topics.prefix}/#"):
        a.subscribe(topic_filter)
    cloud = connect(CLOUD_USER)
    cloud.wait_connack()
    for topic in (topics.model_delta("edge-b"), topics.model_snapshot("edge-b"), topics.control_state("edge-b"),
                  topics.control_set("edge-a"), topics.model_delta("edge-a")):
        assert not cloud.publish(topic, b"x").is_failure, topic
    assert not cloud.publish(topics.control_state("edge-a"), b"end").is_failure
    # In order from one publisher: only A's own model and control state reach A
    # (its own topics may arrive twice: once per matching subscription).
    seen = a.received(until=b"end")
    assert set(seen) == {topics.model_delta("edge-a"), topics.control_state("edge-a")}


def test_services_account_uses_shared_subscriptions(fleet) -> None:
    # The services subscribe as $share/{group}/...: the ACL must let that through.
    topics, connect = fleet
    cloud = connect(CLOUD_USER)
    cloud.wait_connack()
    assert not cloud.subscribe(f"$share/ingest/{topics.all_devices(Leaf.CHUNKS)}").is_failure
    a = connect("edge-a")
    a.wait_connack()
    a.publish(topics.chunks("edge-a"), b"end")
    assert cloud.received(until=b"end") == [topics.chunks("edge-a")]


def test_signing_key_pair_matches_what_the_publisher_loads(tmp_path: Path) -> None:
    key = generate_key()
    from cloudtutor.signing import save_private_key

    save_private_key(key, tmp_path / "k.pem")
    assert provision.public_key_pem(fleet_key=tmp_path / "k.pem").startswith(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(provision.ProvisionError, match="fleet key"):
        provision.public_key_pem(fleet_public_key=tmp_path / "k.pem")
