"""The bitrate knob policy (CloudSeg §3.3, AWStream; brief §5, §10.6).

A device's **profile** maps each quality (downscale ``scale``, x264 ``crf``,
AccMPEG ``roi_qoffset``) to the bytes per sent frame it costs and the
accuracy it keeps. It starts from an offline prior (``cloudtutor bench
bitrate``: bytes relative to a reference quality, the teacher's mIoU on the
degraded frames against the originals) and is corrected online:

* bytes: the device's own level (bytes per frame of the reference quality on
  the video it sees now) from every chunk's real encoder bytes, and a
  per-quality correction of the prior's shape where a quality was seen;
* accuracy: the accuracy signals (trainer: the edge view's mIoU against the
  teacher's labels of the uploaded frames) per quality, relative to the
  device's level over all qualities, shrunk towards the prior by the
  number of signals seen.

Every δt the **policy** (:func:`choose`) keeps ASR's proposed sampling rate
and picks the quality with the best expected accuracy whose expected uplink
``rate × sent share × bytes/frame`` stays under the budget (with headroom).
Only when even the cheapest quality does not fit does it lower the rate
(brief §10.6), and only when that hits r_min does it flag the frame
selector to drop more (``starved``). Hysteresis: a downgrade is immediate;
an upgrade needs a minimum accuracy gain, a margin under the budget and a
minimum dwell since the last change. Pure code: no I/O, time passed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cloudtutor.algorithms.bandwidth import Ewma


@dataclass(frozen=True, order=True)
class Quality:
    """One point of the quality grid: the knobs the policy owns besides the rate."""

    scale: float
    crf: float
    roi_qoffset: float = 0.0

    def knobs(self) -> dict[str, float]:
        return {"scale": self.scale, "crf": self.crf, "roi_qoffset": self.roi_qoffset}

    def __str__(self) -> str:
        roi = f" roi {self.roi_qoffset:+.3f}" if self.roi_qoffset else ""
        return f"x{self.scale:g} crf {self.crf:g}{roi}"


@dataclass(frozen=True)
class Option:
    """A quality with its expected bytes per sent frame and expected accuracy."""

    quality: Quality
    bytes_per_frame: float
    accuracy: float


def kbps(bytes_per_frame: float, fps: float, send_fraction: float) -> float:
    """Expected uplink of sending ``send_fraction`` of ``fps`` sampled frames of that size."""
    return fps * send_fraction * bytes_per_frame * 8.0 / 1000.0


class BitrateProfile:
    """One device's accuracy/bytes profile: the offline prior corrected online."""

    def __init__(
        self,
        prior: Mapping[Quality, tuple[float, float]],
        *,
        reference_bytes: float,
        bytes_weight: float = 0.3,
        accuracy_weight: float = 0.2,
        accuracy_n0: float = 5.0,
        correction_bounds: tuple[float, float] = (0.25, 4.0),
    ) -> None:
        """``prior``: quality -> (bytes relative to the reference quality, accuracy);
        ``reference_bytes``: the reference quality's bytes per frame until a chunk says otherwise."""
        if not prior:
            raise ValueError("the profile needs at least one quality")
        if any(rel <= 0 for rel, _ in prior.values()):
            raise ValueError("relative bytes must be > 0")
        self.prior = dict(prior)
        self.bytes_weight = bytes_weight
        self.accuracy_weight = accuracy_weight
        self.accuracy_n0 = accuracy_n0
        self.bounds = correction_bounds
        self.level = Ewma(float(reference_bytes))  # bytes/frame of the reference quality on this device's video
        self._bytes_level_seen = False
        self.correction: dict[Quality, Ewma] = {}
        self.accuracy_obs: dict[Quality, Ewma] = {}
        self.accuracy_n: dict[Quality, int] = {}
        self.accuracy_level = Ewma()  # mean of observed / prior accuracy over all qualities

    @property
    def qualities(self) -> list[Quality]:
        return sorted(self.prior)

    def observe_bytes(self, quality: Quality, bytes_per_frame: float) -> None:
        """A chunk of ``quality`` cost ``bytes_per_frame`` per frame (wire bytes)."""
        if quality not in self.prior or bytes_per_frame <= 0:
            return
        rel = self.prior[quality][0]
        corr = self.correction.get(quality)
        shape = 1.0 if corr is None or corr.value is None else corr.value
        # The level moves with the content; the per-quality correction with the prior's shape error.
        w = 1.0 if not self._bytes_level_seen else self.bytes_weight
        level = self.level.update(bytes_per_frame / (rel * shape), w)
        self._bytes_level_seen = True
        lo, hi = self.bounds
        ratio = min(hi, max(lo, bytes_per_frame / (level * rel)))
        # What the level did not explain; slower than the level, so one quality seen alone stays near 1.
        self.correction.setdefault(quality, Ewma(1.0)).update(ratio, self.bytes_weight / 2)

    def observe_accuracy(self, quality: Quality, value: float) -> None:
        """An accuracy signal measured on frames uploaded at ``quality``."""
        if quality not in self.prior or not math.isfinite(value):
            return
        prior_acc = self.prior[quality][1]
        self.accuracy_obs.setdefault(quality, Ewma()).update(value, self.accuracy_weight)
        self.accuracy_n[quality] = self.accuracy_n.get(quality, 0) + 1
        if prior_acc > 0:
            self.accuracy_level.update(value / prior_acc, self.accuracy_weight)

    def expected_bytes(self, quality: Quality) -> float:
        corr = self.correction.get(quality)
        shape = 1.0 if corr is None or corr.value is None else corr.value
        assert self.level.value is not None
        return self.level.value * self.prior[quality][0] * shape

    def expected_accuracy(self, quality: Quality) -> float:
        prior_acc = self.prior[quality][1]
        obs, n, level = self.accuracy_obs.get(quality), self.accuracy_n.get(quality, 0), self.accuracy_level.value
        if obs is None or obs.value is None or not level:
            return prior_acc
        online = obs.value / level  # this quality's accuracy in the prior's units
        return (self.accuracy_n0 * prior_acc + n * online) / (self.accuracy_n0 + n)

    def options(self) -> list[Option]:
        return [Option(q, self.expected_bytes(q), self.expected_accuracy(q)) for q in self.qualities]


def match_quality(
    qualities: Iterable[Quality], source_size: tuple[int, int], sent: tuple[int, int], crf: float | None,
    roi_qoffset: float | None, sent_size,
) -> Quality | None:
    """The grid quality a chunk was encoded at, from its header: the scale
    whose ``sent_size(source, scale)`` is the chunk's size, the same CRF and
    ROI offset (None if it matches none, e.g. an operator's own setting)."""
    for q in qualities:
        if (crf is not None and abs(q.crf - crf) < 1e-6 and abs(q.roi_qoffset - (roi_qoffset or 0.0)) < 1e-6
                and tuple(sent_size(source_size, q.scale)) == tuple(sent)):
            return q
    return None


@dataclass(frozen=True)
class Decision:
    """What the policy picked and why."""

    quality: Quality
    sample_fps: float
    expected_kbps: float
    expected_accuracy: float
    action: str  # keep | upgrade | downgrade | rate_limited | starved
    detail: str
    starved: bool = False  # over budget even at r_min with the cheapest quality: the frame selector should drop more


def choose(
    options: Sequence[Option],
    *,
    current: Quality | None,
    proposed_fps: float,
    send_fraction: float,
    budget_kbps: float,
    r_min: float,
    headroom: float = 0.9,
    upgrade_margin: float = 0.75,
    min_gain: float = 0.01,
    since_change_s: float = math.inf,
    min_dwell_s: float = 0.0,
    rate_step: float = 0.05,
) -> Decision:
    """One δt decision (brief §10.6). ``cap = headroom × budget``.

    * Some quality fits at the proposed rate: the most accurate one that
      does (ties: fewer bytes). The current quality is kept while it fits
      unless the best beats it by ``min_gain`` and either costs less or
      fits under ``upgrade_margin × budget`` after ``min_dwell_s`` since the
      last change (hysteresis); a current quality over the cap is left at once.
    * None fits: the cheapest quality, and the rate lowered (in steps of
      ``rate_step``, rounded down) until it fits, not below ``r_min``;
      still over at ``r_min``: ``starved``.
    """
    if not options:
        raise ValueError("no options")
    if not 0 < send_fraction <= 1:
        raise ValueError(f"send_fraction must lie in (0, 1], got {send_fraction}")
    cap = headroom * budget_kbps
    by_quality = {o.quality: o for o in options}

    def cost(o: Option, fps: float = proposed_fps) -> float:
        return kbps(o.bytes_per_frame, fps, send_fraction)

    fitting = [o for o in options if cost(o) <= cap]
    if fitting:
        best = max(fitting, key=lambda o: (o.accuracy, -o.bytes_per_frame))
        cur = by_quality.get(current) if current is not None else None

        def decide(o: Option, action: str, detail: str) -> Decision:
            return Decision(o.quality, proposed_fps, cost(o), o.accuracy, action, detail)

        if cur is None:
            return decide(best, "upgrade" if current is None else "downgrade",
                          f"{best.quality}: best expected accuracy {best.accuracy:.3f} at {cost(best):.1f} of {cap:.1f} Kbps")
        if cost(cur) > cap:
            return decide(best, "downgrade", f"{cur.quality} expects {cost(cur):.1f} Kbps > {cap:.1f} "
                          f"({headroom:g} x budget {budget_kbps:g}); {best.quality} expects {cost(best):.1f}, "
                          f"accuracy {cur.accuracy:.3f} -> {best.accuracy:.3f}")
        gain = best.accuracy - cur.accuracy
        if best.quality != cur.quality and gain >= min_gain and (
            best.bytes_per_frame <= cur.bytes_per_frame
            or (cost(best) <= upgrade_margin * budget_kbps and since_change_s >= min_dwell_s)
        ):
            return decide(best, "upgrade", f"{best.quality} expects accuracy +{gain:.3f} at {cost(best):.1f} Kbps "
                          f"(<= {upgrade_margin:g} x budget {budget_kbps:g})")
        return decide(cur, "keep", f"{cur.quality} fits: {cost(cur):.1f} of {cap:.1f} Kbps")
    cheapest = min(options, key=lambda o: (o.bytes_per_frame, -o.accuracy))
    per_fps = cost(cheapest, 1.0)
    fps = math.floor(cap / per_fps / rate_step) * rate_step if per_fps > 0 else proposed_fps
    fps = round(min(proposed_fps, max(r_min, fps)), 6)
    starved = cost(cheapest, fps) > cap
    action = "starved" if starved else "rate_limited"
    detail = (f"even {cheapest.quality} expects {cost(cheapest):.1f} Kbps at {proposed_fps:g} fps > {cap:.1f}; "
              f"rate {proposed_fps:g} -> {fps:g} fps ({cost(cheapest, fps):.1f} Kbps)")
    if starved:
        detail += f"; still over at r_min {r_min:g}: frame selector drops more"
    return Decision(cheapest.quality, fps, cost(cheapest, fps), cheapest.accuracy, action, detail, starved)


__all__ = ["BitrateProfile", "Decision", "Option", "Quality", "choose", "kbps", "match_quality"]
