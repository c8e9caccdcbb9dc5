"""Adaptive sampling rate (AMS §3.2, eq. 1) and adaptive training rate (ATR).

ASR: every δt of video time the server moves a device's frame sampling rate
toward keeping the φ-score (how fast the teacher's labels change) at a
target::

    r_{t+1} = clip(r_t + η · (φ̄_t − φ_target), r_min, r_max)      (eq. 1)

with r_min = 0.1 fps and r_max = 1 fps (§3.2, §4.1) and δt = 10 s. φ_k is
1 − mIoU between the teacher's labels of sampled frame k and of the
previous sampled frame of the same device (brief §10.3; §3.2 defines it as
the task loss of T(I_k) against T(I_{k-1})).

ATR (brief §10.10; the AMS appendix is not in our copy, the rule follows the
authors' code): hibernate a device's training when its mean sampling rate is
below 0.25 fps, wake it above 0.35 fps; while hibernating the update period
grows by 2 s per period, up to 6 × T_update.

Pure code: time is always passed in (video time from the `Clock`, brief
§10.1), never read here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cloudtutor.accuracy import frame_miou

R_MIN_FPS = 0.1
R_MAX_FPS = 1.0
DELTA_T_S = 10.0


def asr_update(
    rate: float,
    phi_mean: float,
    *,
    eta: float,
    phi_target: float,
    r_min: float = R_MIN_FPS,
    r_max: float = R_MAX_FPS,
) -> float:
    """AMS eq. (1): one step of the sampling rate, clipped to [r_min, r_max]."""
    if r_min > r_max:
        raise ValueError(f"r_min {r_min} > r_max {r_max}")
    return min(r_max, max(r_min, rate + eta * (phi_mean - phi_target)))


def phi_score(labels: np.ndarray, prev_labels: np.ndarray, *, num_classes: int = 19) -> float:
    """φ_k = 1 − mIoU of ``labels`` (teacher, frame k) against ``prev_labels``
    (teacher, previous sampled frame of the same device), brief §10.3.

    mIoU is :func:`cloudtutor.accuracy.frame_miou` with the previous frame as
    the reference: the mean IoU over the classes present in either map,
    void pixels of the reference unscored. No scored pixel: φ = 0.
    """
    if np.shape(labels) != np.shape(prev_labels):
        raise ValueError(f"label maps differ in size: {np.shape(labels)} vs {np.shape(prev_labels)}")
    miou = frame_miou(np.asarray(prev_labels), np.asarray(labels), num_classes)
    return 0.0 if np.isnan(miou) else float(1.0 - miou)


class AdaptiveSamplingRate:
    """Per-device ASR controller over video time.

    Windows of ``delta_t_s`` start at ``start_s`` (default: the first time
    seen): [t0, t0+δt), [t0+δt, t0+2δt), ... A φ observed at time t belongs
    to the window containing t. When a time ≥ the current window's end is
    seen (`observe`, `observe_labels` or `advance`), the window closes: the
    rate takes one eq. (1) step with φ̄ = the mean φ of that window; an empty
    window leaves the rate unchanged (no evidence). Those calls return the
    rate when at least one window closed, else None. Times must not go
    backwards.
    """

    def __init__(
        self,
        *,
        eta: float,
        phi_target: float,
        initial_rate: float = R_MAX_FPS,
        r_min: float = R_MIN_FPS,
        r_max: float = R_MAX_FPS,
        delta_t_s: float = DELTA_T_S,
        start_s: float | None = None,
        phi_fn: Callable[[np.ndarray, np.ndarray], float] = phi_score,
    ) -> None:
        if delta_t_s <= 0:
            raise ValueError("delta_t_s must be > 0")
        if r_min > r_max:
            raise ValueError(f"r_min {r_min} > r_max {r_max}")
        self.eta = float(eta)
        self.phi_target = float(phi_target)
        self.r_min = float(r_min)
        self.r_max = float(r_max)
        self.delta_t_s = float(delta_t_s)
        self.phi_fn = phi_fn
        self._rate = min(self.r_max, max(self.r_min, float(initial_rate)))
        self._t0: float | None = None if start_s is None else float(start_s)
        self._window = 0  # index of the open window
        self._phis: list[float] = []
        self._last_t: float | None = None
        self._prev_labels: np.ndarray | None = None
        self.last_phi_mean: float | None = None  # φ̄ of the last non-empty window (fleet weights, §10.10)

    @property
    def rate(self) -> float:
        """Current sampling rate in frames per second of video time."""
        return self._rate

    def _window_end(self) -> float:
        assert self._t0 is not None
        # From the index, not by repeated addition, so ends do not drift.
        return self._t0 + (self._window + 1) * self.delta_t_s

    def advance(self, t_s: float) -> float | None:
        """Move video time to ``t_s``, closing every window that ended."""
        t = float(t_s)
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"time went backwards: {t} < {self._last_t}")
        self._last_t = t
        if self._t0 is None:
            self._t0 = t
        closed = False
        while t >= self._window_end():
            if self._phis:
                self.last_phi_mean = float(np.mean(self._phis))
                self._rate = asr_update(
                    self._rate,
                    self.last_phi_mean,
                    eta=self.eta,
                    phi_target=self.phi_target,
                    r_min=self.r_min,
                    r_max=self.r_max,
                )
            self._phis = []
            self._window += 1
            closed = True
        return self._rate if closed else None

    def observe(self, t_s: float, phi: float) -> float | None:
        """Record φ of the sampled frame at video time ``t_s``."""
        if self._t0 is not None and float(t_s) < self._t0:
            raise ValueError(f"time {t_s} is before the first window ({self._t0})")
        result = self.advance(t_s)
        self._phis.append(float(phi))
        return result

    def observe_labels(self, t_s: float, labels: np.ndarray) -> float | None:
        """Record the teacher's labels of the sampled frame at ``t_s``; φ is
        ``phi_fn(labels, previous labels)``. The device's first frame has no
        predecessor, so it yields no φ (it only advances time)."""
        prev, self._prev_labels = self._prev_labels, np.asarray(labels)
        if prev is None:
            return self.advance(t_s)
        return self.observe(t_s, self.phi_fn(self._prev_labels, prev))


# -- ATR -------------------------------------------------------------------

HIBERNATE_BELOW_FPS = 0.25
WAKE_ABOVE_FPS = 0.35
GROWTH_S = 2.0
MAX_FACTOR = 6.0


@dataclass(frozen=True)
class ATRState:
    """Whether the device's training hibernates, and the current update period."""

    hibernating: bool
    period_s: float


def atr_update(
    state: ATRState,
    mean_rate_fps: float,
    *,
    t_update_s: float = 10.0,
    hibernate_below_fps: float = HIBERNATE_BELOW_FPS,
    wake_above_fps: float = WAKE_ABOVE_FPS,
    growth_s: float = GROWTH_S,
    max_factor: float = MAX_FACTOR,
) -> ATRState:
    """One ATR decision, taken once per update period (brief §10.10).

    Hysteresis: awake -> hibernating iff mean rate < ``hibernate_below_fps``;
    hibernating -> awake iff mean rate > ``wake_above_fps`` (the bounds
    themselves change nothing). Every period spent hibernating, the one that
    starts hibernation included, adds ``growth_s`` to the period, capped at
    ``max_factor`` × T_update: T+2, T+4, ..., 6T. Awake (or waking), the
    period is T_update.
    """
    cap = max_factor * t_update_s
    if state.hibernating:
        if mean_rate_fps > wake_above_fps:
            return ATRState(False, t_update_s)
        return ATRState(True, min(cap, state.period_s + growth_s))
    if mean_rate_fps < hibernate_below_fps:
        return ATRState(True, min(cap, t_update_s + growth_s))
    return ATRState(False, t_update_s)


class AdaptiveTrainingRate:
    """Per-device ATR: call `update` once per period with the device's mean
    sampling rate over it; the result is the wait before the next phase."""

    def __init__(self, t_update_s: float = 10.0, **rule: float) -> None:
        self.t_update_s = float(t_update_s)
        self._rule = rule
        self.state = ATRState(False, self.t_update_s)

    @property
    def hibernating(self) -> bool:
        return self.state.hibernating

    @property
    def period_s(self) -> float:
        return self.state.period_s

    def update(self, mean_rate_fps: float) -> float:
        self.state = atr_update(self.state, mean_rate_fps, t_update_s=self.t_update_s, **self._rule)
        return self.state.period_s
