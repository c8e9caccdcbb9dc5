"""H.264 chunks through real libx264 (PyAV) on real video."""

from __future__ import annotations

import av
import numpy as np
import pytest

from cloudtutor.h264 import ChunkDecodeError, EncodeSettings, decode_chunk, encode_chunk, round16, sent_size


@pytest.fixture(scope="module")
def frames(data_root):
    with av.open(str(data_root / "video/camvid-0016E5-480x360-15fps.mp4")) as container:
        out = [f.to_ndarray(format="rgb24") for _, f in zip(range(8), container.decode(video=0))]
    # 480x360 -> 480x352: crop to macroblock multiples
    return [f[:352] for f in out]


def test_sizes_round_to_macroblocks():
    assert sent_size((960, 540), 1) == (960, 544)
    assert sent_size((960, 540), 2) == (480, 272)
    assert sent_size((960, 540), 4) == (240, 128)
    assert round16(3) == 16


def test_round_trip_keeps_frames_and_quality(frames):
    data = encode_chunk(frames, EncodeSettings(crf=18))
    out = decode_chunk(data, expect_frames=len(frames), expect_size=(480, 352))
    psnr = [10 * np.log10(255**2 / np.mean((a.astype(float) - b) ** 2)) for a, b in zip(frames, out)]
    assert min(psnr) > 30, psnr


def test_lower_quality_costs_fewer_bytes(frames):
    assert len(encode_chunk(frames, EncodeSettings(crf=40))) < len(encode_chunk(frames, EncodeSettings(crf=20))) / 2


def test_each_chunk_decodes_on_its_own(frames):
    first, second = encode_chunk(frames[:4]), encode_chunk(frames[4:])
    assert len(decode_chunk(second)) == 4 and len(decode_chunk(first)) == 4


@pytest.mark.parametrize("mangle", [lambda d: d[: len(d) // 3], lambda d: b"\x00\x00\x01\x09" + bytes(200), lambda d: b"not h264" * 50])
def test_corrupt_streams_raise_decode_errors(frames, mangle):
    with pytest.raises(ChunkDecodeError):
        decode_chunk(mangle(encode_chunk(frames)), expect_frames=len(frames))


def test_announced_shape_is_checked(frames):
    data = encode_chunk(frames[:2])
    with pytest.raises(ChunkDecodeError, match="announces 3"):
        decode_chunk(data, expect_frames=3)
    with pytest.raises(ChunkDecodeError, match="announces 240x176"):
        decode_chunk(data, expect_size=(240, 176))


def test_sizes_that_are_not_macroblock_multiples_are_refused(frames):
    with pytest.raises(ValueError, match="multiple of 16"):
        encode_chunk([frames[0][:350]])


def test_decoding_stops_at_the_first_frame_past_the_announced_count(frames):
    data = encode_chunk(frames)
    with pytest.raises(ChunkDecodeError, match="more than the 2 frames"):
        decode_chunk(data, expect_frames=2)
