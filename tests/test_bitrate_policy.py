"""The bitrate knob policy (CloudSeg §3.3, brief §10.6), the uplink estimate
and the controller's per-device ATR, on hand-made profiles and signals."""

from __future__ import annotations

import math

import pytest

from cloudtutor.algorithms.bandwidth import UplinkEstimator, effective_budget, halflife_weight
from cloudtutor.algorithms.bitrate import BitrateProfile, Option, Quality, choose, kbps, match_quality
from cloudtutor.config.cloud import ControllerSettings
from cloudtutor.h264 import sent_size
from cloudtutor.knobs import Knobs
from cloudtutor.streams import Signal
from cloudtutor_services.controller.policy import DevicePolicy

HI, MID, LOW, TINY = Quality(1, 18), Quality(1, 28), Quality(2, 23), Quality(4, 33)
# bytes per sent frame, expected accuracy: at 1 fps, 10 KB is 80 Kbps
HAND = [Option(HI, 10_000, 0.50), Option(MID, 3_000, 0.31), Option(LOW, 1_500, 0.25), Option(TINY, 200, 0.03)]


def pick(budget, current=None, fps=1.0, fraction=1.0, **kw):
    return choose(HAND, current=current, proposed_fps=fps, send_fraction=fraction, budget_kbps=budget, r_min=0.1, **kw)


def test_picks_the_most_accurate_quality_under_the_budget():
    assert pick(200).quality == HI  # 80 Kbps fits 0.9 x 200
    d = pick(40)  # HI 80 > 36; MID 24 fits
    assert (d.quality, d.sample_fps, d.action) == (MID, 1.0, "upgrade")
    assert d.expected_kbps == pytest.approx(24.0)
    assert pick(20).quality == LOW  # MID 24 > 18; LOW 12 fits
    # a selector that sends half the sampled frames halves the expected uplink
    assert pick(50).quality == MID and pick(50, fraction=0.5).quality == HI


def test_rate_is_lowered_only_when_even_the_cheapest_quality_does_not_fit():
    d = pick(1.0)  # TINY: 1.6 Kbps at 1 fps > 0.9
    assert d.quality == TINY and d.action == "rate_limited" and not d.starved
    assert d.sample_fps == pytest.approx(0.55)  # floor(0.9 / 1.6 / 0.05) x 0.05
    assert kbps(200, d.sample_fps, 1.0) <= 0.9
    d = pick(0.1)  # even r_min 0.1 fps needs 0.16 Kbps
    assert d.starved and d.sample_fps == pytest.approx(0.1) and d.action == "starved"
    # while anything fits, the rate ASR proposed is kept
    assert pick(20, fps=0.7).sample_fps == 0.7


def test_hysteresis_holds_a_quality_that_still_fits():
    # Budget 100: HI expects 80, within 0.9 x 100 but above 0.75 x 100: from MID, no upgrade
    d = pick(100, current=MID, since_change_s=1000)
    assert (d.quality, d.action) == (MID, "keep")
    # ...and once HI is under the upgrade margin, only after the dwell time
    assert pick(120, current=MID, since_change_s=5, min_dwell_s=20).quality == MID
    assert pick(120, current=MID, since_change_s=25, min_dwell_s=20).quality == HI
    # Already at HI with budget 100: kept (fits), not flapped back down
    assert pick(100, current=HI).quality == HI
    # A gain below min_gain is not worth a change, even when it would fit easily
    near = [Option(HI, 10_000, 0.50), Option(MID, 3_000, 0.495)]
    d = choose(near, current=MID, proposed_fps=1, send_fraction=1, budget_kbps=1000, r_min=0.1, min_gain=0.01)
    assert d.quality == MID


def test_over_budget_downgrades_at_once_whatever_the_dwell():
    d = pick(50, current=HI, since_change_s=0.0, min_dwell_s=60)
    assert d.quality == MID and d.action == "downgrade" and "80.0 Kbps > 45.0" in d.detail


def test_a_budget_oscillating_around_a_threshold_does_not_flap():
    """Budgets between the downgrade cap and the upgrade margin keep the current choice."""
    def changes(**kw) -> int:
        current, n = HI, 0
        for budget in [85, 95, 100, 89, 105, 92, 88.8] * 3:
            d = pick(budget, current=current, since_change_s=100, min_dwell_s=20, **kw)
            n += d.quality != current
            current = d.quality
        return n

    assert changes() == 1  # down once at 85 (80 > 76.5); back up needs 80 <= 0.75 x budget, i.e. >= 107
    assert changes(upgrade_margin=0.9) > 5  # without the margin it follows every wiggle


def test_profile_learns_the_device_level_and_each_qualitys_bytes():
    prior = {HI: (1.0, 0.5), MID: (0.3, 0.31), LOW: (0.15, 0.25)}
    profile = BitrateProfile(prior, reference_bytes=12_000)
    assert profile.expected_bytes(MID) == pytest.approx(3_600)  # prior x assumed level
    for _ in range(30):
        profile.observe_bytes(HI, 20_000)  # this video is costlier than the prior's
    assert profile.expected_bytes(HI) == pytest.approx(20_000, rel=0.02)
    assert profile.expected_bytes(MID) == pytest.approx(6_000, rel=0.15)  # scaled with the level
    for _ in range(30):
        profile.observe_bytes(MID, 9_000)  # ...and MID costs more than the prior's shape says
    assert profile.expected_bytes(MID) == pytest.approx(9_000, rel=0.05)
    assert profile.expected_bytes(HI) == pytest.approx(20_000, rel=0.5)
    profile.observe_bytes(Quality(3, 40), 5)  # off the grid: ignored
    assert Quality(3, 40) not in profile.qualities


def test_profile_accuracy_moves_towards_what_the_signals_say():
    prior = {HI: (1.0, 0.5), MID: (0.3, 0.3)}
    profile = BitrateProfile(prior, reference_bytes=1000, accuracy_n0=5)
    assert profile.expected_accuracy(MID) == 0.3
    for _ in range(20):  # both measured in proportion to the prior: nothing moves
        profile.observe_accuracy(HI, 0.6)
        profile.observe_accuracy(MID, 0.36)
    assert profile.expected_accuracy(MID) == pytest.approx(0.3, abs=0.01)
    for _ in range(40):  # MID does worse than the prior says relative to HI
        profile.observe_accuracy(HI, 0.6)
        profile.observe_accuracy(MID, 0.12)
    assert profile.expected_accuracy(MID) < 0.22
    profile.observe_accuracy(MID, math.nan)  # no evidence, no change
    assert profile.accuracy_n[MID] == 60


def test_match_quality_from_a_chunk_header():
    grid = [HI, Quality(1.5, 23), Quality(3, 23), Quality(4, 23)]
    assert match_quality(grid, (960, 540), sent_size((960, 540), 1.5), 23, None, sent_size) == Quality(1.5, 23)
    # 480x360 at x4 rounds to 128x96 (macroblocks), still x4
    assert match_quality(grid, (480, 360), (128, 96), 23, 0.0, sent_size) == Quality(4, 23)
    assert match_quality(grid, (960, 540), (960, 544), 20, None, sent_size) is None


def test_uplink_estimate_from_chunk_sizes_and_times():
    est = UplinkEstimator(halflife_s=10)
    est.observe_chunk(10_000, 10_000, 10, sent_at=100.0, arrived_at=100.5)  # first: only the reference time
    assert est.sent_kbps.value is None and est.link_kbps.value == pytest.approx(160.0)
    for k in range(2, 12):  # 10 KB per 10 s of video: 8 Kbps
        est.observe_chunk(k * 10_000, 10_000, 5)
    assert est.sent_kbps.value == pytest.approx(8.0) and est.sent_fps.value == pytest.approx(0.5)
    for k in range(12, 16):  # the device now sends 4x as much
        est.observe_chunk(k * 10_000, 40_000, 5)
    assert 30.0 < est.sent_kbps.value < 32.0  # half-life 10 s: after 40 s, 1/16 of the old rate remains
    est.observe_chunk(12_000, 99_999, 5)  # a redelivered old chunk: counted, not a rate sample
    assert 30.0 < est.sent_kbps.value < 32.0 and est.chunks == 16
    assert halflife_weight(10, 10) == pytest.approx(0.5)
    assert effective_budget(100, 50, None) == 100 and effective_budget(100, 50, 0.5) == 25


def chunk(t_ms: int, nbytes: int, frames: int = 10, crf: float = 18, sent=(960, 544)) -> Signal:
    return Signal(device_id="d", kind="chunk", value=frames, video_ms=t_ms, bytes=nbytes,
                  source_width=960, source_height=540, sent_width=sent[0], sent_height=sent[1], crf=crf)


def test_device_policy_drops_quality_when_the_budget_drops():
    s = ControllerSettings()
    policy = DevicePolicy(s)
    knobs = Knobs(crf=18, uplink_budget_kbps=200)
    assert policy.decide(knobs, 1.0, Knobs(), "t") is None  # no chunk yet: not engaged
    for k in range(1, 6):  # x1 CRF 18: 11 KB a frame, 1 fps: about 90 Kbps, under 200
        policy.advance(k * 10.0)
        policy.on_chunk(chunk(k * 10_000, 110_000))
    assert policy.decide(knobs, 1.0, Knobs(), "t") is None
    change = policy.decide(knobs.model_copy(update={"uplink_budget_kbps": 40}), 1.0, Knobs(), "budget")
    assert change is not None and "downgrade" in change.reason
    new = knobs.model_copy(update=change.override)
    expected = kbps(policy.profile.expected_bytes(Quality(new.scale, new.crf)), 1.0, 1.0)
    assert expected <= 0.9 * 40 and new.sample_fps == 1.0  # quality went down, the rate stayed
    assert change.fields["budget_kbps"] == 40 and change.fields["action"] == "downgrade"


def test_atr_hibernates_and_wakes_the_device():
    s = ControllerSettings(atr={"growth_s": 2.0})
    policy = DevicePolicy(s)
    knobs, periods = Knobs(sample_fps=0.2, t_update_s=10), []
    t = 0.0
    while t < 200:
        policy.advance(t)
        change = policy.atr_step(knobs)
        if change is not None:
            knobs = knobs.model_copy(update=change.override)
            periods.append(knobs.t_update_s)
        t += 1.0
    assert policy.atr.hibernating and periods[:3] == [12.0, 14.0, 16.0]  # +2 s per period hibernating
    knobs = knobs.model_copy(update={"sample_fps": 1.0})
    while not (change := policy.atr_step(knobs)) or change.fields["action"] != "atr":
        t += 1.0
        policy.advance(t)
    assert "wake" in change.reason and change.override == {"t_update_s": 10.0} and not policy.atr.hibernating


def test_atr_period_is_capped_at_six_times_t_update():
    policy = DevicePolicy(ControllerSettings())
    knobs = Knobs(sample_fps=0.1, t_update_s=10)
    for t in range(0, 3000):
        policy.advance(float(t))
        change = policy.atr_step(knobs)
        if change is not None:
            knobs = knobs.model_copy(update=change.override)
    assert knobs.t_update_s == 60.0
