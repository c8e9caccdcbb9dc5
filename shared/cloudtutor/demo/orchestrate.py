"""Runs the closed loop for real: Mosquitto and Redis (child processes on
free ports, unless URLs are given), the six services and N edge agents,
each a separate OS process, every message crossing the real broker and
Redis. Logs go to ``OUT/logs/``; configuration files to ``OUT/config/``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml

from cloudtutor.config.cloud import SERVICES, CloudConfig
from cloudtutor.config.common import MqttSettings, RedisSettings
from cloudtutor.config.edge import EdgeConfig
from cloudtutor.knobs import Knobs
from cloudtutor.testing.servers import MosquittoServer, RedisServer, die_with_parent, free_port

log = logging.getLogger("cloudtutor.demo")


@dataclass
class DemoPlan:
    """What to run; built from the command line."""

    videos: list[Path]
    out: Path
    devices: int = 1
    duration_s: float = 180.0
    speed: float = 0.0  # as fast as the work allows, in lockstep with the cloud (brief §10.1)
    lockstep_lag_s: float | None = 20.0
    knobs: Knobs = field(default_factory=lambda: Knobs(infer_fps=5.0))
    mqtt_url: str | None = None
    redis_url: str | None = None
    trainer: dict = field(default_factory=dict)
    superres: dict = field(default_factory=dict)  # e.g. {"method": "model", "model_path": ...} (CloudSeg)
    roi_accmodel: Path | None = None  # AccMPEG ROI encoding on the edges (with a nonzero roi_qoffset knob)
    split_codec: str | None = None  # split mode: the edges' activation codec (EdgeConfig.split_codec)
    budget_schedule: list[tuple[float, float]] = field(default_factory=list)  # (video s, Kbps); the bitrate policy runs only with one
    prefix: str = "cloudtutor"
    secure: bool = False  # --secure: broker auth + ACLs, TLS for the devices, Redis password (demo/secure.py)


class Process:
    """A child process in its own session, logging to a file; it gets SIGTERM if the demo dies."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 *, append: bool = False) -> None:
        self.name = name
        self.argv, self.env = list(argv), dict(env or {})
        self.log_path = log_path
        # A fresh log per run; a restarted process (fault injection) appends.
        self._log = open(log_path, "ab" if append else "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
            start_new_session=True, preexec_fn=die_with_parent,
        )

    def kill(self) -> None:
        """kill -9: no clean shutdown, no last words (the broker sends its will)."""
        if self.running():
            self.popen.kill()
            self.popen.wait(10)
        self._log.close()

    def restarted(self, **env: str) -> Process:
        """The same command again, logging to the same file (after kill() or stop()); ``env`` overrides variables."""
        return Process(self.name, self.argv, self.log_path, {**self.env, **env}, append=True)

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.running():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def _dump(model, path: Path) -> Path:
    path.write_text(yaml.safe_dump(model.model_dump(mode="json", exclude_none=True), sort_keys=False), encoding="utf-8")
    return path


class Fleet:
    """Starts and stops everything the demo runs."""

    def __init__(self, plan: DemoPlan) -> None:
        self.plan = plan
        self.servers: list[MosquittoServer | RedisServer] = []
        self.services: dict[str, Process] = {}
        self.edges: dict[str, Process] = {}
        self.metrics_ports: dict[str, int] = {}
        (plan.out / "logs").mkdir(parents=True, exist_ok=True)
        (plan.out / "config").mkdir(parents=True, exist_ok=True)
        (plan.out / "sinks").mkdir(parents=True, exist_ok=True)
        self.secure = None  # a demo.secure.SecureFleet with --secure
        self.mqtt, self.redis = self._servers()
        self.signing_key, self.public_key = self._keys()
        self.cloud = CloudConfig(
            mqtt=self.mqtt, redis=self.redis,
            trainer=plan.trainer, superres=plan.superres,
            # Without a budget schedule the policy stays off, so runs that set scale or CRF keep them.
            controller={"default_knobs": plan.knobs, "bitrate": {"enabled": bool(plan.budget_schedule)}},
            publisher={"signing_key": self.signing_key},
        )

    def _keys(self) -> tuple[Path, Path]:
        """A fresh Ed25519 pair per run: the publisher signs, the edges verify."""
        from cloudtutor.signing import generate_key, save_private_key, save_public_key

        key = generate_key()
        private, public = self.plan.out / "config" / "signing.pem", self.plan.out / "config" / "signing.pub.pem"
        save_private_key(key, private)
        save_public_key(key.public_key(), public)
        return private, public

    def _servers(self) -> tuple[MqttSettings, RedisSettings]:
        plan = self.plan
        if plan.secure:
            from cloudtutor.demo.secure import start_secure

            return start_secure(self)
        if plan.mqtt_url:
            url = urlparse(plan.mqtt_url)
            mqtt = MqttSettings(host=url.hostname or "localhost", port=url.port or 1883, prefix=plan.prefix)
        else:
            # Queue deeply enough that a slow consumer never makes the broker
            # drop QoS 1 messages (it does past max_queued_messages).
            broker = MosquittoServer(workdir=plan.out / "mosquitto", max_queued_messages=10_000).start()
            self.servers.append(broker)
            mqtt = broker.mqtt_settings(prefix=plan.prefix)
        if plan.redis_url:
            redis = RedisSettings(url=plan.redis_url)
        else:
            # AOF fsynced before every reply: what ingest was told is stored
            # survives kill -9 of Redis, so an acknowledged chunk is never lost.
            store = RedisServer(workdir=plan.out / "redis", appendonly=True, appendfsync="always").start()
            self.servers.append(store)
            redis = store.redis_settings()
        return mqtt, redis

    def start_services(self) -> None:
        path = _dump(self.cloud, self.plan.out / "config" / "cloud.yaml")
        for name in SERVICES:
            argv = [sys.executable, "-m", "cloudtutor.cli", "serve", name, "--config", str(path)]
            # One /metrics port each (they share a host); the YAML's port is for a pod.
            port = free_port()
            self.metrics_ports[name] = port
            self.services[name] = Process(
                name, argv, self.plan.out / "logs" / f"{name}.log", env={"CLOUDTUTOR_METRICS_PORT": str(port), **(self.secure.services_env() if self.secure else {})},
            )
        log.info("service metrics: %s", ", ".join(f"{n} http://127.0.0.1:{p}/metrics" for n, p in self.metrics_ports.items()))

    def respawn_port_clashes(self) -> list[str]:
        """Services that died because another process took their /metrics port
        between free_port() and their bind (a busy shared host): started again
        on a new port. Returns their names."""
        clashed = []
        for name, proc in list(self.services.items()):
            if proc.running() or "Address already in use" not in self.tail(name, 40):
                continue
            port = free_port()
            self.metrics_ports[name] = port
            proc.kill()
            self.services[name] = proc.restarted(CLOUDTUTOR_METRICS_PORT=str(port))
            clashed.append(name)
            log.warning("%s lost its /metrics port to another process; started again on %d", name, port)
        return clashed

    def edge_config(self, index: int) -> EdgeConfig:
        from cloudtutor.demo.edgeplan import edge_config  # the edge's own field names

        from cloudtutor.demo.edgeplan import device_id

        mqtt = self.secure.device_mqtt(device_id(index)) if self.secure else self.mqtt
        return edge_config(self.plan, index, mqtt, self.public_key)

    def start_edges(self) -> None:
        for i in range(self.plan.devices):
            config = self.edge_config(i)
            path = _dump(config, self.plan.out / "config" / f"{config.device_id}.yaml")
            argv = [sys.executable, "-m", "cloudtutor.cli", "edge", "--config", str(path)]
            env = self.secure.edge_env(config.device_id) if self.secure else None
            self.edges[config.device_id] = Process(config.device_id, argv, self.plan.out / "logs" / f"{config.device_id}.log", env=env)

    def scrape(self, name: str, path: str) -> tuple[int, str]:
        """(HTTP status, body) of a service's ``/metrics`` or ``/healthz``; (0, error) if unreachable."""
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_ports[name]}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 (loopback, our own port)
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def unhealthy_services(self) -> dict[str, str]:
        """Services whose /healthz is not 200, with what it said."""
        out = {}
        for name in self.services:
            code, body = self.scrape(name, "/healthz")
            if code != 200:
                out[name] = f"{code} {body.strip()[:200]}"
        return out

    def save_metrics(self) -> None:
        """Each service's /metrics as it stands, into OUT/metrics/NAME.prom."""
        folder = self.plan.out / "metrics"
        folder.mkdir(exist_ok=True)
        for name in self.services:
            code, body = self.scrape(name, "/metrics")
            if code == 200:
                (folder / f"{name}.prom").write_text(body, encoding="utf-8")

    def restart_service(self, name: str, *, kill: bool = True) -> None:
        """kill -9 (or SIGTERM) one service and start it again, on the same /metrics port."""
        proc = self.services[name]
        if kill:
            proc.kill()
        else:
            proc.stop()
        self.services[name] = proc.restarted()

    def dead_services(self) -> list[str]:
        return [name for name, p in self.services.items() if not p.running()]

    def edges_running(self) -> bool:
        return any(p.running() for p in self.edges.values())

    def stop(self) -> None:
        for proc in list(self.edges.values()) + list(self.services.values()):
            proc.stop()
        for server in reversed(self.servers):
            server.stop()
            server.close()

    def tail(self, name: str, lines: int = 20) -> str:
        proc = self.services.get(name) or self.edges.get(name)
        if proc is None or not proc.log_path.exists():
            return ""
        return "\n".join(proc.log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_until(predicate, timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


__all__ = ["DemoPlan", "Fleet", "Process", "free_port", "wait_until"]
