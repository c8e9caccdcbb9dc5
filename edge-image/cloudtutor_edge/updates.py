"""Model updates on the edge: verify, apply to the inactive copy, report (brief §4, §10.5).

:class:`ModelUpdater` turns the payload of a ``model/delta`` or
``model/snapshot`` message into what the agent must publish: the new
``model/reported`` state and, on a rejection, a ``model/resync`` request.
It publishes nothing itself (no MQTT here), so it is tested directly.

Rules:

* An update is applied only if the envelope decodes, it is meant for this
  device and model, its signature verifies (when a public key is set), its
  ``base_version`` is the newest version here, and the weights hash to its
  ``params_sha256`` (all checked by ``cloudtutor.delta``).
* Any rejection keeps the old model, reports ``rejected`` with the reason
  (and the version and sha256 still running) and asks for a resync,
  except a stale update: a redelivered copy of what is already applied is
  ignored, any other stale one is reported but asks for nothing (the
  edge is ahead of it, a snapshot would not help).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cloudtutor import envelope
from cloudtutor.delta import Reason, UpdateRejected, apply_delta, apply_snapshot
from cloudtutor.headers import Kind
from cloudtutor.messages import ModelReported, ResyncRequest
from cloudtutor.metrics import Metrics
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloudtutor_edge.model_slot import ModelSlot

log = logging.getLogger("cloudtutor.edge.updates")

UPDATES = "cloudtutor_edge_model_updates_total"  # {kind, status, reason}
_MAX_REASON = 500  # ModelReported.reason / ResyncRequest.reason limit


@dataclass(frozen=True)
class UpdateOutcome:
    """What to publish after one update message (None: nothing)."""

    reported: ModelReported | None
    resync: ResyncRequest | None

    @property
    def applied(self) -> bool:
        return self.reported is not None and self.reported.status == "applied"


class ModelUpdater:
    """Applies verified updates to a :class:`ModelSlot`; one caller thread at a time."""

    def __init__(
        self,
        slot: ModelSlot,
        *,
        device_id: str,
        model_id: str,
        public_key: Ed25519PublicKey | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.slot = slot
        self.device_id = device_id
        self.model_id = model_id
        self.public_key = public_key
        self.metrics = metrics if metrics is not None else Metrics()
        self.applied = 0
        self.rejected = 0
        # Video time the newest applied version was trained through (from its
        # header); what a lockstep edge waits on. None: no update yet.
        self.trained_through_ms: int | None = None
        # The accuracy the cloud measured for the newest applied delta
        # (ShadowTutor's metric, for NextStride); None for a snapshot.
        self.last_metric: float | None = None

    def current(self, status: str = "applied", reason: str | None = None) -> ModelReported:
        """``model/reported`` for the newest weights (version 0 at start)."""
        return ModelReported(
            version=self.slot.latest_version, sha256=self.slot.latest_sha256(), status=status,
            reason=reason[:_MAX_REASON] if reason else None,
        )

    def handle(self, payload: bytes, kind: Kind) -> UpdateOutcome:
        """Verify and apply one ``model/delta`` (Kind.DELTA) or ``model/snapshot`` payload."""
        label = kind.value
        version = self.slot.latest_version
        try:
            env = envelope.decode(payload, expect=kind)
        except envelope.EnvelopeError as exc:
            return self._reject(label, f"malformed_{exc.reason.value}", f"malformed envelope: {exc}", version)
        header = env.header
        apply = apply_delta if kind == Kind.DELTA else apply_snapshot
        try:
            state = apply(
                self.slot.latest_state(), env, device_id=self.device_id, model_id=self.model_id,
                version=version, key=self.public_key,
            )
        except UpdateRejected as exc:
            if exc.reason == Reason.STALE:
                return self._stale(label, header, version, str(exc))
            return self._reject(label, exc.reason.value, str(exc), version)
        self.slot.stage(state, header.version)
        self.applied += 1
        self.last_metric = getattr(header, "metric", None)  # before trained_through_ms: a waiter reads it after
        if header.video_ms is not None:
            self.trained_through_ms = max(self.trained_through_ms or 0, header.video_ms)
        self.metrics.inc(UPDATES, kind=label, status="applied", reason="")
        reported = ModelReported(version=header.version, sha256=header.params_sha256, status="applied")
        log.info("applied %s %d -> %d", label, version, header.version,
                 extra={"fields": {"kind": label, "from": version, "version": header.version,
                                   "sha256": header.params_sha256[:16], "bytes": len(payload)}})
        return UpdateOutcome(reported, None)

    def _reject(self, label: str, reason: str, detail: str, version: int) -> UpdateOutcome:
        self.rejected += 1
        self.metrics.inc(UPDATES, kind=label, status="rejected", reason=reason)
        log.warning("rejected %s: %s; keeping version %d and asking for a resync", label, detail, version,
                    extra={"fields": {"kind": label, "reason": reason, "version": version}})
        return UpdateOutcome(self.current("rejected", detail), ResyncRequest(have_version=version, reason=detail[:_MAX_REASON]))

    def _stale(self, label: str, header, version: int, detail: str) -> UpdateOutcome:
        if header.version == version and header.params_sha256 == self.slot.latest_sha256():
            # A QoS 1 redelivery of the update already applied: nothing to say.
            self.metrics.inc(UPDATES, kind=label, status="duplicate", reason="")
            log.info("ignored a repeated %s of version %d", label, version)
            return UpdateOutcome(None, None)
        self.rejected += 1
        self.metrics.inc(UPDATES, kind=label, status="rejected", reason=Reason.STALE.value)
        log.warning("rejected %s: %s", label, detail, extra={"fields": {"kind": label, "reason": "stale", "version": version}})
        return UpdateOutcome(self.current("rejected", detail), None)
