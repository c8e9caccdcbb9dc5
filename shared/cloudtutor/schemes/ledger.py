"""Bookkeeping of one scheme's run: bytes on the wire and the edge's scores.

Pure (numpy only). Bytes are what the real encoders and the delta codec
produced, stamped with the video time they were sent at and the clip that
was playing; Kbps are per second of video time (AMS Table 1). Scores are
per processed frame against the teacher (brief §10.3).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloudtutor.accuracy import class_histogram, frame_class_iou, main_classes, mean_iou
from cloudtutor.demo.evaluate import NUM_CLASSES, Totals, _num

UP, DOWN = "up", "down"


@dataclass(frozen=True)
class Transfer:
    t_ms: int
    direction: str  # UP (edge -> cloud) or DOWN
    nbytes: int
    what: str  # "chunk", "delta", "snapshot", "labels", ...
    source: str  # clip playing when it was sent


@dataclass
class Ledger:
    transfers: list[Transfer] = field(default_factory=list)

    def add(self, t_ms: int, direction: str, nbytes: int, what: str, source: str = "") -> None:
        if direction not in (UP, DOWN):
            raise ValueError(f"direction must be {UP!r} or {DOWN!r}, got {direction!r}")
        if nbytes < 0:
            raise ValueError(f"negative byte count {nbytes}")
        self.transfers.append(Transfer(int(t_ms), direction, int(nbytes), what, source))

    def total(self, direction: str, source: str | None = None) -> int:
        return sum(t.nbytes for t in self.transfers if t.direction == direction and (source is None or t.source == source))

    def count(self, direction: str, what: str | None = None) -> int:
        return sum(1 for t in self.transfers if t.direction == direction and (what is None or t.what == what))

    def kbps(self, direction: str, seconds: float, source: str | None = None) -> float:
        """Kilobits (1000 bits) per second of video time."""
        if seconds <= 0:
            raise ValueError("seconds must be > 0")
        return self.total(direction, source) * 8 / 1000.0 / seconds


@dataclass
class FrameRecord:
    t_ms: int
    source: str
    first_pass: bool
    miou: float
    version: int  # edge model version (or label age for tracking) when it was labelled


@dataclass
class Scoreboard:
    """The edge's labels against the teacher's, frame by frame."""

    frames: list[FrameRecord] = field(default_factory=list)
    class_ious: list[np.ndarray] = field(default_factory=list)
    totals: dict[str, Totals] = field(default_factory=dict)  # "all", "first", "src:<clip>"
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, dtype=np.int64))

    def add(self, t_ms: int, source: str, first_pass: bool, reference: np.ndarray, prediction: np.ndarray,
            version: int = 0) -> float:
        if reference.shape != prediction.shape:
            raise ValueError(f"labels {prediction.shape} vs reference {reference.shape}")
        ious = frame_class_iou(reference, prediction, NUM_CLASSES)
        miou = mean_iou(ious)
        self.frames.append(FrameRecord(int(t_ms), source, bool(first_pass), miou, int(version)))
        self.class_ious.append(ious)
        parts = ["all", f"src:{source}"] + (["first"] if first_pass else [])
        for part in parts:
            self.totals.setdefault(part, Totals()).add(reference, prediction, miou)
        self.histogram += class_histogram(reference, NUM_CLASSES)
        return miou

    def main(self) -> np.ndarray:
        return main_classes(self.histogram)

    def summary(self) -> dict[str, Any]:
        main = self.main()
        out = {part: totals.summary(main) for part, totals in self.totals.items()}
        per_class = np.full(NUM_CLASSES, np.nan)
        if self.class_ious:
            with warnings.catch_warnings():  # a class no frame had is nan, not a warning
                warnings.simplefilter("ignore", RuntimeWarning)
                per_class = np.nanmean(np.stack(self.class_ious), axis=0)
        out["per_class_iou"] = [_num(v) for v in per_class]
        out["frames"] = len(self.frames)
        return out

    def series(self) -> list[tuple[int, float]]:
        return [(f.t_ms, f.miou) for f in self.frames]


def gains(scheme: Sequence[FrameRecord], baseline: Sequence[FrameRecord]) -> np.ndarray:
    """Per-frame mIoU gain of a scheme over the baseline on the same frames
    (AMS Figure 5); frames either could not score are left out."""
    base = {f.t_ms: f.miou for f in baseline}
    out = [f.miou - base[f.t_ms] for f in scheme if f.t_ms in base and np.isfinite(f.miou) and np.isfinite(base[f.t_ms])]
    return np.asarray(out, dtype=np.float64)


class EveryGate:
    """Passes frames at ``fps`` of video time (0 = every frame): a frame
    passes when it is the first at or after the next slot, slots one period
    after the last passed frame (1 ms slack for PTS rounding)."""

    def __init__(self, fps: float) -> None:
        if fps < 0:
            raise ValueError(f"fps must be >= 0, got {fps}")
        self.fps = float(fps)
        self._next: float | None = None

    def __call__(self, t_ms: int) -> bool:
        if self.fps == 0:
            return True
        if self._next is not None and t_ms < self._next - 1.0:
            return False
        self._next = t_ms + 1000.0 / self.fps
        return True

    def set_rate(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if self._next is not None:
            self._next += 1000.0 / fps - 1000.0 / self.fps
        self.fps = float(fps)
