"""A running closed loop to break and measure: the demo's fleet (Mosquitto,
Redis, the six services and N edge agents, each a real process) with a
watcher, fault injection (kill -9 and restart of the broker, Redis or a
service) and the final checks of :mod:`cloudtutor.testing.loopcheck`.

Used by the fault-injection suite (``tests/faults``) and ``cloudtutor bench
load``. Settings that differ from the demo's, and why:

* MQTT reconnect delay capped at 2 s (default 30 s) and the edges' chunk
  ack timeout 10 s (default 30 s): the resume times measured are those of
  the delivery protocol, not of a long backoff;
* stream entries a dead consumer left pending are reclaimed after 10 s idle
  (default 30 s);
* the trainer runs 5 iterations of batch 1 at 256 px wide per phase
  (default 20 of 2 at the samples' size), the edges' student 256 px wide,
  one torch thread per process: delivery and recovery are under test here,
  not accuracy, and on a shared 2-core machine the default phase would make
  every check minutes long.

Redis runs with AOF, ``appendfsync always`` (orchestrate.Fleet), Mosquitto
with persistence (autosave every 60 s) and the edges with persistent
sessions (clean start false, 1 h expiry).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudtutor.config.cloud import SERVICES
from cloudtutor.config.common import FrameBufferSettings
from cloudtutor.demo.edgeplan import read_sink, sink_path
from cloudtutor.demo.observer import FleetObserver
from cloudtutor.demo.orchestrate import DemoPlan, Fleet, wait_until
from cloudtutor.testing import loopcheck

log = logging.getLogger("cloudtutor.liveloop")

SERVERS = ("broker", "redis")
TARGETS = SERVERS + SERVICES


class LoopError(RuntimeError):
    pass


class _Fleet(Fleet):
    """The demo's fleet with the quicker recovery settings named in the module docstring."""

    def __init__(self, plan: DemoPlan, ack_timeout_s: float) -> None:
        super().__init__(plan)
        self.ack_timeout_s = ack_timeout_s
        self.mqtt = self.mqtt.model_copy(update={"reconnect_min_s": 0.2, "reconnect_max_s": 2.0})
        models = self.cloud.models.model_copy(update={"threads": 1})
        self.cloud = self.cloud.model_copy(update={
            "mqtt": self.mqtt, "models": models, "framebuffer": FrameBufferSettings(claim_idle_ms=10_000)})

    def edge_config(self, index: int):
        config = super().edge_config(index)
        models = config.models.model_copy(update={"threads": 1, "student_width": 256})
        return config.model_copy(update={"ack_timeout_s": self.ack_timeout_s, "drain_timeout_s": 120.0,
                                         "models": models})


@dataclass
class Progress:
    """Per device: newest chunk seq seen published, newest acked, newest applied model version."""

    published: dict[str, int]
    acked: dict[str, int]
    version: dict[str, int]


def _rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class LiveLoop:
    """Start with :meth:`start`, break with :meth:`inject`, end with :meth:`finish`."""

    def __init__(self, plan: DemoPlan, *, ack_timeout_s: float = 10.0) -> None:
        self.plan = plan
        self.fleet = _Fleet(plan, ack_timeout_s)
        self.observer: FleetObserver | None = None
        self.faults: list[dict[str, Any]] = []
        self._fb = None

    # ---- lifecycle --------------------------------------------------------------------

    def start(self, *, first_update_timeout: float = 300.0) -> LiveLoop:
        """Everything up; returns once every device has applied a model update."""
        fleet = self.fleet
        self.observer = FleetObserver(fleet.mqtt).start()
        fleet.start_services()

        def online(o: FleetObserver) -> bool:
            fleet.respawn_port_clashes()
            return o.services_online(SERVICES)

        if not self.observer.wait_for(online, timeout=240):
            raise LoopError("services not online:\n" + "\n".join(f"--- {n}\n{fleet.tail(n)}" for n in SERVICES))
        if not wait_until(lambda: not fleet.unhealthy_services(), timeout=60):
            raise LoopError(f"services not healthy: {fleet.unhealthy_services()}")
        fleet.start_edges()
        if not wait_until(lambda: min(self.progress().version.values(), default=0) >= 1, first_update_timeout, 1.0):
            raise LoopError(f"no model update reached every edge within {first_update_timeout:.0f} s: {self.progress()}"
                            + "".join(f"\n--- {n}\n{fleet.tail(n)}" for n in [*fleet.edges, "trainer", "publisher"]))
        return self

    @property
    def devices(self) -> list[str]:
        return sorted(self.fleet.edges)

    @property
    def fb(self):
        if self._fb is None:
            from cloudtutor.framebuffer import FrameBuffer

            self._fb = FrameBuffer(self.fleet.redis)
        return self._fb

    def close(self) -> None:
        if self._fb is not None:
            self._fb.close()
            self._fb = None
        if self.observer is not None:
            self.observer.close()
        self.fleet.stop()

    # ---- watching ---------------------------------------------------------------------

    def progress(self) -> Progress:
        assert self.observer is not None
        published, acked, version = {}, {}, {}
        with self.observer._lock:
            for dev in self.devices:
                traffic = self.observer.devices.get(dev)
                if traffic is None:
                    published[dev] = acked[dev] = -1
                    version[dev] = 0
                    continue
                published[dev] = max((s for _, s in traffic.chunks), default=-1)
                acked[dev] = max((s for _, s in traffic.acked), default=-1)
                version[dev] = max((r.version for r in traffic.reported_history if r.status == "applied"), default=0)
        return Progress(published, acked, version)

    def memory_kb(self) -> dict[str, int | None]:
        """Resident memory of every service, edge and server process (kB)."""
        procs = {**self.fleet.services, **self.fleet.edges}
        out = {name: _rss_kb(p.popen.pid) if p.running() else None for name, p in procs.items()}
        for name, server in zip(SERVERS, self.fleet.servers):
            out["mosquitto" if name == "broker" else name] = _rss_kb(server.pid) if server.running else None
        return out

    def wait_resumed(self, before: Progress, timeout: float) -> float | None:
        """Wall seconds until every device had a chunk acked that was published
        after ``before`` and applied a model version newer than it; None on timeout."""
        started = time.monotonic()

        def resumed() -> bool:
            now = self.progress()
            return all(now.acked[d] > before.published[d] and now.version[d] > before.version[d] for d in self.devices)

        if wait_until(resumed, timeout, 0.5):
            return time.monotonic() - started
        return None

    # ---- faults -----------------------------------------------------------------------

    def inject(self, target: str, *, down_s: float = 1.0, timeout: float = 240.0) -> dict[str, Any]:
        """kill -9 ``target`` (broker, redis or a service), restart it after
        ``down_s``, and measure until the loop has resumed (from the kill)."""
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; one of {TARGETS}")
        before = self.progress()
        killed = time.monotonic()
        if target in SERVERS:
            server = self.fleet.servers[SERVERS.index(target)]
            server.kill()
            time.sleep(down_s)
            server.start()
        else:
            self.fleet.services[target].kill()
            time.sleep(down_s)
            self.fleet.services[target] = self.fleet.services[target].restarted()
        restarted = time.monotonic() - killed
        waited = self.wait_resumed(before, timeout)
        resume = None if waited is None else round(restarted + waited, 1)
        record = {"target": target, "down_s": down_s, "resume_s": resume, "before": before.__dict__,
                  "after": self.progress().__dict__, "dead_services": self.fleet.dead_services()}
        self.faults.append(record)
        log.info("fault %s: resumed in %s s", target, resume)
        return record

    # ---- the end ----------------------------------------------------------------------

    def stop_edges(self, timeout: float = 180.0) -> dict[str, int | None]:
        """SIGTERM every edge: each sends its last chunk, waits for its acks and writes its summary."""
        return {name: proc.stop(timeout) for name, proc in self.fleet.edges.items()}

    def summaries(self) -> dict[str, dict[str, Any]]:
        from cloudtutor_edge.agent import summary_path

        out = {}
        for dev in self.devices:
            path = summary_path(sink_path(self.plan, dev))
            out[dev] = json.loads(path.read_text()) if path.exists() else {"device_id": dev, "boot_id": "?"}
        return out

    def check(self) -> dict[str, Any]:
        """After :meth:`stop_edges`: delivery, model versions and weights of every device."""
        from cloudtutor import distill
        from cloudtutor.streams import model_blob

        frames = loopcheck.ingested_frames(self.fb)
        summaries = self.summaries()
        devices = []
        for dev in self.devices:
            delivery = loopcheck.check_delivery(frames, summaries[dev])
            log_text = self.fleet.edges[dev].log_path.read_text(errors="replace")
            applied = loopcheck.applied_updates(log_text)
            sink_versions = [version for _, version, _ in read_sink(self.plan, dev)]
            traffic = self.observer.devices.get(dev) if self.observer else None
            reported = traffic.reported if traffic else None
            cloud = self.fb.get_blob(model_blob(dev, reported.version)) if reported else None
            cloud_sha = distill.vector_sha256(cloud) if cloud is not None else None
            devices.append({
                "delivery": delivery.as_dict(), "delivery_ok": delivery.ok,
                "updates_applied": len(applied), "final_version": applied[-1].version if applied else 0,
                "version_problems": loopcheck.version_problems(applied),
                "sink_version_problems": loopcheck.sink_version_problems(sink_versions)[:10],
                "repeated_updates_ignored": log_text.count("ignored a repeated"),
                "edge_sha256": reported.sha256 if reported else None, "cloud_sha256": cloud_sha,
                "weights_match": bool(reported and reported.status == "applied" and reported.sha256 == cloud_sha),
            })
        ingest_log = self.fleet.services["ingest"].log_path.read_text(errors="replace")
        frame_blobs = sum(1 for _ in self.fb.redis.scan_iter(match=self.fb.array_key("frame:*"), count=1000))
        return {"devices": devices, "faults": self.faults,
                # Resends ingest recognised (stored before, ack lost): deduplicated, acked again.
                "duplicates_reacked": ingest_log.count("duplicate chunk re-acked"),
                # Frame arrays (low-res and upscaled) still in Redis: the labeler deletes what it labelled.
                "frame_blobs_left": frame_blobs, "frames_ingested": sum(frames.values())}


def loop_plan(videos: list[Path], out: Path, *, devices: int, duration_s: float, t_update_s: float = 5.0,
              infer_fps: float = 1.0, sample_fps: float = 1.0, lockstep_lag_s: float | None = 10.0) -> DemoPlan:
    """The plan both the fault suite and the load bench run (simulated clock, brief §10.1)."""
    from cloudtutor.knobs import Knobs

    os.makedirs(out, exist_ok=True)
    return DemoPlan(
        videos=videos, out=out, devices=devices, duration_s=duration_s, speed=0.0, lockstep_lag_s=lockstep_lag_s,
        knobs=Knobs(infer_fps=infer_fps, sample_fps=sample_fps, t_update_s=t_update_s),
        trainer={"iterations": 5, "batch_size": 1, "train_width": 256},
    )


__all__ = ["LiveLoop", "LoopError", "Progress", "SERVERS", "TARGETS", "loop_plan"]
