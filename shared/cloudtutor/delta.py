"""Sparse model updates and full snapshots (brief §4, §10.5).

A delta's body, before compression::

    for each floating tensor, in state-dict order:  numpy.packbits(mask.ravel())
    then, for each floating tensor, in the same order: the NEW values of its
        selected coordinates as little-endian float16

New values rather than differences, so that a lost or repeated update can
never drift the weights; float16 on both sides, so that the edge's weights
and the cloud's edge view stay bit-identical and one sha256 checks them.

The edge applies a delta only if it is meant for this device and model, the
signature verifies, ``base_version`` is its current version, and the
resulting parameter vector hashes to ``params_sha256``. Any failure raises
:class:`UpdateRejected` with a reason, and the caller asks for a snapshot.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from enum import Enum
from typing import Literal

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloudtutor import envelope
from cloudtutor.headers import DeltaHeader, Kind, SnapshotHeader
from cloudtutor.modelstate import floating_items, fp16_bytes, params_sha256
from cloudtutor.signing import SignatureError, sign_header, verify_header

Compression = Literal["zlib", "zstd"]
State = Mapping[str, torch.Tensor]


class Reason(str, Enum):
    WRONG_DEVICE = "wrong_device"
    WRONG_MODEL = "wrong_model"
    BAD_SIGNATURE = "bad_signature"
    VERSION_GAP = "version_gap"
    STALE = "stale"
    CORRUPT_BODY = "corrupt_body"
    SHA_MISMATCH = "sha_mismatch"


class UpdateRejected(ValueError):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def compress(data: bytes, method: Compression) -> bytes:
    if method == "zlib":
        return zlib.compress(data, 9)
    import zstandard  # only where chosen: an optional dependency on the edge

    return zstandard.ZstdCompressor(level=19).compress(data)


def decompress(data: bytes, method: Compression, max_size: int) -> bytes:
    """Decompress at most ``max_size`` bytes (a zip bomb is a corrupt body)."""
    try:
        if method == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(data, max_size)
            if d.unconsumed_tail or not d.eof:
                raise UpdateRejected(Reason.CORRUPT_BODY, f"body inflates past {max_size} bytes or is truncated")
            return out
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=max_size)
    except UpdateRejected:
        raise
    except Exception as exc:  # zlib.error, zstandard.ZstdError (not a ValueError): all "corrupt"
        raise UpdateRejected(Reason.CORRUPT_BODY, f"cannot {method}-decompress: {exc}") from None


# ----------------------------------------------------------------- cloud side


def _seal(header, body: bytes, key: Ed25519PrivateKey | None) -> bytes:
    # Fill body_len/sha256 first: the signature must cover them.
    header = header.model_copy(update={"body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest()})
    if key is not None:
        header = sign_header(header, key)
    return envelope.encode(header, body)


def encode_delta(
    base: State,
    new: State,
    masks: Mapping[str, torch.Tensor],
    *,
    device_id: str,
    seq: int,
    model_id: str,
    base_version: int,
    version: int,
    key: Ed25519PrivateKey | None,
    compression: Compression = "zlib",
    metric: float | None = None,
    video_ms: int | None = None,
) -> tuple[bytes, dict[str, torch.Tensor]]:
    """Envelope bytes of the update from ``base`` (the edge view) to ``new``
    on the ``masks``' coordinates, and the new edge view it produces.

    Tensors without a mask entry are unchanged; ``new``'s values are rounded
    to float16 here, so the returned edge view is exactly what the edge gets.
    """
    mask_parts, value_parts, selected = [], [], 0
    view: dict[str, torch.Tensor] = dict(base)
    for name, tensor in floating_items(base):
        mask = masks.get(name)
        flat_mask = np.zeros(tensor.numel(), dtype=bool) if mask is None else mask.detach().cpu().numpy().astype(bool).ravel()
        if flat_mask.size != tensor.numel():
            raise ValueError(f"mask of {name} has {flat_mask.size} entries for {tensor.numel()} coordinates")
        mask_parts.append(np.packbits(flat_mask).tobytes())
        if flat_mask.any():
            values = new[name].detach().cpu().reshape(-1)[torch.from_numpy(flat_mask)].to(torch.float16)
            value_parts.append(values.numpy().astype("<f2", copy=False).tobytes())
            updated = tensor.detach().cpu().clone().reshape(-1)
            updated[torch.from_numpy(flat_mask)] = values.to(tensor.dtype)
            view[name] = updated.reshape(tensor.shape)
            selected += int(flat_mask.sum())
    body = compress(b"".join(mask_parts) + b"".join(value_parts), compression)
    header = DeltaHeader(
        device_id=device_id, seq=seq, model_id=model_id, base_version=base_version, version=version,
        compression=compression, selected=selected, params_sha256=params_sha256(view), metric=metric,
        video_ms=video_ms,
    )
    return _seal(header, body, key), view


def encode_snapshot(
    state: State, *, device_id: str, seq: int, model_id: str, version: int,
    key: Ed25519PrivateKey | None, compression: Compression = "zlib", video_ms: int | None = None,
) -> bytes:
    """Envelope bytes of the full parameter vector (float16)."""
    body = compress(b"".join(fp16_bytes(t) for _, t in floating_items(state)), compression)
    header = SnapshotHeader(
        device_id=device_id, seq=seq, model_id=model_id, version=version,
        compression=compression, params_sha256=params_sha256(state), video_ms=video_ms,
    )
    return _seal(header, body, key)


# ------------------------------------------------------------------ edge side


def _check_common(header, *, device_id: str, model_id: str, key: Ed25519PublicKey | None) -> None:
    if header.device_id != device_id:
        raise UpdateRejected(Reason.WRONG_DEVICE, f"update for {header.device_id!r} reached {device_id!r}")
    if header.model_id != model_id:
        raise UpdateRejected(Reason.WRONG_MODEL, f"update for model {header.model_id!r}, running {model_id!r}")
    if key is not None:
        try:
            verify_header(header, key)
        except SignatureError as exc:
            raise UpdateRejected(Reason.BAD_SIGNATURE, str(exc)) from None


def apply_delta(
    state: State, env: envelope.Envelope, *, device_id: str, model_id: str, version: int,
    key: Ed25519PublicKey | None,
) -> dict[str, torch.Tensor]:
    """The state after applying a decoded delta envelope to ``state`` (at
    ``version``); ``state`` itself is not modified. Raises UpdateRejected."""
    header = env.header
    if not isinstance(header, DeltaHeader):
        raise UpdateRejected(Reason.CORRUPT_BODY, f"expected a delta, got {header.kind.value}")
    _check_common(header, device_id=device_id, model_id=model_id, key=key)
    if header.version <= version:
        raise UpdateRejected(Reason.STALE, f"update to version {header.version}, already at {version}")
    if header.base_version != version:
        raise UpdateRejected(Reason.VERSION_GAP, f"update from version {header.base_version}, running {version}")

    tensors = list(floating_items(state))
    mask_bytes = sum((t.numel() + 7) // 8 for _, t in tensors)
    raw = decompress(env.body, header.compression, mask_bytes + 2 * sum(t.numel() for _, t in tensors))
    if len(raw) != mask_bytes + 2 * header.selected:
        raise UpdateRejected(Reason.CORRUPT_BODY, f"body of {len(raw)} bytes, expected {mask_bytes + 2 * header.selected}")
    values = np.frombuffer(raw, dtype="<f2", offset=mask_bytes)
    out: dict[str, torch.Tensor] = dict(state)
    mask_pos, value_pos = 0, 0
    for name, tensor in tensors:
        n = tensor.numel()
        nbytes = (n + 7) // 8
        mask = np.unpackbits(np.frombuffer(raw, dtype=np.uint8, count=nbytes, offset=mask_pos), count=n).astype(bool)
        mask_pos += nbytes
        k = int(mask.sum())
        if k:
            if value_pos + k > values.size:
                raise UpdateRejected(Reason.CORRUPT_BODY, "masks select more coordinates than the body carries")
            updated = tensor.detach().clone().reshape(-1)
            updated[torch.from_numpy(mask)] = torch.from_numpy(values[value_pos:value_pos + k].astype(np.float32)).to(tensor.dtype)
            out[name] = updated.reshape(tensor.shape)
            value_pos += k
    if value_pos != header.selected:
        raise UpdateRejected(Reason.CORRUPT_BODY, f"masks select {value_pos} coordinates, header says {header.selected}")
    got = params_sha256(out)
    if got != header.params_sha256:
        raise UpdateRejected(Reason.SHA_MISMATCH, f"weights hash to {got[:16]}..., update promised {header.params_sha256[:16]}...")
    return out


def apply_snapshot(
    state: State, env: envelope.Envelope, *, device_id: str, model_id: str, version: int,
    key: Ed25519PublicKey | None,
) -> dict[str, torch.Tensor]:
    """The state a decoded snapshot envelope describes (same structure as ``state``)."""
    header = env.header
    if not isinstance(header, SnapshotHeader):
        raise UpdateRejected(Reason.CORRUPT_BODY, f"expected a snapshot, got {header.kind.value}")
    _check_common(header, device_id=device_id, model_id=model_id, key=key)
    if header.version < version:
        raise UpdateRejected(Reason.STALE, f"snapshot of version {header.version}, already at {version}")
    tensors = list(floating_items(state))
    total = sum(t.numel() for _, t in tensors)
    raw = decompress(env.body, header.compression, 2 * total)
    if len(raw) != 2 * total:
        raise UpdateRejected(Reason.CORRUPT_BODY, f"snapshot of {len(raw)} bytes, model needs {2 * total}")
    values = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    out: dict[str, torch.Tensor] = dict(state)
    pos = 0
    for name, tensor in tensors:
        n = tensor.numel()
        out[name] = torch.from_numpy(values[pos:pos + n].copy()).to(tensor.dtype).reshape(tensor.shape)
        pos += n
    got = params_sha256(out)
    if got != header.params_sha256:
        raise UpdateRejected(Reason.SHA_MISMATCH, f"snapshot hashes to {got[:16]}..., header says {header.params_sha256[:16]}...")
    return out


def decode_update(data: bytes) -> envelope.Envelope:
    """Decode a delta or snapshot envelope (EnvelopeError on malformed bytes)."""
    env = envelope.decode(data)
    if env.header.kind not in (Kind.DELTA, Kind.SNAPSHOT):
        raise envelope.EnvelopeError(envelope.Reject.WRONG_KIND, f"{env.header.kind.value} is not a model update")
    return env
