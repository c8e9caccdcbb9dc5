"""ShadowTutor's key-frame stride, Algorithm 2 NextStride (`papers/shadowtutor.md` §4.1.5).

The ratio of the next stride to the current one is a piecewise-linear
function of the metric the cloud returned for the last key frame: through
(0, 0) and (THRESHOLD, 1) below THRESHOLD, through (THRESHOLD, 1) and (1, 2)
above it; the product is clamped to [MIN_STRIDE, MAX_STRIDE]. The stride is
kept as a float (the paper multiplies without rounding); the edge compares
its integer frame count against it.

Pure code: no I/O, no clock.
"""

from __future__ import annotations

import math

__all__ = ["MAX_STRIDE", "MIN_STRIDE", "THRESHOLD", "next_stride", "stride_ratio"]

MIN_STRIDE = 8
MAX_STRIDE = 64
THRESHOLD = 0.8


def stride_ratio(metric: float, threshold: float = THRESHOLD) -> float:
    """Algorithm 2 lines 1-5: the factor the stride is multiplied by."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    if not (math.isfinite(metric) and 0.0 <= metric <= 1.0):
        raise ValueError(f"metric must lie in [0, 1], got {metric}")
    if metric < threshold:
        return metric / threshold
    return (metric - 2.0 * threshold + 1.0) / (1.0 - threshold)


def next_stride(
    stride: float,
    metric: float,
    *,
    threshold: float = THRESHOLD,
    min_stride: float = MIN_STRIDE,
    max_stride: float = MAX_STRIDE,
) -> float:
    """Algorithm 2: ``clamp(ratio(metric) * stride, min_stride, max_stride)``.

    A metric the cloud could not compute (nan: nothing to score on the key
    frame) leaves the stride where it is rather than guessing.
    """
    if not 1 <= min_stride <= max_stride:
        raise ValueError(f"need 1 <= min_stride <= max_stride, got {min_stride} and {max_stride}")
    if not (math.isfinite(stride) and stride > 0):
        raise ValueError(f"stride must be a positive number, got {stride}")
    if isinstance(metric, float) and math.isnan(metric):
        return float(min(max(stride, min_stride), max_stride))
    return float(min(max(stride_ratio(metric, threshold) * stride, min_stride), max_stride))
