"""One device's bitrate policy and ATR state in the controller, without I/O.

The service feeds it signals (in video time) and applies what it returns;
the algorithms are ``cloudtutor.algorithms.bandwidth`` (uplink estimate),
``.bitrate`` (profile and choice) and ``.asr`` (ATR).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass

from cloudtutor.algorithms.asr import AdaptiveTrainingRate
from cloudtutor.algorithms.bandwidth import UplinkEstimator, effective_budget
from cloudtutor.algorithms.bitrate import BitrateProfile, Decision, Quality, choose, match_quality
from cloudtutor.config.cloud import ControllerSettings
from cloudtutor.h264 import sent_size
from cloudtutor.knobs import Knobs
from cloudtutor.streams import Signal

MIN_SEND_FRACTION = 0.05  # never trust a near-empty estimate of the selector's share
RECENT_CHUNKS = 256


@dataclass(frozen=True)
class Change:
    """Knobs to set and why (one structured log line, ``control/state``'s reason)."""

    override: dict
    reason: str
    fields: dict


def quality_of(knobs: Knobs) -> Quality:
    return Quality(knobs.scale, knobs.crf, knobs.roi_qoffset)


class DevicePolicy:
    def __init__(self, settings: ControllerSettings) -> None:
        b = settings.bitrate
        self.settings = settings
        self.uplink = UplinkEstimator(halflife_s=b.halflife_s)
        self.profile = BitrateProfile(
            {Quality(p.scale, p.crf, p.roi_qoffset): (p.relative_bytes, p.accuracy) for p in b.prior},
            reference_bytes=b.reference_bytes, bytes_weight=b.bytes_weight, accuracy_weight=b.accuracy_weight,
            accuracy_n0=b.accuracy_n0,
        )
        a = settings.atr
        self.atr = AdaptiveTrainingRate(settings.default_knobs.t_update_s, hibernate_below_fps=a.hibernate_below_fps,
                                        wake_above_fps=a.wake_above_fps, growth_s=a.growth_s, max_factor=a.max_factor)
        self.now_s: float | None = None
        self._next_decision_s: float | None = None
        self._last_quality_change_s = float("-inf")
        self._chunks: deque[tuple[int, Quality | None]] = deque(maxlen=RECENT_CHUNKS)  # (end ms, quality), in order
        self._period_start_s: float | None = None
        self._rate_integral = 0.0
        self._rate_since_s: float | None = None
        self.last_decision: Decision | None = None

    # -- evidence ---------------------------------------------------------------------

    @property
    def engaged(self) -> bool:
        """The policy acts once the device's real bytes are known."""
        return self.settings.bitrate.enabled and self.uplink.chunks > 0

    def advance(self, t_s: float) -> None:
        if self.now_s is None or t_s > self.now_s:
            self.now_s = t_s

    def on_chunk(self, signal: Signal) -> None:
        self.uplink.observe_chunk(signal.video_ms, signal.bytes or 0, int(signal.value),
                                  sent_at=signal.sent_at, arrived_at=signal.arrived_at)
        quality = None
        if None not in (signal.source_width, signal.source_height, signal.sent_width, signal.sent_height):
            quality = match_quality(self.profile.qualities, (signal.source_width, signal.source_height),
                                    (signal.sent_width, signal.sent_height), signal.crf, signal.roi_qoffset, sent_size)
        if quality is not None and signal.value > 0 and signal.bytes:
            self.profile.observe_bytes(quality, signal.bytes / signal.value)
        if not self._chunks or signal.video_ms > self._chunks[-1][0]:
            self._chunks.append((signal.video_ms, quality))

    def on_accuracy(self, signal: Signal) -> None:
        """Attributed to the quality of the chunk that carried the frame at its video time."""
        ends = [end for end, _ in self._chunks]
        i = bisect_left(ends, signal.video_ms)
        if i < len(self._chunks) and self._chunks[i][1] is not None:
            self.profile.observe_accuracy(self._chunks[i][1], signal.value)  # type: ignore[arg-type]

    # -- the bitrate policy -----------------------------------------------------------

    def due(self) -> bool:
        """A δt of video time has passed since the last decision."""
        if not self.engaged or self.now_s is None:
            return False
        return self._next_decision_s is None or self.now_s >= self._next_decision_s

    def decide(self, knobs: Knobs, proposed_fps: float, default_knobs: Knobs, trigger: str) -> Change | None:
        """One decision at the current video time; None when nothing changes."""
        if not self.engaged or self.now_s is None:
            return None
        b = self.settings.bitrate
        self._next_decision_s = self.now_s + self.settings.delta_t_s
        est = self.uplink
        fraction = 1.0
        if est.sent_fps.value is not None and knobs.sample_fps > 0:
            fraction = min(1.0, max(MIN_SEND_FRACTION, est.sent_fps.value / knobs.sample_fps))
        budget = effective_budget(knobs.uplink_budget_kbps, est.link_kbps.value, b.link_fraction)
        decision = choose(
            self.profile.options(), current=quality_of(knobs), proposed_fps=proposed_fps, send_fraction=fraction,
            budget_kbps=budget, r_min=self.settings.asr_min_fps, headroom=b.headroom, upgrade_margin=b.upgrade_margin,
            min_gain=b.min_gain, since_change_s=self.now_s - self._last_quality_change_s, min_dwell_s=b.min_dwell_s,
            rate_step=b.rate_step,
        )
        self.last_decision = decision
        override: dict = {k: v for k, v in decision.quality.knobs().items() if getattr(knobs, k) != v}
        if abs(decision.sample_fps - knobs.sample_fps) > 1e-9:
            override["sample_fps"] = round(decision.sample_fps, 4)
        useful = min(b.starved_useful_threshold, knobs.key_threshold) if decision.starved else default_knobs.useful_threshold
        if useful != knobs.useful_threshold and useful <= knobs.key_threshold:
            override["useful_threshold"] = useful
        if not override:
            return None
        if decision.quality != quality_of(knobs):
            self._last_quality_change_s = self.now_s
        snap = est.snapshot()
        fields = {
            "action": decision.action, "trigger": trigger, "video_s": round(self.now_s, 3),
            "budget_kbps": round(budget, 3), "expected_kbps": round(decision.expected_kbps, 3),
            "expected_accuracy": round(decision.expected_accuracy, 4), "send_fraction": round(fraction, 3),
            "proposed_fps": proposed_fps, **snap,
        }
        reason = (f"bitrate {decision.action} ({trigger}): {decision.detail}; measured {snap['sent_kbps']} Kbps sent, "
                  f"link {snap['link_kbps']} Kbps, selector sends {fraction:.2f} of sampled frames")
        return Change(override, reason, fields)

    # -- ATR --------------------------------------------------------------------------

    def atr_step(self, knobs: Knobs) -> Change | None:
        """Close the ATR period when its time is up: the mean sampling rate
        over it (time-weighted, the knob as set) decides hibernation and the
        next update period (brief §10.10)."""
        if not self.settings.atr.enabled or self.now_s is None:
            return None
        t = self.now_s
        if self._period_start_s is None:
            self._period_start_s = self._rate_since_s = t
            return None
        self._rate_integral += knobs.sample_fps * (t - self._rate_since_s)  # type: ignore[operator]
        self._rate_since_s = t
        length = t - self._period_start_s
        if length < self.atr.period_s:
            return None
        mean = self._rate_integral / length if length > 0 else knobs.sample_fps
        if not self.atr.hibernating:
            self.atr.t_update_s = knobs.t_update_s  # an operator's T_update is the base while awake
        was = self.atr.hibernating
        period = self.atr.update(mean)
        self._period_start_s, self._rate_integral = t, 0.0
        if abs(period - knobs.t_update_s) < 1e-9:
            return None
        a = self.settings.atr
        state = "hibernating" if self.atr.hibernating else "awake"
        edge = {(False, True): "hibernate", (True, False): "wake", (True, True): "still hibernating"}.get((was, self.atr.hibernating), state)
        reason = (f"ATR {edge}: mean sampling rate {mean:.3f} fps over {length:.1f} s "
                  f"(hibernate < {a.hibernate_below_fps:g}, wake > {a.wake_above_fps:g}) "
                  f"-> T_update {period:g} s")
        return Change({"t_update_s": round(period, 3)}, reason,
                      {"action": "atr", "state": state, "mean_fps": round(mean, 4), "t_update_s": period, "video_s": round(t, 3)})


__all__ = ["Change", "DevicePolicy", "quality_of"]
