"""AccGrad (AccMPEG §3.2 eq. 1) through the real frozen ESPNet proxy on a real frame."""

from __future__ import annotations

import av
import numpy as np
import pytest

from cloudtutor.accmpeg.accgrad import accgrad, accgrad_labels
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


def test_accgrad_is_zero_where_high_and_low_agree(proxy, frame):
    high = frame
    low = frame.copy()
    # Only blocks (row 4-5, col 6-8) differ: a coarse requantisation, as a low-quality encode would do.
    region = np.s_[64:96, 96:144]
    low[region] = (low[region] // 32) * 32 + 16
    scores = accgrad(proxy, high, low, normalize=espnet_input)
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


def test_bad_input_is_refused(proxy, frame):
    with pytest.raises(ValueError, match="differ in shape"):
        accgrad(proxy, frame, frame[:176], normalize=espnet_input)
    with pytest.raises(ValueError, match="multiple of 16"):
        accgrad(proxy, frame[:184], frame[:184], normalize=espnet_input)
    with pytest.raises(ValueError, match="alpha"):
        accgrad_labels(np.ones((2, 2)), 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        accgrad_labels(-np.ones((2, 2)), 0.2)
