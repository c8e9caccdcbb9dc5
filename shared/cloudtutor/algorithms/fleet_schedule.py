"""Which device a trainer replica trains next (AMS §4, brief §10.10).

Many devices share one trainer: when several are due for a phase, they are
served by smooth weighted round-robin (the nginx scheme) with weight = the
device's recent mean φ (φ̄, how fast its scene changes), optionally plus a
gain times its latest accuracy drop. A device with twice the weight gets
twice the phases when the trainer cannot keep up with all of them; a floor
keeps a static scene from starving. Pure functions: the trainer keeps the
credits between steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def device_weight(phi_mean: float | None, accuracy_drop: float | None = None, *,
                  floor: float = 0.05, drop_gain: float = 0.0) -> float:
    """max(floor, φ̄ + drop_gain · max(0, drop)); an unknown φ̄ (no φ yet) counts as 1,
    the most a φ can be, so a new device is served promptly."""
    phi = 1.0 if phi_mean is None or not math.isfinite(phi_mean) else phi_mean
    drop = 0.0 if accuracy_drop is None or not math.isfinite(accuracy_drop) else max(0.0, accuracy_drop)
    return max(floor, phi + drop_gain * drop)


def wrr_order(credit: Mapping[str, float], weights: Mapping[str, float]) -> list[str]:
    """Devices in the order to try: highest credit + weight first (ties by id)."""
    return sorted(weights, key=lambda d: (-(credit.get(d, 0.0) + weights[d]), d))


def wrr_charge(credit: Mapping[str, float], weights: Mapping[str, float], picked: str | None,
               skipped: Iterable[str] = ()) -> dict[str, float]:
    """One round of smooth WRR: every eligible device (not ``skipped``, i.e.
    not due) gains its weight, the picked one pays the eligible total. With
    nothing picked the credits stay as they were (an idle round earns none)."""
    if picked is None:
        return {d: credit.get(d, 0.0) for d in weights}
    skipped = set(skipped)
    eligible = [d for d in weights if d not in skipped]
    total = sum(weights[d] for d in eligible)
    out = {d: credit.get(d, 0.0) for d in weights}
    for d in eligible:
        out[d] += weights[d]
    out[picked] -= total
    return out


def wrr_sequence(weights: Mapping[str, float], n: int) -> list[str]:
    """The first ``n`` picks when every device is always due (what the trainer
    does under full load): each device's share of the picks is its share of
    the weight, interleaved."""
    credit: dict[str, float] = {}
    picks = []
    for _ in range(n):
        pick = wrr_order(credit, weights)[0]
        credit = wrr_charge(credit, weights, pick)
        picks.append(pick)
    return picks
