"""AccGrad (AccMPEG §3.2 eq. 1) through the real frozen ESPNet proxy on a real frame."""

from __future__ import annotations

import av
import numpy as np
import pytest

import torch

from cloudtutor.accmpeg.accgrad import accgrad, accgrad_labels, agreement
from cloudtutor.srtrain import espnet_input


@pytest.fixture(scope="module")
def proxy():
    from cloudtutor.srrun import frozen_proxy

    return frozen_proxy("espnet")


@pytest.fixture(scope="module")
def frame(data_root):
    with av.open(str(data_root / "video/camvid-0016E5-480x360-15fps.mp4")) as container:
        rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")
    return np.ascontiguousarray(rgb[96:288, 96:352])  # 256x192: 16x12 macroblocks


@pytest.mark.parametrize("acc", ["cross_entropy", "soft_miou"])
def test_accgrad_is_zero_where_high_and_low_agree(proxy, frame, acc):
    high = frame
    low = frame.copy()
    # Only blocks (row 4-5, col 6-8) differ: a coarse requantisation, as a low-quality encode would do.
    region = np.s_[64:96, 96:144]
    low[region] = (low[region] // 32) * 32 + 16
    scores = accgrad(proxy, high, low, normalize=espnet_input, acc=acc)
    assert scores.shape == (12, 16)
    inside = np.zeros(scores.shape, bool)
    inside[4:6, 6:9] = True
    assert np.all(scores[~inside] == 0.0)
    assert np.all(scores[inside] > 0.0)
    labels = accgrad_labels(scores, 0.2)
    assert labels.any() and not labels[~inside].any()


def test_identical_decodes_have_no_high_quality_block(proxy, frame):
    scores = accgrad(proxy, frame, frame, normalize=espnet_input)
    assert not scores.any()
    assert not accgrad_labels(scores, 0.2).any()


def test_soft_miou_agreement_weighs_a_small_class_like_a_large_one():
    # Two classes: class 1 covers 4 of 100 pixels. Getting it wrong costs cross-entropy 4% of
    # its worst; it costs soft mIoU half, as it costs the per-frame mIoU the bench scores.
    reference = torch.zeros(1, 10, 10, dtype=torch.long)
    reference[0, :2, :2] = 1
    right = torch.where(torch.nn.functional.one_hot(reference, 2).permute(0, 3, 1, 2).bool(), 10.0, -10.0)
    wrong_small = right.clone()
    wrong_small[0, :, :2, :2] = right[0, :, :2, :2].flip(0)  # the small class's pixels called class 0
    assert agreement(right, reference, "soft_miou") == pytest.approx(1.0, abs=1e-3)
    assert agreement(wrong_small, reference, "soft_miou") < 0.55
    assert agreement(wrong_small, reference, "cross_entropy") > -1.0  # 4 pixels of 100 at loss 20
    with pytest.raises(ValueError, match="unknown agreement"):
        agreement(right, reference, "psnr")


def test_bad_input_is_refused(proxy, frame):
    with pytest.raises(ValueError, match="differ in shape"):
        accgrad(proxy, frame, frame[:176], normalize=espnet_input)
    with pytest.raises(ValueError, match="multiple of 16"):
        accgrad(proxy, frame[:184], frame[:184], normalize=espnet_input)
    with pytest.raises(ValueError, match="unknown agreement"):
        accgrad(proxy, frame, frame, normalize=espnet_input, acc="l2")
    with pytest.raises(ValueError, match="alpha"):
        accgrad_labels(np.ones((2, 2)), 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        accgrad_labels(-np.ones((2, 2)), 0.2)
