"""The publisher's view of one device's model link, and its pure decisions.

Brief §10.5: at most one unacknowledged update per device. A :class:`Link`
records what the edge has confirmed (``applied_version``), what was sent and
not yet acknowledged (``awaiting``) and the updates waiting behind it
(``waiting``). It is persisted as JSON in Redis after every change, so a
restarted publisher resumes where it was. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from cloudtutor.messages import ModelReported
from cloudtutor.streams import UpdateRef


class Sent(BaseModel):
    """An update sent and not yet acknowledged."""

    kind: Literal["delta", "snapshot"]
    version: int = Field(ge=0)
    sha256: str
    sent_at: float = Field(description="Wall seconds (the ack timeout is a network matter, not video time).")
    reason: str | None = None


class Link(BaseModel):
    """What the publisher knows of one device's model."""

    applied_version: int = Field(0, ge=0, description="Last version the edge confirmed (0: the bootstrap model).")
    applied_sha256: str | None = None
    seq: int = Field(0, ge=0, description="Envelope sequence number of the next update to this device.")
    awaiting: Sent | None = None
    waiting: list[UpdateRef] = Field(default_factory=list, description="Updates not sent yet, by version.")
    newest_version: int = Field(0, ge=0, description="Newest edge-view version known (what a snapshot sends).")
    newest_model_id: str | None = None
    newest_video_ms: int = 0

    def add(self, ref: UpdateRef) -> bool:
        """Queue an update; False for one already applied, sent or queued
        (a redelivered stream entry)."""
        known = {r.version for r in self.waiting}
        if ref.version <= self.applied_version or ref.version in known:
            return False
        if self.awaiting is not None and ref.version <= self.awaiting.version:
            return False
        self.waiting = sorted([*self.waiting, ref], key=lambda r: r.version)
        if ref.version >= self.newest_version:
            self.newest_version, self.newest_model_id, self.newest_video_ms = ref.version, ref.model_id, ref.video_ms
        return True

    def ready(self) -> list[UpdateRef]:
        """The updates to send now as one (coalesced) delta: all waiting ones,
        unless an update is still unacknowledged."""
        return [] if self.awaiting is not None else list(self.waiting)

    def mark_sent(self, kind: Literal["delta", "snapshot"], version: int, sha256: str, now: float,
                  reason: str | None = None) -> None:
        """An update to ``version`` went out: wait for its ack; what it covers leaves the queue."""
        self.awaiting = Sent(kind=kind, version=version, sha256=sha256, sent_at=now, reason=reason)
        self.waiting = [r for r in self.waiting if r.version > version]
        self.seq += 1

    def mark_applied(self, version: int, sha256: str) -> None:
        """The edge runs ``version`` (hashing to ``sha256``): nothing is in flight any more."""
        self.applied_version, self.applied_sha256 = version, sha256
        self.awaiting = None
        self.waiting = [r for r in self.waiting if r.version > version]
        if version > self.newest_version:
            self.newest_version = version

    def timed_out(self, now: float, timeout_s: float) -> bool:
        return self.awaiting is not None and now - self.awaiting.sent_at >= timeout_s


def is_chain(base_version: int, refs: Sequence[UpdateRef]) -> bool:
    """Whether ``refs`` lead from ``base_version`` one version after another:
    then the union of their masks covers every coordinate that changed, and
    the newest state's values on it give the newest edge view (updates carry
    new values, not differences)."""
    expected = base_version
    for ref in refs:
        if ref.base_version != expected:
            return False
        expected = ref.version
    return bool(refs)


@dataclass(frozen=True)
class Verdict:
    """What a model/reported message means for the link."""

    action: Literal["applied", "snapshot", "ignore"]
    reason: str


def judge_report(link: Link, report: ModelReported, sha_of: Callable[[int], str | None]) -> Verdict:
    """Decide on the edge's report (brief §10.5).

    While an update is awaited: ``applied`` with its version and hash
    acknowledges it; the right version with another hash, or ``rejected``
    after a delta, calls for a snapshot; a report of another version is an
    older (retained) one and is ignored. A rejected snapshot is not resent at
    once (that could loop): the ack timeout resends it.

    With nothing awaited, the report is checked against the edge view at the
    reported version (``sha_of(version)``, None when unknown): a match is
    adopted (e.g. the retained report a restarted publisher receives), a
    mismatch calls for a snapshot.
    """
    sent = link.awaiting
    if sent is not None:
        if report.status == "rejected":
            if sent.kind == "delta":
                return Verdict("snapshot", "rejected")
            return Verdict("ignore", "snapshot rejected; resent on timeout")
        if report.version != sent.version:
            return Verdict("ignore", "stale report")
        if report.sha256 != sent.sha256:
            return Verdict("snapshot", "sha_mismatch")
        return Verdict("applied", "acknowledged")
    known = report.version == link.applied_version and link.applied_sha256 is not None
    expected = link.applied_sha256 if known else sha_of(report.version)
    if expected is None:
        if report.version == link.applied_version:
            return Verdict("ignore", "edge view of this version unknown")
        return Verdict("snapshot", "unknown_version")
    if report.sha256 != expected:
        return Verdict("snapshot", "sha_mismatch")
    return Verdict("applied", "consistent")
