"""What a running (or finished) closed loop left behind, checked against the
delivery and model-state guarantees of brief §10.4-10.5.

Shared by the fault-injection suite (``tests/faults``) and ``cloudtutor
bench load``. Every figure comes from the servers and the edges' own
records, never from a service's claim about itself:

* chunks ingested: the FrameRefs on the FRAMES stream (one per frame, keyed
  by ``(device, boot, seq, index)``), so "exactly once" means every frame of
  every published chunk appears once (a duplicate ingest would add it twice);
* chunks made: the edge's final summary (``chunks_made``: seqs 0..n-1 of
  its boot, each published or, when the spool overflowed before it could be
  sent, dropped and counted in ``chunks_dropped``);
* model updates applied: the edge's log lines ``applied delta A -> B`` /
  ``applied snapshot A -> B`` (cloudtutor_edge.updates);
* backlog: each work stream's consumer-group lag plus pending entries.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cloudtutor.streams import FRAMES, SIGNALS, UPDATES, UPSCALED, FrameRef

#: Work streams and the consumer group that drains each.
WORK_GROUPS = {FRAMES: "superres", UPSCALED: "labeler", SIGNALS: "controller", UPDATES: "publisher"}

_APPLIED = re.compile(r"applied (delta|snapshot) (\d+) -> (\d+)")

FrameKey = tuple[str, str, int, int]  # device, boot, seq, index


def ingested_frames(fb, *, page: int = 1000) -> Counter[FrameKey]:
    """How often each frame of each chunk was put on FRAMES (walks the whole stream)."""
    key = fb.stream_key(FRAMES)
    counts: Counter[FrameKey] = Counter()
    start = "-"
    while True:
        entries = fb.redis.xrange(key, min=start, max="+", count=page)
        for entry_id, fields in entries:
            ref = FrameRef.from_fields({(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()})
            counts[(ref.device_id, ref.boot_id, ref.chunk_seq, ref.index)] += 1
        if len(entries) < page:
            return counts
        last = entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0]
        ms, n = last.split("-")
        start = f"{ms}-{int(n) + 1}"


@dataclass
class Delivery:
    """One device's chunks: made by the edge vs ingested by the cloud."""

    device_id: str
    made: int
    ingested: int
    lost: list[int] = field(default_factory=list)  # seqs made and never ingested (spool drops included)
    duplicated: list[int] = field(default_factory=list)  # seqs with a frame ingested more than once
    unexpected: list[int] = field(default_factory=list)  # ingested seqs the edge does not claim to have sent
    dropped_by_edge: int = 0  # spool overflow (counted by the edge, never published)
    left_in_spool: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)

    def as_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "made": self.made, "ingested": self.ingested,
                "lost": len(self.lost), "duplicated": len(self.duplicated), "unexpected": len(self.unexpected),
                "lost_seqs": self.lost[:20], "dropped_by_edge": self.dropped_by_edge,
                "left_in_spool": self.left_in_spool}


def check_delivery(frames: Counter[FrameKey], summary: Mapping[str, Any]) -> Delivery:
    """Compare an edge's final summary (``EdgeAgent.summary()``) with the frames ingested for its boot."""
    device, boot = summary["device_id"], summary["boot_id"]
    made = int(summary.get("chunks_made", 0))
    per_seq: dict[int, list[int]] = {}
    for (dev, b, seq, _index), n in frames.items():
        if dev == device and b == boot:
            per_seq.setdefault(seq, []).append(n)
    return Delivery(
        device_id=device, made=made, ingested=len(per_seq),
        lost=[s for s in range(made) if s not in per_seq],
        duplicated=sorted(s for s, counts in per_seq.items() if max(counts) > 1),
        unexpected=sorted(s for s in per_seq if s >= made),
        dropped_by_edge=int(summary.get("chunks_dropped", 0)),
        left_in_spool=int(summary.get("spool_chunks", 0)),
    )


@dataclass(frozen=True)
class Applied:
    kind: str
    base: int
    version: int


def applied_updates(log_text: str) -> list[Applied]:
    """The updates an edge applied, in order, from its log."""
    return [Applied(m.group(1), int(m.group(2)), int(m.group(3))) for m in _APPLIED.finditer(log_text)]


def version_problems(applied: Iterable[Applied]) -> list[str]:
    """Violations of "no version skipped or applied twice" (brief §10.5).

    Each update must start from the version the edge had (a delta exactly;
    a snapshot replaces everything, so only its target counts) and move to a
    newer one: a version applied twice or a step backwards is a problem. A
    delta from v to v+3 is not a skip: the publisher coalesces the trainer's
    versions waiting behind an unacknowledged one into one delta, whose mask
    covers all of them.
    """
    problems, current, seen = [], 0, set()
    for i, a in enumerate(applied):
        if a.kind == "delta" and a.base != current:
            problems.append(f"#{i}: delta {a.base} -> {a.version} applied on version {current}")
        if a.version <= current or a.version in seen:
            problems.append(f"#{i}: {a.kind} to version {a.version} after version {current}")
        seen.add(a.version)
        current = a.version
    return problems


def sink_version_problems(versions: Iterable[int]) -> list[str]:
    """The model version of each labelled frame, in frame order, must never go back."""
    problems, last = [], 0
    for i, v in enumerate(versions):
        if v < last:
            problems.append(f"frame #{i} ran version {v} after version {last}")
        last = max(last, v)
    return problems


def stream_backlog(fb) -> dict[str, dict[str, int]]:
    """Per work stream: length, and its consumer group's lag (never delivered) and pending (delivered, unacked)."""
    out = {}
    for stream, group in WORK_GROUPS.items():
        key = fb.stream_key(stream)
        length = int(fb.redis.xlen(key))
        lag = pending = 0
        try:
            groups = fb.redis.xinfo_groups(key)
        except Exception:  # the stream does not exist yet
            groups = []
        for info in groups:
            name = info.get("name")
            name = name.decode() if isinstance(name, bytes) else name
            if name == group:
                pending = int(info.get("pending") or 0)
                lag = int(info.get("lag") or 0)
        out[stream] = {"length": length, "lag": lag, "pending": pending, "backlog": lag + pending}
    return out


__all__ = [
    "Applied", "Delivery", "WORK_GROUPS", "applied_updates", "check_delivery", "ingested_frames",
    "sink_version_problems", "stream_backlog", "version_problems",
]
