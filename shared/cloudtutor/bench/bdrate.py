"""Bjøntegaard-delta rate on an accuracy axis: one number for "how many
fewer bytes at equal accuracy" between two rate/accuracy curves.

Bjøntegaard (VCEG-M33, 2001) fits log(rate) as a cubic polynomial of the
quality of each curve and averages the gap between the two fits over the
quality range both curves cover. Video coding for machines uses it with a
task metric (here teacher mIoU) in place of PSNR. A fit over all points of
a curve averages out the per-point noise that makes single-point
comparisons on a short video swing by ±10%.

:func:`bd_saving` returns ``1 - rate_test / rate_reference`` averaged in
the log domain: positive means the test curve needs fewer bytes for the
same accuracy. Each curve is fitted on its points inside the shared range
plus the nearest one beyond each end, so a wide reference sweep is fitted
where it is compared. :func:`bootstrap_bd_saving` puts a confidence interval on
it by resampling the encoded chunks (the unit that has a size) with
replacement, the same draw for both curves (a paired bootstrap).

Pure numpy, no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)  # a test curve's name: any key the caller groups curves by


class Curve(NamedTuple):
    """Rate/accuracy points of one scheme: bytes (or bytes per frame) and accuracy, one entry per point."""

    rate: Sequence[float]
    accuracy: Sequence[float]


def _check(curve: Curve) -> None:
    acc = np.asarray(curve.accuracy, dtype=np.float64)
    rate = np.asarray(curve.rate, dtype=np.float64)
    if acc.shape != rate.shape or acc.ndim != 1:
        raise ValueError("a curve has one rate per accuracy")
    if len(acc) < 2 or np.ptp(acc) <= 0:
        raise ValueError(f"a curve needs at least two points of different accuracy, got {len(acc)}")
    if not np.all(np.isfinite(acc)) or not np.all(rate > 0):
        raise ValueError("accuracies must be finite and rates positive")


def _fit(curve: Curve, degree: int) -> np.poly1d:
    acc = np.asarray(curve.accuracy, dtype=np.float64)
    return np.poly1d(np.polyfit(acc, np.log(np.asarray(curve.rate, dtype=np.float64)), min(degree, len(acc) - 1)))


def _local(curve: Curve, lo: float, hi: float) -> Curve:
    """The points inside ``[lo, hi]`` plus the nearest one beyond each end: a
    long curve (a wide CRF sweep) is fitted where it is compared, not bent by
    points far outside the shared range."""
    order = np.argsort(np.asarray(curve.accuracy, dtype=np.float64), kind="stable")
    acc = np.asarray(curve.accuracy, dtype=np.float64)[order]
    rate = np.asarray(curve.rate, dtype=np.float64)[order]
    first = max(0, int(np.searchsorted(acc, lo, side="left")) - 1)
    last = min(len(acc), int(np.searchsorted(acc, hi, side="right")) + 1)
    return Curve(rate[first:last], acc[first:last])


def bd_saving(reference: Curve, test: Curve, *, degree: int = 3) -> dict[str, float] | None:
    """Mean byte saving of ``test`` over ``reference`` at equal accuracy.

    ``None`` when the two curves share no accuracy range. ``overlap`` is the
    shared range, so a reader sees how much of each curve the figure covers.
    """
    _check(reference)
    _check(test)
    lo = max(min(reference.accuracy), min(test.accuracy))
    hi = min(max(reference.accuracy), max(test.accuracy))
    if hi <= lo:
        return None
    ref_fit, test_fit = _fit(_local(reference, lo, hi), degree).integ(), _fit(_local(test, lo, hi), degree).integ()
    mean_log_ratio = ((test_fit(hi) - test_fit(lo)) - (ref_fit(hi) - ref_fit(lo))) / (hi - lo)
    return {"saving": float(1.0 - np.exp(mean_log_ratio)), "overlap": (float(lo), float(hi))}


class ChunkedRun(NamedTuple):
    """One encode of the same frames: bytes of each chunk and each frame's accuracy, chunk by chunk."""

    chunk_bytes: Sequence[int]
    frame_accuracy: Sequence[Sequence[float]]  # per chunk, the accuracy of its frames (NaN: not scored)


def _curve(runs: Sequence[ChunkedRun], draw: np.ndarray) -> Curve:
    rate, acc = [], []
    for run in runs:
        frames = [a for i in draw for a in run.frame_accuracy[i]]
        rate.append(sum(run.chunk_bytes[i] for i in draw) / max(1, len(frames)))
        acc.append(float(np.nanmean(frames)))
    return Curve(rate, acc)


def bootstrap_bd_saving(
    reference: Sequence[ChunkedRun], tests: Mapping[K, Sequence[ChunkedRun]], *, rounds: int = 1000,
    seed: int = 0, degree: int = 3, level: float = 0.9,
) -> dict[K, dict[str, float | None]]:
    """BD saving of each test curve over ``reference`` with a paired bootstrap interval over chunks.

    Every run must cover the same chunks of the same frames. Returns, per
    test: ``saving`` and ``overlap`` on all chunks, ``low``/``high`` (the ``level`` interval)
    and ``p_positive`` (the share of draws with a positive saving); draws
    where the curves do not overlap are left out (``rounds_used``).
    """
    runs = list(reference) + [r for rs in tests.values() for r in rs]
    n = {len(r.chunk_bytes) for r in runs} | {len(r.frame_accuracy) for r in runs}
    if len(n) != 1:
        raise ValueError("every run must have the same chunks")
    chunks = n.pop()
    rng = np.random.default_rng(seed)
    draws = [np.arange(chunks)] + [rng.integers(0, chunks, chunks) for _ in range(rounds)]
    out: dict[K, dict[str, float | None]] = {}
    for name, runs_ in tests.items():
        values = []
        for draw in draws:
            bd = bd_saving(_curve(reference, draw), _curve(runs_, draw), degree=degree)
            values.append(None if bd is None else bd["saving"])
        whole, rest = values[0], np.array([v for v in values[1:] if v is not None])
        tail = (1.0 - level) / 2
        full = bd_saving(_curve(reference, draws[0]), _curve(runs_, draws[0]), degree=degree)
        out[name] = {
            "saving": whole,
            "overlap": None if full is None else full["overlap"],
            "low": float(np.quantile(rest, tail)) if len(rest) else None,
            "high": float(np.quantile(rest, 1 - tail)) if len(rest) else None,
            "p_positive": float((rest > 0).mean()) if len(rest) else None,
            "rounds_used": int(len(rest)),
        }
    return out


__all__ = ["ChunkedRun", "Curve", "bd_saving", "bootstrap_bd_saving"]
