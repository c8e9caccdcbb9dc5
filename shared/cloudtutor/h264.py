"""H.264 chunks through PyAV's libx264 (brief §3, §10.2).

A chunk is a self-contained Annex-B stream that starts with an IDR frame,
so any chunk decodes on its own and a change of size or quality simply
starts a new chunk. Frame timestamps travel in the envelope header, not in
the bitstream, because sampled frames are irregular in time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np


class ChunkDecodeError(ValueError):
    """The bytes are not a decodable H.264 chunk of the announced shape."""


def round16(value: float) -> int:
    """Nearest multiple of 16, at least 16 (macroblocks; yuv420p needs even sizes)."""
    return max(16, int(round(value / 16.0)) * 16)


def sent_size(source: tuple[int, int], scale: float) -> tuple[int, int]:
    """(width, height) a frame of ``source`` size is encoded at for downscale ``scale``."""
    width, height = source
    return round16(width / scale), round16(height / scale)


@dataclass(frozen=True)
class EncodeSettings:
    crf: float = 23.0
    preset: str = "medium"  # AMS hides encoding latency behind T_update, so quality per bit wins
    # ROI (AccMPEG) needs adaptive quantisation on; aq-mode 1 is x264's default.
    x264_params: str = "aq-mode=1"


def encode_chunk(frames: Sequence[np.ndarray], settings: EncodeSettings = EncodeSettings()) -> bytes:
    """Encode RGB uint8 frames (all the same size, multiples of 16) as one chunk."""
    if not frames:
        raise ValueError("a chunk needs at least one frame")
    height, width = frames[0].shape[:2]
    if width % 16 or height % 16:
        raise ValueError(f"frame size {width}x{height} is not a multiple of 16")
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, 1000)
    ctx.options = {"crf": f"{settings.crf:g}", "preset": settings.preset, "x264-params": settings.x264_params}
    out = bytearray()
    for i, rgb in enumerate(frames):
        if rgb.shape[:2] != (height, width):
            raise ValueError(f"frame {i} is {rgb.shape[1]}x{rgb.shape[0]}, chunk is {width}x{height}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for packet in ctx.encode(frame):
            out += bytes(packet)
    for packet in ctx.encode(None):
        out += bytes(packet)
    return bytes(out)


def decode_chunk(data: bytes, *, expect_frames: int | None = None, expect_size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Decode a chunk into RGB uint8 frames; ChunkDecodeError on anything off.

    Stops at the first frame of the wrong size or past the announced count,
    so a hostile chunk costs at most one frame more than an honest one.
    """
    ctx = av.CodecContext.create("h264", "r")
    frames: list[np.ndarray] = []

    def take(frame) -> None:
        if expect_size is not None and (frame.width, frame.height) != tuple(expect_size):
            raise ChunkDecodeError(
                f"frame {len(frames)} is {frame.width}x{frame.height}, header announces {expect_size[0]}x{expect_size[1]}"
            )
        if expect_frames is not None and len(frames) >= expect_frames:
            raise ChunkDecodeError(f"decoded more than the {expect_frames} frames the header announces")
        frames.append(frame.to_ndarray(format="rgb24"))

    try:
        for packet in ctx.parse(data) + ctx.parse(None):
            for frame in ctx.decode(packet):
                take(frame)
        for frame in ctx.decode(None):
            take(frame)
    except (av.error.FFmpegError, ValueError) as exc:
        raise ChunkDecodeError(f"H.264 decode failed: {exc}") from None
    if not frames:
        raise ChunkDecodeError("no frame decoded")
    if expect_frames is not None and len(frames) != expect_frames:
        raise ChunkDecodeError(f"decoded {len(frames)} frames, header announces {expect_frames}")
    return frames
