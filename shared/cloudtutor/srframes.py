"""Frames for SR training and evaluation, cut from real video.

Held-out frames are the LAST part of each video (a contiguous block), not
every k-th frame: neighbouring frames are near-duplicates, so an
interleaved split would test on what was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloudtutor.srtrain import TrainFrame
from cloudtutor.video import read_frames


@dataclass
class FrameSplit:
    train: list[np.ndarray]
    held_out: list[np.ndarray]


def crop_to_multiple(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """Crop the bottom/right so both sides are multiples of ``multiple`` (an LR
    frame must be exactly HR / scale, and the encoder wants multiples of 16)."""
    h, w = rgb.shape[:2]
    return rgb[: h - h % multiple, : w - w % multiple]


def video_frames(
    path: str | Path, *, every: int = 10, multiple: int = 64, held_out: float = 0.25, limit: int | None = None,
) -> FrameSplit:
    """Every ``every``-th frame of a video, cropped to ``multiple``, split
    into a training part and a held-out tail of ``held_out`` of the frames."""
    if every < 1 or not 0.0 <= held_out < 1.0:
        raise ValueError("every must be >= 1 and held_out in [0, 1)")
    frames: list[np.ndarray] = []
    for i, (_, rgb) in enumerate(read_frames(str(path))):
        if limit is not None and len(frames) >= limit:
            break
        if i % every == 0:
            frames.append(crop_to_multiple(rgb, multiple))
    cut = len(frames) - int(round(len(frames) * held_out))
    return FrameSplit(frames[:cut], frames[cut:])


def with_targets(frames: Sequence[np.ndarray], teacher, lut: np.ndarray | None) -> list[TrainFrame]:
    """Attach the teacher's labels of each HR frame, mapped to the proxy's
    channels by ``lut`` (``distill.target_lut``); None leaves them off."""
    out = []
    for rgb in frames:
        if teacher is None:
            out.append(TrainFrame(rgb, None))
            continue
        labels = teacher.predict_at(rgb, (rgb.shape[1], rgb.shape[0]))
        out.append(TrainFrame(rgb, labels if lut is None else lut[labels]))
    return out


__all__ = ["FrameSplit", "crop_to_multiple", "video_frames", "with_targets"]
