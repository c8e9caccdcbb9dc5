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

# The edge encodes a chunk at a time; long runs of frames go through the
# codec in chunks of this many (one IDR each), as a sampled chunk would.
CHUNK_FRAMES = 30


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


def edge_low_res(frames: Sequence[np.ndarray], scale: int, crf: float | None) -> tuple[list[np.ndarray], int]:
    """The LR frames the cloud receives for ``frames``: resized by ``scale``
    as the edge does (``preprocess.resize_rgb``, antialiased bilinear), then
    through real H.264 at ``crf`` (``None``: no codec). Returns the decoded
    frames and the bytes the chunks took."""
    from cloudtutor.h264 import EncodeSettings, decode_chunk, encode_chunk
    from cloudtutor.models.preprocess import resize_rgb

    if not frames:
        return [], 0
    h, w = frames[0].shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"frame {w}x{h} is not a multiple of scale {scale}")
    low = [resize_rgb(f, (w // scale, h // scale)) for f in frames]
    if crf is None:
        return low, 0
    decoded: list[np.ndarray] = []
    size = 0
    for start in range(0, len(low), CHUNK_FRAMES):
        part = low[start:start + CHUNK_FRAMES]
        data = encode_chunk(part, EncodeSettings(crf=crf))
        size += len(data)
        decoded.extend(decode_chunk(data, expect_frames=len(part)))
    return decoded, size


def with_targets(
    frames: Sequence[np.ndarray], teacher, lut: np.ndarray | None, low: Sequence[np.ndarray] | None = None,
) -> list[TrainFrame]:
    """Attach the teacher's labels of each HR frame, mapped to the proxy's
    channels by ``lut`` (``distill.target_lut``), and its LR frame from
    ``low``; ``teacher=None`` leaves the labels off."""
    if low is not None and len(low) != len(frames):
        raise ValueError(f"{len(low)} LR frames for {len(frames)} HR frames")
    out = []
    for i, rgb in enumerate(frames):
        lr = None if low is None else low[i]
        if teacher is None:
            out.append(TrainFrame(rgb, None, lr))
            continue
        labels = teacher.predict_at(rgb, (rgb.shape[1], rgb.shape[0]))
        out.append(TrainFrame(rgb, labels if lut is None else lut[labels], lr))
    return out


__all__ = ["CHUNK_FRAMES", "FrameSplit", "crop_to_multiple", "edge_low_res", "video_frames", "with_targets"]
