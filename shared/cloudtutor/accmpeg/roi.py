"""The edge's online ROI planner (AccMPEG §4).

Runs the AccModel on one frame every ``roi_every`` frames and uses its
mask for that frame and the next ``roi_every - 1`` (also across chunks),
thresholds the high-quality probability at ``roi_alpha`` and dilates the
mask by ``roi_dilate`` blocks. A frame of another size forces a new run.
The model sees frames at no more than ``width`` pixels (its training width:
see :meth:`~cloudtutor.accmpeg.accmodel.AccModel.predict`).
Knob values are passed per call, so a control/state change applies at
once. No I/O; the AccModel's CPU time is kept for telemetry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from cloudtutor.accmpeg.rects import dilate, threshold


class RoiPlanner:
    """One macroblock mask per frame from an AccModel run every k frames."""

    def __init__(self, model, width: int | None = None) -> None:
        self.model, self.width = model, width
        self.runs = 0
        self.model_seconds = 0.0
        self._mask: np.ndarray | None = None
        self._age = 0  # frames the current mask has served

    def reset(self) -> None:
        self._mask, self._age = None, 0

    def plan(self, frames: Sequence[np.ndarray], *, every: int, alpha: float, dilation: int) -> list[np.ndarray]:
        if every < 1 or dilation < 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"bad ROI knobs: every={every}, alpha={alpha}, dilate={dilation}")
        masks = []
        for rgb in frames:
            grid = (rgb.shape[0] // 16, rgb.shape[1] // 16)
            if self._mask is None or self._age >= every or self._mask.shape != grid:
                started = time.perf_counter()
                probs = self.model.predict(rgb, self.width)
                self.model_seconds += time.perf_counter() - started
                self.runs += 1
                self._mask, self._age = dilate(threshold(probs, alpha), dilation), 0
            masks.append(self._mask)
            self._age += 1
        return masks


def coverage(masks: Sequence[np.ndarray | None]) -> float:
    """Share of the chunk's macroblocks in the ROI."""
    total = sum(m.size for m in masks if m is not None)
    return 0.0 if total == 0 else float(sum(int(m.sum()) for m in masks if m is not None) / total)


__all__ = ["RoiPlanner", "coverage"]
