"""The superres bench's own measures, and one small run on real video."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cloudtutor.bench.superres import markdown, psnr, run_bench_superres, ssim


def test_psnr_and_ssim_of_identical_and_different_frames() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a.astype(int) + rng.integers(-20, 21, size=a.shape), 0, 255).astype(np.uint8)
    assert 20 < psnr(a, noisy) < 35
    assert ssim(a, noisy) < 0.999 and ssim(a, 255 - a) < 0.1


@pytest.mark.slow
def test_a_small_bench_run_writes_json_and_a_table(data_root, tmp_path) -> None:
    from cloudtutor.models.carn import carn_m
    from cloudtutor.models.sr_checkpoint import save_sr_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "x4.pt"
    save_sr_checkpoint(ckpt, carn_m(4, channels=16), config={"scale": 4, "videos": ["highway.mp4"]}, step=0)
    video = data_root / "video/highway-solidWhiteRight-960x540-25fps.mp4"
    report = run_bench_superres([video], {"untrained": ckpt}, tmp_path / "bench", every=40, held_out=0.4)
    (result,) = report["results"]
    assert result["scale"] == 4 and result["frames"] >= 2
    assert set(result["methods"]) == {"bilinear", "bicubic", "untrained"}
    assert result["bytes_per_frame"]["low_res"] < result["bytes_per_frame"]["full_res"] / 3
    assert result["methods"]["bicubic"]["bicubic_gap_closed"] == 0.0
    assert 0 < result["methods"]["bicubic"]["teacher_miou"] < 1
    assert json.loads((tmp_path / "bench/superres.json").read_text()) == report
    assert "| untrained |" in (tmp_path / "bench/superres.md").read_text() and report["trained_on"] == ["highway.mp4"]
    assert markdown(report).startswith("# bench superres")
