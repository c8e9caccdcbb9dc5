"""Split-brain: split points of the real ESPNet student and the activation
codec's round trip on its real activations (error within each quantizer's
bound), temporal delta, and clear errors for bad bodies."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cloudtutor.models.registry import build_student
from cloudtutor.split.codec import CodecConfig, CodecError, decode, encode
from cloudtutor.split.points import cloud_back, edge_front, resolve_split, split_names
from cloudtutor.video import read_frames

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def student(data_root):
    torch.set_flush_denormal(True)
    return build_student("cityscapes19", data_root_path=data_root, width=256, threads=1)


@pytest.fixture(scope="module")
def frames(data_root):
    video = data_root / "video" / "highway-solidWhiteRight-960x540-25fps.mp4"
    return [f for i, (_, f) in enumerate(read_frames(str(video), max_frames=6)) if i % 5 == 0]


@pytest.fixture(scope="module")
def acts(student, frames):
    """Live activations after b2 (l2_cat 131 ch at 1/4, l1 16 ch at 1/2) for two frames 5 apart."""
    return [{k: v[0].numpy() for k, v in edge_front(student.model, student.prepare(f), "b2").items()} for f in frames]


def test_split_then_resume_equals_the_whole_model(student, frames) -> None:
    x = student.prepare(frames[0])
    with torch.inference_mode():
        whole = student.model(x)
    for split in ("level1", "b2", "level3.3", "up_l2"):
        front = edge_front(student.model, x, split)
        assert set(front) == set(student.model.live_after(resolve_split(student.model, split)))
        torch.testing.assert_close(cloud_back(student.model, front, split), whole, rtol=1e-4, atol=1e-4)
    assert "classifier" not in split_names(student.model)
    with pytest.raises(ValueError, match="no split after"):
        resolve_split(student.model, "classifier")
    with pytest.raises(ValueError, match="needs activations"):
        cloud_back(student.model, {}, "b2")


@pytest.mark.parametrize("name", ["q8-uniform+zstd", "q4-uniform+zlib", "q2-uniform+lzma",
                                  "q4-nonuniform+zstd", "q2-nonuniform+zlib"])
def test_round_trip_error_within_the_quantizers_bound_per_value(acts, name) -> None:
    cfg = CodecConfig.parse(name)
    body, mine = encode(acts[0], cfg)
    got = decode(body, cfg, {k: v.shape for k, v in acts[0].items()})
    for k, x in acts[0].items():
        assert np.array_equal(got.tensors[k], mine.tensors[k]), "encoder and decoder reconstruct alike"
        bound, kind = got.bounds[k]
        assert kind == "value"
        err = np.abs(got.tensors[k] - x).max()
        assert err <= bound * (1 + 1e-5) + 1e-6, f"{k}: error {err} over bound {bound}"
        assert err > 0, "lossy: the round trip is not trivially exact"
    raw = sum(x.nbytes for x in acts[0].values())
    assert len(body) < raw * (cfg.bits / 32) * 1.1


@pytest.mark.parametrize("name", ["q4-uniform+dct8+zstd", "q3-nonuniform+dct4+zlib"])
def test_dct_round_trip_error_within_the_bound_per_tile_rms(acts, name) -> None:
    cfg = CodecConfig.parse(name)
    body, _ = encode(acts[0], cfg)
    got = decode(body, cfg, {k: v.shape for k, v in acts[0].items()})
    t = cfg.dct_tile
    for k, x in acts[0].items():
        bound, kind = got.bounds[k]
        assert kind == "tile_rms"
        e = got.tensors[k] - x
        c, h, w = e.shape
        e = np.pad(e, ((0, 0), (0, -h % t), (0, -w % t)))
        tile_sq = (e.reshape(c, e.shape[1] // t, t, e.shape[2] // t, t) ** 2).sum(axis=(2, 4))
        assert np.sqrt(tile_sq.max()) <= t * bound * (1 + 1e-4)


def test_temporal_delta_is_closed_loop_and_needs_its_reference(acts) -> None:
    cfg = CodecConfig.parse("q4-uniform+zstd+delta")
    shapes = {k: v.shape for k, v in acts[0].items()}
    body0, rec0 = encode(acts[0], cfg)
    body1, rec1 = encode(acts[1], cfg, reference=rec0.tensors)
    assert rec0.intra and not rec1.intra
    dec0 = decode(body0, cfg, shapes)
    dec1 = decode(body1, cfg, shapes, reference=dec0.tensors)
    for k, x in acts[1].items():
        assert np.array_equal(dec1.tensors[k], rec1.tensors[k])
        assert np.abs(dec1.tensors[k] - x).max() <= dec1.bounds[k][0] * (1 + 1e-5) + 1e-6
    with pytest.raises(CodecError, match="reference"):
        decode(body1, cfg, shapes)


def test_bad_bodies_are_rejected_with_a_reason(acts) -> None:
    cfg = CodecConfig.parse("q4-uniform+zlib")
    shapes = {k: v.shape for k, v in acts[0].items()}
    body, _ = encode(acts[0], cfg)
    with pytest.raises(CodecError, match="magic"):
        decode(b"XXXX" + body[4:], cfg, shapes)
    with pytest.raises(CodecError, match="decompress|truncated|announces"):
        decode(body[:-50], cfg, shapes)
    with pytest.raises(CodecError, match="header says"):
        decode(body, CodecConfig.parse("q4-uniform+zstd"), shapes)
    wrong = dict(shapes)
    wrong["l1"] = (16, 8, 8)
    with pytest.raises(CodecError, match="shape"):
        decode(body, cfg, wrong)
    with pytest.raises(CodecError, match="do not match"):
        decode(body, cfg, {"l1": shapes["l1"]})
    with pytest.raises(CodecError, match="unknown codec"):
        CodecConfig.parse("q9-uniform+zstd")
    with pytest.raises(ValueError, match="non-finite"):
        encode({"a": np.full((1, 2, 2), np.nan, np.float32)}, cfg)


def test_a_near_constant_channel_far_from_zero_still_encodes() -> None:
    x = {"a": (5.0 + np.linspace(0, 1e-12, 64, dtype=np.float32)).reshape(1, 8, 8)}
    for name in ("q4-uniform+dct8+zstd", "q4-uniform+zstd+delta"):
        cfg = CodecConfig.parse(name)
        body, _ = encode(x, cfg)
        got = decode(body, cfg, {"a": (1, 8, 8)})
        assert np.abs(got.tensors["a"] - x["a"]).max() <= 8 * got.bounds["a"][0] + 1e-6


def test_a_residual_far_larger_than_the_frames_range_still_encodes() -> None:
    cfg = CodecConfig.parse("q2-uniform+dct8+zstd+delta")
    prev = {"a": np.full((1, 8, 8), 1e-18, np.float32)}
    cur = {"a": (1e-25 * np.arange(64, dtype=np.float32)).reshape(1, 8, 8)}
    _, rec = encode(prev, cfg)
    body, _ = encode(cur, cfg, reference=rec.tensors)
    got = decode(body, cfg, {"a": (1, 8, 8)}, reference=rec.tensors)
    assert np.abs(got.tensors["a"] - cur["a"]).max() <= 8 * got.bounds["a"][0] + 1e-24
