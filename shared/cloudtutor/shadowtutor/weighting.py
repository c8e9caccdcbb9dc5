"""ShadowTutor's loss weighting (§5.2; brief §10.9 for Cityscapes).

Pixels inside or near an object weigh ``weight`` (5) in the cross-entropy,
every other pixel 1. "Objects" are the label set's thing classes
(``LabelMapping.thing_ids``: pole, traffic light, traffic sign, person,
rider, car, truck, bus, train, motorcycle, bicycle for cityscapes19);
"near" is within ``radius`` (16) pixels at the student's resolution,
measured as the Chebyshev distance (a square dilation: one max-pool, cheap
on any device).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OBJECT_RADIUS", "OBJECT_WEIGHT", "object_weights"]

OBJECT_WEIGHT = 5.0
OBJECT_RADIUS = 16


def object_weights(
    labels: Tensor, thing_ids: Sequence[int], *, radius: int = OBJECT_RADIUS, weight: float = OBJECT_WEIGHT,
) -> Tensor:
    """Per-pixel loss weights for ``N x H x W`` (or ``H x W``) integer labels.

    Returns float32 of the same shape: ``weight`` within ``radius`` pixels of
    a thing-class pixel, 1 elsewhere.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if weight <= 0:
        raise ValueError(f"weight must be positive, got {weight}")
    if labels.dim() not in (2, 3):
        raise ValueError(f"labels must be HxW or NxHxW, got shape {tuple(labels.shape)}")
    squeeze = labels.dim() == 2
    lab = labels[None] if squeeze else labels
    things = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
    for tid in thing_ids:
        things |= lab == int(tid)
    near = things.float()[:, None]
    if radius > 0:
        near = F.max_pool2d(near, kernel_size=2 * radius + 1, stride=1, padding=radius)
    out = 1.0 + (weight - 1.0) * near[:, 0]
    return out[0] if squeeze else out
