"""AMS (`papers/ams.md` §3) on the simulated clock, with the trainer's own code.

The edge samples frames at the ASR rate (eq. 1, :class:`AdaptiveSamplingRate`
with the controller's η and φ_target), buffers each T_update window's
samples into one H.264 chunk (§3.2 "buffer compression"); the cloud labels
them with the teacher and, every T_update, runs one training phase
(:func:`distill.distill_phase`: K masked-Adam iterations on mini-batches
from the last T_horizon, the γ coordinates chosen by ``strategy``) and sends
the delta through the real codec.

``scale`` > 1 is cloudtutor's pipeline: the edge sends ``1/scale`` size and
the cloud upscales (bicubic, ``upscale.bicubic``) before labelling and
training, so the teacher labels and the student trains on what the cloud
really received; ``selector`` adds CloudSeg's 2-level frame selector, which
drops stale samples. At scale 1 the cloud trains on the pristine frames
(the teacher's cached labels), the uplink still paying the real chunk bytes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import nn

from cloudtutor import distill
from cloudtutor.algorithms.asr import AdaptiveSamplingRate, phi_score
from cloudtutor.algorithms.frameselect import FrameSelector
from cloudtutor.algorithms.masked_adam import MaskedAdam
from cloudtutor.config.cloud import ControllerSettings
from cloudtutor.models.preprocess import resize_labels, resize_rgb
from cloudtutor.schemes.footage import Tick
from cloudtutor.schemes.ledger import EveryGate
from cloudtutor.schemes.runner import Context, Scheme, Uplink, send_delta
from cloudtutor.upscale import bicubic

_CONTROLLER = ControllerSettings()


@dataclass(frozen=True)
class AmsSettings:
    t_update_s: float = 10.0
    t_horizon_s: float = 240.0
    iterations: int = 20  # K
    batch_size: int = 2  # the trainer's default (config trainer.batch_size)
    lr: float = 1e-3
    gamma: float = 0.05
    strategy: str = "gradient"
    asr: bool = True
    rate_fps: float = 1.0  # initial (and, without ASR, fixed) sampling rate
    eta: float = _CONTROLLER.asr_eta
    phi_target: float = _CONTROLLER.asr_phi_target
    crf: float = 23.0
    scale: float = 1.0
    selector: bool = False


def phi_any_size(labels: np.ndarray, prev: np.ndarray) -> float:
    """φ as the labeler computes it: across a change of source size the
    previous labels are compared at the current frame's size."""
    if prev.shape != labels.shape:
        prev = resize_labels(prev, (labels.shape[1], labels.shape[0]))
    return phi_score(labels, prev)


class Ams(Scheme):
    def __init__(self, cloud: nn.Module, settings: AmsSettings = AmsSettings(), name: str = "ams") -> None:
        self.cloud, self.s, self.name = cloud, settings, name
        self.horizon: list[tuple[int, np.ndarray, np.ndarray]] = []  # (t_ms, frame at student size, teacher labels)
        self.phases = 0
        self.selected: list[int] = []
        self.skipped_stale = 0
        self.rates: list[tuple[int, float]] = []

    def start(self, ctx: Context) -> None:
        s = self.s
        self.optimizer = MaskedAdam(self.cloud, gamma=s.gamma, strategy=s.strategy, seed=ctx.seed, lr=s.lr)
        self.gate = EveryGate(s.rate_fps)
        self.asr = AdaptiveSamplingRate(eta=s.eta, phi_target=s.phi_target, initial_rate=s.rate_fps,
                                        phi_fn=phi_any_size)
        self.selector = FrameSelector() if s.selector else None
        self.selector_shape: tuple[int, ...] | None = None
        self.uplink = Uplink(ctx, crf=s.crf, scale=s.scale, decode=s.scale > 1)
        self.next_ms = int(round(s.t_update_s * 1000))
        self.rates.append((0, s.rate_fps))

    def on_frame(self, ctx: Context, tick: Tick) -> None:
        if tick.pts_ms >= self.next_ms:
            self._window_end(ctx, tick)
            self.next_ms += int(round(self.s.t_update_s * 1000))
        if not self.gate(tick.pts_ms):
            return
        small = ctx.footage.small[tick.uid]
        if self.selector is not None and small.shape != self.selector_shape:
            self.selector.reset()  # a new clip of another size: a new stream to the selector (its first frame is KEY)
            self.selector_shape = small.shape
        if self.selector is not None and not self.selector.select(small).cls.sent:
            self.skipped_stale += 1
            return
        self.uplink.add(tick)
        if self.s.asr:
            rate = self.asr.observe_labels(tick.pts_ms / 1000.0, ctx.teacher_small(tick.uid))
            if rate is not None and rate != self.gate.fps:
                self.gate.set_rate(rate)
                self.rates.append((tick.pts_ms, rate))

    def _window_end(self, ctx: Context, tick: Tick) -> None:
        """The chunk of this window goes up; the cloud labels it and runs a phase."""
        for sample, decoded in self.uplink.flush(tick):
            self.horizon.append((sample.pts_ms, *self._received(ctx, sample, decoded)))
        cutoff = tick.pts_ms - int(round(self.s.t_horizon_s * 1000))
        self.horizon = [h for h in self.horizon if h[0] > cutoff]
        if not self.horizon:
            return
        self.phases += 1
        start = time.perf_counter()
        report = distill.distill_phase(
            self.cloud, self.optimizer, [h[1] for h in self.horizon], [h[2] for h in self.horizon],
            iterations=self.s.iterations, batch_size=self.s.batch_size,
            rng=distill.phase_rng(ctx.seed, 1, self.optimizer.phase_index + 1), normalize=ctx.normalize, lut=ctx.lut)
        ctx.cloud_seconds += time.perf_counter() - start
        self.selected.append(report.selected)
        send_delta(ctx, tick, self.cloud, report.masks)

    def _received(self, ctx: Context, sample: Tick, decoded: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(frame at the student's size, teacher labels) of what the cloud got."""
        if decoded is None:
            return ctx.footage.small[sample.uid], ctx.teacher_small(sample.uid)
        src = ctx.footage.frames[sample.uid]
        restored = bicubic(decoded, (src.shape[1], src.shape[0]))
        size = ctx.small_size(sample.uid)
        return resize_rgb(restored, size), ctx.teacher.labels(restored, size)

    def finish(self, ctx: Context, tick: Tick) -> None:
        ctx.notes.update({
            "phases": self.phases, "uplink": self.uplink.stats(), "stale_skipped": self.skipped_stale,
            "selected_mean": float(np.mean(self.selected)) if self.selected else 0.0,
            "coordinates": self.optimizer.n_coords, "rates": self.rates[-20:],
        })

    def settings(self) -> dict[str, Any]:
        return asdict(self.s)
