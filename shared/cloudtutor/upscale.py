"""Bringing decoded low-resolution frames back to their source size (CloudSeg §3).

The edge encodes frames at ``sent_size`` (its source size divided by the
``scale`` knob and rounded to multiples of 16, brief §10.2); the cloud's
teacher should see them at the source size. CloudSeg does that with a
CARN-M super-resolution model (the CloudSeg issue adds it); until one is
configured, bicubic interpolation is the fallback, and it says so.

Pure functions on numpy arrays; no I/O.
"""

from __future__ import annotations

import cv2
import numpy as np

Size = tuple[int, int]  # (width, height)

NONE = "none"
BICUBIC = "bicubic"


def method_for(frame_size: Size, source_size: Size, method: str = BICUBIC) -> str:
    """What to do with a frame of ``frame_size`` whose source was ``source_size``.

    ``"none"`` when the sizes already match (scale 1 and a source that was a
    multiple of 16): the decoded frame passes through untouched; otherwise
    ``method``. A 960x540 source sent at scale 1 is 960x544 (rounded to
    macroblocks), so it still takes a (tiny) resize.
    """
    return NONE if tuple(frame_size) == tuple(source_size) else method


def bicubic(frame: np.ndarray, size: Size) -> np.ndarray:
    """Bicubic resize of an RGB uint8 ``HxWx3`` frame to ``size = (w, h)``."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 frame, got {frame.dtype} {frame.shape}")
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    if (frame.shape[1], frame.shape[0]) == (width, height):
        return frame
    # INTER_CUBIC saturates to uint8 itself (no overshoot wrap-around).
    return cv2.resize(np.ascontiguousarray(frame), (width, height), interpolation=cv2.INTER_CUBIC)


MODEL = "model"


class SrUpscaler:
    """A trained CARN-M (``cloudtutor train sr``) behind the same call as :func:`bicubic`.

    The model upscales by its own factor; frames sent at another scale
    (the controller moved the knob) fall back to bicubic, and the caller is
    told which method ran. The edge rounds sent sizes to macroblocks, so
    ``LR x scale`` can miss the source size by a few pixels: a bicubic
    resize of the SR output closes that gap.
    """

    def __init__(self, model, scale: int, *, threads: int | None = None) -> None:
        import torch

        self.model = model.eval()
        self.scale = int(scale)
        if threads is not None:
            torch.set_num_threads(threads)

    @classmethod
    def from_checkpoint(cls, path, **kwargs) -> SrUpscaler:
        from cloudtutor.models.sr_checkpoint import load_sr_checkpoint

        ckpt = load_sr_checkpoint(path)
        return cls(ckpt.model, ckpt.scale, **kwargs)

    def matches(self, frame_size: Size, source_size: Size) -> bool:
        """True when the frame was sent at about this model's scale (within a macroblock)."""
        (w, h), (sw, sh) = frame_size, source_size
        return abs(w * self.scale - sw) < 16 * self.scale and abs(h * self.scale - sh) < 16 * self.scale

    def __call__(self, frame: np.ndarray, size: Size) -> tuple[np.ndarray, str]:
        """(frame at ``size``, method used: ``"model"`` or ``"bicubic"``)."""
        from cloudtutor.models.carn import upscale_rgb

        if not self.matches((frame.shape[1], frame.shape[0]), size):
            return bicubic(frame, size), BICUBIC
        return bicubic(upscale_rgb(self.model, frame), size), MODEL
