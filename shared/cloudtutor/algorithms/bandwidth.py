"""Per-device uplink estimation from chunk sizes and times (issue 8).

Two figures, from what every chunk already carries:

* **sent rate**: Kbps of video time the device uses, from the chunks' wire
  bytes over the video time between the ends of consecutive chunks (the one
  clock of brief §10.1; in the demo the edge runs faster than real time, so
  this is the figure a budget applies to);
* **link rate**: what the path carried, from a chunk's bytes over its
  transit time (the edge's ``created_at`` to ingest's arrival, wall time).
  Small chunks make it a lower bound of the capacity (latency dominates),
  so the controller only reports it unless told to cap the budget by it.

Both are exponentially weighted; the sent rate by video time (half-life in
seconds, so irregular chunk spacing weighs correctly), the link rate by
sample. Pure code: times are passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_TRANSIT_S = 0.01  # clock granularity and skew: never divide by less


@dataclass
class Ewma:
    """Exponentially weighted mean; ``weight`` is the new sample's share."""

    value: float | None = None

    def update(self, sample: float, weight: float) -> float:
        self.value = sample if self.value is None else self.value + weight * (sample - self.value)
        return self.value


def halflife_weight(dt_s: float, halflife_s: float) -> float:
    """Share of a sample covering ``dt_s`` when weights halve every ``halflife_s``."""
    if halflife_s <= 0:
        return 1.0
    return 1.0 - math.pow(0.5, max(0.0, dt_s) / halflife_s)


class UplinkEstimator:
    """One device's uplink: sent Kbps over video time, link Kbps over transit time,
    and frames sent per video second (for the policy's expected Kbps)."""

    def __init__(self, *, halflife_s: float = 10.0, link_weight: float = 0.2) -> None:
        if halflife_s <= 0 or not 0 < link_weight <= 1:
            raise ValueError("halflife_s must be > 0 and link_weight in (0, 1]")
        self.halflife_s = float(halflife_s)
        self.link_weight = float(link_weight)
        self.sent_kbps = Ewma()
        self.sent_fps = Ewma()
        self.link_kbps = Ewma()
        self._last_end_ms: int | None = None
        self.chunks = 0
        self.bytes = 0

    def observe_chunk(self, end_ms: int, nbytes: int, frames: int, *, sent_at: float | None = None,
                      arrived_at: float | None = None) -> None:
        """A chunk whose last frame is at video time ``end_ms``.

        The first chunk only sets the reference time (its span of video is
        unknown); a chunk not after the previous one (a redelivery, another
        boot's spool) counts in the totals but not in the rate.
        """
        if nbytes < 0 or frames < 0:
            raise ValueError("bytes and frames must be >= 0")
        self.chunks += 1
        self.bytes += nbytes
        if sent_at is not None and arrived_at is not None:
            transit = max(MIN_TRANSIT_S, arrived_at - sent_at)
            self.link_kbps.update(nbytes * 8 / 1000.0 / transit, self.link_weight)
        if self._last_end_ms is not None and end_ms > self._last_end_ms:
            span_s = (end_ms - self._last_end_ms) / 1000.0
            w = halflife_weight(span_s, self.halflife_s)
            self.sent_kbps.update(nbytes * 8 / 1000.0 / span_s, w)
            self.sent_fps.update(frames / span_s, w)
        if self._last_end_ms is None or end_ms > self._last_end_ms:
            self._last_end_ms = end_ms

    def snapshot(self) -> dict[str, float | None]:
        """The estimates, rounded, for logs and ``fleet/status``."""
        def r(e: Ewma) -> float | None:
            return None if e.value is None else round(e.value, 3)

        return {"sent_kbps": r(self.sent_kbps), "sent_fps": r(self.sent_fps), "link_kbps": r(self.link_kbps)}


def effective_budget(budget_kbps: float, link_kbps: float | None, link_fraction: float | None) -> float:
    """The budget the policy keeps under: the knob, or a fraction of the
    measured link rate when that is lower and capping by it is enabled."""
    if link_fraction is None or link_kbps is None:
        return budget_kbps
    return min(budget_kbps, link_fraction * link_kbps)


__all__ = ["Ewma", "UplinkEstimator", "effective_budget", "halflife_weight"]
