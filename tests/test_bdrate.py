"""BD-rate on an accuracy axis: the saving at equal accuracy between two curves, and its bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from cloudtutor.bench.bdrate import ChunkedRun, Curve, bd_saving, bootstrap_bd_saving

ACC = [0.2, 0.3, 0.4, 0.5, 0.6]
RATE = [800.0, 1400.0, 2500.0, 4600.0, 9000.0]


def test_identical_curves_save_nothing():
    bd = bd_saving(Curve(RATE, ACC), Curve(RATE, ACC))
    assert bd["saving"] == pytest.approx(0.0, abs=1e-12)
    assert bd["overlap"] == (0.2, 0.6)


def test_a_curve_at_half_the_bytes_saves_half():
    bd = bd_saving(Curve(RATE, ACC), Curve([r / 2 for r in RATE], ACC))
    assert bd["saving"] == pytest.approx(0.5)
    worse = bd_saving(Curve(RATE, ACC), Curve([r * 1.25 for r in RATE], ACC))
    assert worse["saving"] == pytest.approx(-0.25)


def test_only_the_shared_accuracy_range_counts():
    # The test curve covers 0.3..0.5; there it is 20% cheaper. The reference's far points
    # (0.2, 0.6) bend nothing: the fit is local to the shared range.
    test = Curve([0.8 * r for r in RATE[1:4]], ACC[1:4])
    bd = bd_saving(Curve(RATE, ACC), test)
    assert bd["overlap"] == (0.3, 0.5)
    assert bd["saving"] == pytest.approx(0.2, abs=0.01)
    assert bd_saving(Curve(RATE[:2], ACC[:2]), Curve(RATE[3:], ACC[3:])) is None


def test_bad_curves_are_refused():
    with pytest.raises(ValueError, match="two points"):
        bd_saving(Curve([1.0, 2.0], [0.3, 0.3]), Curve(RATE, ACC))
    with pytest.raises(ValueError, match="positive"):
        bd_saving(Curve([0.0, 2.0, 3.0], [0.2, 0.3, 0.4]), Curve(RATE, ACC))


def _runs(rates, accs, chunks, rng, noise):
    runs = []
    for rate, acc in zip(rates, accs):
        frames = [list(acc + noise * rng.standard_normal(10)) for _ in range(chunks)]
        runs.append(ChunkedRun([int(rate * 10 * (1 + 0.1 * rng.standard_normal())) for _ in range(chunks)], frames))
    return runs


def test_paired_bootstrap_brackets_the_true_saving():
    rng = np.random.default_rng(1)
    reference = _runs(RATE, ACC, 12, rng, 0.05)
    cheaper = _runs([0.8 * r for r in RATE[1:4]], ACC[1:4], 12, rng, 0.05)
    same = _runs(RATE[1:4], ACC[1:4], 12, rng, 0.05)
    out = bootstrap_bd_saving(reference, {"cheaper": cheaper, "same": same}, rounds=200)
    assert out["cheaper"]["low"] < 0.2 < out["cheaper"]["high"]
    assert out["cheaper"]["p_positive"] > 0.9
    assert out["same"]["low"] < 0.0 < out["same"]["high"]
    assert out["cheaper"]["rounds_used"] == 200


def test_runs_over_different_chunks_are_refused():
    run = ChunkedRun([100, 100], [[0.5], [0.5]])
    with pytest.raises(ValueError, match="same chunks"):
        bootstrap_bd_saving([run, run], {"x": [ChunkedRun([100], [[0.5]])]})
