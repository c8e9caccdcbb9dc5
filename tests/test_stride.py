"""ShadowTutor Algorithm 2 (NextStride) on the paper's cases."""

from __future__ import annotations

import math

import pytest

from cloudtutor.algorithms.stride import next_stride, stride_ratio


def test_paper_ratios_at_threshold_0_8() -> None:
    assert stride_ratio(0.9) == pytest.approx(1.5)
    assert stride_ratio(0.7) == pytest.approx(0.875)
    assert stride_ratio(0.8) == pytest.approx(1.0)
    assert stride_ratio(1.0) == pytest.approx(2.0)
    assert stride_ratio(0.0) == 0.0


def test_next_stride_multiplies_and_clamps() -> None:
    assert next_stride(16, 0.9) == pytest.approx(24.0)
    assert next_stride(16, 0.7) == pytest.approx(14.0)
    assert next_stride(8, 0.7) == 8.0  # 7 clamps up to MIN_STRIDE
    assert next_stride(48, 0.95) == 64.0  # 84 clamps down to MAX_STRIDE
    assert next_stride(20, 0.0) == 8.0


def test_strides_grow_geometrically_while_the_student_is_good() -> None:
    stride, seen = 8.0, []
    for _ in range(6):
        stride = next_stride(stride, 0.9)
        seen.append(stride)
    assert seen == pytest.approx([12, 18, 27, 40.5, 60.75, 64])


def test_nan_metric_keeps_the_stride() -> None:
    assert next_stride(20, math.nan) == 20.0


@pytest.mark.parametrize("metric", [-0.1, 1.1, math.inf])
def test_bad_metric_is_a_value_error(metric: float) -> None:
    with pytest.raises(ValueError, match="metric"):
        next_stride(8, metric)


def test_bad_bounds_are_a_value_error() -> None:
    with pytest.raises(ValueError, match="min_stride"):
        next_stride(8, 0.5, min_stride=10, max_stride=9)
    with pytest.raises(ValueError, match="threshold"):
        stride_ratio(0.5, threshold=1.0)
