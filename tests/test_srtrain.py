"""SR training pieces: patches, the differentiable ESPNet input, both stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cloudtutor.models.labels import IGNORE
from cloudtutor.models.preprocess import espnet_normalize
from cloudtutor.srtrain import (
    SrTrainConfig,
    TrainFrame,
    analytics_loss,
    downscale,
    espnet_input,
    psnr,
    sample_patches,
    train_steps,
)


class TinySR(nn.Module):
    """Bicubic plus a learned residual: enough to see L1 go down."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        up = nn.functional.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return up + nn.functional.interpolate(self.body(x), scale_factor=self.scale, mode="nearest")


class TinySeg(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def frames(n: int = 3, size=(64, 96), labels: bool = False) -> list[TrainFrame]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        # Smooth content (a blurred noise field), so SR has something to learn.
        small = rng.integers(0, 256, size=(size[0] // 8, size[1] // 8, 3)).astype(np.uint8)
        rgb = np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))
        targets = (rgb[:, :, 0] // 64).astype(np.uint8) if labels else None
        out.append(TrainFrame(rgb, targets))
    return out


def test_downscale_sizes_and_refuses_odd_sizes() -> None:
    assert downscale(torch.rand(2, 3, 32, 48), 4).shape == (2, 3, 8, 12)
    with pytest.raises(ValueError, match="multiple of scale"):
        downscale(torch.rand(1, 3, 30, 48), 4)


def test_patches_are_seeded_cropped_and_carry_targets() -> None:
    fs = frames(labels=True)
    pa = sample_patches(fs, 32, 4, np.random.default_rng(5), 2)
    pb = sample_patches(fs, 32, 4, np.random.default_rng(5), 2)
    a, ta = pa.hr, pa.targets
    assert a.shape == (4, 3, 32, 32) and ta.shape == (4, 32, 32) and ta.dtype == torch.long
    assert pa.lr.shape == (4, 3, 16, 16)
    assert torch.equal(a, pb.hr) and torch.equal(ta, pb.targets)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    # Targets follow their image through crops and flips: here label = red // 64.
    assert torch.equal(ta, (a[:, 0] * 255).round().long() // 64)
    assert sample_patches(frames(), 32, 2, np.random.default_rng(0), 2).targets is None
    with pytest.raises(ValueError, match="smaller than"):
        sample_patches(fs, 128, 1, np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="multiple of scale"):
        sample_patches(fs, 30, 1, np.random.default_rng(0), 4)


def test_lr_patches_are_cut_from_the_lr_frame_in_register() -> None:
    # HR pixel value encodes its position; the LR frame is an exact 4x
    # subsample, so an aligned LR patch equals the HR patch's subsample (from
    # the block's other edge when the pair was flipped: a block's LR pixel
    # flips with it).
    h, w, s = 64, 96, 4
    yy, xx = np.mgrid[0:h, 0:w]
    hr = np.stack([yy * 3, xx * 2, (yy + xx) % 256], axis=-1).astype(np.uint8)
    lr = np.ascontiguousarray(hr[::s, ::s])
    fs = [TrainFrame(hr, None, lr)]
    batch = sample_patches(fs, 32, 16, np.random.default_rng(3), s)
    flips = 0
    for lr_patch, hr_patch in zip(batch.lr, batch.hr):
        plain = torch.equal(lr_patch, hr_patch[:, ::s, ::s])
        flipped = torch.equal(lr_patch, hr_patch[:, ::s, s - 1::s])
        assert plain or flipped
        flips += flipped
    assert 0 < flips < len(batch.lr)
    with pytest.raises(ValueError, match="not 96x64 / 4"):
        sample_patches([TrainFrame(hr, None, lr[:-1])], 32, 1, np.random.default_rng(0), s)


def test_espnet_input_is_the_numpy_normalisation() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    ours = espnet_input(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0)[0]
    np.testing.assert_allclose(ours.numpy(), espnet_normalize(rgb), rtol=1e-5, atol=1e-6)


def test_analytics_loss_ignores_void_and_has_a_gradient() -> None:
    sr = torch.rand(2, 3, 16, 16, requires_grad=True)
    targets = torch.full((2, 16, 16), IGNORE, dtype=torch.long)
    assert float(analytics_loss(TinySeg(), sr, targets).detach()) == 0.0
    targets[:, :8] = 1
    loss = analytics_loss(TinySeg(), sr, targets)
    loss.backward()
    assert float(loss.detach()) > 0 and sr.grad is not None and float(sr.grad.abs().sum()) > 0


def test_both_stages_run_resume_and_learn() -> None:
    torch.manual_seed(0)
    config = SrTrainConfig(scale=2, base_steps=30, aware_steps=4, batch_size=4, patch=32, aware_patch=32,
                           lr=3e-3, save_every=10)
    fs = frames(labels=True)
    model = TinySR(2)
    hr = sample_patches(fs, 32, 8, np.random.default_rng(99), 2).hr
    before = psnr(model(downscale(hr, 2)), hr)
    saved: list[int] = []
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    history = train_steps(model, opt, fs, config, proxy=TinySeg().requires_grad_(False), on_save=saved.append)
    assert [h.stage for h in history].count("aware") == 4 and history[-1].analytics is not None
    assert saved == [10, 20, 30, 34]
    with torch.no_grad():
        after = psnr(model(downscale(hr, 2)), hr)
    assert after > before + 0.5, (before, after)
    # The aware stage needs its proxy.
    with pytest.raises(ValueError, match="proxy"):
        train_steps(TinySR(2), torch.optim.Adam(TinySR(2).parameters()), fs, config, start=30)


def test_video_frames_hold_out_the_tail_and_crop_to_the_multiple(data_root) -> None:
    from cloudtutor.srframes import video_frames

    split = video_frames(data_root / "video/highway-solidWhiteRight-960x540-25fps.mp4", every=5, multiple=64,
                         held_out=0.25, limit=8)
    assert len(split.train) == 6 and len(split.held_out) == 2
    assert all(f.shape == (512, 960, 3) and f.dtype == np.uint8 for f in split.train + split.held_out)
    # The tail is later in the video than every training frame: different content.
    assert not any(np.array_equal(split.held_out[0], f) for f in split.train)


@pytest.mark.slow
def test_train_sr_on_real_video_checkpoints_and_resumes(data_root, tmp_path) -> None:
    from cloudtutor.models.sr_checkpoint import load_sr_checkpoint
    from cloudtutor.srrun import run_train_sr

    video = data_root / "video/highway-solidWhiteRight-960x540-25fps.mp4"
    out = tmp_path / "sr.pt"
    config = SrTrainConfig(scale=2, channels=16, base_steps=3, aware_steps=2, batch_size=2, patch=64,
                           aware_patch=64, save_every=2)
    run_train_sr(config, [video], out, every=20)
    ckpt = load_sr_checkpoint(out)
    assert ckpt.step == 5 and ckpt.scale == 2 and ckpt.config["proxy"] == "espnet"
    assert ckpt.config["videos"] == [video.name] and ckpt.config["held_out"] == 0.25
    assert ckpt.optimizer_state  # what a resumed run continues from
    # More steps continue from step 5; other settings are refused.
    run_train_sr(config.model_copy(update={"aware_steps": 3}), [video], out, every=20)
    assert load_sr_checkpoint(out).step == 6
    with pytest.raises(ValueError, match="lr"):
        run_train_sr(config.model_copy(update={"lr": 1e-2}), [video], out, every=20)
