"""Ed25519 signatures of model updates (brief §4, §10.5).

The fleet's private key stays in the cloud (a Kubernetes Secret); devices
hold only the public key, so a stolen device cannot forge updates. The
signature covers the whole envelope header except itself, and the header
carries the device id, the base and new versions and the body's sha256: an
update cannot be moved to another device, replayed onto another version, or
given another body without failing verification or the version check.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloudtutor.headers import EnvelopeHeader

H = EnvelopeHeader


class SignatureError(ValueError):
    """An update whose signature is missing or does not verify."""


def signed_bytes(header: EnvelopeHeader) -> bytes:
    """Canonical bytes the signature covers: the header without ``signature``."""
    doc = header.model_dump(mode="json", exclude={"signature"}, exclude_none=True)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def sign_header(header: H, key: Ed25519PrivateKey) -> H:
    """A copy of ``header`` with its signature set. The header must already
    hold the final ``body_len`` and ``body_sha256`` (see delta.seal)."""
    signature = base64.b64encode(key.sign(signed_bytes(header))).decode()
    return header.model_copy(update={"signature": signature})


def verify_header(header: EnvelopeHeader, key: Ed25519PublicKey) -> None:
    signature = getattr(header, "signature", None)
    if not signature:
        raise SignatureError("update is not signed")
    try:
        raw = base64.b64decode(signature, validate=True)
        # One spelling per signature: base64 ignores a final character's spare
        # bits, so without this, copies of one update could differ in bytes.
        if base64.b64encode(raw).decode() != signature:
            raise ValueError("non-canonical base64")
        key.verify(raw, signed_bytes(header))
    except (InvalidSignature, ValueError):
        raise SignatureError("signature does not verify with this device's update key") from None


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)


def save_public_key(key: Ed25519PublicKey, path: Path) -> None:
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key
