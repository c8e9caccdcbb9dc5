"""The on-disk spool of chunks awaiting their ``chunks/ack`` (brief §10.4).

Every chunk is written here before it is first published and deleted when
ingest acknowledges it, so delivery is at-least-once across broker restarts,
lost connections and agent restarts: a new agent loads what an earlier one
left (with that boot's ``boot_id``) and sends it again; ingest deduplicates
by ``(device_id, boot_id, seq)``.

One file per chunk, ``{boot_id}.{seq:010d}.chunk`` holding the envelope,
written to a temporary name and renamed, so a crash never leaves half a
chunk under a real name. The spool is bounded by bytes: the oldest chunks
are dropped first, and counted.

Resending: a chunk is *due* when it was never sent, or its last send got no
ack within ``ack_timeout_s`` (doubling per attempt up to 8x, so a long
cloud outage does not resend the whole spool every timeout), or after a
reconnect (:meth:`Spool.mark_all_due`). No MQTT in here: the uplink asks
for due chunks and reports what it sent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("cloudtutor.edge.spool")

SUFFIX = ".chunk"
MAX_BACKOFF = 8  # the ack timeout grows up to this factor with repeated sends

ChunkId = tuple[str, int]  # (boot_id, seq)


@dataclass
class SpoolEntry:
    boot_id: str
    seq: int
    size: int
    path: Path
    sent_at: float | None = None  # clock time of the last send; None: due now
    sends: int = 0

    @property
    def key(self) -> ChunkId:
        return self.boot_id, self.seq


def chunk_filename(boot_id: str, seq: int) -> str:
    return f"{boot_id}.{seq:010d}{SUFFIX}"


def parse_filename(name: str) -> ChunkId | None:
    if not name.endswith(SUFFIX):
        return None
    boot_id, _, seq = name[: -len(SUFFIX)].rpartition(".")
    if not boot_id or not seq.isdigit():
        return None
    return boot_id, int(seq)


class Spool:
    """Chunks awaiting acknowledgement, oldest first. Thread-safe.

    ``now``: the clock of the ack timeout (wall, monotonic), injectable for tests.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int,
        *,
        ack_timeout_s: float = 30.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if ack_timeout_s <= 0:
            raise ValueError("ack_timeout_s must be > 0")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.ack_timeout_s = ack_timeout_s
        self._now = now
        self._lock = threading.Condition()
        self._entries: OrderedDict[ChunkId, SpoolEntry] = OrderedDict()
        self._bytes = 0
        self.dropped = 0  # chunks dropped to keep the bound
        self.acked = 0
        self.recovered = 0  # chunks found on disk at start
        self.directory.mkdir(parents=True, exist_ok=True)
        self._load()

    # ---- state ------------------------------------------------------------------

    def _load(self) -> None:
        """Take over the chunks an earlier agent left, oldest first."""
        found = []
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write a crash interrupted
                continue
            key = parse_filename(path.name)
            if key is None:
                continue
            stat = path.stat()
            found.append((stat.st_mtime_ns, path.name, key, stat.st_size, path))
        for _, _, key, size, path in sorted(found):
            self._entries[key] = SpoolEntry(key[0], key[1], size, path)
            self._bytes += size
        self.recovered = len(found)
        self._enforce_bound(0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def keys(self) -> list[ChunkId]:
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    # ---- changes ----------------------------------------------------------------

    def add(self, boot_id: str, seq: int, data: bytes) -> list[SpoolEntry]:
        """Store a chunk (due at once); returns the entries dropped to make room.

        A chunk larger than the whole bound is not stored (returned as dropped);
        the caller may still send it once.
        """
        entry = SpoolEntry(boot_id, seq, len(data), self.directory / chunk_filename(boot_id, seq))
        if entry.size > self.max_bytes:
            with self._lock:
                self.dropped += 1
            log.warning("chunk %s/%d of %d bytes exceeds the spool bound of %d: not spooled",
                        boot_id, seq, entry.size, self.max_bytes)
            return [entry]
        tmp = entry.path.with_name(entry.path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, entry.path)
        with self._lock:
            dropped = self._enforce_bound(entry.size)
            old = self._entries.pop(entry.key, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[entry.key] = entry
            self._bytes += entry.size
            self._lock.notify_all()
        return dropped

    def _enforce_bound(self, incoming: int) -> list[SpoolEntry]:
        dropped = []
        while self._entries and self._bytes + incoming > self.max_bytes:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.size
            entry.path.unlink(missing_ok=True)
            dropped.append(entry)
        if dropped:
            self.dropped += len(dropped)
            log.warning("spool full (%d bytes): dropped the %d oldest chunk(s)", self.max_bytes, len(dropped))
        return dropped

    def read(self, entry: SpoolEntry) -> bytes | None:
        """The chunk's bytes (None if it was acked or dropped meanwhile)."""
        try:
            return entry.path.read_bytes()
        except FileNotFoundError:
            return None

    def ack(self, boot_id: str, seq: int) -> bool:
        """Remove an acknowledged chunk; False if it is not here (a repeated ack)."""
        with self._lock:
            entry = self._entries.pop((boot_id, seq), None)
            if entry is None:
                return False
            self._bytes -= entry.size
            self.acked += 1
            self._lock.notify_all()
        entry.path.unlink(missing_ok=True)
        return True

    # ---- resending ----------------------------------------------------------------

    def _timeout(self, entry: SpoolEntry) -> float:
        return self.ack_timeout_s * min(2 ** max(entry.sends - 1, 0), MAX_BACKOFF)

    def due(self, limit: int | None = None) -> list[SpoolEntry]:
        """Entries to send now, oldest first: never sent, or unacked past their timeout."""
        now = self._now()
        with self._lock:
            out = []
            for entry in self._entries.values():
                if entry.sent_at is None or now - entry.sent_at >= self._timeout(entry):
                    out.append(entry)
                    if limit is not None and len(out) >= limit:
                        break
            return out

    def next_due_in(self) -> float | None:
        """Seconds until the next entry is due (0: one is due now; None: spool empty)."""
        now = self._now()
        with self._lock:
            waits = [0.0 if e.sent_at is None else max(0.0, e.sent_at + self._timeout(e) - now)
                     for e in self._entries.values()]
        return min(waits) if waits else None

    def mark_sent(self, entry: SpoolEntry) -> None:
        with self._lock:
            entry.sent_at = self._now()
            entry.sends += 1

    def mark_all_due(self) -> None:
        """After a reconnect: what was in flight may be lost, send everything again."""
        with self._lock:
            for entry in self._entries.values():
                entry.sent_at = None
            self._lock.notify_all()

    def wait_empty(self, timeout: float) -> bool:
        """Block until every chunk is acked (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._entries:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True
