"""Weighted round-robin over a trainer replica's devices (brief §10.10)."""

from __future__ import annotations

from collections import Counter

import pytest

from cloudtutor.algorithms.fleet_schedule import device_weight, wrr_charge, wrr_order, wrr_sequence


def test_weight_is_recent_phi_with_a_floor():
    assert device_weight(0.4) == 0.4
    assert device_weight(0.0) == 0.05 and device_weight(0.0, floor=0.2) == 0.2
    assert device_weight(None) == 1.0 and device_weight(float("nan")) == 1.0  # no phi yet: served promptly
    assert device_weight(0.4, 0.1) == 0.4, "drops count only with a gain"
    assert device_weight(0.4, 0.1, drop_gain=2.0) == pytest.approx(0.6)
    assert device_weight(0.4, -0.3, drop_gain=2.0) == 0.4, "an accuracy gain is no drop"


def test_picks_follow_the_weights_and_interleave():
    weights = {"fast": 0.6, "mid": 0.3, "still": 0.1}
    picks = wrr_sequence(weights, 100)
    assert Counter(picks) == {"fast": 60, "mid": 30, "still": 10}
    # Smooth: the heaviest device never runs three phases in a row at 60%.
    assert all(picks[i:i + 3] != ["fast"] * 3 for i in range(98))
    assert wrr_sequence({"a": 1.0, "b": 1.0}, 4) == ["a", "b", "a", "b"]


def test_a_device_that_is_not_due_earns_no_more_credit():
    weights = {"a": 1.0, "b": 1.0}
    credit: dict[str, float] = {}
    for _ in range(5):  # b is never due: a is served every time
        order = wrr_order(credit, weights)
        skipped = order[: order.index("a")]  # tried before a and found not due
        credit = wrr_charge(credit, weights, "a", skipped)
    # Untried devices after the pick count as eligible (the trainer stops at the
    # first due one), so b may hold one round's weight, never more.
    assert credit["b"] <= weights["b"] and credit["a"] >= -weights["b"]
    assert wrr_charge(credit, weights, None) == credit  # an idle round changes nothing
