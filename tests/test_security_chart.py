"""Security in the chart's defaults (``helm template`` with no values): the
broker refuses anonymous clients and applies ACLs on both listeners, Redis
has a password, every password reaches a pod only from a Secret, and the
fleet's signing key is mounted into the publisher alone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / ".tools" / "bin" / "helm"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    if not HELM.exists():
        pytest.fail(".tools/bin/helm is missing: run `make setup`")
    out = subprocess.run([str(HELM), "template", "ct", str(ROOT / "charts" / "cloudtutor"), "--namespace", "ct"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def pods(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")}


def test_both_broker_listeners_need_a_password_and_apply_the_acl(docs):
    conf = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ct-cloudtutor-mosquitto")["data"]["mosquitto.conf"]
    assert "per_listener_settings true" in conf
    listeners = re.split(r"^listener ", conf, flags=re.MULTILINE)[1:]
    assert len(listeners) == 2  # the services' and the devices'
    for block in listeners:
        assert "allow_anonymous false" in block and "password_file " in block and "acl_file " in block, block
    assert "use_username_as_clientid true" in listeners[1]  # a device cannot claim another's client id


def test_redis_has_a_password_from_a_secret(docs):
    redis_conf = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ct-cloudtutor-redis")["data"]["redis.conf"]
    assert "include /run/redis/auth.conf" in redis_conf  # requirepass written there at start, from the Secret
    spec = pods(docs)["ct-cloudtutor-redis"]
    script = " ".join(" ".join(c.get("command", []) + c.get("args", [])) for c in spec["containers"] + spec.get("initContainers", []))
    assert "requirepass" in script
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "ct-cloudtutor-redis")
    assert secret.get("data", {}).get("redis-password") or secret.get("stringData", {}).get("redis-password")


def test_passwords_reach_pods_only_from_secrets(docs):
    found = 0
    for name, spec in pods(docs).items():
        for container in spec["containers"] + spec.get("initContainers", []):
            for env in container.get("env", []):
                if re.search(r"PASSWORD|SECRET|KEY$", env["name"]):
                    assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (name, env["name"])
                    found += 1
    assert found >= 6 * 2 + 2  # each service's MQTT and Redis password, the broker's and Redis' own


def test_only_the_publisher_mounts_the_signing_key(docs):
    holders = [name for name, spec in pods(docs).items()
               if any(v.get("secret", {}).get("secretName") == "ct-cloudtutor-signing-key" for v in spec.get("volumes", []))]
    assert holders == ["ct-cloudtutor-publisher"]
