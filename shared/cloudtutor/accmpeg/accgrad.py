"""AccGrad: how much each macroblock's encoding quality moves the analytics
model's accuracy (AccMPEG §3.2, eq. 1; Appendix B).

    AccGrad_B = sum_{i in B} || dAcc(D(X), D(H)) / dX_i |_{X=L} ||_1 * || H_i - L_i ||_1

``H`` and ``L`` are the high- and low-quality decodes of one frame, ``D``
the analytics model and ``Acc`` a differentiable agreement with ``D(H)``
(:data:`AGREEMENTS`):

* ``cross_entropy`` (the paper's choice, footnote 15: the model's training
  loss): the negative mean cross-entropy of ``D(X)``'s logits against
  ``D(H)``'s arg-max labels. Every pixel weighs the same, so large regions
  (road, sky, buildings) dominate.
* ``soft_miou``: the mean over the classes present in ``D(H)``'s labels of
  the soft IoU between ``D(X)``'s class probabilities and those labels: a
  differentiable per-frame mIoU, the metric the bench scores (brief
  §10.3), in which a small class weighs as much as the road.

One forward pass on ``H``, one forward and one backward pass on ``L``.

``D`` must be a differentiable torch model. The project's teacher is a
TFLite int8 network and cannot be differentiated, so the callers pass a
frozen copy of the pretrained ESPNet (same task, same Cityscapes classes)
as its proxy (brief §10.7); any torch segmentation model whose forward
takes the ``normalize``-d batch and returns ``N x C x h x w`` logits works.

Pure functions: frames in, arrays out; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cloudtutor.accmpeg.rects import MB, block_grid

Normalize = Callable[[Tensor], Tensor]

#: The differentiable agreements ``Acc(D(X), D(H))`` :func:`accgrad` knows.
AGREEMENTS = ("cross_entropy", "soft_miou")


def rgb_batch(frames: list[np.ndarray] | np.ndarray) -> Tensor:
    """RGB uint8 ``HxWx3`` frame(s) -> float ``N x 3 x H x W`` in [0, 1]."""
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 HxWx3 frames, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.array(arr, copy=True)).permute(0, 3, 1, 2).float().div_(255.0)


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    if isinstance(out, dict):  # torchvision segmentation models
        out = out["out"]
    elif not isinstance(out, Tensor):
        out = out[0]
    return out


def agreement(logits: Tensor, reference: Tensor, kind: str = "cross_entropy") -> Tensor:
    """``Acc(D(X), D(H))`` from ``D(X)``'s ``N x C x h x w`` logits and ``D(H)``'s ``N x h x w`` labels; higher is better."""
    if kind == "cross_entropy":
        return -F.cross_entropy(logits, reference)
    if kind == "soft_miou":
        probs = logits.softmax(1)
        onehot = F.one_hot(reference, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        inter = (probs * onehot).sum((2, 3))
        union = (probs + onehot - probs * onehot).sum((2, 3))
        present = onehot.sum((2, 3)) > 0  # the classes of D(H)'s map, as the per-frame mIoU counts them
        return (inter / union.clamp(min=1e-6))[present].mean()
    raise ValueError(f"unknown agreement {kind!r}; known: {', '.join(AGREEMENTS)}")


def accgrad(model: nn.Module, high: np.ndarray, low: np.ndarray, *, normalize: Normalize,
            acc: str = "cross_entropy") -> np.ndarray:
    """AccGrad per macroblock, ``(rows, cols)`` float64, of one frame.

    ``high``/``low``: RGB uint8 decodes of the same frame at high and low
    quality (same size, multiples of 16). Gradients and differences are
    taken on the [0, 1] pixel scale, summed over the three channels.
    ``acc`` names the agreement (:func:`agreement`). ``model`` is used as
    given (callers freeze it and put it in eval mode).
    """
    if acc not in AGREEMENTS:
        raise ValueError(f"unknown agreement {acc!r}; known: {', '.join(AGREEMENTS)}")
    if high.shape != low.shape:
        raise ValueError(f"H and L differ in shape: {high.shape} vs {low.shape}")
    rows, cols = block_grid(high.shape[1], high.shape[0])
    h, x = rgb_batch(high), rgb_batch(low).requires_grad_(True)
    with torch.no_grad():
        reference = _logits(model, normalize(h)).argmax(1)
    logits = _logits(model, normalize(x))
    if logits.shape[-2:] != reference.shape[-2:]:
        raise ValueError("the model's output size depends on its input: H and L must give the same size")
    (grad,) = torch.autograd.grad(agreement(logits, reference, acc), x)
    per_pixel = grad.abs().sum(1) * (h - x.detach()).abs().sum(1)  # 1 x H x W
    blocks = per_pixel.reshape(rows, MB, cols, MB).sum((1, 3))
    return blocks.double().numpy()


def accgrad_labels(scores: np.ndarray, alpha: float) -> np.ndarray:
    """The binary high-quality labels of one frame: AccGrad divided by the
    frame's largest, at least ``alpha`` (AccGrad's scale depends on the
    model and the frame; per-frame normalisation puts alpha in [0, 1]).
    A frame where H and L do not differ has no high-quality block."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or not np.all(np.isfinite(scores)) or (scores < 0).any():
        raise ValueError("AccGrad scores are a 2-D array of finite non-negative values")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    top = scores.max(initial=0.0)
    if top <= 0.0:
        return np.zeros(scores.shape, dtype=bool)
    return scores / top >= alpha


__all__ = ["AGREEMENTS", "accgrad", "accgrad_labels", "agreement", "rgb_batch"]
