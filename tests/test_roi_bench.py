"""bench roi's pure parts: the saving at equal accuracy, region PSNR, the table and the plot."""

from __future__ import annotations

import numpy as np
import pytest

from cloudtutor.bench.roi import bytes_at_equal_accuracy, markdown, plot, region_psnr

UNIFORM = [{"crf": c, "teacher_miou": m, "pooled_miou": m, "bytes_per_frame": b, "qp_mean": 30.0, "psnr_db": 30.0}
           for c, m, b in ((20, 0.6, 8000), (24, 0.5, 5000), (28, 0.4, 3000))]


def test_uniform_bytes_at_equal_accuracy_interpolate_on_the_curve():
    assert bytes_at_equal_accuracy(UNIFORM, 0.55) == pytest.approx(6500)
    assert bytes_at_equal_accuracy(UNIFORM, 0.4) == 3000
    assert bytes_at_equal_accuracy(UNIFORM, 0.7) is None  # beyond the curve: no claim


def test_region_psnr_splits_roi_and_rest():
    original = np.zeros((32, 32, 3), np.uint8)
    decoded = original.copy()
    decoded[16:, :] = 10  # error only in the bottom row of blocks
    mask = np.array([[True, True], [False, False]])
    inside, outside = region_psnr([decoded], [original], [mask])
    assert inside > 100 and outside < 30  # a perfect region: capped, not infinite (JSON)


def test_table_and_plot(tmp_path):
    roi_row = {"crf": 24, "roi_qoffset": -0.196, "bytes_per_frame": 4000, "teacher_miou": 0.55, "pooled_miou": 0.5,
               "roi_coverage": 0.3, "effective_qp": {"all_frames": [30.0, 40.0], "idr_frames": [29.0, None]},
               "psnr_roi_db": [33.0, 30.0], "psnr_same_crf_no_roi_db": [30.0, 30.0],
               "uniform_bytes_at_equal_miou": 6500, "saving_at_equal_miou": 0.3846, "encode_ms_per_frame": 10.0}
    report = {
        "accmodel": "a.pt", "trained_on": "highway.mp4", "gradients_from": "espnet",
        "settings": {"roi_qoffsets": [-0.196, -0.098], "alpha": 0.2, "dilate": 1, "roi_every": 10, "chunk": 10},
        "results": [{"video": "camvid.mp4", "split": "unseen video",
                     "schemes": {"uniform": UNIFORM, "accmodel": [roi_row, {**roi_row, "roi_qoffset": -0.098}],
                                 "accgrad": [roi_row]},
                     "edge_cost": {"accmodel_ms_per_run": 40.0, "roi_every": 10, "accmodel_ms_per_frame": 4.0,
                                   "roi_encode_ms_per_frame": 12.0, "accmodel_vs_encode": 0.333}}],
    }
    text = markdown(report)
    assert "+38.5%" in text and "30.0 / 40.0" in text and "29.0 / -" in text and "highway.mp4" in text
    assert "| accmodel | -10.0 |" in text and "| accmodel | -5.0 |" in text  # one row per swept offset
    plot(report, tmp_path / "roi.png")
    assert (tmp_path / "roi.png").stat().st_size > 1000
