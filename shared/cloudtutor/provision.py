"""Device provisioning: ``cloudtutor device provision NAME`` (brief §7, §10.5).

One device gets:

* MQTT credentials: a random password and its Mosquitto 2 password-file line
  (``NAME:$7$...``, PBKDF2-SHA512 as ``mosquitto_passwd`` writes it);
* ACL lines that confine it to its own topics (built with ``cloudtutor.topics``):
  it may publish only its ``chunks``, ``activations``, ``telemetry``,
  ``status`` (also its last will), ``model/reported`` and ``model/resync``,
  and read only its ``model/delta``, ``model/snapshot``, ``control/state``,
  plus ``chunks/ack`` (brief §10.4: the spool needs the acks) and
  ``results`` (§10.8, split mode). Nothing else: not another device's
  topics, not ``control/set``;
* update-signing material: per §10.5 the fleet's Ed25519 private key stays
  in the cloud (the publisher's Secret) and a device holds only the public
  key, so there is no per-device private key: the bundle carries the fleet's
  public key, and a stolen device cannot forge updates for others;
* a config bundle: ``device/`` (copied to the device's ``/etc/cloudtutor``:
  ``edge.yaml`` validated by :class:`~cloudtutor.config.edge.EdgeConfig`,
  the public key, the broker's CA when TLS is used) and ``broker/`` (its
  password line and ACL lines). Provisioning also rewrites the fleet-wide
  ``broker/passwd`` and ``broker/acl`` under the output root from every
  device folder there: the two keys of the chart's device Secret.

Everything but :func:`provision` (which writes files) is a pure function.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from cloudtutor.topics import Leaf, Topics, check_name

# mosquitto_passwd 2.0 writes 101 PBKDF2 iterations and a 12-byte salt; the
# broker reads the count from the hash. The passwords are 256 random bits, so
# the low count does not make them guessable.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12

DEVICE_WRITES = (Leaf.CHUNKS, Leaf.ACTIVATIONS, Leaf.TELEMETRY, Leaf.STATUS, Leaf.MODEL_REPORTED, Leaf.MODEL_RESYNC)
DEVICE_READS = (Leaf.MODEL_DELTA, Leaf.MODEL_SNAPSHOT, Leaf.CONTROL_STATE, Leaf.CHUNKS_ACK, Leaf.RESULTS)

DEVICE_CONFIG_DIR = Path("/etc/cloudtutor")  # where device/ lands on the device
PUBLIC_KEY_NAME = "update-public-key.pem"
CA_NAME = "ca.crt"


class ProvisionError(ValueError):
    """Provisioning cannot go on (an existing device without --force, a bad key file)."""


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2's ``$7$`` hash: PBKDF2-HMAC-SHA512, base64 salt and 64-byte digest."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_mosquitto_hash(password: str, hashed: str) -> bool:
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    iterations, salt, digest = int(parts[2]), base64.b64decode(parts[3]), parts[4]
    return secrets.compare_digest(mosquitto_hash(password, salt=salt, iterations=iterations).split("$")[4], digest)


def password_line(username: str, password: str, *, salt: bytes | None = None) -> str:
    return f"{username}:{mosquitto_hash(password, salt=salt)}"


def acl_lines(device_id: str, prefix: str = "cloudtutor") -> list[str]:
    """The device's block of a Mosquitto ACL file (``user`` then its topics)."""
    topics = Topics(prefix)
    check_name(device_id)
    lines = [f"# device {device_id} (cloudtutor device provision)", f"user {device_id}"]
    lines += [f"topic write {topics.device(device_id, leaf)}" for leaf in DEVICE_WRITES]
    lines += [f"topic read {topics.device(device_id, leaf)}" for leaf in DEVICE_READS]
    return lines


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    prefix: str = "cloudtutor"
    ca_file: Path | None = None  # the broker's CA on this machine; copied into the bundle


def edge_config(device_id: str, password: str, broker: Broker, *, config_dir: Path = DEVICE_CONFIG_DIR) -> dict:
    """The device's edge.yaml as a mapping, validated by EdgeConfig (paths are the device's)."""
    from cloudtutor.config.edge import EdgeConfig

    mqtt: dict = {
        "host": broker.host, "port": broker.port, "prefix": broker.prefix,
        "username": device_id, "password": password, "client_id": device_id,
    }
    if broker.ca_file is not None:
        mqtt["tls"] = {"ca_file": str(config_dir / CA_NAME)}
    doc = {
        "device_id": device_id,
        "mqtt": mqtt,
        "update_public_key": str(config_dir / PUBLIC_KEY_NAME),
        "spool_dir": "/var/lib/cloudtutor/spool",
        "models": {"data_root": "/var/lib/cloudtutor/models"},
    }
    EdgeConfig.model_validate(doc)  # raises on any key the agent would refuse
    return doc


def public_key_pem(*, fleet_key: Path | None = None, fleet_public_key: Path | None = None) -> bytes:
    """The fleet's public key (PEM) from its public key file or from its private key."""
    from cryptography.hazmat.primitives import serialization

    from cloudtutor.signing import load_private_key, load_public_key

    try:
        public = load_public_key(fleet_public_key) if fleet_public_key else load_private_key(fleet_key).public_key()
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"fleet key: {exc}") from None
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def ensure_fleet_key(path: Path) -> bool:
    """Create the fleet's private key at ``path`` if missing (0600); True if created."""
    from cloudtutor.signing import generate_key, save_private_key

    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    save_private_key(generate_key(), path)
    return True


def fleet_broker_files(root: Path) -> tuple[str, str]:
    """The fleet's password file and ACL: every provisioned device under ``root``, by name."""
    passwd, acl = [], []
    for device_dir in sorted(p for p in root.iterdir() if (p / "broker" / "passwd").is_file()):
        passwd.append((device_dir / "broker" / "passwd").read_text().strip())
        acl.append((device_dir / "broker" / "acl").read_text().strip())
    return "\n".join(passwd) + "\n" if passwd else "", "\n\n".join(acl) + "\n" if acl else ""


def _write(path: Path, data: str | bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with the final mode so a secret is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def provision(
    device_id: str, root: Path, broker: Broker, *, public_key: bytes, force: bool = False,
    config_dir: Path = DEVICE_CONFIG_DIR,
) -> Path:
    """Write ``root/NAME/{device,broker}`` and rebuild ``root/broker/{passwd,acl}``; the device folder."""
    import yaml

    check_name(device_id)
    if device_id == "broker":
        raise ProvisionError("'broker' is reserved for the fleet-wide files")
    out = root / device_id
    if out.exists():
        if not force:
            raise ProvisionError(f"{out} exists: device {device_id!r} is provisioned already (--force rotates its password)")
        shutil.rmtree(out)
    password = secrets.token_urlsafe(32)
    config = edge_config(device_id, password, broker, config_dir=config_dir)
    _write(out / "device" / "edge.yaml", yaml.safe_dump(config, sort_keys=False), 0o600)
    _write(out / "device" / PUBLIC_KEY_NAME, public_key, 0o644)
    if broker.ca_file is not None:
        _write(out / "device" / CA_NAME, Path(broker.ca_file).read_bytes(), 0o644)
    _write(out / "broker" / "passwd", password_line(device_id, password) + "\n", 0o600)
    _write(out / "broker" / "acl", "\n".join(acl_lines(device_id, broker.prefix)) + "\n", 0o644)
    passwd, acl = fleet_broker_files(root)
    _write(root / "broker" / "passwd", passwd, 0o600)
    _write(root / "broker" / "acl", acl, 0o644)
    return out


# ---- command line (registered by cloudtutor.cli) --------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    device = sub.add_parser("device", help="device management")
    device_sub = device.add_subparsers(dest="device_command", required=True)
    p = device_sub.add_parser("provision", help="MQTT credentials, ACL lines, fleet public key and config bundle of a device")
    p.add_argument("name", help="device id (also its MQTT user name and client id)")
    p.add_argument("--out", default="out/devices", help="bundle root; NAME/ and the fleet's broker/ go here (default: out/devices)")
    p.add_argument("--mqtt-host", required=True, help="broker host name as the device reaches it")
    p.add_argument("--mqtt-port", type=int, help="the broker's device port (default: 1884, the chart's; 8883 with --ca-file)")
    p.add_argument("--prefix", default="cloudtutor", help="topic prefix (default: cloudtutor)")
    p.add_argument("--ca-file", help="CA certificate of the broker's TLS listener (copied into the bundle; turns TLS on)")
    keys = p.add_mutually_exclusive_group(required=True)
    keys.add_argument("--fleet-key", help="the fleet's Ed25519 private key (PEM; created if missing): only its public half is bundled")
    keys.add_argument("--fleet-public-key", help="the fleet's public key (PEM), when the private key lives only in the cluster")
    p.add_argument("--config-dir", default=str(DEVICE_CONFIG_DIR), help="where device/ goes on the device (default: /etc/cloudtutor)")
    p.add_argument("--force", action="store_true", help="re-provision an existing device (new password)")
    p.set_defaults(func=_cli_provision)


def _cli_provision(args: argparse.Namespace) -> int:
    root = Path(args.out)
    try:
        if args.fleet_key and ensure_fleet_key(Path(args.fleet_key)):
            print(f"created the fleet's signing key {args.fleet_key}: load it into the publisher's Secret "
                  f"(charts/README.md); it never goes to a device", file=sys.stderr)
        pem = public_key_pem(
            fleet_key=Path(args.fleet_key) if args.fleet_key else None,
            fleet_public_key=Path(args.fleet_public_key) if args.fleet_public_key else None,
        )
        port = args.mqtt_port or (8883 if args.ca_file else 1884)
        broker = Broker(args.mqtt_host, port, args.prefix, Path(args.ca_file) if args.ca_file else None)
        out = provision(args.name, root, broker, public_key=pem, force=args.force, config_dir=Path(args.config_dir))
    except (ProvisionError, ValueError, OSError) as exc:
        print(f"device provision: {exc}", file=sys.stderr)
        return 2
    print(f"{out}/device/: copy to {args.config_dir} on the device (edge.yaml holds its MQTT password: mode 0600)")
    print(f"{root}/broker/passwd and {root}/broker/acl: the broker's device Secret (see charts/README.md)")
    return 0
