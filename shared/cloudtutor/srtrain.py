"""Training the CloudSeg super-resolution model (``cloudtutor train sr``).

Two stages, as CloudSeg §3.1 describes:

1. **base**: (LR, HR) patch pairs cut from any unlabeled frames (the LR
   patch is the HR patch downscaled by ``scale``, bicubic with
   antialiasing, as the edge's encoder input would be), random flips, L1 loss;
2. **analytics-aware**: larger patches, and the loss adds the analytics
   model's disagreement between HR and SR: cross-entropy of a frozen
   segmentation network on the SR patch against the teacher's labels of the
   HR frame. The TFLite teacher cannot be differentiated, so the gradient
   goes through a frozen copy of the pretrained ESPNet (brief §10.7); the
   checkpoint's config names that proxy.

Pure training code: frames in, checkpoint out. Reading videos and running
the teacher happen in :func:`prepare_frames`; the loop logs a line every
``log_every`` steps and checkpoints every ``save_every`` steps, so a killed
run resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from cloudtutor.models.labels import IGNORE
from cloudtutor.models.preprocess import ESPNET_MEAN_BGR, ESPNET_STD_BGR

log = logging.getLogger("cloudtutor.train.sr")


class SrTrainConfig(BaseModel):
    """Settings of one SR training run; stored in the checkpoint."""

    model_config = ConfigDict(extra="forbid")

    scale: Literal[2, 4] = Field(4, description="Upscaling factor the model learns (the edge's `scale` knob).")
    channels: int = Field(64, ge=8, le=256, description="CARN-M width.")
    groups: int = Field(4, ge=1, description="Group-convolution groups of CARN-M.")
    base_steps: int = Field(400, ge=0, description="Adam steps of the base (L1) stage.")
    aware_steps: int = Field(150, ge=0, description="Adam steps of the analytics-aware stage.")
    batch_size: int = Field(8, ge=1, description="Patches per step.")
    patch: int = Field(96, ge=16, description="HR patch side of the base stage (a multiple of scale x 8).")
    aware_patch: int = Field(192, ge=32, description="HR patch side of the analytics-aware stage (larger: the segmenter needs context).")
    lr: float = Field(5e-4, gt=0, description="Adam learning rate (both stages).")
    aware_weight: float = Field(0.1, ge=0, description="Weight of the analytics loss against L1 in the aware stage.")
    proxy: str = Field("espnet", description="Differentiable proxy of the teacher (a registry model, frozen).")
    seed: int = Field(0, description="Seed of patch sampling and initialisation.")
    log_every: int = Field(25, ge=1, description="Steps between progress log lines.")
    save_every: int = Field(100, ge=1, description="Steps between checkpoints.")


@dataclass
class TrainFrame:
    """An HR frame and (for the aware stage) the teacher's labels of it, in the proxy's target channels."""

    rgb: np.ndarray  # HxWx3 uint8
    targets: np.ndarray | None  # HxW uint8, IGNORE where unlabeled


# ---------------------------------------------------------------- patches


def downscale(hr: Tensor, scale: int) -> Tensor:
    """LR of an ``N x 3 x H x W`` batch in [0, 1]: bicubic, antialiased (what a resize before encoding does)."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {w}x{h} is not a multiple of scale {scale}")
    return F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def sample_patches(
    frames: Sequence[TrainFrame], patch: int, batch: int, rng: np.random.Generator,
) -> tuple[Tensor, Tensor | None]:
    """``batch`` random HR patches (N x 3 x p x p in [0, 1]), with random
    horizontal flips, and their target patches if every frame has targets."""
    images, targets = [], []
    for _ in range(batch):
        frame = frames[int(rng.integers(len(frames)))]
        h, w = frame.rgb.shape[:2]
        if h < patch or w < patch:
            raise ValueError(f"frame {w}x{h} is smaller than the {patch}px patch")
        y, x = int(rng.integers(h - patch + 1)), int(rng.integers(w - patch + 1))
        img = frame.rgb[y:y + patch, x:x + patch]
        tgt = None if frame.targets is None else frame.targets[y:y + patch, x:x + patch]
        if rng.random() < 0.5:  # street scenes are left-right symmetric, not up-down
            img = img[:, ::-1]
            tgt = None if tgt is None else tgt[:, ::-1]
        images.append(np.ascontiguousarray(img))
        targets.append(None if tgt is None else np.ascontiguousarray(tgt))
    x_hr = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if any(t is None for t in targets):
        return x_hr, None
    return x_hr, torch.from_numpy(np.stack(targets)).long()


# ---------------------------------------------------------------- losses


_MEAN = torch.tensor(ESPNET_MEAN_BGR).view(1, 3, 1, 1)
_STD = torch.tensor(ESPNET_STD_BGR).view(1, 3, 1, 1)


def espnet_input(rgb01: Tensor) -> Tensor:
    """``preprocess.espnet_normalize`` in torch, differentiable: RGB [0, 1] -> BGR, standardised, / 255."""
    bgr = rgb01.flip(1) * 255.0
    return (bgr - _MEAN) / _STD / 255.0


def analytics_loss(proxy: nn.Module, sr: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of the frozen proxy on the SR patch against the teacher's HR labels."""
    out = proxy(espnet_input(sr))
    logits = out if isinstance(out, Tensor) else out[0]
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=tuple(targets.shape[-2:]), mode="bilinear", align_corners=False)
    if not bool((targets != IGNORE).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets, ignore_index=IGNORE)


# ---------------------------------------------------------------- the loop


@dataclass
class StepLog:
    step: int
    stage: str
    l1: float
    analytics: float | None


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    frames: Sequence[TrainFrame],
    config: SrTrainConfig,
    *,
    start: int = 0,
    proxy: nn.Module | None = None,
    on_step: Callable[[StepLog], None] | None = None,
    on_save: Callable[[int], None] | None = None,
) -> list[StepLog]:
    """Run steps ``start .. base_steps + aware_steps`` (base first, then aware)."""
    total = config.base_steps + config.aware_steps
    # One generator per step, seeded by the step: a resumed run draws the same patches.
    history: list[StepLog] = []
    model.train()
    for step in range(start, total):
        rng = np.random.default_rng([config.seed, step])
        aware = step >= config.base_steps
        hr, targets = sample_patches(frames, config.aware_patch if aware else config.patch, config.batch_size, rng)
        sr = model(downscale(hr, config.scale))
        l1 = F.l1_loss(sr, hr)
        loss, a = l1, None
        if aware and config.aware_weight > 0:
            if proxy is None or targets is None:
                raise ValueError("the analytics-aware stage needs a proxy and teacher targets")
            a_loss = analytics_loss(proxy, sr.clamp(0, 1), targets)
            loss = l1 + config.aware_weight * a_loss
            a = float(a_loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        entry = StepLog(step + 1, "aware" if aware else "base", float(l1.detach()), a)
        history.append(entry)
        if on_step is not None:
            on_step(entry)
        if on_save is not None and ((step + 1) % config.save_every == 0 or step + 1 == total):
            on_save(step + 1)
    model.eval()
    return history


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of two batches in [0, 1]."""
    mse = float(F.mse_loss(a.detach().clamp(0, 1), b.detach().clamp(0, 1)))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


class ProgressLog:
    """A log line every ``every`` steps with the mean losses since the last one."""

    def __init__(self, total: int, every: int) -> None:
        self.total, self.every = total, every
        self._l1: list[float] = []
        self._a: list[float] = []
        self._t0 = time.monotonic()

    def __call__(self, entry: StepLog) -> None:
        self._l1.append(entry.l1)
        if entry.analytics is not None:
            self._a.append(entry.analytics)
        if entry.step % self.every == 0 or entry.step == self.total:
            rate = len(self._l1) / max(time.monotonic() - self._t0, 1e-9)
            extra = f", analytics CE {np.mean(self._a):.4f}" if self._a else ""
            log.info("step %d/%d (%s): L1 %.4f%s; %.2f steps/s", entry.step, self.total, entry.stage,
                     float(np.mean(self._l1)), extra, rate)
            self._l1, self._a, self._t0 = [], [], time.monotonic()


__all__ = [
    "ProgressLog",
    "SrTrainConfig",
    "StepLog",
    "TrainFrame",
    "analytics_loss",
    "downscale",
    "espnet_input",
    "psnr",
    "sample_patches",
    "train_steps",
]
