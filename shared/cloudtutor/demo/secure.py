"""``cloudtutor demo --secure``: the local fleet with the chart's protections on.

* Mosquitto without anonymous access: a password file and an ACL file as
  ``cloudtutor device provision`` writes them (each device confined to its
  own topics), plus one account for the six services (everything under the
  prefix, as the chart's ``services.acl``);
* the devices connect over TLS to a second listener, verifying the broker
  with a CA made for this run (``testing/tls.py``), and there a device's
  client id is forced to its user name (a device cannot take over another's
  session); the services keep the plain loopback listener, as in the chart;
* Redis with ``requirepass``;
* every password random per run, handed to each process in its environment
  only (``CLOUDTUTOR_MQTT__PASSWORD``, ``CLOUDTUTOR_REDIS__PASSWORD``,
  ``CLOUDTUTOR_EDGE__MQTT__PASSWORD``): not on a command line, not in the
  YAML files under ``OUT/config`` (pydantic masks them there).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from cloudtutor.config.common import MqttSettings, RedisSettings, TlsSettings
from cloudtutor.provision import acl_lines, password_line
from cloudtutor.testing.servers import MosquittoServer, RedisServer, free_port
from cloudtutor.testing.tls import TlsFiles, make_ca, mosquitto_tls_listener

SERVICES_USER = "cloudtutor-services"


def _secret() -> str:
    return secrets.token_urlsafe(32)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


@dataclass
class SecureFleet:
    """Credentials and broker files of one secure run (see the module doc)."""

    folder: Path
    device_ids: list[str]
    prefix: str = "cloudtutor"
    services_password: str = field(default_factory=_secret)
    redis_password: str = field(default_factory=_secret)
    device_passwords: dict[str, str] = field(default_factory=dict)
    tls: TlsFiles | None = None
    tls_port: int = 0
    host: str = "127.0.0.1"  # the broker's, once started (the TLS certificate names it)

    def __post_init__(self) -> None:
        self.device_passwords = {d: _secret() for d in self.device_ids}

    @property
    def secrets(self) -> list[str]:
        """Every secret of the run (what must never appear in a log)."""
        return [self.services_password, self.redis_password, *self.device_passwords.values()]

    def write_broker_files(self) -> tuple[Path, Path]:
        """``passwd`` (0600, PBKDF2 hashes) and ``acl``: the services' account and each device's block."""
        passwd = [password_line(SERVICES_USER, self.services_password)]
        acl = [f"user {SERVICES_USER}", f"topic readwrite {self.prefix}/#"]
        for device, password in self.device_passwords.items():
            passwd.append(password_line(device, password))
            acl += ["", *acl_lines(device, self.prefix)]
        passwd_path, acl_path = self.folder / "broker" / "passwd", self.folder / "broker" / "acl"
        _write_private(passwd_path, "\n".join(passwd) + "\n")
        _write_private(acl_path, "\n".join(acl) + "\n")
        return passwd_path, acl_path

    def start_servers(self, mosquitto_dir: Path, redis_dir: Path, **broker_kwargs) -> tuple[MosquittoServer, RedisServer]:
        """Mosquitto (plain listener for the services, TLS listener for the devices) and Redis, both authenticated."""
        passwd, acl = self.write_broker_files()
        self.tls = make_ca(self.folder / "pki")
        self.tls_port = free_port()
        device_listener = [*mosquitto_tls_listener(self.tls_port, self.tls), "use_username_as_clientid true"]
        broker = MosquittoServer(
            workdir=mosquitto_dir, password_file=passwd, acl_file=acl, extra_config=device_listener, **broker_kwargs,
        ).start()
        self.host = broker.host
        try:
            store = RedisServer(workdir=redis_dir, password=self.redis_password).start()
        except BaseException:
            broker.close()
            raise
        return broker, store

    def services_mqtt(self, broker: MosquittoServer) -> MqttSettings:
        return broker.mqtt_settings(prefix=self.prefix, username=SERVICES_USER, password=SecretStr(self.services_password))

    def device_mqtt(self, device: str) -> MqttSettings:
        """A device's own account, over TLS, verifying the broker with this run's CA."""
        assert self.tls is not None, "start_servers() first"
        return MqttSettings(
            host=self.host, port=self.tls_port, prefix=self.prefix, username=device,
            password=SecretStr(self.device_passwords[device]), tls=TlsSettings(ca_file=self.tls.ca_cert),
        )

    def services_env(self) -> dict[str, str]:
        """Environment of a service process: its two passwords."""
        return {"CLOUDTUTOR_MQTT__PASSWORD": self.services_password, "CLOUDTUTOR_REDIS__PASSWORD": self.redis_password}

    def edge_env(self, device: str) -> dict[str, str]:
        """Environment of one edge agent: its own MQTT password, nothing else."""
        return {"CLOUDTUTOR_EDGE__MQTT__PASSWORD": self.device_passwords[device]}


def start_secure(fleet) -> tuple[MqttSettings, RedisSettings]:
    """The demo Fleet's servers with --secure: sets ``fleet.secure``; the services' MQTT and Redis settings."""
    from cloudtutor.demo.edgeplan import device_id

    plan = fleet.plan
    fleet.secure = SecureFleet(plan.out / "config" / "secure", [device_id(i) for i in range(plan.devices)], plan.prefix)
    # Queue deeply enough that a slow consumer never makes the broker drop QoS 1 messages.
    broker, store = fleet.secure.start_servers(plan.out / "mosquitto", plan.out / "redis", max_queued_messages=10_000)
    fleet.servers += [broker, store]
    return fleet.secure.services_mqtt(broker), store.redis_settings()


__all__ = ["SERVICES_USER", "SecureFleet", "start_secure"]
