"""AccGrad: how much each macroblock's encoding quality moves the analytics
model's accuracy (AccMPEG §3.2, eq. 1; Appendix B).

    AccGrad_B = sum_{i in B} || dAcc(D(X), D(H)) / dX_i |_{X=L} ||_1 * || H_i - L_i ||_1

``H`` and ``L`` are the high- and low-quality decodes of one frame, ``D``
the analytics model and ``Acc`` a differentiable agreement with ``D(H)``:
here the negative mean cross-entropy of ``D(X)``'s logits against
``D(H)``'s arg-max labels. One forward pass on ``H``, one forward and one
backward pass on ``L``.

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


def accgrad(model: nn.Module, high: np.ndarray, low: np.ndarray, *, normalize: Normalize) -> np.ndarray:
    """AccGrad per macroblock, ``(rows, cols)`` float64, of one frame.

    ``high``/``low``: RGB uint8 decodes of the same frame at high and low
    quality (same size, multiples of 16). Gradients and differences are
    taken on the [0, 1] pixel scale, summed over the three channels.
    ``model`` is used as given (callers freeze it and put it in eval mode).
    """
    if high.shape != low.shape:
        raise ValueError(f"H and L differ in shape: {high.shape} vs {low.shape}")
    rows, cols = block_grid(high.shape[1], high.shape[0])
    h, x = rgb_batch(high), rgb_batch(low).requires_grad_(True)
    with torch.no_grad():
        reference = _logits(model, normalize(h)).argmax(1)
    logits = _logits(model, normalize(x))
    if logits.shape[-2:] != reference.shape[-2:]:
        raise ValueError("the model's output size depends on its input: H and L must give the same size")
    acc = -F.cross_entropy(logits, reference)
    (grad,) = torch.autograd.grad(acc, x)
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


__all__ = ["accgrad", "accgrad_labels", "rgb_batch"]
