"""Activation codec for split-brain inference (`papers/split-brain.md` §3-4).

The pipeline, per tensor (``C x H x W`` float32), each stage optional:

1. **temporal delta**: subtract the decoder's reconstruction of the same
   tensor in the previous frame (closed loop, as video codecs do, so the
   quantisation error never accumulates across frames);
2. **transform**: an orthonormal 2-D DCT-II on ``tile x tile`` tiles of each
   channel (edge-padded to whole tiles);
3. **quantisation** to ``bits`` per value:

   * ``uniform``: step = the channel's range / (2^bits - 1). Without delta
     or DCT the indices are ``round((v - lo) / step)`` in ``[0, 2^bits)``;
     with them the values are centred (residuals, DCT coefficients), so the
     indices are the signed ``round(v / step)``, unclipped (the entropy
     coder pays for the rare large ones). Bound: ``step / 2`` per value;
   * ``nonuniform``: a 2^bits-level codebook per tensor fitted by Lloyd's
     algorithm (initialised at quantiles, so levels crowd where post-PReLU
     activations crowd, near zero), its two ends pinned to the data's min
     and max. Bound: half the widest gap between adjacent levels;

4. **entropy coding** of indices and side information: zlib, zstd or lzma.

With the DCT the bound holds per coefficient, hence (orthonormal transform)
for the root-mean-square error of every tile, not for single values:
:meth:`Decoded.bounds` gives each tensor's bound and whether it is per value
or per tile RMS.

Channel similarity (the paper's §4.1 "encoding across channels") is left to
the entropy coder; a KL transform across channels was not tried.

Body layout (all little-endian)::

    b"CTA1", u32 meta length, meta JSON (utf-8), compressed payload

The meta JSON names each tensor, its shape, index dtype, mode, and the
lengths of its side and index sections inside the decompressed payload; the
decoder checks every length and shape against what it expects before
trusting any of it, and raises :class:`CodecError` (a ``ValueError``) with
the reason.
"""

from __future__ import annotations

import json
import lzma
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["CodecConfig", "CodecError", "Decoded", "decode", "encode"]

MAGIC = b"CTA1"
Quantizer = Literal["uniform", "nonuniform"]
Entropy = Literal["zlib", "zstd", "lzma", "none"]
_NAME = re.compile(r"^q([1-8])-(uniform|nonuniform)(\+dct(\d+))?\+(zlib|zstd|lzma|none)(\+delta)?$")
MAX_ELEMENTS = 64 * 1024 * 1024  # per message: a 4K frame's largest activations fit well under this


class CodecError(ValueError):
    """Undecodable or inconsistent activations; the message says why."""


@dataclass(frozen=True)
class CodecConfig:
    """One compression pipeline; :attr:`name` is its wire name (ActivationsHeader.codec)."""

    bits: int = 4
    quantizer: Quantizer = "uniform"
    dct_tile: int = 0  # 0 = no transform
    entropy: Entropy = "zstd"
    temporal: bool = False
    intra_every: int = 10  # a frame without temporal delta every N frames (resync after a loss)

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be 1..8, got {self.bits}")
        if self.quantizer not in ("uniform", "nonuniform"):
            raise ValueError(f"unknown quantizer {self.quantizer!r}")
        if self.dct_tile and not 2 <= self.dct_tile <= 32:
            raise ValueError(f"dct_tile must be 0 or 2..32, got {self.dct_tile}")
        if self.entropy not in ("zlib", "zstd", "lzma", "none"):
            raise ValueError(f"unknown entropy coder {self.entropy!r}")
        if self.intra_every < 1:
            raise ValueError(f"intra_every must be >= 1, got {self.intra_every}")

    @property
    def name(self) -> str:
        dct = f"+dct{self.dct_tile}" if self.dct_tile else ""
        return f"q{self.bits}-{self.quantizer}{dct}+{self.entropy}" + ("+delta" if self.temporal else "")

    @classmethod
    def parse(cls, name: str, intra_every: int = 10) -> CodecConfig:
        m = _NAME.match(name)
        if not m:
            raise CodecError(f"unknown codec {name!r} (expected e.g. 'q4-uniform+dct8+zstd+delta')")
        return cls(bits=int(m[1]), quantizer=m[2], dct_tile=int(m[4] or 0), entropy=m[5],  # type: ignore[arg-type]
                   temporal=bool(m[6]), intra_every=intra_every)


# ----------------------------------------------------------------- transforms


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float64)


def _tiles(shape: tuple[int, int, int], t: int) -> tuple[int, int]:
    _, h, w = shape
    return -(-h // t) * t, -(-w // t) * t


def dct_tiles(x: np.ndarray, t: int) -> np.ndarray:
    """``C x H x W`` -> ``C x Hp x Wp`` coefficients (Hp, Wp whole tiles; edge-padded).

    float32 matrix products (``D B D^T`` per tile): the encoder is on the
    edge's budget, and its reconstruction goes through the decoder's own
    arithmetic anyway, so both sides agree bit for bit.
    """
    c, h, w = x.shape
    hp, wp = _tiles(x.shape, t)
    xp = np.pad(np.asarray(x, dtype=np.float32), ((0, 0), (0, hp - h), (0, wp - w)), mode="edge")
    d = _dct_matrix(t).astype(np.float32)
    blocks = xp.reshape(c, hp // t, t, wp // t, t).transpose(0, 1, 3, 2, 4)
    coef = d @ blocks @ d.T
    return np.ascontiguousarray(coef.transpose(0, 1, 3, 2, 4)).reshape(c, hp, wp)


def idct_tiles(coef: np.ndarray, t: int, shape: tuple[int, int, int]) -> np.ndarray:
    c, hp, wp = coef.shape
    d = _dct_matrix(t).astype(np.float32)
    blocks = np.asarray(coef, dtype=np.float32).reshape(c, hp // t, t, wp // t, t).transpose(0, 1, 3, 2, 4)
    x = (d.T @ blocks @ d).transpose(0, 1, 3, 2, 4).reshape(c, hp, wp)
    return np.ascontiguousarray(x[:, : shape[1], : shape[2]])


# ----------------------------------------------------------------- quantisers


def _smallest_int(lo: int, hi: int, signed: bool) -> str:
    for code in (("i1", "i2", "i4") if signed else ("u1", "u2", "u4")):
        info = np.iinfo(np.dtype(code))
        if info.min <= lo and hi <= info.max:
            return code
    raise CodecError(f"indices {lo}..{hi} do not fit 32 bits")


def lloyd_levels(values: np.ndarray, levels: int, iterations: int = 8, sample: int = 65536) -> np.ndarray:
    """A ``levels``-entry sorted float32 codebook: Lloyd's algorithm on a
    subsample, started at quantiles, with its ends pinned to min and max."""
    flat = values.ravel().astype(np.float32)
    lo, hi = float(flat.min()), float(flat.max())
    if levels == 1 or hi == lo:
        return np.full(levels, lo, dtype=np.float32) if levels == 1 else np.linspace(lo, lo + 1, levels, dtype=np.float32)
    if flat.size > sample:
        flat = flat[np.random.default_rng(0).choice(flat.size, sample, replace=False)]
    book = np.quantile(flat, np.linspace(0, 1, levels)).astype(np.float64)
    for _ in range(iterations):
        edges = (book[1:] + book[:-1]) / 2
        idx = np.searchsorted(edges, flat)
        sums = np.bincount(idx, weights=flat, minlength=levels)
        counts = np.bincount(idx, minlength=levels)
        book = np.where(counts > 0, sums / np.maximum(counts, 1), book)
        book[0], book[-1] = lo, hi
        book = np.sort(book)
    book = np.maximum.accumulate(book)
    return book.astype(np.float32)


def _quantize(v: np.ndarray, x_range: tuple[np.ndarray, np.ndarray], cfg: CodecConfig, centred: bool) -> tuple[dict, bytes, bytes, float]:
    """Indices of ``v`` (C x ...); returns (meta, side bytes, index bytes, bound)."""
    c = v.shape[0]
    levels = 1 << cfg.bits
    if cfg.quantizer == "uniform":
        lo, hi = x_range
        # A floor relative to the magnitude of the channel and of what is
        # quantised: a near-constant channel far from zero, or a residual
        # against a very different previous frame, would otherwise get a
        # vanishing step and centred indices (DCT, residuals) past 32 bits.
        mag = np.abs(v).reshape(c, -1).max(1) if v.size else np.zeros(c, np.float32)
        floor = np.maximum(np.maximum(np.maximum(np.abs(lo), np.abs(hi)), mag) * 2.0**-20, 1e-30)
        step = np.where(hi > lo, np.maximum((hi - lo) / (levels - 1), floor), 1.0).astype(np.float32)
        shape = (c,) + (1,) * (v.ndim - 1)
        if centred:
            idx = np.rint(v / step.reshape(shape)).astype(np.int64)
        else:
            idx = np.clip(np.rint((v - lo.reshape(shape)) / step.reshape(shape)), 0, levels - 1).astype(np.int64)
        side = (lo.astype("<f4").tobytes() if not centred else b"") + step.astype("<f4").tobytes()
        bound = float(step.max()) / 2
    else:
        book = lloyd_levels(v, levels)
        edges = (book[1:] + book[:-1]) / 2
        idx = np.searchsorted(edges, v.ravel()).reshape(v.shape).astype(np.int64)
        side = book.astype("<f4").tobytes()
        bound = float(np.diff(book.astype(np.float64)).max(initial=0.0)) / 2
    code = _smallest_int(int(idx.min(initial=0)), int(idx.max(initial=0)), signed=bool(idx.min(initial=0) < 0))
    return {"idx": code, "side": len(side)}, side, idx.astype(code).tobytes(), bound


def _dequantize(meta: dict, side: bytes, idx: np.ndarray, c: int, cfg: CodecConfig, centred: bool) -> np.ndarray:
    levels = 1 << cfg.bits
    if cfg.quantizer == "uniform":
        want = 4 * c * (1 if centred else 2)
        if len(side) != want:
            raise CodecError(f"uniform side information of {len(side)} bytes, expected {want}")
        arr = np.frombuffer(side, dtype="<f4")
        lo, step = (np.zeros(c, np.float32), arr) if centred else (arr[:c], arr[c:])
        shape = (c,) + (1,) * (idx.ndim - 1)
        return (lo.reshape(shape) + idx.astype(np.float32) * step.reshape(shape)).astype(np.float32)
    if len(side) != 4 * levels:
        raise CodecError(f"codebook of {len(side)} bytes, expected {4 * levels}")
    book = np.frombuffer(side, dtype="<f4")
    if idx.size and (idx.min() < 0 or idx.max() >= levels):
        raise CodecError(f"codebook index outside 0..{levels - 1}")
    return book[idx.astype(np.int64)]


# ----------------------------------------------------------------- entropy coding


def _compress(data: bytes, method: Entropy) -> bytes:
    if method == "zlib":
        return zlib.compress(data, 9)
    if method == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=9).compress(data)
    if method == "lzma":
        return lzma.compress(data, preset=6)
    return data


def _decompress(data: bytes, method: Entropy, max_size: int) -> bytes:
    try:
        if method == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(data, max_size)
            if d.unconsumed_tail or not d.eof:
                raise CodecError(f"payload inflates past {max_size} bytes or is truncated")
            return out
        if method == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompress(data, max_output_size=max_size)
        if method == "lzma":
            d = lzma.LZMADecompressor()
            out = d.decompress(data, max_length=max_size)
            if not d.eof:
                raise CodecError(f"payload inflates past {max_size} bytes or is truncated")
            return out
        return data
    except CodecError:
        raise
    except Exception as exc:  # zlib.error, zstd.ZstdError, lzma.LZMAError: all "corrupt"
        raise CodecError(f"cannot {method}-decompress the payload: {exc}") from None


# ----------------------------------------------------------------- encode / decode


@dataclass
class Decoded:
    """Reconstructed activations and the error bound of each tensor."""

    tensors: dict[str, np.ndarray]
    bounds: dict[str, tuple[float, str]]  # name -> (bound, "value" or "tile_rms")
    intra: bool


def _as_chw(name: str, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"activation {name!r} must be CxHxW (or 1xCxHxW), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"activation {name!r} holds non-finite values")
    return arr


def encode(
    tensors: Mapping[str, np.ndarray], cfg: CodecConfig, reference: Mapping[str, np.ndarray] | None = None,
) -> tuple[bytes, Decoded]:
    """Compress ``tensors``; returns the body and exactly what the decoder will
    reconstruct (keep its ``tensors`` as the next frame's ``reference``).

    ``reference`` is used only when ``cfg.temporal`` and every shape matches.
    """
    arrays = {name: _as_chw(name, x) for name, x in tensors.items()}
    intra = not (cfg.temporal and reference is not None and set(reference) == set(arrays)
                 and all(np.shape(reference[k]) == arrays[k].shape for k in arrays))
    metas, sections = [], []
    recon: dict[str, np.ndarray] = {}
    bounds: dict[str, tuple[float, str]] = {}
    for name, x in arrays.items():
        c = x.shape[0]
        x_range = (x.reshape(c, -1).min(1), x.reshape(c, -1).max(1))
        v = x if intra else x - np.asarray(reference[name], dtype=np.float32)  # type: ignore[index]
        if cfg.dct_tile:
            v = dct_tiles(v, cfg.dct_tile).astype(np.float32)
        centred = cfg.dct_tile > 0 or not intra
        meta, side, idx_bytes, bound = _quantize(v, x_range, cfg, centred)
        # Reconstruct through the decoder's own arithmetic: the temporal
        # reference must be bit-identical on both sides.
        rec = _dequantize(meta, side, np.frombuffer(idx_bytes, dtype=meta["idx"]).reshape(v.shape), c, cfg, centred)
        if cfg.dct_tile:
            rec = idct_tiles(rec, cfg.dct_tile, x.shape)
        if not intra:
            rec = rec + np.asarray(reference[name], dtype=np.float32)  # type: ignore[index]
        recon[name] = rec.astype(np.float32)
        bounds[name] = (bound, "tile_rms" if cfg.dct_tile else "value")
        metas.append({"name": name, "shape": list(x.shape), **meta, "n": len(idx_bytes)})
        sections += [side, idx_bytes]
    meta_json = json.dumps({"codec": cfg.name, "intra": intra, "tensors": metas}, separators=(",", ":")).encode()
    body = MAGIC + struct.pack("<I", len(meta_json)) + meta_json + _compress(b"".join(sections), cfg.entropy)
    return body, Decoded(recon, bounds, intra)


def decode(
    body: bytes,
    cfg: CodecConfig,
    expected: Mapping[str, tuple[int, int, int]],
    reference: Mapping[str, np.ndarray] | None = None,
) -> Decoded:
    """Reconstruct the activations of ``body``; ``expected`` maps every name
    the cloud needs to its ``C x H x W`` shape. Raises :class:`CodecError`."""
    try:
        return _decode(body, cfg, expected, reference)
    except CodecError:
        raise
    except (TypeError, KeyError, AttributeError, IndexError, OverflowError, ValueError) as exc:
        # Meta JSON of the wrong shape (a list where an object belongs...): the
        # checks below trust types only after testing them; whatever slips past is corrupt too.
        raise CodecError(f"malformed activations meta: {type(exc).__name__}: {exc}") from None


def _decode(
    body: bytes,
    cfg: CodecConfig,
    expected: Mapping[str, tuple[int, int, int]],
    reference: Mapping[str, np.ndarray] | None,
) -> Decoded:
    if len(body) < 8 or body[:4] != MAGIC:
        raise CodecError("not an activations body (bad magic)")
    (meta_len,) = struct.unpack("<I", body[4:8])
    if meta_len > 65536 or 8 + meta_len > len(body):
        raise CodecError(f"meta length {meta_len} does not fit the body of {len(body)} bytes")
    try:
        meta = json.loads(body[8:8 + meta_len])
        tensors = meta["tensors"]
        intra = bool(meta["intra"])
        codec = meta["codec"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CodecError(f"unreadable meta: {exc}") from None
    if codec != cfg.name:
        raise CodecError(f"body says codec {codec!r}, header says {cfg.name!r}")
    names = [t.get("name") for t in tensors] if isinstance(tensors, list) else None
    if names is None or not all(isinstance(n, str) for n in names) or sorted(names) != sorted(expected):
        raise CodecError(f"activations {names} do not match the split's {sorted(expected)}")
    if not intra and (reference is None or set(reference) != set(expected)):
        raise CodecError("temporal delta against a reference the decoder does not have")
    total = 0
    for t in tensors:
        if list(t.get("shape", [])) != list(expected[t["name"]]):
            raise CodecError(f"{t['name']}: shape {t.get('shape')} but the split expects {list(expected[t['name']])}")
        if t.get("idx") not in ("u1", "u2", "u4", "i1", "i2", "i4"):
            raise CodecError(f"{t['name']}: bad index dtype {t.get('idx')!r}")
        if cfg.dct_tile:
            hp, wp = _tiles(tuple(t["shape"]), cfg.dct_tile)
            n_values = t["shape"][0] * hp * wp
        else:
            n_values = int(np.prod(t["shape"]))
        if n_values > MAX_ELEMENTS:
            raise CodecError(f"{t['name']}: {n_values} values exceed the limit of {MAX_ELEMENTS}")
        if not (isinstance(t.get("n"), int) and t["n"] == n_values * np.dtype(t["idx"]).itemsize):
            raise CodecError(f"{t['name']}: index section of {t.get('n')} bytes for {n_values} values")
        if not (isinstance(t.get("side"), int) and 0 <= t["side"] <= 4 * (2 * t["shape"][0] + 256)):
            raise CodecError(f"{t['name']}: bad side-information length {t.get('side')}")
        total += t["side"] + t["n"]
    payload = _decompress(body[8 + meta_len:], cfg.entropy, total)
    if len(payload) != total:
        raise CodecError(f"payload of {len(payload)} bytes, meta announces {total}")
    out: dict[str, np.ndarray] = {}
    bounds: dict[str, tuple[float, str]] = {}
    pos = 0
    centred = cfg.dct_tile > 0 or not intra
    for t in tensors:
        shape = tuple(t["shape"])
        side = payload[pos:pos + t["side"]]
        pos += t["side"]
        vshape = (shape[0], *_tiles(shape, cfg.dct_tile)) if cfg.dct_tile else shape
        idx = np.frombuffer(payload, dtype=t["idx"], count=int(np.prod(vshape)), offset=pos).reshape(vshape)
        pos += t["n"]
        v = _dequantize(t, side, idx, shape[0], cfg, centred)
        if cfg.dct_tile:
            v = idct_tiles(v, cfg.dct_tile, shape)
        if not intra:
            ref = np.asarray(reference[t["name"]], dtype=np.float32)  # type: ignore[index]
            if ref.shape != shape:
                raise CodecError(f"{t['name']}: reference of shape {ref.shape}, delta of {shape}")
            v = v + ref
        if cfg.quantizer == "uniform":
            step = np.frombuffer(side, dtype="<f4")[-shape[0]:]
            bounds[t["name"]] = (float(step.max()) / 2, "tile_rms" if cfg.dct_tile else "value")
        else:
            book = np.frombuffer(side, dtype="<f4").astype(np.float64)
            bounds[t["name"]] = (float(np.diff(book).max(initial=0.0)) / 2, "tile_rms" if cfg.dct_tile else "value")
        out[t["name"]] = v.astype(np.float32)
    return Decoded(out, bounds, intra)
