"""CloudSeg 2-level frame selector (§3.2, Figure 3): change measure,
classification, and the stateful selector, on crafted and real frames."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cloudtutor.algorithms.frameselect import (
    KEY_THRESHOLD,
    USEFUL_THRESHOLD,
    FrameClass,
    FrameSelector,
    Selection,
    classify,
    content_change,
    thumbnail,
)
from cloudtutor.knobs import Knobs

H, W = 540, 960
VIDEO_DIR = Path("/work/shared/data/video")
HIGHWAY = VIDEO_DIR / "highway-solidWhiteRight-960x540-25fps.mp4"
CAMVID = VIDEO_DIR / "camvid-0016E5-480x360-15fps.mp4"


def textured(seed: int, lo: int = 40, hi: int = 200) -> np.ndarray:
    """A 540x960 RGB frame of random 15x15-pixel grey blocks in [lo, hi)."""
    blocks = np.random.default_rng(seed).integers(lo, hi, size=(H // 15, W // 15), dtype=np.uint8)
    gray = np.kron(blocks, np.ones((15, 15), dtype=np.uint8))
    return np.repeat(gray[:, :, None], 3, axis=2)


def with_patch(frame: np.ndarray, top: int, left: int, size: int, value: int = 255) -> np.ndarray:
    out = frame.copy()
    out[top : top + size, left : left + size] = value
    return out


# --- thumbnail and change measure -------------------------------------------


def test_thumbnail_is_small_and_area_averaged() -> None:
    t = thumbnail(textured(0))
    assert t.shape == (36, 64) and t.dtype == np.float32
    # blocks are 15x15 and aligned with the 15x15 bins: the thumbnail is the block grid
    blocks = np.random.default_rng(0).integers(40, 200, size=(36, 64), dtype=np.uint8)
    np.testing.assert_allclose(t, blocks, atol=1e-3)

    odd = np.random.default_rng(1).integers(0, 256, size=(101, 257, 3), dtype=np.uint8)
    to = thumbnail(odd)
    assert max(to.shape) == 64 and to.shape == (25, 64)
    luma = odd.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert math.isclose(float(to.mean()), float(luma.mean()), abs_tol=1.0)  # bins cover every pixel

    tiny = np.full((10, 20, 3), 7, dtype=np.uint8)
    assert thumbnail(tiny).shape == (10, 20)


def test_change_of_identical_frames_is_zero_and_scene_cut_is_large() -> None:
    a, b = textured(0), textured(1)
    assert content_change(a, a) == 0.0
    cut = content_change(b, a)
    assert 0.7 < cut <= 1.0


def test_size_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        content_change(textured(0), np.zeros((360, 480, 3), dtype=np.uint8))
    sel = FrameSelector()
    sel.select(textured(0))
    with pytest.raises(ValueError, match="differs from the reference"):
        sel.select(np.zeros((360, 480, 3), dtype=np.uint8))
    sel.reset()
    assert sel.select(np.zeros((360, 480, 3), dtype=np.uint8)).cls is FrameClass.KEY


def test_bad_frames_raise() -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        thumbnail(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        thumbnail(np.zeros((4, 4, 3), dtype=np.float32))


# --- classify ----------------------------------------------------------------


def test_defaults_match_knobs() -> None:
    k = Knobs()
    assert (KEY_THRESHOLD, USEFUL_THRESHOLD) == (k.key_threshold, k.useful_threshold)
    sel = FrameSelector()
    assert (sel.key_threshold, sel.useful_threshold) == (k.key_threshold, k.useful_threshold)


def test_classify_levels_and_strict_boundaries() -> None:
    kw = {"key_threshold": 0.3, "useful_threshold": 0.05}
    assert classify(0.0, **kw) is FrameClass.SKIP
    assert classify(0.05, **kw) is FrameClass.SKIP  # on the low threshold: not above it
    assert classify(0.051, **kw) is FrameClass.USEFUL
    assert classify(0.3, **kw) is FrameClass.USEFUL  # on the high threshold: not above it
    assert classify(0.31, **kw) is FrameClass.KEY
    assert classify(1.0, **kw) is FrameClass.KEY
    # key_threshold 1: single-level useful filter (paper's fallback)
    assert classify(1.0, key_threshold=1.0, useful_threshold=0.05) is FrameClass.USEFUL
    # useful_threshold 0: every change is sent, an unchanged frame is not
    assert classify(0.0, key_threshold=0.3, useful_threshold=0.0) is FrameClass.SKIP
    assert FrameClass.KEY.sent and FrameClass.USEFUL.sent and not FrameClass.SKIP.sent
    with pytest.raises(ValueError, match="NaN"):
        classify(float("nan"), **kw)


@pytest.mark.parametrize(
    ("key", "useful", "match"),
    [
        (0.1, 0.2, "must not exceed"),
        (1.5, 0.05, "key_threshold must lie in"),
        (0.3, -0.01, "useful_threshold must lie in"),
        (float("nan"), 0.05, "key_threshold must lie in"),
    ],
)
def test_threshold_validation(key: float, useful: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classify(0.5, key_threshold=key, useful_threshold=useful)
    with pytest.raises(ValueError, match=match):
        FrameSelector(key, useful)
    sel = FrameSelector(0.4, 0.1)
    with pytest.raises(ValueError, match=match):
        sel.set_thresholds(key, useful)
    assert (sel.key_threshold, sel.useful_threshold) == (0.4, 0.1)  # unchanged
    sel.set_thresholds(0.2, 0.2)  # equal is allowed
    assert (sel.key_threshold, sel.useful_threshold) == (0.2, 0.2)


# --- FrameSelector on crafted frames --------------------------------------------


def test_first_frame_is_key_then_identical_is_skip() -> None:
    sel = FrameSelector()
    assert not sel.has_reference
    assert sel.select(textured(0)) == Selection(FrameClass.KEY, 1.0)
    assert sel.has_reference
    assert sel.select(textured(0)) == Selection(FrameClass.SKIP, 0.0)
    sel.reset()
    assert sel.select(textured(0)).cls is FrameClass.KEY


def test_small_moving_patch_is_useful() -> None:
    base = textured(0)
    sel = FrameSelector()
    sel.select(with_patch(base, 100, 100, 180))
    s = sel.select(with_patch(base, 100, 250, 180))  # moved 150 px right
    assert s.cls is FrameClass.USEFUL, s
    assert 0.05 < s.change < 0.2


def test_small_local_brightness_change_is_useful_and_tiny_global_one_skipped() -> None:
    base = textured(0)
    sel = FrameSelector()
    sel.select(base)
    lit = base.copy()
    lit[:120, :480] += 40  # a light comes on in ~11% of the image (no overflow: base < 200)
    s = sel.select(lit)
    assert s.cls is FrameClass.USEFUL, s
    # an 8-level global brightness shift is below the per-pixel threshold: skipped
    assert sel.select(lit + 8).cls is FrameClass.SKIP


def test_scene_cut_is_key() -> None:
    sel = FrameSelector()
    sel.select(textured(0))
    s = sel.select(textured(1))
    assert s.cls is FrameClass.KEY and s.change > 0.7


def test_slow_drift_accumulates_against_the_last_sent_frame() -> None:
    base = textured(0)

    def drifted(k: int) -> np.ndarray:  # top fifth of the image brightens by 4 levels per frame
        f = base.copy()
        f[:108] += 4 * k
        return f

    # each step on its own changes nothing that counts
    assert content_change(drifted(1), drifted(0)) == 0.0
    sel = FrameSelector()
    got = [sel.select(drifted(k)) for k in range(9)]
    classes = [s.cls for s in got]
    # 4k > 16 first at k = 5: drift vs the frame-0 reference becomes useful
    assert classes[0] is FrameClass.KEY
    assert classes[1:5] == [FrameClass.SKIP] * 4
    assert classes[5] is FrameClass.USEFUL and 0.15 < got[5].change < 0.3
    # the reference moved to frame 5: the drift starts over
    assert classes[6:9] == [FrameClass.SKIP] * 3


def test_set_thresholds_changes_the_verdict_but_keeps_the_reference() -> None:
    base = textured(0)
    sel = FrameSelector()
    sel.select(with_patch(base, 100, 100, 180))
    moved = with_patch(base, 100, 250, 180)
    sel.set_thresholds(0.5, 0.3)
    assert sel.select(moved).cls is FrameClass.SKIP  # not sent: reference stays
    sel.set_thresholds(0.05, 0.01)
    assert sel.select(moved).cls is FrameClass.KEY


# --- real frames ---------------------------------------------------------------


def _decode(path: Path, indices: set[int]) -> dict[int, np.ndarray]:
    av = pytest.importorskip("av")
    out: dict[int, np.ndarray] = {}
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in indices:
                out[i] = f.to_ndarray(format="rgb24")
            if len(out) == len(indices):
                break
    return out


@pytest.mark.skipif(not (HIGHWAY.exists() and CAMVID.exists()), reason="shared videos not present")
def test_real_frames_scene_cut_far_above_same_shot_change() -> None:
    from PIL import Image

    hw = _decode(HIGHWAY, {0, 1, 29})
    cam = _decode(CAMVID, {0})[0]
    cam = np.asarray(Image.fromarray(cam).resize((960, 540)))
    assert hw[0].shape == cam.shape == (540, 960, 3)

    consecutive = content_change(hw[1], hw[0])
    same_shot = content_change(hw[29], hw[0])  # 1.2 s apart in the same drive
    cut = content_change(cam, hw[0])
    print(f"\nchange highway f0->f1 {consecutive:.4f}, f0->f29 {same_shot:.4f}, highway f0->camvid f0 {cut:.4f}")

    assert consecutive < same_shot < 0.3
    assert cut > 0.7
    assert cut > 3 * same_shot and cut > 10 * consecutive
    k = Knobs()
    assert classify(cut, key_threshold=k.key_threshold, useful_threshold=k.useful_threshold) is FrameClass.KEY
    assert classify(same_shot, key_threshold=k.key_threshold, useful_threshold=k.useful_threshold) is not FrameClass.KEY

    sel = FrameSelector(k.key_threshold, k.useful_threshold)
    assert sel.select(hw[0]).cls is FrameClass.KEY
    assert sel.select(hw[29]).cls is not FrameClass.KEY
    assert sel.select(cam).cls is FrameClass.KEY
