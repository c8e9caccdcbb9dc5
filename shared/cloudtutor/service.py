"""The skeleton every cloud service runs on (``cloudtutor serve NAME``).

A service is a thin loop: :meth:`Service.setup` registers its MQTT
subscriptions and Redis consumer groups, :meth:`Service.step` does one
bounded piece of work (read a few stream entries, call pure library code,
write results, acknowledge), and the base class supplies the rest: config,
logging, the ``/metrics`` and ``/healthz`` endpoint, the MQTT bus with the
service's retained status and last will, the Redis frame buffer, graceful
shutdown on SIGTERM/SIGINT, and one way to refuse bad input
(:meth:`Service.reject`: one structured log line and one counter per
rejected message; the service keeps serving).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, ClassVar

from cloudtutor import __version__
from cloudtutor.bus import Bus
from cloudtutor.config.cloud import CloudConfig
from cloudtutor.health import HealthServer
from cloudtutor.logs import setup_logging
from cloudtutor.metrics import Metrics
from cloudtutor.topics import Topics

REJECTED = "cloudtutor_rejected_total"
STEPS = "cloudtutor_service_steps_total"
ERRORS = "cloudtutor_service_errors_total"


class Service:
    """Base class of the six services; subclasses set ``name`` and override
    :meth:`setup` and :meth:`step`."""

    name: ClassVar[str] = "service"
    #: Whether the service needs Redis (all but a pure MQTT one do).
    uses_redis: ClassVar[bool] = True

    def __init__(self, config: CloudConfig, *, metrics: Metrics | None = None, health_port: int | None = -1) -> None:
        self.config = config
        self.log = logging.getLogger(f"cloudtutor.{self.name}")
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.describe(REJECTED, "Messages refused as malformed or invalid, by what and reason.")
        self.topics = Topics(config.mqtt.prefix)
        section = getattr(config, self.name, None)
        self.group = (getattr(section, "share_group", None) or self.name)
        self.consumer = f"{self.name}-{threading.get_native_id()}-{int(time.time() * 1000) % 10**8}"
        self.stop_event = threading.Event()
        self.bus = Bus(
            config.mqtt, name=self.name, metrics=self.metrics,
            status_topic=self.topics.service_status(self.name), status_fields={"agent_version": __version__},
        )
        self.fb = None
        if self.uses_redis:
            from cloudtutor.framebuffer import FrameBuffer  # cloud-only dependency

            self.fb = FrameBuffer(config.redis, config.framebuffer, metrics=self.metrics)
        port = config.metrics_port if health_port == -1 else health_port
        self.health = HealthServer(self.metrics, port=port) if port is not None else None

    # -- to override -------------------------------------------------------------

    def setup(self) -> None:
        """Register subscriptions and consumer groups (called once, before the loop)."""

    def step(self) -> bool:
        """One bounded piece of work; True if it did something (else the loop
        may wait briefly). Blocking reads should use the frame buffer's block_ms."""
        self.stop_event.wait(0.5)
        return False

    def teardown(self) -> None:
        """Release what setup took (called once, after the loop)."""

    # -- provided ----------------------------------------------------------------

    def reject(self, what: str, reason: str, detail: str, **fields: Any) -> None:
        """Refuse one message: one structured warning and one counter; never raises."""
        self.metrics.inc(REJECTED, service=self.name, what=what, reason=reason)
        self.log.warning("rejected %s: %s", what, detail, extra={"fields": {"what": what, "reason": reason, **fields}})

    def healthy(self) -> bool:
        if not self.bus.connected:
            return False
        if self.fb is not None:
            try:
                self.fb.redis.ping()
            except Exception:
                return False
        return True

    def start(self) -> Service:
        """Connect, set up, and serve /metrics and /healthz (does not loop)."""
        if self.health is not None:
            self.health.add_check("mqtt+redis", self.healthy)
            self.health.start()
        self.bus.start()
        if not self.bus.wait_connected(self.config.mqtt.connect_timeout_s):
            raise RuntimeError(f"{self.name}: no MQTT connection to {self.config.mqtt.host}:{self.config.mqtt.port}")
        self.setup()
        self.log.info("%s started", self.name, extra={"fields": {"consumer": self.consumer, "group": self.group}})
        return self

    def run(self) -> None:
        """Loop over :meth:`step` until :meth:`stop`; an exception in a step is
        logged and counted, and the loop goes on (after a short pause, so a
        persistent fault does not spin)."""
        while not self.stop_event.is_set():
            try:
                did = self.step()
                self.metrics.inc(STEPS, service=self.name)
            except Exception:
                self.metrics.inc(ERRORS, service=self.name)
                self.log.exception("%s: step failed", self.name)
                self.stop_event.wait(1.0)
                continue
            if not did:
                self.stop_event.wait(0.01)

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        try:
            self.teardown()
        finally:
            self.bus.close()
            if self.fb is not None:
                self.fb.close()
            if self.health is not None:
                self.health.stop()

    def serve_forever(self) -> None:
        """start(), run() until SIGTERM/SIGINT, close(): what a container does."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        self.start()
        try:
            self.run()
        finally:
            self.close()
            self.log.info("%s stopped", self.name)


def service_class(name: str) -> type[Service]:
    """The Service subclass of ``cloudtutor_services.<name>`` (its ``SERVICE`` attribute)."""
    import importlib

    from cloudtutor.config.cloud import SERVICES

    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; services: {', '.join(SERVICES)}")
    module = importlib.import_module(f"cloudtutor_services.{name}.service")
    return module.SERVICE


def serve(name: str, config: CloudConfig) -> None:
    setup_logging(config.log, f"cloudtutor.{name}")
    service_class(name)(config).serve_forever()
