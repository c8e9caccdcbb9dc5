"""mIoU, confusion matrix, pixel accuracy and main classes on hand-computed maps."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cloudtutor.accuracy import (
    IGNORE_INDEX,
    class_histogram,
    class_iou,
    confusion_matrix,
    frame_class_iou,
    frame_miou,
    main_classes,
    mean_iou,
    pixel_accuracy,
    pooled_miou,
)

V = IGNORE_INDEX

# ref          pred
# 0 0 1        0 1 1
# 1 2 V        1 2 2
# The V pixel is not scored (5 scored pixels), so pred's 2 there counts for nothing.
# class 0: ref {(0,0),(0,1)}, pred {(0,0)}             -> 1 / 2
# class 1: ref {(0,2),(1,0)}, pred {(0,1),(0,2),(1,0)} -> 2 / 3
# class 2: ref {(1,1)},       pred {(1,1)}             -> 1 / 1
# class 3: in neither map                              -> nan, left out
# mIoU = (1/2 + 2/3 + 1) / 3 = 13/18; pixel accuracy = 4 correct / 5 scored.
REF = np.array([[0, 0, 1], [1, 2, V]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 2]], dtype=np.uint8)


def test_hand_computed_frame() -> None:
    ious = frame_class_iou(REF, PRED, num_classes=4)
    np.testing.assert_allclose(ious[:3], [1 / 2, 2 / 3, 1.0])
    assert math.isnan(ious[3])
    assert frame_miou(REF, PRED, num_classes=4) == pytest.approx(13 / 18)
    assert pixel_accuracy(confusion_matrix(REF, PRED, 4)) == pytest.approx(4 / 5)


def test_confusion_matrix_layout() -> None:
    cm = confusion_matrix(REF, PRED, num_classes=3)
    # rows: reference 0..2; columns: predicted 0..2 and "void"
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64


def test_class_in_one_map_only_counts_zero() -> None:
    # ref is all road (0); pred puts class 3 on one pixel.
    # class 0: 3 / 4; class 3: 0 / 1; mean = 0.375
    ref = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 3]], np.uint8)
    assert frame_miou(ref, pred, num_classes=4) == pytest.approx(0.375)
    # ...and the other way round: a reference class the prediction never names.
    assert frame_miou(pred, ref, num_classes=4) == pytest.approx(0.375)


def test_void_prediction_is_a_miss() -> None:
    # class 0: 1 / 1; class 1: the only pixel was predicted void -> 0 / 1
    ref = np.array([[0, 1]], np.uint8)
    pred = np.array([[0, V]], np.uint8)
    assert frame_miou(ref, pred, num_classes=2) == pytest.approx(0.5)
    assert pixel_accuracy(confusion_matrix(ref, pred, 2)) == pytest.approx(0.5)


def test_nothing_to_score_is_nan() -> None:
    void = np.full((3, 3), V, np.uint8)
    assert math.isnan(frame_miou(void, void, num_classes=19))
    # The reference decides what is scored: a void reference scores nothing.
    assert math.isnan(frame_miou(void, np.zeros((3, 3), np.uint8), num_classes=19))
    assert math.isnan(pixel_accuracy(confusion_matrix(void, void, 19)))
    # Callers average frames with nanmean.
    frames = [frame_miou(void, void, 19), frame_miou(REF, PRED, 4)]
    assert np.nanmean(frames) == pytest.approx(13 / 18)


def test_pooled_differs_from_per_frame() -> None:
    # Frame A: ref 0 0 0 1, pred 0 0 0 0 -> class 0: 3/4, class 1: 0/1 -> 0.375
    # Frame B: ref 1 1 1 1, pred 1 1 1 1 -> class 1: 4/4 -> 1.0
    # per-frame mean = 0.6875
    # pooled: class 0: 3/4; class 1: 4/5 -> 0.775
    ref_a, pred_a = np.array([[0, 0, 0, 1]]), np.array([[0, 0, 0, 0]])
    ref_b, pred_b = np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]])
    per_frame = np.nanmean([frame_miou(ref_a, pred_a, 2), frame_miou(ref_b, pred_b, 2)])
    pooled = pooled_miou(confusion_matrix(ref_a, pred_a, 2) + confusion_matrix(ref_b, pred_b, 2))
    assert per_frame == pytest.approx(0.6875)
    assert pooled == pytest.approx(0.775)


def test_subset_of_classes() -> None:
    # From the hand-computed frame: classes {1, 2} -> (2/3 + 1) / 2; class 3 alone is absent -> nan
    assert frame_miou(REF, PRED, 4, classes=[1, 2]) == pytest.approx(5 / 6)
    assert math.isnan(frame_miou(REF, PRED, 4, classes=[3]))
    assert pooled_miou(confusion_matrix(REF, PRED, 4), classes=[0]) == pytest.approx(0.5)


def test_main_classes_from_pooled_histogram() -> None:
    # Two teacher maps, 10 + 10 valid pixels (+1 void): class 0 has 14, 1 has 4, 2 has 2.
    a = np.array([[0, 0, 0, 0, 0, 0, 0, 1, 1, 2, V]])
    b = np.array([[0, 0, 0, 0, 0, 0, 0, 1, 1, 2]])
    hist = class_histogram(a, 4) + class_histogram(b, 4)
    np.testing.assert_array_equal(hist, [14, 4, 2, 0])
    np.testing.assert_array_equal(main_classes(hist, 0.10), [0, 1, 2])  # 2/20 = 10% is in
    np.testing.assert_array_equal(main_classes(hist, 0.15), [0, 1])
    # The 1% rule: 9 pixels in 1000 are not enough, 10 are.
    np.testing.assert_array_equal(main_classes(np.array([990, 9, 1]), 0.01), [0])
    np.testing.assert_array_equal(main_classes(np.array([980, 10, 10])), [0, 1, 2])
    assert main_classes(np.zeros(5)).size == 0


def test_mean_iou_of_all_nan_is_nan_without_warning() -> None:
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(mean_iou(np.full(4, np.nan)))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)


def test_bincount_matches_a_naive_loop() -> None:
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 21, size=(37, 53)).astype(np.uint8)
    ref[ref == 20] = V
    pred = rng.integers(0, 21, size=(37, 53)).astype(np.uint8)
    pred[pred == 20] = V
    naive = np.zeros((20, 21), np.int64)
    for r, p in zip(ref.ravel(), pred.ravel()):
        if r != V:
            naive[r, 20 if p == V else p] += 1
    np.testing.assert_array_equal(confusion_matrix(ref, pred, 20), naive)
    # IoU from the matrix equals IoU from masks.
    ious = class_iou(naive)
    scored = ref != V
    for c in range(20):
        inter = np.sum((ref == c) & (pred == c) & scored)
        union = np.sum(((ref == c) | (pred == c)) & scored)
        assert (math.isnan(ious[c]) and union == 0) or ious[c] == pytest.approx(inter / union)


def test_int64_maps_and_out_of_range_values() -> None:
    # int64 label maps (torch argmax) work; -1 and 99 behave like void.
    ref = np.array([[0, 1, -1]], np.int64)
    pred = np.array([[0, 99, 1]], np.int64)
    # class 0: 1/1; class 1: 0/1 (its pixel predicted out of range) -> 0.5
    assert frame_miou(ref, pred, 2) == pytest.approx(0.5)
