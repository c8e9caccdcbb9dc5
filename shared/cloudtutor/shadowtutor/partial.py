"""Partial distillation on one key frame: ShadowTutor Algorithm 1 (§4.1.4, §4.2).

The front of the student, through a configurable stage, is frozen; the rest
takes optimisation steps on the teacher's labels of the key frame until the
key frame's mIoU reaches THRESHOLD or MAX_UPDATES steps were taken, and the
best student seen is kept (lines 11-13). Only the trainable part travels
back to the edge.

Choices where the paper leaves room, each for a reason:

* Weights are rounded to float16 after every step (brief §10.5), so the
  metric of a candidate is the metric of exactly the weights the edge would
  run, and the returned best student is already its edge view.
* BatchNorm stays in eval mode (brief §10.5): running statistics do not
  move, so the frozen front is bit-identical after training.
* The metric is the headline per-frame mIoU over the classes present
  (brief §10.3, §10.9), the student's void counting as a miss.
* Adam (the paper's optimiser), but at lr 3e-4, not the paper's 0.01:
  measured on the highway and CamVid clips, Adam's first steps at 1e-2 or
  1e-3 wreck the pretrained ESPNet (key-frame mIoU 0.19 -> 0.03 and never
  back within 8 steps), 3e-4 lifts it (0.19 -> 0.43, 0.30 -> 0.49). The
  caller may pass an optimiser to keep its moments across key frames, else
  each key frame starts a fresh one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cloudtutor.accuracy import frame_miou
from cloudtutor.algorithms.masked_adam import freeze_batchnorm
from cloudtutor.algorithms.stride import THRESHOLD
from cloudtutor.models.labels import IGNORE, LabelMapping
from cloudtutor.models.student import logits_of
from cloudtutor.shadowtutor.weighting import OBJECT_RADIUS, OBJECT_WEIGHT, object_weights

__all__ = [
    "DEFAULT_FREEZE_THROUGH",
    "MAX_UPDATES",
    "KeyFrameResult",
    "freeze_front",
    "key_frame_metric",
    "trainable_names",
    "train_key_frame",
    "weighted_loss",
]

MAX_UPDATES = 8
# ESPNet (p=2, q=8): frozen through level3.5 leaves 23.5% of the parameters
# trainable, the nearest stage boundary to the paper's 21.4% (§5.2).
DEFAULT_FREEZE_THROUGH = "level3.5"


def trainable_names(model: nn.Module, freeze_through: str | None) -> list[str]:
    """State-dict names of the parameters that stay trainable when the front
    through ``freeze_through`` is frozen (``None``: nothing frozen).

    For a staged model (ESPNet: ``stage_index``/``stage_parameters``) it is a
    stage name; for any other torch model, a parameter-name prefix: every
    parameter up to the last one starting with it, in registration order, is
    frozen.
    """
    names = [n for n, p in model.named_parameters() if p.is_floating_point()]
    if freeze_through is None:
        return names
    if hasattr(model, "stage_index") and hasattr(model, "stage_parameters"):
        try:
            idx = model.stage_index(freeze_through)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        keep = {n for n, _ in model.stage_parameters(idx + 1)}
        return [n for n in names if n in keep]
    hits = [i for i, n in enumerate(names) if n == freeze_through or n.startswith(freeze_through + ".")]
    if not hits:
        raise ValueError(f"no parameter named {freeze_through!r} or under it")
    return names[hits[-1] + 1:]


def freeze_front(model: nn.Module, freeze_through: str | None) -> list[str]:
    """Set ``requires_grad`` accordingly; returns the trainable names."""
    keep = set(trainable_names(model, freeze_through))
    if not keep:
        raise ValueError(f"freezing through {freeze_through!r} leaves nothing to train")
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)
    return [n for n, _ in model.named_parameters() if n in keep]


def weighted_loss(logits: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Cross-entropy per pixel times its weight, normalised by the weights of
    the scored pixels (IGNORE targets score nothing)."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    w = weights * (target != IGNORE)
    total = w.sum()
    if float(total) == 0.0:
        return logits.sum() * 0.0
    return (per_pixel * w).sum() / total


def key_frame_metric(logits: Tensor, labels: np.ndarray, mapping: LabelMapping) -> float:
    """Headline mIoU of the student's prediction against the teacher's labels
    (common labels, at the logits' size)."""
    pred = mapping.map_student(logits[0].argmax(0).to(torch.uint8).cpu().numpy())
    return frame_miou(labels, pred, mapping.num_classes)


@dataclass
class KeyFrameResult:
    """What Algorithm 1 did on one key frame."""

    metric: float  # best_metric (nan if nothing on the frame could be scored)
    initial_metric: float  # the deployed student's metric, line 2
    steps: int  # optimisation steps taken (the d of §4.4)
    metrics: list[float] = field(default_factory=list)  # after each step
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step (t_sd)
    improved: bool = False  # best is not the incoming student


def train_key_frame(
    model: nn.Module,
    x: Tensor,
    labels: np.ndarray,
    *,
    mapping: LabelMapping,
    trainable: Sequence[str],
    threshold: float = THRESHOLD,
    max_updates: int = MAX_UPDATES,
    lr: float = 3e-4,
    optimizer: torch.optim.Optimizer | None = None,
    weight: float = OBJECT_WEIGHT,
    radius: int = OBJECT_RADIUS,
) -> KeyFrameResult:
    """Algorithm 1 on ``x`` (``1x3xHxW``, the student's input) and the
    teacher's ``labels`` (common labels ``HxW`` at the student's output size).

    ``model`` ends holding the best student (float16-rounded); parameters
    outside ``trainable`` are never modified.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be 1x3xHxW, got {tuple(x.shape)}")
    if labels.shape != tuple(x.shape[-2:]):
        raise ValueError(f"labels {labels.shape} do not match the input {tuple(x.shape[-2:])}")
    if max_updates < 0:
        raise ValueError(f"max_updates must be >= 0, got {max_updates}")
    params = dict(model.named_parameters())
    missing = [n for n in trainable if n not in params]
    if missing or not trainable:
        raise ValueError(f"trainable names not in the model: {missing[:3]}" if missing else "nothing trainable")
    train_set = set(trainable)
    for name, p in params.items():
        p.requires_grad_(name in train_set)
    lut = np.full(256, IGNORE, dtype=np.int64)
    for channel, label in enumerate(mapping.student_lut):
        if 0 <= label < 255 and lut[label] == IGNORE:
            lut[label] = channel
    target = torch.from_numpy(lut[labels.astype(np.uint8)])[None].to(x.device)
    weights = object_weights(torch.from_numpy(labels.astype(np.int64))[None], mapping.thing_ids,
                             radius=radius, weight=weight).to(x.device)
    trainable_params = [params[n] for n in trainable]

    model.eval()
    with torch.no_grad():
        logits = logits_of(model(x))
    best = initial = key_frame_metric(logits, labels, mapping)
    best_values = [p.detach().clone() for p in trainable_params]
    result = KeyFrameResult(metric=initial, initial_metric=initial, steps=0)
    # nan (nothing scorable) trains nothing: there is no signal to follow.
    if math.isnan(initial) or initial >= threshold or max_updates == 0:
        return result
    opt = optimizer or torch.optim.Adam(trainable_params, lr=lr)
    for _ in range(max_updates):
        start = time.perf_counter()
        model.train()
        freeze_batchnorm(model)
        opt.zero_grad(set_to_none=True)
        loss = weighted_loss(logits_of(model(x)), target, weights)
        loss.backward()
        opt.step()
        with torch.no_grad():  # only the trainable part: the frozen front stays bit-identical
            for p in trainable_params:
                p.copy_(p.half().float() if p.dtype == torch.float32 else p)
        model.eval()
        with torch.no_grad():
            logits = logits_of(model(x))
        metric = key_frame_metric(logits, labels, mapping)
        result.step_seconds.append(time.perf_counter() - start)
        result.metrics.append(metric)
        result.steps += 1
        if metric > best:
            best = metric
            best_values = [p.detach().clone() for p in trainable_params]
            result.improved = True
        if metric > threshold:
            break
    with torch.no_grad():
        for p, v in zip(trainable_params, best_values):
            p.copy_(v)
    for p in params.values():
        p.requires_grad_(False)
    result.metric = best
    return result
