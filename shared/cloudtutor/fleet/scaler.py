"""``cloudtutor scaler``: replicas of the labeler and trainer from the online devices (brief §10.6).

ingest and superres are stateless and CPU-bound, so an HPA scales them;
the labeler and trainer are device-driven (per-device order and state,
sharded by leases), so this loop sets their Deployments' replica counts to
``ceil(online devices / devices per replica)`` within ``[min, max]``. Up
at once; down only after the lower count has held ``scale_down_delay_s``
(every scale-down moves leases). Online devices are those whose retained
``status`` says ``online`` (the edge's last will turns it ``offline``).

The decision is pure (:func:`desired_replicas`, :func:`settle`); the
Kubernetes side (:class:`KubeScaler`) patches the Deployments' ``scale``
subresource with the ``kubernetes`` client, in-cluster or from a
kubeconfig. With no cluster configured (or ``--dry-run``) it prints the
patch it would send instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudtutor.config.cloud import ScalerSettings

log = logging.getLogger("cloudtutor.scaler")

ROLES = ("labeler", "trainer")


# -- pure decisions ----------------------------------------------------------------------


def desired_replicas(online: int, per_replica: int, *, min_replicas: int, max_replicas: int) -> int:
    """ceil(online / per_replica), clamped to [min_replicas, max_replicas]."""
    if per_replica < 1:
        raise ValueError(f"devices per replica must be >= 1, not {per_replica}")
    want = math.ceil(max(0, online) / per_replica)
    return max(min_replicas, min(max_replicas, want))


@dataclass(frozen=True)
class Held:
    """A target and, while a lower count is wanted, since when (monotonic s)."""

    target: int
    lower_since: float | None = None


def settle(held: Held, desired: int, now: float, delay_s: float) -> Held:
    """Scale up at once; scale down once ``desired`` has stayed below the target for ``delay_s``."""
    if desired >= held.target:
        return Held(desired)
    since = held.lower_since if held.lower_since is not None else now
    if now - since >= delay_s:
        return Held(desired)
    return Held(held.target, since)


def scale_patch(replicas: int) -> dict[str, Any]:
    """The body patched onto a Deployment's ``scale`` subresource."""
    return {"spec": {"replicas": int(replicas)}}


def targets(online: int, settings: ScalerSettings) -> dict[str, int]:
    per = {"labeler": settings.devices_per_labeler, "trainer": settings.devices_per_trainer}
    return {role: desired_replicas(online, per[role], min_replicas=settings.min_replicas,
                                   max_replicas=settings.max_replicas) for role in ROLES}


# -- Kubernetes ------------------------------------------------------------------------------


class KubeScaler:
    """Patches Deployment scales; ``dry_run`` (or no cluster found) prints them instead."""

    def __init__(self, settings: ScalerSettings, *, dry_run: bool = False, out: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.out = out
        self.namespace = settings.namespace
        self.api = None if dry_run else self._connect()
        self.dry_run = self.api is None

    def _connect(self) -> Any:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            config.load_incluster_config()
            try:  # in a pod, the Deployments are in the pod's own namespace
                with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                    self.namespace = f.read().strip() or self.namespace
            except OSError:
                pass
        except ConfigException:
            try:
                config.load_kube_config()
            except (ConfigException, OSError) as exc:
                log.warning("no Kubernetes cluster configured (%s): dry run, patches are printed", exc)
                return None
        return client.AppsV1Api()

    def deployment(self, role: str) -> str:
        return {"labeler": self.settings.labeler_deployment, "trainer": self.settings.trainer_deployment}[role]

    def current(self, role: str) -> int | None:
        if self.api is None:
            return None
        scale = self.api.read_namespaced_deployment_scale(self.deployment(role), self.namespace)
        return int(scale.spec.replicas or 0)

    def apply(self, role: str, replicas: int, *, reason: str) -> dict[str, Any]:
        """Patch (or print) one Deployment's scale; the patch as a record."""
        record = {"namespace": self.namespace, "deployment": self.deployment(role), "subresource": "scale",
                  "patch": scale_patch(replicas), "reason": reason, "dry_run": self.dry_run}
        if self.api is None:
            self.out(json.dumps(record))
        else:
            self.api.patch_namespaced_deployment_scale(self.deployment(role), self.namespace, scale_patch(replicas))
        log.info("%s -> %d replicas (%s)", record["deployment"], replicas, reason,
                 extra={"fields": {k: v for k, v in record.items() if k != "patch"} | {"replicas": replicas}})
        return record


# -- online devices ------------------------------------------------------------------------------


class OnlineDevices:
    """Counts devices whose retained ``status`` is ``online`` (MQTT)."""

    def __init__(self, bus: Any, topics: Any) -> None:
        from cloudtutor.topics import Leaf

        self._state: dict[str, str] = {}
        self._lock = threading.Lock()
        self.topics = topics
        bus.subscribe(topics.all_devices(Leaf.STATUS), self._on_status, qos=1, wait=True)

    def _on_status(self, message: Any) -> None:
        from cloudtutor.messages import MessageError, Status, decode_json
        from cloudtutor.topics import TopicError

        try:
            device_id = self.topics.parse_device(message.topic).device_id
        except TopicError:
            return
        if not message.payload:
            with self._lock:
                self._state.pop(device_id, None)
            return
        try:
            state = decode_json(Status, message.payload).state
        except MessageError as exc:
            log.warning("unreadable status of %s: %s", device_id, exc)
            return
        with self._lock:
            self._state[device_id] = state

    def count(self) -> int:
        with self._lock:
            return sum(1 for s in self._state.values() if s == "online")


# -- the loop ----------------------------------------------------------------------------------


class Scaler:
    """One decision per call of :meth:`tick`, from a count of online devices."""

    def __init__(self, settings: ScalerSettings, kube: KubeScaler, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.kube = kube
        self.clock = clock
        self.held: dict[str, Held | None] = {role: None for role in ROLES}

    def tick(self, online: int) -> list[dict[str, Any]]:
        """Patches sent (or printed) this round."""
        records = []
        for role, desired in targets(online, self.settings).items():
            held = self.held[role]
            if held is None:  # first round: start from what the cluster runs (dry run: from nothing)
                current = self.kube.current(role)
                held = Held(current if current is not None else -1)
            new = settle(held, desired, self.clock(), self.settings.scale_down_delay_s)
            if new.target != held.target:
                per = self.settings.devices_per_labeler if role == "labeler" else self.settings.devices_per_trainer
                records.append(self.kube.apply(
                    role, new.target, reason=f"{online} online devices at {per} per replica"))
            self.held[role] = new
        return records


def _run(args: argparse.Namespace) -> int:
    from cloudtutor.config.cloud import load_cloud_config
    from cloudtutor.logs import setup_logging

    config = load_cloud_config(args.config)
    setup_logging(config.log, "cloudtutor.scaler")
    settings = config.scaler
    kube = KubeScaler(settings, dry_run=args.dry_run)
    scaler = Scaler(settings, kube)
    if args.devices is not None:  # a given count: one decision, no broker
        scaler.tick(args.devices)
        return 0
    from cloudtutor.bus import Bus
    from cloudtutor.topics import Topics

    from cloudtutor.health import HealthServer
    from cloudtutor.metrics import Metrics

    bus = Bus(config.mqtt, name="scaler").start()
    health = None
    if config.metrics_port is not None:  # /healthz for the pod's probes: the broker connection
        health = HealthServer(Metrics(), port=config.metrics_port)
        health.add_check("mqtt", lambda: bus.connected)
        health.start()
    try:
        if not bus.wait_connected(config.mqtt.connect_timeout_s):
            print(f"scaler: no MQTT connection to {config.mqtt.host}:{config.mqtt.port}", file=sys.stderr)
            return 1
        online = OnlineDevices(bus, Topics(config.mqtt.prefix))
        time.sleep(min(2.0, settings.interval_s))  # let the retained statuses arrive
        while True:
            scaler.tick(online.count())
            if args.once:
                return 0
            time.sleep(settings.interval_s)
    except KeyboardInterrupt:
        return 0
    finally:
        bus.close()
        if health is not None:
            health.stop()


def add_scaler_parser(sub: argparse._SubParsersAction) -> None:
    """``cloudtutor scaler``."""
    p = sub.add_parser("scaler", help="set the labeler and trainer replica counts from the online devices (Kubernetes)")
    p.add_argument("--config", help="YAML file (default: $CLOUDTUTOR_CONFIG)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print the scale patches instead of sending them (also when no cluster is configured)")
    p.add_argument("--devices", type=int, help="decide for this many online devices, once, without a broker")
    p.add_argument("--once", action="store_true", help="one decision from the broker's statuses, then exit")
    p.set_defaults(func=_run)
