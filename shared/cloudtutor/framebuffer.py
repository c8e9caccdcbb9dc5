"""The cloud's data plane in Redis (brief §1, §10.1, §10.4).

Three kinds of keys, all under ``{key_prefix}:``:

``blob:{name}`` (string) and ``array:{name}`` (hash)
    Frames, labels and other binary payloads, each written with a TTL
    (``blob_ttl_s``, wall seconds). The TTL is a safety net against leaks
    only; correctness comes from explicit trimming by video time (§10.1).
    Blobs are the caller's bytes, stored as is. Arrays (``put_array``) are a
    hash of ``data`` (C-order, little-endian bytes), ``dtype`` (numpy's
    ``dtype.str``, e.g. ``<f4``) and ``shape`` (JSON list); reading checks
    that dtype is a plain numeric/bool type and that the byte count matches
    the shape. No pickle anywhere. A read of a blob that is gone (expired or
    never written: Redis cannot tell which) returns None and is counted.

``stream:{name}``: work queues of small references
    Consumer groups let replicas share the work; an entry a crashed consumer
    read but never acknowledged is reclaimed by another one with XAUTOCLAIM
    once it has been pending ``claim_idle_ms``. Streams are capped with an
    approximate MAXLEN (``stream_maxlen``); every add measures how many
    entries the cap removed (XLEN before and after, in one MULTI, so the
    figure is exact) and counts them, processed or not: Redis cannot tell
    whether a trimmed entry had been consumed. Entries whose referenced blob
    has expired can be dropped on read/claim (``blob_field``): acknowledged
    and counted, not returned.

``horizon:{device}``: a device's training horizon
    A stream whose IDs are ``{video_ms}-{n}``: the VIDEO timestamp in
    milliseconds, given by the caller (never wall time, §10.1), and a
    sequence number Redis assigns within that millisecond (``XADD
    key {ms}-*``, Redis >= 7.0; at video time 0 it starts at 1, since
    ``0-0`` is not a valid ID). Samples must be added in non-decreasing
    video time (the device's affine consumer writes them in order, §10.4).
    Windows are inclusive at both ends: ``horizon_range(d, a, b)`` returns
    every sample with ``a <= video_ms <= b``; ``horizon_last(d, T, now)`` is
    ``horizon_range(d, now - T, now)`` and ``trim_horizon(d, min_ms)`` drops
    exactly the samples with ``video_ms < min_ms``, so after
    ``trim_horizon(d, now - T)`` the stream holds what ``horizon_last(d, T,
    now)`` returns (plus anything newer than ``now``). A hard cap
    (``horizon_maxlen``, exact) bounds a stream that is never trimmed.

Redis >= 7.0 is required (``{ms}-*`` IDs; the deleted-IDs part of XAUTOCLAIM).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import redis

from cloudtutor.config.common import FrameBufferSettings, RedisSettings
from cloudtutor.metrics import Metrics

FieldValue = Union[bytes, str, int, float]

# dtype kinds an array may have: bool, signed/unsigned int, float, complex.
_ARRAY_KINDS = frozenset("biufc")


class FrameBufferError(RuntimeError):
    """Corrupt or unexpected data in the frame buffer, or a misuse of it."""


class HorizonOrderError(FrameBufferError):
    """A horizon sample older than the newest one already stored."""


class _M:
    """Metric names."""

    BLOB_MISSING = "cloudtutor_framebuffer_blob_missing_total"      # {kind}: get of an expired/absent blob
    ADDED = "cloudtutor_framebuffer_added_total"                    # {stream}
    TRIMMED = "cloudtutor_framebuffer_trimmed_total"                # {stream}: removed by the MAXLEN cap
    ACKED = "cloudtutor_framebuffer_acked_total"                    # {stream}
    CLAIMED = "cloudtutor_framebuffer_claimed_total"                # {stream}: reclaimed by XAUTOCLAIM
    DROPPED = "cloudtutor_framebuffer_dropped_total"                # {stream, reason}: references given up
    HORIZON_TRIMMED = "cloudtutor_framebuffer_horizon_trimmed_total"  # by trim_horizon (time)
    HORIZON_CAPPED = "cloudtutor_framebuffer_horizon_capped_total"    # by the horizon_maxlen hard cap


@dataclass(frozen=True)
class StreamEntry:
    """One work-stream entry: its ID and its fields (names decoded, values raw bytes)."""

    id: str
    fields: dict[str, bytes]

    def text(self, name: str) -> str:
        return self.fields[name].decode("utf-8")

    def integer(self, name: str) -> int:
        return int(self.fields[name])


@dataclass(frozen=True)
class HorizonSample:
    """One horizon sample: video time in ms, the sequence number within that ms, its fields."""

    id: str
    video_ms: int
    seq: int
    fields: dict[str, bytes]

    def text(self, name: str) -> str:
        return self.fields[name].decode("utf-8")


@dataclass(frozen=True)
class ClaimResult:
    """What one XAUTOCLAIM pass gave: live entries now owned by the claimer,
    IDs that were pending but whose entries had been trimmed away (Redis
    removed them from the pending list; counted as dropped), and the cursor
    for the next pass ("0-0" when the scan is complete)."""

    entries: list[StreamEntry]
    deleted: list[str]
    cursor: str


def _s(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _entry(raw_id: bytes | str, raw_fields: Mapping[bytes | str, bytes] | None) -> StreamEntry:
    return StreamEntry(_s(raw_id), {_s(k): v for k, v in (raw_fields or {}).items()})


def _split_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class FrameBuffer:
    """Blobs with TTL, work streams with consumer groups, and per-device horizon streams."""

    def __init__(
        self,
        redis_settings: RedisSettings,
        settings: FrameBufferSettings | None = None,
        *,
        metrics: Metrics | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self.redis_settings = redis_settings
        self.settings = settings if settings is not None else FrameBufferSettings()
        self.metrics = metrics if metrics is not None else Metrics()
        self.prefix = redis_settings.key_prefix
        if self.settings.block_ms / 1000.0 >= redis_settings.socket_timeout_s:
            raise FrameBufferError(
                f"block_ms={self.settings.block_ms} must stay below socket_timeout_s="
                f"{redis_settings.socket_timeout_s:g}, or every idle read times out"
            )
        self._own_client = client is None
        if client is None:
            password = redis_settings.password.get_secret_value() if redis_settings.password else None
            client = redis.Redis.from_url(
                redis_settings.url,
                password=password,
                decode_responses=False,  # frames are bytes
                socket_timeout=redis_settings.socket_timeout_s,
                protocol=2,  # reply shapes parsed below are RESP2's
            )
        self.redis = client

    def close(self) -> None:
        """Close the connection pool (only when this object created the client)."""
        if self._own_client:
            self.redis.close()

    def __enter__(self) -> FrameBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- key names ----------------------------------------------------------------

    def blob_key(self, name: str) -> str:
        return f"{self.prefix}:blob:{name}"

    def array_key(self, name: str) -> str:
        return f"{self.prefix}:array:{name}"

    def stream_key(self, stream: str) -> str:
        return f"{self.prefix}:stream:{stream}"

    def horizon_key(self, device_id: str) -> str:
        return f"{self.prefix}:horizon:{device_id}"

    def devices_key(self) -> str:
        """The set of device ids that have a horizon (written by the labeler,
        read by the trainer to find work)."""
        return f"{self.prefix}:devices"

    def _ttl(self, ttl_s: int | None) -> int:
        ttl = self.settings.blob_ttl_s if ttl_s is None else int(ttl_s)
        if ttl <= 0:
            raise ValueError("a blob TTL must be positive (it is the leak safety net)")
        return ttl

    # ---- blobs ----------------------------------------------------------------------

    def put_blob(self, name: str, data: bytes | bytearray | memoryview, *, ttl_s: int | None = None) -> None:
        self.redis.set(self.blob_key(name), bytes(data), ex=self._ttl(ttl_s))

    def put_blobs(self, items: Mapping[str, bytes | bytearray | memoryview], *, ttl_s: int | None = None) -> None:
        """Several blobs in one round trip (all or none: MULTI)."""
        ttl = self._ttl(ttl_s)
        pipe = self.redis.pipeline(transaction=True)
        for name, data in items.items():
            pipe.set(self.blob_key(name), bytes(data), ex=ttl)
        pipe.execute()

    def get_blob(self, name: str) -> bytes | None:
        """The blob, or None (counted) when it expired or was never written."""
        data = self.redis.get(self.blob_key(name))
        if data is None:
            self.metrics.inc(_M.BLOB_MISSING, kind="blob")
        return data  # type: ignore[return-value]

    def blob_exists(self, name: str) -> bool:
        return bool(self.redis.exists(self.blob_key(name)))

    def put_array(self, name: str, array: np.ndarray, *, ttl_s: int | None = None) -> None:
        """Store a numeric array: C-order little-endian bytes plus dtype and shape."""
        arr = np.asarray(array)
        if arr.dtype.kind not in _ARRAY_KINDS or arr.dtype.fields is not None:
            raise FrameBufferError(f"cannot store dtype {arr.dtype} (plain numeric or bool arrays only)")
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        data = np.ascontiguousarray(arr).tobytes()
        key = self.array_key(name)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={"data": data, "dtype": arr.dtype.str, "shape": json.dumps(list(arr.shape))})
        pipe.expire(key, self._ttl(ttl_s))
        pipe.execute()

    def get_array(
        self, name: str, *, dtype: Any = None, shape: Sequence[int] | None = None,
    ) -> np.ndarray | None:
        """The array (a writable copy), or None (counted) when gone.

        Raises FrameBufferError when the stored bytes do not match their
        dtype and shape, or when ``dtype``/``shape`` are given and differ.
        """
        data, dtype_raw, shape_raw = self.redis.hmget(self.array_key(name), ["data", "dtype", "shape"])  # type: ignore[misc]
        if data is None:
            self.metrics.inc(_M.BLOB_MISSING, kind="array")
            return None
        if dtype_raw is None or shape_raw is None:
            raise FrameBufferError(f"array {name!r} lacks its dtype or shape")
        try:
            stored_dtype = np.dtype(_s(dtype_raw))
            stored_shape = tuple(int(n) for n in json.loads(shape_raw))
        except (TypeError, ValueError) as exc:
            raise FrameBufferError(f"array {name!r} has an unreadable dtype/shape: {exc}") from None
        if stored_dtype.kind not in _ARRAY_KINDS or stored_dtype.fields is not None or stored_dtype.byteorder == ">":
            raise FrameBufferError(f"array {name!r} has an unsupported dtype {stored_dtype.str}")
        if any(n < 0 for n in stored_shape):
            raise FrameBufferError(f"array {name!r} has a negative dimension in {stored_shape}")
        expected = int(np.prod(stored_shape, dtype=np.int64)) * stored_dtype.itemsize
        if expected != len(data):
            raise FrameBufferError(
                f"array {name!r}: {len(data)} bytes for shape {stored_shape} of {stored_dtype.str} ({expected} expected)"
            )
        if dtype is not None and np.dtype(dtype).newbyteorder("<") != stored_dtype.newbyteorder("<"):
            raise FrameBufferError(f"array {name!r} is {stored_dtype}, not {np.dtype(dtype)}")
        if shape is not None and tuple(shape) != stored_shape:
            raise FrameBufferError(f"array {name!r} has shape {stored_shape}, not {tuple(shape)}")
        return np.frombuffer(bytearray(data), dtype=stored_dtype).reshape(stored_shape)

    def delete(self, *names: str) -> int:
        """Delete blobs and arrays by name; returns how many keys existed."""
        if not names:
            return 0
        keys = [self.blob_key(n) for n in names] + [self.array_key(n) for n in names]
        return int(self.redis.delete(*keys))

    # ---- work streams -------------------------------------------------------------------

    def ensure_group(self, stream: str, group: str, *, start_id: str = "0") -> None:
        """Create the consumer group (and the stream); a no-op if it exists."""
        try:
            self.redis.xgroup_create(self.stream_key(stream), group, id=start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def add(
        self, stream: str, fields: Mapping[str, FieldValue], *, maxlen: int | None = None, approximate: bool = True,
    ) -> str:
        """Append an entry, trimming the stream to ``maxlen`` entries (default stream_maxlen).

        Approximate trimming (the default, ``MAXLEN ~``) is cheap but only
        removes whole radix-tree nodes (``stream-node-max-entries``, 100 by
        default), so the stream may exceed ``maxlen`` by up to one node.
        """
        key = self.stream_key(stream)
        cap = self.settings.stream_maxlen if maxlen is None else maxlen
        # XLEN, XADD, XLEN in one MULTI: no other client runs in between, so
        # before + 1 - after is exactly what this add's trimming removed.
        pipe = self.redis.pipeline(transaction=True)
        pipe.xlen(key)
        pipe.xadd(key, dict(fields), maxlen=cap, approximate=approximate)  # type: ignore[arg-type]
        pipe.xlen(key)
        before, entry_id, after = pipe.execute()
        self.metrics.inc(_M.ADDED, stream=stream)
        trimmed = int(before) + 1 - int(after)
        if trimmed > 0:
            self.metrics.inc(_M.TRIMMED, trimmed, stream=stream)
        return _s(entry_id)

    def count_added(self, stream: str, added: int, trimmed: int = 0) -> None:
        """Count entries a caller appended in its own transaction (same
        counters as :meth:`add`), e.g. ingest's all-or-nothing chunk commit."""
        self.metrics.inc(_M.ADDED, added, stream=stream)
        if trimmed > 0:
            self.metrics.inc(_M.TRIMMED, trimmed, stream=stream)

    def read(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int = 10,
        block_ms: int | None = None,
        blob_field: str | None = None,
    ) -> list[StreamEntry]:
        """New entries for ``consumer`` (XREADGROUP ``>``); waits up to ``block_ms``.

        ``block_ms`` defaults to the settings' block_ms; 0 means do not wait
        (unlike Redis, where BLOCK 0 waits forever). With ``blob_field``,
        entries whose blob (the name in that field) has expired are acked,
        counted as dropped and left out.
        """
        block = self.settings.block_ms if block_ms is None else block_ms
        if block / 1000.0 >= self.redis_settings.socket_timeout_s:
            raise FrameBufferError(f"block_ms={block} must stay below the socket timeout")
        reply = self.redis.xreadgroup(
            group, consumer, {self.stream_key(stream): ">"}, count=count, block=block if block > 0 else None,
        )
        entries = [_entry(i, f) for _, items in (reply or []) for i, f in items]
        return self._drop_expired(stream, group, entries, blob_field)

    def ack(self, stream: str, group: str, ids: Iterable[str]) -> int:
        ids = list(ids)
        if not ids:
            return 0
        n = int(self.redis.xack(self.stream_key(stream), group, *ids))
        self.metrics.inc(_M.ACKED, n, stream=stream)
        return n

    def drop(self, stream: str, group: str, ids: Iterable[str], *, reason: str) -> int:
        """Give up on entries: acknowledge them and count them as dropped for ``reason``."""
        ids = list(ids)
        if not ids:
            return 0
        n = int(self.redis.xack(self.stream_key(stream), group, *ids))
        self.metrics.inc(_M.DROPPED, len(ids), stream=stream, reason=reason)
        return n

    def claim(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        min_idle_ms: int | None = None,
        count: int = 100,
        start_id: str = "0-0",
        blob_field: str | None = None,
    ) -> ClaimResult:
        """Take over entries pending longer than ``min_idle_ms`` (default claim_idle_ms): XAUTOCLAIM.

        One pass of at most ``count`` entries from ``start_id``; continue from
        ``result.cursor`` until it is "0-0". IDs whose entries were trimmed
        while pending come back in ``deleted`` and are counted as dropped.
        """
        idle = self.settings.claim_idle_ms if min_idle_ms is None else min_idle_ms
        reply = self.redis.xautoclaim(
            self.stream_key(stream), group, consumer, idle, start_id=start_id, count=count,
        )
        cursor = _s(reply[0])
        entries = [_entry(i, f) for i, f in reply[1] if i is not None]
        deleted = [_s(i) for i in reply[2]] if len(reply) > 2 else []
        if deleted:
            # Redis already removed them from the pending list (7.0+).
            self.metrics.inc(_M.DROPPED, len(deleted), stream=stream, reason="trimmed")
        if entries:
            self.metrics.inc(_M.CLAIMED, len(entries), stream=stream)
        return ClaimResult(self._drop_expired(stream, group, entries, blob_field), deleted, cursor)

    def _drop_expired(
        self, stream: str, group: str, entries: list[StreamEntry], blob_field: str | None,
    ) -> list[StreamEntry]:
        if blob_field is None or not entries:
            return entries
        malformed = [e.id for e in entries if blob_field not in e.fields]
        if malformed:
            self.drop(stream, group, malformed, reason="malformed")
        candidates = [e for e in entries if blob_field in e.fields]
        pipe = self.redis.pipeline(transaction=False)
        for e in candidates:
            # The name may hold bytes (put_blob) or an array (put_array).
            name = _s(e.fields[blob_field])
            pipe.exists(self.blob_key(name), self.array_key(name))
        alive = pipe.execute() if candidates else []
        gone = [e.id for e, ok in zip(candidates, alive) if not ok]
        if gone:
            self.drop(stream, group, gone, reason="blob_expired")
        return [e for e, ok in zip(candidates, alive) if ok]

    def pending(self, stream: str, group: str) -> int:
        """How many entries of the group were delivered and not yet acknowledged."""
        info = self.redis.xpending(self.stream_key(stream), group)
        return int(info["pending"])

    def pending_by_consumer(self, stream: str, group: str) -> dict[str, int]:
        info = self.redis.xpending(self.stream_key(stream), group)
        return {_s(c["name"]): int(c["pending"]) for c in info.get("consumers") or []}

    def stream_len(self, stream: str) -> int:
        return int(self.redis.xlen(self.stream_key(stream)))

    # ---- horizon streams ------------------------------------------------------------------

    def horizon_add(self, device_id: str, video_ms: int, fields: Mapping[str, FieldValue]) -> str:
        """Append a sample at video time ``video_ms`` (ms, >= the newest sample's); returns its ID."""
        video_ms = int(video_ms)
        if video_ms < 0:
            raise ValueError("video_ms must be >= 0")
        key = self.horizon_key(device_id)
        cap = self.settings.horizon_maxlen
        pipe = self.redis.pipeline(transaction=True)
        pipe.xlen(key)
        # "{ms}-*": Redis picks the next sequence number within that millisecond.
        pipe.xadd(key, dict(fields), id=f"{video_ms}-*", maxlen=cap, approximate=False)  # type: ignore[arg-type]
        pipe.xlen(key)
        # Safety net only: a device that stops sending leaves no stream behind.
        pipe.expire(key, self.settings.blob_ttl_s)
        try:
            before, entry_id, after, _ = pipe.execute()
        except redis.ResponseError as exc:
            if "equal or smaller" in str(exc):
                raise HorizonOrderError(
                    f"horizon of {device_id!r}: sample at {video_ms} ms is older than the newest one"
                ) from None
            raise
        capped = int(before) + 1 - int(after)
        if capped > 0:
            self.metrics.inc(_M.HORIZON_CAPPED, capped)
        return _s(entry_id)

    def horizon_range(self, device_id: str, start_ms: int, end_ms: int, *, count: int | None = None) -> list[HorizonSample]:
        """Samples with ``start_ms <= video_ms <= end_ms`` (every sequence number), oldest first."""
        if end_ms < start_ms:
            return []
        # A bare millisecond means "{ms}-0" as a start and "{ms}-<max>" as an end.
        raw = self.redis.xrange(self.horizon_key(device_id), min=str(max(0, int(start_ms))), max=str(int(end_ms)), count=count)
        out = []
        for raw_id, raw_fields in raw:
            e = _entry(raw_id, raw_fields)
            ms, seq = _split_id(e.id)
            out.append(HorizonSample(e.id, ms, seq, e.fields))
        return out

    def horizon_last(self, device_id: str, seconds: float, now_ms: int) -> list[HorizonSample]:
        """The last ``seconds`` of video time up to ``now_ms``: ``now_ms - T <= video_ms <= now_ms``.

        ``now_ms`` comes from the caller's Clock (video time in the demo and
        benches, §10.1); T is rounded to whole milliseconds.
        """
        span_ms = int(round(seconds * 1000.0))
        return self.horizon_range(device_id, int(now_ms) - span_ms, int(now_ms))

    def trim_horizon(self, device_id: str, min_ms: int) -> int:
        """Drop every sample with ``video_ms < min_ms`` (XTRIM MINID, exact); returns how many."""
        removed = int(self.redis.xtrim(self.horizon_key(device_id), minid=str(max(0, int(min_ms))), approximate=False))
        if removed:
            self.metrics.inc(_M.HORIZON_TRIMMED, removed)
        return removed

    def horizon_len(self, device_id: str) -> int:
        return int(self.redis.xlen(self.horizon_key(device_id)))

    def horizon_clear(self, device_id: str) -> None:
        """Delete a device's horizon. The only way to go back in video time: a
        trimmed stream still refuses IDs below the newest it ever had."""
        self.redis.delete(self.horizon_key(device_id))


class GroupReader:
    """One consumer's reading of a stream: new entries (XREADGROUP) and, once
    every ``claim_every_s`` wall seconds, one XAUTOCLAIM pass over entries a
    dead replica read and never acknowledged. The claim cursor carries over
    between passes, so a long pending list is walked a page at a time.
    """

    def __init__(
        self,
        fb: FrameBuffer,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int,
        claim_every_s: float,
        claim_count: int | None = None,
        blob_field: str | None = None,
        claim_first: bool = False,
    ) -> None:
        self.fb, self.stream, self.group, self.consumer = fb, stream, group, consumer
        self.count = count
        self.claim_count = count if claim_count is None else claim_count
        self.claim_every_s = claim_every_s
        self.blob_field = blob_field
        self._next_claim = time.monotonic() + (0.0 if claim_first else claim_every_s)
        self._cursor = "0-0"
        fb.ensure_group(stream, group)

    def read(self, block_ms: int | None = None) -> list[StreamEntry]:
        return self.fb.read(self.stream, self.group, self.consumer, count=self.count, block_ms=block_ms,
                            blob_field=self.blob_field)

    def reclaimed(self) -> list[StreamEntry]:
        """Entries dead replicas left pending; empty between passes."""
        if time.monotonic() < self._next_claim:
            return []
        self._next_claim = time.monotonic() + self.claim_every_s
        result = self.fb.claim(self.stream, self.group, self.consumer, count=self.claim_count,
                               start_id=self._cursor, blob_field=self.blob_field)
        self._cursor = result.cursor
        return result.entries

    def next(self, block_ms: int | None = None) -> list[StreamEntry]:
        """Reclaimed entries (when a pass is due), then new ones."""
        return self.reclaimed() + self.read(block_ms)

    def ack(self, ids: Iterable[str]) -> int:
        return self.fb.ack(self.stream, self.group, ids)


__all__ = [
    "ClaimResult",
    "FrameBuffer",
    "FrameBufferError",
    "GroupReader",
    "HorizonOrderError",
    "HorizonSample",
    "StreamEntry",
]
