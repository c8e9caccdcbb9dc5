"""bench roi's pure parts: the saving at equal accuracy, region PSNR, the table and the plot."""

from __future__ import annotations

import numpy as np
import pytest

from cloudtutor.bench.roi import bd_table, bytes_at_equal_accuracy, markdown, plot, region_psnr

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
                                   "roi_encode_ms_per_frame": 12.0, "accmodel_vs_encode": 0.333},
                     "bd_saving": [{"scheme": "accmodel", "roi_qoffset": -0.098, "points": 4, "roi_coverage": 0.3,
                                    "saving": 0.061, "overlap": [0.3, 0.5], "low": 0.02, "high": 0.1,
                                    "p_positive": 0.99, "rounds_used": 1000}]}],
    }
    text = markdown(report)
    assert "+38.5%" in text and "30.0 / 40.0" in text and "29.0 / -" in text and "highway.mp4" in text
    assert "| accmodel | -10.0 |" in text and "| accmodel | -5.0 |" in text  # one row per swept offset
    assert "| +6.1% | +2.0% … +10.0% | 0.99 |" in text  # the per-curve saving and its interval
    plot(report, tmp_path / "roi.png")
    assert (tmp_path / "roi.png").stat().st_size > 1000


def _row(crf, miou, bpf, frames=20, chunk=10, **extra):
    rng = np.random.default_rng(crf)
    return {"crf": crf, "teacher_miou": miou, "bytes_per_frame": bpf,
            "frame_miou": list(np.clip(miou + 0.03 * rng.standard_normal(frames), 0, 1)),
            "chunk_bytes": [bpf * chunk] * (frames // chunk), **extra}


def test_bd_table_gives_one_saving_per_roi_curve():
    uniform = [_row(c, m, b) for c, m, b in ((16, 0.6, 9000), (20, 0.5, 5000), (24, 0.4, 3000), (28, 0.3, 1800))]
    # ROI at 80% of the bytes the uniform curve needs for the same accuracy, at one offset;
    # at the other, 150%.
    cheap = [_row(c, m, 0.8 * b, roi_qoffset=-0.1, roi_coverage=0.3) for c, m, b in ((20, 0.55, 6700), (24, 0.45, 3900), (28, 0.35, 2350))]
    dear = [_row(c, m, 1.5 * b, roi_qoffset=-0.2, roi_coverage=0.3) for c, m, b in ((20, 0.55, 6700), (24, 0.45, 3900), (28, 0.35, 2350))]
    table = bd_table({"uniform": uniform, "accmodel": cheap + dear}, chunk=10, rounds=100)
    by_offset = {row["roi_qoffset"]: row for row in table}
    assert by_offset[-0.1]["saving"] == pytest.approx(0.2, abs=0.06)
    assert by_offset[-0.2]["saving"] == pytest.approx(-0.5, abs=0.1)
    assert by_offset[-0.1]["points"] == 3 and by_offset[-0.1]["low"] <= by_offset[-0.1]["saving"] <= by_offset[-0.1]["high"]


def test_bench_runs_end_to_end_on_real_frames(tmp_path, data_root):
    """Real video, real H.264, the real TFLite teacher; an untrained AccModel
    (a fixed mask is all the plumbing needs). ``--schemes accmodel shuffled``
    leaves the oracle out, so its curves are absent, not empty; the shuffled
    control holds the AccModel's share."""
    import json

    from cloudtutor.accmpeg.accmodel import from_espnet, save_accmodel
    from cloudtutor.bench.roi import run_bench_roi
    from cloudtutor.models.registry import build_model

    ckpt = tmp_path / "acc.pt"
    save_accmodel(ckpt, from_espnet(build_model("espnet", download=False), head=16), config={}, step=0)
    video = data_root / "video/camvid-0016E5-480x360-15fps.mp4"
    report = run_bench_roi([video], ckpt, tmp_path / "out", crfs=(16, 24, 32), roi_crfs=(20, 28), roi_qoffsets=(-6 / 51,),
                           alpha=0.5, every=25, chunk=2, bootstrap=20, schemes=("accmodel", "shuffled"),
                           model_width=0)
    result = report["results"][0]
    assert set(result["schemes"]) == {"uniform", "accmodel", "shuffled"}
    model, control = result["schemes"]["accmodel"][0], result["schemes"]["shuffled"][0]
    assert model["roi_coverage"] == control["roi_coverage"]  # the same share of blocks
    assert result["split"] == "unseen video" and result["frames"] == 5
    uniform = result["schemes"]["uniform"]
    assert uniform[0]["bytes_per_frame"] > uniform[-1]["bytes_per_frame"]  # CRF 16 costs more than CRF 32
    assert all(len(r["frame_miou"]) == 5 and len(r["chunk_bytes"]) == 3 for r in uniform)
    assert {r["scheme"] for r in result["bd_saving"]} <= {"accmodel", "shuffled"}
    assert result["edge_cost"]["accmodel_ms_per_run"] > 0
    on_disk = json.loads((tmp_path / "out/roi.json").read_text())
    assert on_disk["settings"]["schemes"] == ["accmodel", "shuffled"]
    assert on_disk["settings"]["accmodel_run_width"] is None  # model_width 0: each frame at its own size
    assert (tmp_path / "out/roi.png").stat().st_size > 1000 and "| accmodel |" in (tmp_path / "out/roi.md").read_text()


def test_shuffled_masks_keep_each_share_and_a_held_mask_keeps_one_shuffle():
    from cloudtutor.bench.roi import shuffle_blocks

    held = np.zeros((6, 8), bool)
    held[:2, :3] = True
    other = np.zeros((6, 8), bool)
    other[4:, :] = True
    out = shuffle_blocks([held, held, held, other], seed=1)
    assert [m.sum() for m in out] == [6, 6, 6, 16]
    assert out[0] is out[1] is out[2] and out[3] is not out[0]  # one shuffle per distinct mask, held as long
    assert not np.array_equal(out[0], held) and not np.array_equal(out[3], other)
    assert all(np.array_equal(a, b) for a, b in zip(out, shuffle_blocks([held, held, held, other], seed=1)))
