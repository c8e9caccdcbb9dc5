"""The chart's broker for real: the rendered mosquitto.conf and the auth init
container's script, run here against a real Mosquitto with the files
`cloudtutor device provision` writes, as the StatefulSet would run them."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from cloudtutor import provision
from cloudtutor.testing.servers import MosquittoServer, find_binary, free_port

ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / ".tools" / "bin" / "helm"


class RenderedMosquitto(MosquittoServer):
    """A MosquittoServer whose config is the chart's, moved to a local folder and
    loopback ports: ``port`` for the services' listener, ``device_port`` for the devices'."""

    def __init__(self, conf: str, base: Path, **kwargs: object) -> None:
        super().__init__(workdir=base / "run", **kwargs)
        self.conf, self.base = conf, base
        self.device_port = free_port()

    def config_text(self, port: int) -> str:
        text = self.conf.replace("/mosquitto/", f"{self.base}/").replace("listener 1883", f"listener {port} {self.host}")
        text = text.replace("listener 1884", f"listener {self.device_port} {self.host}")
        # As root, mosquitto would switch to its own user, which cannot read our folder.
        return text + f"user {subprocess.run(['id', '-un'], capture_output=True, text=True).stdout.strip()}\n"


def _connect(port: int, user: str, password: str, client_id: str | None = None) -> tuple[mqtt.Client, list]:
    """A client and the events it sees: ("connack", code) and "disconnected"."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"{user}-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    events: list = []
    client.on_connect = lambda _c, _u, _f, rc, _p: events.append(("connack", rc.value))
    client.on_disconnect = lambda *_: events.append("disconnected")
    client.reconnect_delay_set(60, 60)  # a kicked client stays kicked while we look
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.02)
    assert events, "no CONNACK"
    return client, events


def _connack(port: int, user: str, password: str) -> int:
    client, events = _connect(port, user, password)
    client.loop_stop()
    client.disconnect()
    return events[0][1]


def test_rendered_broker_config_and_auth_script_work_with_a_real_mosquitto(tmp_path: Path) -> None:
    if not HELM.exists():
        pytest.fail(".tools/bin/helm is missing: run `make setup`")
    proc = subprocess.run([str(HELM), "template", "ct", str(ROOT / "charts" / "cloudtutor"), "--namespace", "ct",
                           "--set", "mosquitto.persistence.enabled=false"],
                          capture_output=True, text=True, timeout=120, check=True)
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ct-cloudtutor-mosquitto")
    stateful = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "ct-cloudtutor-mosquitto")
    (init,) = stateful["spec"]["template"]["spec"]["initContainers"]

    # The volumes as the pod mounts them: config from the ConfigMap, devices from
    # the provisioned files (the devices Secret), auth and data empty.
    for folder in ("config", "devices", "auth", "data"):
        (tmp_path / folder).mkdir()
    for key, text in config_map["data"].items():
        (tmp_path / "config" / key).write_text(text)
    root = tmp_path / "bundles"
    provision.ensure_fleet_key(tmp_path / "fleet.pem")
    pem = provision.public_key_pem(fleet_key=tmp_path / "fleet.pem")
    for name in ("edge-a", "edge-b"):
        provision.provision(name, root, provision.Broker("127.0.0.1", 1884), public_key=pem)
    (tmp_path / "devices" / "passwd").write_text((root / "broker" / "passwd").read_text())
    (tmp_path / "devices" / "acl").write_text((root / "broker" / "acl").read_text())
    passwords = {name: yaml.safe_load((root / name / "device" / "edge.yaml").read_text())["mqtt"]["password"]
                 for name in ("edge-a", "edge-b")}
    device_password = passwords["edge-a"]

    # The init container's own script, with its real mosquitto_passwd.
    assert init["command"][:2] == ["/bin/sh", "-ec"]
    script = init["command"][2].replace("/mosquitto/", f"{tmp_path}/")
    services_password = "svc-" + uuid.uuid4().hex
    bindir = Path(find_binary("mosquitto_passwd")).parent
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "SERVICES_USERNAME": init["env"][0]["value"], "SERVICES_PASSWORD": services_password}
    subprocess.run(["/bin/sh", "-ec", script], env=env, check=True, timeout=60)
    passwd = (tmp_path / "auth" / "passwd").read_text()
    assert services_password not in passwd and passwd.startswith("cloudtutor-services:$7$")
    assert (tmp_path / "auth" / "passwd").stat().st_mode & 0o077 == 0

    with RenderedMosquitto(config_map["data"]["mosquitto.conf"], tmp_path) as broker:
        for port in (broker.port, broker.device_port):
            assert _connack(port, "cloudtutor-services", services_password) == 0
            assert _connack(port, "edge-a", device_password) == 0
            assert _connack(port, "edge-a", "wrong") != 0
            assert _connack(port, "nobody", "") != 0  # allow_anonymous false
        # On the devices' listener a client id is its user name: edge-b's
        # credentials cannot take over edge-a's session by claiming its id.
        a, a_events = _connect(broker.device_port, "edge-a", device_password, client_id="edge-a")
        b, b_events = _connect(broker.device_port, "edge-b", passwords["edge-b"], client_id="edge-a")
        assert b_events == [("connack", 0)]
        time.sleep(0.5)
        assert a_events == [("connack", 0)], "edge-a was kicked off by a client claiming its id"
        for client in (a, b):
            client.loop_stop()
            client.disconnect()
    assert "max_queued_messages 1000" in (tmp_path / "config" / "mosquitto.conf").read_text()
