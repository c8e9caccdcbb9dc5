"""Split-mode results, cloud to edge on ``{prefix}/devices/{id}/results``
(QoS 0, brief §10.8): the labels the cloud computed from one frame's
activations.

Layout: ``b"CTR1"``, u32 little-endian meta length, meta JSON
(``boot_id``, ``seq`` of the activations, ``pts_ms``, ``shape`` [H, W]),
then the uint8 label map zlib-compressed. :func:`decode_result` checks
every length before trusting it and raises ``ValueError`` with the reason.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"CTR1"
MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class SplitResult:
    boot_id: str
    seq: int
    pts_ms: int
    labels: np.ndarray  # uint8 H x W, the profile's common labels (255 = none)


def encode_result(result: SplitResult) -> bytes:
    labels = np.ascontiguousarray(result.labels, dtype=np.uint8)
    if labels.ndim != 2:
        raise ValueError(f"labels must be HxW, got shape {labels.shape}")
    meta = json.dumps({"boot_id": result.boot_id, "seq": result.seq, "pts_ms": result.pts_ms,
                       "shape": list(labels.shape)}, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(meta)) + meta + zlib.compress(labels.tobytes(), 6)


def decode_result(data: bytes) -> SplitResult:
    if len(data) < 8 or data[:4] != MAGIC:
        raise ValueError("not a split result (bad magic)")
    (n,) = struct.unpack("<I", data[4:8])
    if n > 4096 or 8 + n > len(data):
        raise ValueError(f"meta length {n} does not fit {len(data)} bytes")
    try:
        meta = json.loads(data[8:8 + n])
        h, w = (int(v) for v in meta["shape"])
        boot_id, seq, pts = str(meta["boot_id"]), int(meta["seq"]), int(meta["pts_ms"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable result meta: {exc}") from None
    if not (0 < h and 0 < w and h * w <= MAX_PIXELS):
        raise ValueError(f"label shape {h}x{w} out of range")
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data[8 + n:], h * w)
    except zlib.error as exc:
        raise ValueError(f"corrupt labels: {exc}") from None
    if len(raw) != h * w or d.unconsumed_tail or not d.eof:
        raise ValueError(f"labels of {len(raw)} bytes for a {h}x{w} map, or trailing data")
    return SplitResult(boot_id, seq, pts, np.frombuffer(raw, dtype=np.uint8).reshape(h, w))
