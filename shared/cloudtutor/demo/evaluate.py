"""Accuracy of what an edge actually output, frame by frame (brief §7, §10.3).

The edge's label sink holds its labels for every frame it processed. Here
the same frames are decoded again from the same videos, the teacher labels
each one (the reference), and the ORIGINAL student labels it too (the
no-customization baseline), so the adapted and the baseline figures are
over exactly the same frames. Figures: per-frame mIoU (headline), pooled
mIoU, pixel accuracy and mIoU over the video's main classes, each overall
and over the first pass (frames before a looped video repeats).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from cloudtutor.accuracy import class_histogram, confusion_matrix, frame_miou, main_classes, pixel_accuracy, pooled_miou
from cloudtutor.video import chained

log = logging.getLogger("cloudtutor.demo")

NUM_CLASSES = 19  # Cityscapes train ids; void (255) unscored


@dataclass
class FrameScore:
    pts_ms: int
    model_version: int
    adapted: float  # per-frame mIoU of the edge's labels vs the teacher
    baseline: float  # per-frame mIoU of the original student vs the teacher
    first_pass: bool


@dataclass
class Totals:
    """Accumulators for one scheme over a set of frames."""

    miou: list[float] = field(default_factory=list)
    confusion: np.ndarray | None = None

    def add(self, reference: np.ndarray, prediction: np.ndarray, miou: float) -> None:
        self.miou.append(miou)
        cm = confusion_matrix(reference, prediction, NUM_CLASSES)
        self.confusion = cm if self.confusion is None else self.confusion + cm

    def summary(self, main: Sequence[int]) -> dict[str, float | None]:
        if self.confusion is None:
            return {"miou": None, "pooled_miou": None, "pixel_accuracy": None, "main_classes_miou": None}
        return {
            "miou": _num(np.nanmean(self.miou)),
            "pooled_miou": _num(pooled_miou(self.confusion)),
            "pixel_accuracy": _num(pixel_accuracy(self.confusion)),
            "main_classes_miou": _num(pooled_miou(self.confusion, main)) if len(main) else None,
        }


def _num(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def video_duration_ms(paths: Sequence[Path]) -> int:
    """Length of one pass of the chained videos."""
    total = 0.0
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 25)
            total += (stream.frames or 0) * 1000.0 / rate
    return int(total)


def evaluate_device(
    records: Iterable[tuple[int, int, np.ndarray]],
    videos: Sequence[Path],
    duration_s: float,
    teacher,
    baseline,
) -> dict:
    """Score one device's sink records against the teacher.

    ``teacher.predict_at(frame, (w, h))`` and ``baseline.predict(frame)``
    give label maps; records are (pts_ms, model_version, labels).
    """
    by_pts = {int(pts): (int(version), labels) for pts, version, labels in records}
    one_pass = video_duration_ms(videos)
    scores: list[FrameScore] = []
    adapted, base = {"all": Totals(), "first": Totals()}, {"all": Totals(), "first": Totals()}
    histogram = np.zeros(NUM_CLASSES, dtype=np.int64)
    for frame in chained(videos, duration_s=duration_s, loop=True):
        got = by_pts.get(frame.pts_ms)
        if got is None:
            continue
        version, labels = got
        size = (labels.shape[1], labels.shape[0])
        reference = teacher.predict_at(frame.rgb, size)
        original = baseline.predict(frame.rgb)
        if original.shape != labels.shape:
            raise ValueError(f"baseline labels {original.shape} vs edge labels {labels.shape}: different student sizes")
        first = frame.pts_ms < one_pass
        a, b = frame_miou(reference, labels, NUM_CLASSES), frame_miou(reference, original, NUM_CLASSES)
        for part in ("all", "first") if first else ("all",):
            adapted[part].add(reference, labels, a)
            base[part].add(reference, original, b)
        histogram += class_histogram(reference, NUM_CLASSES)
        scores.append(FrameScore(frame.pts_ms, version, a, b, first))
        if len(scores) % 100 == 0:
            log.info("evaluated %d of %d frames", len(scores), len(by_pts))
    main = main_classes(histogram)
    gains = np.array([s.adapted - s.baseline for s in scores], dtype=float)
    return {
        "frames_scored": len(scores),
        "frames_in_sink": len(by_pts),
        "first_pass_ms": one_pass,
        "main_classes": [int(c) for c in main],
        "adapted": {part: adapted[part].summary(main) for part in adapted},
        "no_customization": {part: base[part].summary(main) for part in base},
        "gain_points": _num(100 * np.nanmean(gains)) if len(gains) else None,
        "frames_improved": _num(float(np.nanmean(gains > 0))) if len(gains) else None,
        "timeline": [(s.pts_ms, s.model_version, _num(s.adapted), _num(s.baseline)) for s in scores],
    }
