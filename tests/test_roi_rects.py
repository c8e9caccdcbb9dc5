"""Macroblock masks: threshold, dilation, and the merge into rectangles for addroi."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cloudtutor.accmpeg.rects import Rect, block_grid, dilate, mask_to_rects, rects_to_mask, threshold, upsample


@settings(max_examples=200, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_rectangles_cover_exactly_the_mask_without_overlap(mask):
    rects = mask_to_rects(mask)
    assert np.array_equal(rects_to_mask(rects, mask.shape), mask)
    assert sum(r.w * r.h for r in rects) == int(mask.sum())  # equal area and exact cover: no overlaps
    assert len(rects) <= int(mask.sum())


def test_aligned_rectangles_merge_into_one_each():
    mask = np.zeros((10, 12), bool)
    mask[2:6, 3:9] = True
    assert mask_to_rects(mask) == [Rect(3, 2, 6, 4)]
    mask[8:10, 0:2] = True
    assert len(mask_to_rects(mask)) == 2
    assert mask_to_rects(np.zeros((4, 4), bool)) == []
    assert mask_to_rects(np.ones((5, 7), bool)) == [Rect(0, 0, 7, 5)]


def test_an_l_shape_takes_two_rectangles():
    mask = np.zeros((6, 6), bool)
    mask[0:4, 0:2] = True
    mask[4:6, 0:6] = True
    assert len(mask_to_rects(mask)) == 2


def test_dilation_grows_by_whole_blocks_and_stops_at_the_border():
    mask = np.zeros((7, 7), bool)
    mask[3, 3] = True
    assert dilate(mask, 1).sum() == 9 and dilate(mask, 1)[2:5, 2:5].all()
    assert dilate(mask, 0).sum() == 1
    assert dilate(mask, 5).all()
    corner = np.zeros((4, 4), bool)
    corner[0, 0] = True
    assert dilate(corner, 2).sum() == 9


def test_threshold_and_bad_input():
    scores = np.array([[0.1, 0.2], [0.3, 0.0]])
    assert threshold(scores, 0.2).tolist() == [[False, True], [True, False]]
    with pytest.raises(ValueError, match="NaN"):
        threshold(np.array([[np.nan]]), 0.2)
    with pytest.raises(ValueError, match="boolean"):
        mask_to_rects(np.ones((2, 2), int))
    with pytest.raises(ValueError, match=">= 0"):
        dilate(np.ones((2, 2), bool), -1)
    with pytest.raises(ValueError, match="multiple of 16"):
        block_grid(100, 64)
    with pytest.raises(ValueError, match="does not fit"):
        rects_to_mask([Rect(1, 1, 3, 1)], (2, 2))
    assert upsample(np.array([[True, False]])).shape == (16, 32)
