"""The benchmark's video: the chained real clips, looped to a length, decoded once.

A looped clip repeats the same pictures, so each distinct frame is kept once
(keyed by the hash of its pixels, :func:`frame_key`) and the timeline holds
``(pts_ms, index of the distinct frame)``. Everything that depends only on
the pixels (teacher labels, the student-size copy) is computed once per
distinct frame and shared by every scheme.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cloudtutor.models.preprocess import resize_rgb, student_size
from cloudtutor.video import chained

log = logging.getLogger("cloudtutor.schemes")


def frame_key(rgb: np.ndarray) -> str:
    """sha256 of a frame's shape and pixels: equal pictures share labels."""
    arr = np.ascontiguousarray(rgb)
    digest = hashlib.sha256(f"{arr.shape}|{arr.dtype}".encode())
    digest.update(arr.data)
    return digest.hexdigest()


@dataclass(frozen=True)
class Tick:
    """One frame of the timeline."""

    pts_ms: int
    uid: int  # index of the distinct frame
    first_pass: bool  # the picture has not been shown before (brief §10.3: report first pass apart)


@dataclass
class Footage:
    frames: list[np.ndarray] = field(default_factory=list)  # distinct frames, source size (what the camera gives)
    small: list[np.ndarray] = field(default_factory=list)  # the same at the student's input size
    keys: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # clip of each distinct frame (its file name)
    ticks: list[Tick] = field(default_factory=list)
    duration_s: float = 0.0

    def source_at(self, tick: Tick) -> str:
        return self.sources[tick.uid]

    def add(self, pts_ms: int, rgb: np.ndarray, source: str, seen: dict[str, int], width: int) -> None:
        key = frame_key(rgb)
        uid = seen.get(key)
        first = uid is None
        if uid is None:
            uid = seen[key] = len(self.frames)
            self.frames.append(rgb)
            self.small.append(resize_rgb(rgb, student_size(rgb.shape[1], rgb.shape[0], width)))
            self.keys.append(key)
            self.sources.append(source)
        self.ticks.append(Tick(int(pts_ms), uid, first))


def load_footage(videos: Sequence[str | Path], duration_s: float | None, *, width: int = 512) -> Footage:
    """The chained ``videos`` looped to ``duration_s`` of video time (one
    pass when None), timestamps from the streams' PTS (``video.chained``)."""
    footage, seen = Footage(), {}
    for frame in chained([str(v) for v in videos], duration_s=duration_s, loop=duration_s is not None):
        footage.add(frame.pts_ms, frame.rgb, Path(frame.source).name, seen, width)
    if not footage.ticks:
        raise ValueError(f"no frames in {list(map(str, videos))}")
    last = footage.ticks[-1].pts_ms
    step = last / max(1, len(footage.ticks) - 1)
    footage.duration_s = float(duration_s) if duration_s is not None else (last + step) / 1000.0
    log.info("footage: %d frames (%d distinct) over %.1f s of video", len(footage.ticks), len(footage.frames),
             footage.duration_s)
    return footage
