"""ROI encoding through real libx264 (addroi side data) and QPs read back from the bitstream."""

from __future__ import annotations

import av
import numpy as np
import pytest

from cloudtutor.accmpeg.rects import upsample
from cloudtutor.h264 import EncodeSettings, RoiFilter, decode_chunk, encode_chunk, qp_pair, read_qp_maps


@pytest.fixture(scope="module")
def frames(data_root):
    with av.open(str(data_root / "video/camvid-0016E5-480x360-15fps.mp4")) as container:
        out = [f.to_ndarray(format="rgb24") for _, f in zip(range(24), container.decode(video=0))]
    return [np.ascontiguousarray(f[:352]) for f in out[::4]]  # 6 frames, 480x352 = 30x22 blocks


@pytest.fixture(scope="module")
def mask():
    m = np.zeros((22, 30), bool)
    m[6:16, 8:22] = True
    return m


def _psnr(a: list[np.ndarray], b: list[np.ndarray], pixels: np.ndarray) -> float:
    err = np.mean([((x.astype(float) - y) ** 2)[pixels].mean() for x, y in zip(a, b)])
    return 10 * np.log10(255**2 / err)


def test_roi_raises_quality_inside_against_the_same_crf_without_roi(frames, mask):
    settings = EncodeSettings(crf=38, roi_qoffset=-10 / 51)
    roi = encode_chunk(frames, settings, roi=[mask] * len(frames))
    flat = encode_chunk(frames, EncodeSettings(crf=38))
    out_roi = decode_chunk(roi, expect_frames=len(frames))
    out_flat = decode_chunk(flat, expect_frames=len(frames))
    pix = upsample(mask)
    assert _psnr(out_roi, frames, pix) > _psnr(out_flat, frames, pix) + 1.0
    assert _psnr(out_roi, frames, pix) > _psnr(out_roi, frames, ~pix) + 1.0
    assert len(roi) > len(flat)  # the better blocks cost bytes


def test_qp_read_back_shows_the_offset(frames, mask):
    data = encode_chunk(frames, EncodeSettings(crf=38, roi_qoffset=-10 / 51), roi=[mask] * len(frames))
    maps = read_qp_maps(data)
    assert len(maps) == len(frames) and maps[0].shape == (22, 30)
    inside, outside = qp_pair(maps[:1], [mask])  # the IDR frame: every block intra coded
    assert 6 <= outside - inside <= 14  # -10/51 x 51 = 10 QP, around x264's own AQ
    flat = read_qp_maps(encode_chunk(frames, EncodeSettings(crf=38)))
    assert abs(np.subtract(*qp_pair(flat[:1], [mask]))) < 3


def test_qp_maps_agree_with_pyav(frames):
    data = encode_chunk(frames[:2], EncodeSettings(crf=30))
    ctx = av.CodecContext.create("h264", "r")
    ctx.options = {"export_side_data": "venc_params"}
    decoded = [f for packet in ctx.parse(data) + ctx.parse(None) for f in ctx.decode(packet)] + list(ctx.decode(None))
    assert len(decoded) == 2
    pyav = []
    for frame in decoded:
        params = frame.side_data[av.sidedata.sidedata.Type.VIDEO_ENC_PARAMS]
        if hasattr(params, "qp_map"):
            pyav.append(params.qp_map())
    if not pyav:
        pytest.skip("this PyAV has no VideoEncParams.qp_map")
    for ours, theirs in zip(read_qp_maps(data), pyav):
        assert np.array_equal(ours, theirs)


def test_filter_graph_is_rebuilt_only_when_the_mask_changes(frames, mask):
    f = RoiFilter(480, 352, -0.2)
    other = mask.copy()
    other[0, 0] = True
    for m in (mask, mask.copy(), None, mask, other, other):
        frame = av.VideoFrame.from_ndarray(frames[0], format="rgb24").reformat(format="yuv420p")
        out = f(frame, m)
        has_roi = any(sd.type == av.sidedata.sidedata.Type.REGIONS_OF_INTEREST for sd in out.side_data)
        assert has_roi == (m is not None)
    assert f.rebuilds == 2


def test_bad_roi_input_is_refused(frames, mask):
    with pytest.raises(ValueError, match="ROI masks for"):
        encode_chunk(frames, EncodeSettings(roi_qoffset=-0.2), roi=[mask])
    with pytest.raises(ValueError, match="block grid"):
        encode_chunk(frames[:1], EncodeSettings(roi_qoffset=-0.2), roi=[mask[:10]])
    with pytest.raises(ValueError, match="adaptive quantisation"):
        encode_chunk(frames[:1], EncodeSettings(roi_qoffset=-0.2, x264_params="aq-mode=0"), roi=[mask])
    with pytest.raises(ValueError, match=r"\[-1, 0\]"):
        RoiFilter(480, 352, 0.5)


def test_qp_read_back_of_garbage_is_a_decode_error():
    from cloudtutor.h264 import ChunkDecodeError

    with pytest.raises(ChunkDecodeError):
        read_qp_maps(b"\x00\x00\x00\x01" + bytes(range(256)) * 4)
