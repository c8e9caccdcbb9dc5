"""ShadowTutor (`papers/shadowtutor.md` §4) on the simulated clock, with the
trainer's ShadowTutor code (:func:`train_key_frame`, :func:`next_stride`).

Every ``stride`` processed frames the edge sends a key frame as a one-frame
chunk; the cloud runs Algorithm 1 on it (front frozen through
``freeze_through``, until mIoU > THRESHOLD or MAX_UPDATES steps, best kept)
and sends the trainable part dense when it improved (metric only
otherwise), through the real delta codec; the metric sets the next stride.
The update is applied at once (the simulated clock charges no compute; the
paper's edge would wait at most MIN_STRIDE frames).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from cloudtutor import distill
from cloudtutor.algorithms.stride import MAX_STRIDE, MIN_STRIDE, next_stride
from cloudtutor.config.cloud import ShadowTutorSettings
from cloudtutor.schemes.footage import Tick
from cloudtutor.schemes.runner import Context, Scheme, Uplink, send_delta
from cloudtutor.shadowtutor.partial import train_key_frame, trainable_names

_TRAINER = ShadowTutorSettings()


@dataclass(frozen=True)
class ShadowSettings:
    freeze_through: str | None = _TRAINER.freeze_through
    threshold: float = _TRAINER.threshold
    max_updates: int = _TRAINER.max_updates
    lr: float = _TRAINER.lr
    min_stride: int = MIN_STRIDE
    max_stride: int = MAX_STRIDE
    crf: float = 23.0


class ShadowTutor(Scheme):
    name = "shadowtutor"

    def __init__(self, cloud: nn.Module, settings: ShadowSettings = ShadowSettings()) -> None:
        self.cloud, self.s = cloud, settings
        self.count = self.keys = self.improved = self.steps = 0
        self.stride = float(settings.min_stride)

    def start(self, ctx: Context) -> None:
        self.names = trainable_names(self.cloud, self.s.freeze_through)
        self.uplink = Uplink(ctx, crf=self.s.crf)

    def infer(self, ctx: Context, tick: Tick) -> None:
        self.count += 1
        if self.count >= self.stride or self.keys == 0:
            self.count = 0
            self._key_frame(ctx, tick)
        super().infer(ctx, tick)

    def _key_frame(self, ctx: Context, tick: Tick) -> None:
        self.keys += 1
        self.uplink.add(tick)
        self.uplink.flush(tick)
        labels = ctx.teacher_small(tick.uid)
        x = distill.to_inputs([ctx.footage.small[tick.uid]], normalize=ctx.normalize)
        start = time.perf_counter()
        result = train_key_frame(self.cloud, x, labels, mapping=ctx.mapping, trainable=self.names,
                                 threshold=self.s.threshold, max_updates=self.s.max_updates, lr=self.s.lr)
        ctx.cloud_seconds += time.perf_counter() - start
        self.steps += result.steps
        params = dict(self.cloud.named_parameters())
        masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in self.names} if result.improved else {}
        self.improved += bool(result.improved)
        metric = result.metric if math.isfinite(result.metric) else None
        send_delta(ctx, tick, self.cloud, masks, metric=metric)
        self.stride = next_stride(self.stride, result.metric if metric is not None else float("nan"),
                                  threshold=self.s.threshold, min_stride=self.s.min_stride, max_stride=self.s.max_stride)

    def finish(self, ctx: Context, tick: Tick) -> None:
        ctx.notes.update({"key_frames": self.keys, "improved": self.improved, "steps": self.steps,
                          "trainable_share": round(sum(dict(self.cloud.named_parameters())[n].numel() for n in self.names)
                                                   / sum(p.numel() for p in self.cloud.parameters()), 4),
                          "uplink": self.uplink.stats()})

    def settings(self) -> dict[str, Any]:
        return asdict(self.s)
