"""Segmentation accuracy: mIoU as AMS computes it (brief section 10.3).

Conventions, shared by every function here:

* ``reference`` is the map taken as truth (the teacher's labels), ``prediction``
  the map being scored (the student's). Both are integer ``HxW`` arrays of
  the same shape holding class ids ``0..num_classes-1``.
* A pixel whose reference is ``ignore_index`` (or any value outside
  ``0..num_classes-1``) is not scored at all.
* A scored pixel whose prediction is ``ignore_index`` or out of range (the
  student's "void") is a miss: it counts in the union of the reference's
  class and in no intersection. Otherwise a student could raise its score by
  abstaining.
* IoU of class ``c`` = |pred = c and ref = c| / |pred = c or ref = c| over the
  scored pixels. A class present in neither map has no IoU (``nan``) and is
  left out of the mean; a class present in only one map has IoU 0.
* The per-frame mIoU (the headline) is the mean over the classes present in
  either map of that frame, then averaged over frames with ``np.nanmean``:
  a frame with nothing to score returns ``nan``. The pooled mIoU computes
  IoUs once from the confusion matrix summed over all frames.

Pure numpy, no I/O: the edge imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "class_histogram",
    "class_iou",
    "confusion_matrix",
    "frame_class_iou",
    "frame_miou",
    "main_classes",
    "mean_iou",
    "pixel_accuracy",
    "pooled_miou",
]

IGNORE_INDEX = 255


def _valid(values: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    mask = (values >= 0) & (values < num_classes)
    if 0 <= ignore_index < num_classes:
        mask &= values != ignore_index
    return mask


def confusion_matrix(
    reference: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Pixel counts ``M[r, p]`` (int64, shape ``num_classes x (num_classes + 1)``).

    Rows are reference classes, columns predicted classes; the extra last
    column counts scored pixels whose prediction is not a valid class
    (void / ``ignore_index``). Sum matrices over frames for pooled figures.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"maps differ in shape: {reference.shape} vs {prediction.shape}")
    ref = reference.ravel().astype(np.int64, copy=False)
    pred = prediction.ravel().astype(np.int64, copy=False)
    scored = _valid(ref, num_classes, ignore_index)
    pred = np.where(_valid(pred, num_classes, ignore_index), pred, num_classes)
    width = num_classes + 1
    # One bincount over a combined index is much faster than a per-class loop.
    counts = np.bincount(ref[scored] * width + pred[scored], minlength=num_classes * width)
    return counts.reshape(num_classes, width)


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU (float64, length ``num_classes``), ``nan`` for classes in neither map."""
    num_classes = confusion.shape[0]
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion[:, :num_classes])
    # Row sum: every scored pixel of reference class c (misses to void included);
    # column sum: every pixel predicted c.
    union = confusion.sum(axis=1) + confusion[:, :num_classes].sum(axis=0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(ious: np.ndarray, classes: Iterable[int] | None = None) -> float:
    """Mean of the non-nan IoUs (optionally only of ``classes``); ``nan`` if there are none."""
    ious = np.asarray(ious, dtype=np.float64)
    if classes is not None:
        ious = ious[np.asarray(list(classes), dtype=np.intp)]
    present = ious[~np.isnan(ious)]
    # Explicit, rather than np.nanmean's "mean of empty slice" warning.
    return float(present.mean()) if present.size else float("nan")


def frame_class_iou(
    reference: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Per-class IoU of one frame (keep these to score any class subset later)."""
    return class_iou(confusion_matrix(reference, prediction, num_classes, ignore_index))


def frame_miou(
    reference: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    classes: Iterable[int] | None = None,
) -> float:
    """Per-frame mIoU over the classes present in either map (or in ``classes`` and present).

    ``nan`` when nothing is scored (the reference has no valid pixel, e.g.
    both maps are all void): average frames with ``np.nanmean``.
    """
    return mean_iou(frame_class_iou(reference, prediction, num_classes, ignore_index), classes)


def pooled_miou(confusion: np.ndarray, classes: Iterable[int] | None = None) -> float:
    """mIoU from a confusion matrix summed over frames (optionally over ``classes`` only)."""
    return mean_iou(class_iou(confusion), classes)


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction of scored pixels predicted correctly; ``nan`` if none was scored."""
    num_classes = confusion.shape[0]
    total = confusion.sum()
    if total == 0:
        return float("nan")
    return float(np.trace(confusion[:, :num_classes]) / total)


def class_histogram(labels: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Pixels per class (int64, length ``num_classes``), invalid labels left out.

    Sum these over a video's teacher maps to pick its main classes.
    """
    flat = labels.ravel().astype(np.int64, copy=False)
    return np.bincount(flat[_valid(flat, num_classes, ignore_index)], minlength=num_classes)


def main_classes(histogram: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """Classes covering at least ``min_fraction`` of the pixels counted in ``histogram``.

    AMS's habit: score a video on its main classes, those with >= 1% of the
    teacher's pixels over the whole video. Returns sorted class ids (empty
    if the histogram is empty).
    """
    histogram = np.asarray(histogram, dtype=np.float64)
    total = histogram.sum()
    if total <= 0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(histogram / total >= min_fraction)
