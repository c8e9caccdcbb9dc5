"""``cloudtutor train accmodel`` (AccMPEG §5): AccGrad labels first, then a cheap binary segmenter.

1. Frames of real video, resized as the edge sends them (``width`` wide,
   sides multiples of 16), go through real H.264 twice, at ``crf_high`` (H)
   and ``crf_low`` (L), and come back through PyAV's decoder.
2. :func:`~cloudtutor.accmpeg.accgrad.accgrad` of each frame through the
   differentiable proxy (default: a frozen copy of the pretrained ESPNet,
   brief §10.7; the TFLite teacher has no gradients), thresholded per
   frame at ``label_alpha`` into binary labels M* (§5).
3. The AccModel (feature extractor from the ESPNet encoder, three convs)
   learns M* with cross-entropy, ``high_weight`` (4) on high-quality blocks,
   on random block-aligned crops with left-right flips.

The first ``1 - held_out`` of the video's sampled frames train; the tail
validates (block recall and precision of the high-quality class). Progress
goes to the log every ``log_every`` steps; the checkpoint, written every
``save_every`` steps, resumes a killed run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloudtutor.accmpeg.accgrad import accgrad, accgrad_labels, rgb_batch
from cloudtutor.accmpeg.accmodel import AccModel, high_quality_loss
from cloudtutor.accmpeg.rects import MB

log = logging.getLogger("cloudtutor.train.accmodel")


class AccModelTrainConfig(BaseModel):
    """Settings of one AccModel training run; stored in the checkpoint."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(480, ge=64, le=4096, description="Frames are resized to this width (height kept in aspect), sides rounded to 16, as the edge sends them.")
    # The paper's pair is QP (30, 40). This teacher at 480 px wide keeps 91% of its own pristine labels at
    # CRF 12 but only 39-63% at CRF 30 (bench roi's uniform curve), so CRF 30 is no "high quality" for it;
    # the pair spans the CRFs where its accuracy actually moves.
    crf_high: float = Field(12.0, ge=0, le=51, description="CRF of the high-quality decode H (the teacher still agrees with itself on the pristine frame on ~91% of pixels).")
    crf_low: float = Field(28.0, ge=0, le=51, description="CRF of the low-quality decode L (where the teacher has lost about half its per-frame mIoU).")
    agreement: str = Field("cross_entropy", description="Acc(D(X), D(H)) of AccGrad: cross_entropy (the paper's) or soft_miou (a differentiable per-frame mIoU).")
    label_alpha: float = Field(0.2, gt=0, le=1, description="A block is high quality when its AccGrad is at least this share of the frame's largest.")
    proxy: str = Field("espnet", description="Differentiable stand-in for the teacher (registry model, frozen; brief §10.7).")
    head: int = Field(64, ge=8, le=512, description="Channels of the AccModel's three-convolution head.")
    freeze_features: bool = Field(False, description="Keep the ESPNet-initialised feature extractor fixed.")
    steps: int = Field(1500, ge=0, description="Adam steps (about 4 min on one CPU thread at 480 px; 300 left held-out precision at 0.48).")
    batch_size: int = Field(8, ge=1, description="Crops per step.")
    crop: int = Field(192, ge=MB, description="Crop side in pixels (a multiple of 16; frames smaller than it are used whole).")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    high_weight: float = Field(4.0, gt=0, description="Cross-entropy weight of high-quality blocks (AccMPEG §5: 4).")
    seed: int = Field(0, description="Seed of crops and initialisation.")
    log_every: int = Field(25, ge=1, description="Steps between progress lines.")
    save_every: int = Field(100, ge=1, description="Steps between checkpoints.")

    @model_validator(mode="after")
    def _consistent(self) -> AccModelTrainConfig:
        if self.crop % MB:
            raise ValueError(f"crop must be a multiple of {MB}, got {self.crop}")
        from cloudtutor.accmpeg.accgrad import AGREEMENTS

        if self.agreement not in AGREEMENTS:
            raise ValueError(f"agreement must be one of {', '.join(AGREEMENTS)}, got {self.agreement!r}")
        if self.crf_high >= self.crf_low:
            raise ValueError(f"crf_high ({self.crf_high}) must be below crf_low ({self.crf_low}): H is the better decode")
        return self


@dataclass
class LabeledFrame:
    rgb: np.ndarray  # HxWx3 uint8: what the AccModel sees (the pristine frame, as on the edge)
    scores: np.ndarray  # (rows, cols) AccGrad
    labels: np.ndarray  # (rows, cols) bool


def sent_frames(path: str | Path, *, every: int, width: int | None, held_out: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every ``every``-th frame of a video at the edge's sent size for ``width`` (None: the video's
    own), never wider than the source (an edge does not upsample what it sends); (training part,
    held-out tail)."""
    from cloudtutor.h264 import sent_size
    from cloudtutor.models.preprocess import resize_rgb
    from cloudtutor.srframes import video_frames

    split = video_frames(path, every=every, multiple=1, held_out=held_out)
    frames = split.train + split.held_out
    if not frames:
        raise ValueError(f"{path}: no frames")
    h, w = frames[0].shape[:2]
    size = sent_size((w, h), 1.0 if width is None else max(1.0, w / width))
    resized = [resize_rgb(f, size) for f in frames]
    return resized[:len(split.train)], resized[len(split.train):]


def high_low(frames: Sequence[np.ndarray], crf_high: float, crf_low: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The H and L decodes of ``frames`` through real H.264 (chunks as the edge sends them)."""
    from cloudtutor.srframes import edge_low_res

    return edge_low_res(frames, 1, crf_high)[0], edge_low_res(frames, 1, crf_low)[0]


def label_frames(
    frames: Sequence[np.ndarray], proxy: torch.nn.Module, config: AccModelTrainConfig,
    progress: Callable[[int, int], None] | None = None,
) -> list[LabeledFrame]:
    """AccGrad and binary labels of each frame (H and L through real H.264, gradients through ``proxy``)."""
    from cloudtutor.srtrain import espnet_input

    high, low = high_low(frames, config.crf_high, config.crf_low)
    out = []
    for i, (rgb, h, lo) in enumerate(zip(frames, high, low)):
        scores = accgrad(proxy, h, lo, normalize=espnet_input, acc=config.agreement)
        out.append(LabeledFrame(rgb, scores, accgrad_labels(scores, config.label_alpha)))
        if progress is not None:
            progress(i + 1, len(frames))
    return out


def sample_crops(frames: Sequence[LabeledFrame], crop: int, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random block-aligned crops (images N x 3 x c x c in [0, 1], labels N x c/16 x c/16)."""
    images, labels = [], []
    for _ in range(batch):
        f = frames[int(rng.integers(len(frames)))]
        rows, cols = f.labels.shape
        bh, bw = min(rows, crop // MB), min(cols, crop // MB)
        y, x = int(rng.integers(rows - bh + 1)), int(rng.integers(cols - bw + 1))
        img = f.rgb[y * MB:(y + bh) * MB, x * MB:(x + bw) * MB]
        lab = f.labels[y:y + bh, x:x + bw]
        if rng.random() < 0.5:  # street scenes are left-right symmetric
            img, lab = img[:, ::-1], lab[:, ::-1]
        images.append(np.ascontiguousarray(img))
        labels.append(np.ascontiguousarray(lab))
    shapes = {i.shape for i in images}
    if len(shapes) > 1:  # frames of different sizes smaller than the crop: one per batch
        images, labels = images[:1], labels[:1]
    return rgb_batch(np.stack(images)), torch.from_numpy(np.stack(labels))


def block_scores(model: AccModel, frames: Sequence[LabeledFrame], alpha: float = 0.5) -> dict[str, float]:
    """Recall and precision of the high-quality class, and the share of blocks predicted high, at ``alpha``."""
    tp = fp = fn = total = 0
    for f in frames:
        pred = model.predict(f.rgb) >= alpha
        tp += int((pred & f.labels).sum())
        fp += int((pred & ~f.labels).sum())
        fn += int((~pred & f.labels).sum())
        total += pred.size
    return {"recall": round(tp / max(1, tp + fn), 4), "precision": round(tp / max(1, tp + fp), 4),
            "predicted_high": round((tp + fp) / max(1, total), 4), "labeled_high": round((tp + fn) / max(1, total), 4)}


def train_steps(
    model: AccModel, optimizer: torch.optim.Optimizer, frames: Sequence[LabeledFrame], config: AccModelTrainConfig,
    *, start: int = 0, on_save: Callable[[int], None] | None = None,
) -> list[float]:
    """Steps ``start .. config.steps``; returns the losses. BatchNorm of the
    ESPNet-initialised features stays in eval mode (their statistics are the pretrained ones)."""
    from cloudtutor.srtrain import espnet_input

    if not frames:
        raise ValueError("no labeled frames to train on")
    model.train()
    if config.freeze_features:
        model.freeze_features()
    for name in ("level1", "b1", "level2_0", "level2", "b2", "level3_0"):
        getattr(model, name).eval()
    losses: list[float] = []
    started, window = time.monotonic(), []
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, step])  # a resumed run draws the same crops
        images, labels = sample_crops(frames, config.crop, config.batch_size, rng)
        loss = high_quality_loss(model(espnet_input(images)), labels, config.high_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        window.append(losses[-1])
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            rate = (done - start) / max(1e-9, time.monotonic() - started)
            log.info("step %d/%d loss %.4f (%.2f steps/s, ~%.0f s left)", done, config.steps,
                     float(np.mean(window)), rate, (config.steps - done) / max(rate, 1e-9))
            window = []
        if on_save is not None and (done % config.save_every == 0 or done == config.steps):
            on_save(done)
    model.eval()
    return losses


__all__ = ["AccModelTrainConfig", "LabeledFrame", "block_scores", "high_low", "label_frames", "sample_crops",
           "sent_frames", "train_steps"]
