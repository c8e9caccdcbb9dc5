"""The labeler/trainer scaler: replica counts from online devices, the
hold before scaling down, its dry-run patch, and the online count from
retained device statuses on a real broker."""

from __future__ import annotations

import json
import time

import pytest

from cloudtutor.bus import Bus
from cloudtutor.config.cloud import ScalerSettings
from cloudtutor.fleet.scaler import Held, KubeScaler, OnlineDevices, Scaler, desired_replicas, scale_patch, settle, targets
from cloudtutor.messages import Status

pytestmark = pytest.mark.timeout(120)


def test_replicas_from_online_devices():
    assert [desired_replicas(n, 4, min_replicas=1, max_replicas=5) for n in (0, 1, 4, 5, 8, 9, 100)] == [1, 1, 1, 2, 2, 3, 5]
    assert desired_replicas(0, 9, min_replicas=0, max_replicas=5) == 0
    with pytest.raises(ValueError):
        desired_replicas(3, 0, min_replicas=1, max_replicas=5)
    settings = ScalerSettings(devices_per_labeler=4, devices_per_trainer=9)
    assert targets(20, settings) == {"labeler": 5, "trainer": 3}


def test_up_at_once_down_after_the_hold():
    held = Held(3)
    assert settle(held, 5, 0.0, 300) == Held(5)
    held = settle(held, 1, 10.0, 300)
    assert held == Held(3, 10.0), "a lower count waits"
    assert settle(held, 2, 200.0, 300) == Held(3, 10.0)
    assert settle(held, 3, 200.0, 300) == Held(3), "back at the target: the hold resets"
    assert settle(held, 1, 310.0, 300) == Held(1)


def test_dry_run_prints_the_scale_patch(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    printed: list[str] = []
    settings = ScalerSettings(namespace="video", devices_per_labeler=4, devices_per_trainer=9, scale_down_delay_s=60)
    kube = KubeScaler(settings, out=printed.append)  # no cluster configured: falls back to a dry run
    assert kube.dry_run
    now = [0.0]
    scaler = Scaler(settings, kube, clock=lambda: now[0])
    scaler.tick(20)
    records = [json.loads(line) for line in printed]
    assert [(r["deployment"], r["patch"]) for r in records] == [
        ("cloudtutor-labeler", {"spec": {"replicas": 5}}), ("cloudtutor-trainer", {"spec": {"replicas": 3}})]
    assert all(r["namespace"] == "video" and r["subresource"] == "scale" and r["dry_run"] for r in records)
    printed.clear()
    scaler.tick(20)
    assert printed == [], "nothing changed: no patch"
    scaler.tick(3)
    now[0] = 61.0
    scaler.tick(3)
    assert [json.loads(line)["patch"]["spec"]["replicas"] for line in printed] == [1, 1]


def test_the_patch_is_what_the_kubernetes_client_sends_for_a_scale():
    from kubernetes import client

    body = client.V1Scale(spec=client.V1ScaleSpec(replicas=4))
    assert client.ApiClient().sanitize_for_serialization(body) == scale_patch(4)


def test_online_devices_from_retained_statuses(mqtt_settings, topics):
    mqtt = mqtt_settings.model_copy(update={"prefix": topics.prefix})
    edge = Bus(mqtt, name="edges").start()
    watcher = Bus(mqtt, name="scaler").start()
    try:
        assert edge.wait_connected(20) and watcher.wait_connected(20)
        for device, state in (("cam-1", "online"), ("cam-2", "online"), ("cam-3", "offline")):
            edge.publish(topics.status(device), Status(state=state).to_bytes(), qos=1, retain=True, wait=True)
        online = OnlineDevices(watcher, topics)
        deadline = time.monotonic() + 10
        while online.count() != 2:
            assert time.monotonic() < deadline, online.count()
            time.sleep(0.05)
        edge.publish(topics.status("cam-2"), Status(state="offline").to_bytes(), qos=1, retain=True, wait=True)
        edge.publish(topics.status("cam-1"), b"not json", qos=1, retain=True, wait=True)  # refused, count kept
        while online.count() != 1:
            assert time.monotonic() < deadline, online.count()
            time.sleep(0.05)
        time.sleep(0.3)
        assert online.count() == 1
    finally:
        for device in ("cam-1", "cam-2", "cam-3"):
            edge.publish(topics.status(device), b"", qos=1, retain=True)
        edge.close()
        watcher.close()
