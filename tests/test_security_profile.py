"""The secure profile (``cloudtutor demo --secure``, demo/secure.py) for real:
Mosquitto with a password file and per-device ACLs, the devices' TLS
listener, Redis with a password; the services authenticate to both; a
device reaches only its own topics; and no secret reaches a log."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import redis
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from cloudtutor.bus import Bus, Message
from cloudtutor.config.cloud import CloudConfig
from cloudtutor.demo.secure import SERVICES_USER, SecureFleet
from cloudtutor.messages import ControlState
from cloudtutor.testing.servers import free_port
from cloudtutor.testing.services import running_service
from cloudtutor.topics import Topics
from cloudtutor_services.controller.service import ControllerService

WAIT = 20.0
DEVICES = ["edge-0", "edge-1"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    base = tmp_path_factory.mktemp("secure")
    secure = SecureFleet(base / "config", DEVICES, prefix=f"s{uuid.uuid4().hex[:8]}")
    broker, store = secure.start_servers(base / "mosquitto", base / "redis")
    yield secure, broker, store
    broker.close()
    store.close()


def connack(host: str, port: int, user: str | None, password: str | None, ca: Path | None = None) -> str:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user or f"anon-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    if user is not None:
        client.username_pw_set(user, password)
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    events: queue.Queue = queue.Queue()
    client.on_connect = lambda _c, _u, _f, rc, _p: events.put(str(rc))
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        return events.get(timeout=WAIT)
    finally:
        client.loop_stop()
        client.disconnect()


def test_no_anonymous_or_wrong_password_on_either_listener(fleet):
    secure, broker, _ = fleet
    ca = secure.tls.ca_cert
    assert connack(broker.host, broker.port, None, None) == "Not authorized"
    assert connack(broker.host, secure.tls_port, None, None, ca) == "Not authorized"
    assert connack(broker.host, secure.tls_port, "edge-0", "guess", ca) in ("Bad user name or password", "Not authorized")
    assert connack(broker.host, secure.tls_port, "edge-0", secure.device_passwords["edge-1"], ca) != "Success"
    assert connack(broker.host, secure.tls_port, "edge-0", secure.device_passwords["edge-0"], ca) == "Success"
    assert connack(broker.host, broker.port, SERVICES_USER, secure.services_password) == "Success"


def test_the_broker_files_hold_hashes_and_per_device_blocks(fleet):
    secure, _, _ = fleet
    passwd = (secure.folder / "broker" / "passwd").read_text()
    acl = (secure.folder / "broker" / "acl").read_text()
    assert (secure.folder / "broker" / "passwd").stat().st_mode & 0o077 == 0
    assert not any(s in passwd or s in acl for s in secure.secrets)  # PBKDF2 hashes only
    assert f"user {SERVICES_USER}" in acl and all(f"user {d}" in acl for d in DEVICES)
    assert "control/set" not in acl.split(f"user {DEVICES[0]}")[1]  # a device never writes control/set


def test_a_device_reaches_only_its_own_topics_over_tls(fleet):
    secure, broker, _ = fleet
    topics = Topics(secure.prefix)
    seen: queue.Queue[Message] = queue.Queue()
    mine: queue.Queue[Message] = queue.Queue()
    with Bus(secure.services_mqtt(broker), name="services") as services, Bus(secure.device_mqtt("edge-0"), name="edge-0") as device:
        assert services.wait_connected(WAIT) and device.wait_connected(WAIT)
        services.subscribe(f"{secure.prefix}/#", seen.put, qos=1, wait=True, timeout=WAIT)
        device.subscribe(topics.model_delta("edge-0"), mine.put, qos=1, wait=True, timeout=WAIT)
        device.subscribe(topics.model_delta("edge-1"), mine.put, qos=1, wait=True, timeout=WAIT)  # the ACL filters it
        for topic in (topics.chunks("edge-1"), topics.control_set("edge-0"), topics.model_delta("edge-0"), topics.chunks("edge-0")):
            device.publish(topic, b"x", qos=1)
        services.publish(topics.model_delta("edge-1"), b"for edge-1", qos=1, wait=True)
        services.publish(topics.model_delta("edge-0"), b"for edge-0", qos=1, wait=True)
        assert mine.get(timeout=WAIT).payload == b"for edge-0"
        time.sleep(0.5)
        assert mine.empty()  # edge-1's update never reached edge-0
        got = set()
        while not seen.empty():
            m = seen.get()
            got.add((m.topic, m.payload))
    assert (topics.chunks("edge-0"), b"x") in got  # its own uplink goes through
    for denied in (topics.chunks("edge-1"), topics.control_set("edge-0"), topics.model_delta("edge-0")):
        assert (denied, b"x") not in got, denied


def test_redis_requires_the_password(fleet):
    secure, _, store = fleet
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    def client(password: str | None) -> redis.Redis:
        return redis.Redis(host=store.host, port=store.port, password=password, retry=Retry(NoBackoff(), 0))

    with pytest.raises(redis.exceptions.AuthenticationError):
        client(None).set("k", "v")
    with pytest.raises(redis.exceptions.AuthenticationError):
        client("guess").ping()
    assert client(secure.redis_password).ping()


def test_services_authenticate_to_both_and_a_device_gets_its_knobs(fleet, caplog):
    """The controller logs in to Mosquitto and Redis with the services'
    credentials; edge-0, over TLS with its own, reads its control/state."""
    secure, broker, store = fleet
    caplog.set_level("DEBUG")
    config = CloudConfig(mqtt=secure.services_mqtt(broker), redis=store.redis_settings(key_prefix=f"t{uuid.uuid4().hex[:8]}"))
    topics = Topics(secure.prefix)
    states: queue.Queue[Message] = queue.Queue()
    with running_service(ControllerService, config, join_s=WAIT) as svc, Bus(secure.device_mqtt("edge-0"), name="edge-0") as device:
        assert device.wait_connected(WAIT) and svc.healthy()
        device.subscribe(topics.control_state("edge-0"), states.put, qos=1, wait=True, timeout=WAIT)
        with Bus(secure.services_mqtt(broker), name="operator") as operator:
            assert operator.wait_connected(WAIT)
            operator.publish(topics.control_set("edge-0"), json.dumps({"crf": 29}).encode(), qos=1, wait=True)
            deadline = time.monotonic() + WAIT
            while ControlState.model_validate_json(states.get(timeout=max(deadline - time.monotonic(), 0.1)).payload).knobs.crf != 29:
                pass
    text = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert text and not [s for s in secure.secrets if s in text]


@pytest.mark.slow
def test_no_secret_in_a_service_process_log_or_its_config(fleet, tmp_path):
    """``cloudtutor serve controller`` as a real process, at DEBUG, with its
    passwords in its environment (as the demo and the chart give them):
    nothing it prints, nor ``config show``, nor its YAML, holds one."""
    secure, broker, store = fleet
    config = CloudConfig(
        mqtt=secure.services_mqtt(broker), redis=store.redis_settings(key_prefix=f"t{uuid.uuid4().hex[:8]}"),
        log={"level": "DEBUG"},
    )
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))  # as the demo writes it
    env = {**os.environ, **secure.services_env(), "CLOUDTUTOR_METRICS_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    shown = subprocess.run([sys.executable, "-m", "cloudtutor.cli", "config", "show", "--config", str(path)],
                           env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    topics = Topics(secure.prefix)
    states: queue.Queue[Message] = queue.Queue()
    proc = subprocess.Popen([sys.executable, "-m", "cloudtutor.cli", "serve", "controller", "--config", str(path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with Bus(secure.services_mqtt(broker), name="operator") as operator:
            assert operator.wait_connected(WAIT)
            operator.subscribe(topics.control_state("edge-1"), states.put, qos=1, wait=True, timeout=WAIT)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until the service is up and answers
                operator.publish(topics.control_set("edge-1"), json.dumps({"crf": 27}).encode(), qos=1, wait=True)
                try:
                    if ControlState.model_validate_json(states.get(timeout=2).payload).knobs.crf == 27:
                        break
                except queue.Empty:
                    assert proc.poll() is None, proc.stdout.read()
            else:
                pytest.fail("the controller never answered")
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert "DEBUG" in output and "controller started" in output  # it did log, verbosely
    for where, text in (("process log", output), ("config show", shown.stdout + shown.stderr), ("yaml", path.read_text())):
        leaked = [s for s in secure.secrets if s in text]
        assert not leaked, f"a secret in the {where}"
    assert "**********" in shown.stdout
