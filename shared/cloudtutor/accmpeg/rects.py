"""Macroblock masks (AccMPEG §4): threshold, dilation, and rectangles.

A mask is a boolean ``(rows, cols)`` array, one entry per 16x16 macroblock
(True = high quality). libx264 takes ROI as rectangles (``addroi``), one
filter instance each, so a mask is merged into as few rectangles as this
greedy gets: maximal horizontal runs, each grown downwards while the rows
below hold the very same run. The result covers exactly the mask, without
overlaps; it is optimal for masks that are unions of disjoint aligned
rectangles (what dilated blobs mostly are), not in general (the minimum
partition needs a matching).

Pure numpy, no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MB = 16  # macroblock side in pixels (H.264)


class Rect(NamedTuple):
    """A rectangle of macroblocks: column ``x``, row ``y``, ``w`` x ``h`` blocks."""

    x: int
    y: int
    w: int
    h: int

    def pixels(self, block: int = MB) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` in pixels."""
        return self.x * block, self.y * block, self.w * block, self.h * block


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a macroblock mask is 2-D (rows, cols), got shape {mask.shape}")
    if mask.dtype != bool:
        raise ValueError(f"a macroblock mask is boolean, got {mask.dtype}")
    return mask


def threshold(scores: np.ndarray, alpha: float) -> np.ndarray:
    """Blocks whose score is at least ``alpha`` (AccMPEG §4: AccGrad_B >= alpha)."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores are 2-D (rows, cols), got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or infinity")
    return scores >= alpha


def dilate(mask: np.ndarray, blocks: int) -> np.ndarray:
    """Grow the mask by ``blocks`` macroblocks in every direction (a square,
    Chebyshev distance: §4 expands "to each direction by gamma blocks")."""
    mask = _check_mask(mask)
    if blocks < 0:
        raise ValueError(f"dilation must be >= 0 blocks, got {blocks}")
    if blocks == 0 or not mask.any():
        return mask.copy()
    rows, cols = mask.shape
    # Separable max filter: along rows, then along columns.
    out = np.zeros_like(mask)
    for d in range(-blocks, blocks + 1):
        lo, hi = max(0, d), min(rows, rows + d)
        out[lo - d:hi - d] |= mask[lo:hi]
    grown = np.zeros_like(mask)
    for d in range(-blocks, blocks + 1):
        lo, hi = max(0, d), min(cols, cols + d)
        grown[:, lo - d:hi - d] |= out[:, lo:hi]
    return grown


def mask_to_rects(mask: np.ndarray) -> list[Rect]:
    """Disjoint rectangles whose union is exactly ``mask`` (see the module doc)."""
    mask = _check_mask(mask)
    rows, _ = mask.shape
    open_runs: dict[tuple[int, int], Rect] = {}  # (x, w) of a run in the previous row -> its growing rect
    done: list[Rect] = []
    for y in range(rows):
        row = np.concatenate(([False], mask[y], [False])).astype(np.int8)
        edges = np.flatnonzero(np.diff(row))
        runs = {(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])}
        still: dict[tuple[int, int], Rect] = {}
        for run, rect in open_runs.items():
            if run in runs:
                still[run] = rect._replace(h=rect.h + 1)
            else:
                done.append(rect)
        for run in runs - still.keys():
            still[run] = Rect(run[0], y, run[1], 1)
        open_runs = still
    done.extend(open_runs.values())
    return sorted(done, key=lambda r: (r.y, r.x))


def rects_to_mask(rects: list[Rect], shape: tuple[int, int]) -> np.ndarray:
    """The mask a list of rectangles covers (the inverse of :func:`mask_to_rects`)."""
    mask = np.zeros(shape, dtype=bool)
    for r in rects:
        if r.w <= 0 or r.h <= 0 or r.x < 0 or r.y < 0 or r.x + r.w > shape[1] or r.y + r.h > shape[0]:
            raise ValueError(f"rectangle {r} does not fit a {shape[1]}x{shape[0]} block grid")
        mask[r.y:r.y + r.h, r.x:r.x + r.w] = True
    return mask


def block_grid(width: int, height: int) -> tuple[int, int]:
    """``(rows, cols)`` of macroblocks of a ``width`` x ``height`` frame (multiples of 16)."""
    if width <= 0 or height <= 0 or width % MB or height % MB:
        raise ValueError(f"frame size {width}x{height} is not a positive multiple of {MB}")
    return height // MB, width // MB


def upsample(mask: np.ndarray, block: int = MB) -> np.ndarray:
    """A per-pixel mask from a macroblock mask."""
    mask = _check_mask(mask)
    return np.repeat(np.repeat(mask, block, axis=0), block, axis=1)


__all__ = ["MB", "Rect", "block_grid", "dilate", "mask_to_rects", "rects_to_mask", "threshold", "upsample"]
