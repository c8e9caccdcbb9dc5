"""Training the CloudSeg super-resolution model (``cloudtutor train sr``).

Two stages, as CloudSeg §3.1 describes:

1. **base**: (LR, HR) patch pairs cut from any unlabeled frames, random
   flips, L1 loss. The LR frame is made the way the edge makes it: resized
   by ``scale`` and sent through real H.264 at ``crf``
   (:func:`cloudtutor.srframes.edge_low_res`), so the model learns to undo
   the codec's artefacts as well as the missing resolution (``crf: null``
   trains on clean resized frames instead);
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
    skip: Literal["bicubic", "mean"] = Field(
        "bicubic", description="CARN-M global skip: residual over bicubic (starts as bicubic) or the paper's mean shift.")
    crf: float | None = Field(
        23.0, ge=0, le=51, description="H.264 CRF the LR training frames go through (the edge's); null = no codec.")
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
    """An HR frame, (for the aware stage) the teacher's labels of it in the
    proxy's target channels, and optionally the LR frame the edge would send."""

    rgb: np.ndarray  # HxWx3 uint8
    targets: np.ndarray | None  # HxW uint8, IGNORE where unlabeled
    lr: np.ndarray | None = None  # (H/scale)x(W/scale)x3 uint8; None: bicubic downscale of the patch


# ---------------------------------------------------------------- patches


def downscale(hr: Tensor, scale: int) -> Tensor:
    """LR of an ``N x 3 x H x W`` batch in [0, 1]: bicubic, antialiased (what a resize before encoding does)."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {w}x{h} is not a multiple of scale {scale}")
    return F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


@dataclass
class PatchBatch:
    """A training batch: LR and HR patches (N x 3 x p x p in [0, 1]) and, if every frame has them, targets."""

    lr: Tensor
    hr: Tensor
    targets: Tensor | None


def _batch(arrays: list[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)


def sample_patches(
    frames: Sequence[TrainFrame], patch: int, batch: int, rng: np.random.Generator, scale: int,
) -> PatchBatch:
    """``batch`` random aligned (LR, HR) patch pairs with random horizontal
    flips. Frames without an LR frame get a bicubic downscale of the HR patch."""
    if patch % scale:
        raise ValueError(f"patch {patch} is not a multiple of scale {scale}")
    lows, images, targets = [], [], []
    for _ in range(batch):
        frame = frames[int(rng.integers(len(frames)))]
        h, w = frame.rgb.shape[:2]
        if h < patch or w < patch:
            raise ValueError(f"frame {w}x{h} is smaller than the {patch}px patch")
        # Corners on the LR grid, so the LR patch covers exactly the HR patch.
        y = int(rng.integers((h - patch) // scale + 1)) * scale
        x = int(rng.integers((w - patch) // scale + 1)) * scale
        img = frame.rgb[y:y + patch, x:x + patch]
        low = None
        if frame.lr is not None:
            if frame.lr.shape[:2] != (h // scale, w // scale):
                raise ValueError(f"LR frame {frame.lr.shape[1]}x{frame.lr.shape[0]} is not {w}x{h} / {scale}")
            low = frame.lr[y // scale:(y + patch) // scale, x // scale:(x + patch) // scale]
        tgt = None if frame.targets is None else frame.targets[y:y + patch, x:x + patch]
        if rng.random() < 0.5:  # street scenes are left-right symmetric, not up-down
            img = img[:, ::-1]
            low = None if low is None else low[:, ::-1]
            tgt = None if tgt is None else tgt[:, ::-1]
        images.append(np.ascontiguousarray(img))
        lows.append(None if low is None else np.ascontiguousarray(low))
        targets.append(None if tgt is None else np.ascontiguousarray(tgt))
    hr = _batch(images)
    if any(low is None for low in lows):
        lr = downscale(hr, scale)
    else:
        lr = _batch(lows)  # type: ignore[arg-type]
    target = None if any(t is None for t in targets) else torch.from_numpy(np.stack(targets)).long()
    return PatchBatch(lr, hr, target)


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
        b = sample_patches(frames, config.aware_patch if aware else config.patch, config.batch_size, rng, config.scale)
        hr, targets = b.hr, b.targets
        sr = model(b.lr)
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
    "PatchBatch",
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
