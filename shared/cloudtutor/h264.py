"""H.264 chunks through PyAV's libx264 (brief §3, §10.2).

A chunk is a self-contained Annex-B stream that starts with an IDR frame,
so any chunk decodes on its own and a change of size or quality simply
starts a new chunk. Frame timestamps travel in the envelope header, not in
the bitstream, because sampled frames are irregular in time.

Region-of-interest encoding (AccMPEG §4, brief §10.6): a per-frame
macroblock mask becomes ``AV_FRAME_DATA_REGIONS_OF_INTEREST`` side data
through a chain of ffmpeg ``addroi`` filters (PyAV cannot write frame side
data itself); libx264 turns each region's ``qoffset`` into a per-macroblock
quantiser offset of ``qoffset x 51``. libx264 ignores ROI in constant-QP
mode and without adaptive quantisation, so quality is a CRF plus that
offset. What the encoder really did is read back from the bitstream:
:func:`read_qp_maps` gives every macroblock's QP as the H.264 decoder
exports it (``export_side_data=venc_params``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import av.filter
import av.sidedata.sidedata
import numpy as np

from cloudtutor.accmpeg.rects import mask_to_rects


class ChunkDecodeError(ValueError):
    """The bytes are not a decodable H.264 chunk of the announced shape;
    ``reason`` (bad_h264, frame_size, frame_count) is the metrics label."""

    def __init__(self, detail: str, reason: str = "bad_h264") -> None:
        super().__init__(detail)
        self.reason = reason


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
    # addroi qoffset of the ROI blocks, in [-1, 0]: x264 adds qoffset x 51 to
    # their QP (-10/51 puts them 10 QP below the rest). 0 = ROI off.
    roi_qoffset: float = 0.0


#: x264 scales an ROI qoffset by the QP range (51 at 8 bits).
QP_RANGE = 51


class RoiFilter:
    """Attaches a macroblock mask to frames as ROI side data (``addroi`` chain).

    The filter graph is rebuilt only when the mask changes (AccMPEG runs the
    AccModel every k frames, so most frames reuse the last graph); an empty
    mask passes frames through untouched.
    """

    def __init__(self, width: int, height: int, qoffset: float) -> None:
        if not -1.0 <= qoffset <= 0.0:
            raise ValueError(f"ROI qoffset must lie in [-1, 0], got {qoffset}")
        self.width, self.height, self.qoffset = width, height, qoffset
        self.rebuilds = 0
        self._mask: np.ndarray | None = None
        self._graph: av.filter.Graph | None = None

    def _build(self, mask: np.ndarray) -> None:
        graph = av.filter.Graph()
        node = graph.add_buffer(width=self.width, height=self.height, format="yuv420p", time_base=Fraction(1, 1000))
        for rect in mask_to_rects(mask):
            x, y, w, h = rect.pixels()
            roi = graph.add("addroi", f"x={x}:y={y}:w={w}:h={h}:qoffset={self.qoffset:.6f}")
            node.link_to(roi)
            node = roi
        sink = graph.add("buffersink")
        node.link_to(sink)
        graph.configure()
        self._graph, self._mask = graph, mask.copy()
        self.rebuilds += 1

    def __call__(self, frame: av.VideoFrame, mask: np.ndarray | None) -> av.VideoFrame:
        if mask is None or not mask.any() or self.qoffset == 0.0:
            return frame
        expected = (self.height // 16, self.width // 16)
        if mask.shape != expected or mask.dtype != bool:
            raise ValueError(f"ROI mask must be a boolean {expected[0]}x{expected[1]} block grid, got {mask.dtype} {mask.shape}")
        if self._mask is None or not np.array_equal(mask, self._mask):
            self._build(mask)
        assert self._graph is not None
        self._graph.push(frame)
        return self._graph.pull()


def encode_chunk(
    frames: Sequence[np.ndarray], settings: EncodeSettings = EncodeSettings(),
    roi: Sequence[np.ndarray | None] | None = None,
) -> bytes:
    """Encode RGB uint8 frames (all the same size, multiples of 16) as one chunk.

    ``roi``: one boolean macroblock mask per frame (``None`` or empty: no
    ROI on that frame); its blocks are encoded ``settings.roi_qoffset x 51``
    QP below the CRF's choice.
    """
    if not frames:
        raise ValueError("a chunk needs at least one frame")
    height, width = frames[0].shape[:2]
    if width % 16 or height % 16:
        raise ValueError(f"frame size {width}x{height} is not a multiple of 16")
    roi_filter = None
    if roi is not None:
        if len(roi) != len(frames):
            raise ValueError(f"{len(roi)} ROI masks for {len(frames)} frames")
        if "aq-mode=0" in settings.x264_params.replace(" ", ""):
            raise ValueError("ROI encoding needs adaptive quantisation: libx264 skips ROI with aq-mode=0")
        roi_filter = RoiFilter(width, height, settings.roi_qoffset)
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
        if roi_filter is not None:
            frame = roi_filter(frame, roi[i])  # type: ignore[index]
        for packet in ctx.encode(frame):
            out += bytes(packet)
    for packet in ctx.encode(None):
        out += bytes(packet)
    return bytes(out)


def _decode_each(ctx, data: bytes, take) -> None:
    """Feed a whole chunk through decoder ``ctx``, flushing it, and hand every frame to ``take``."""
    try:
        for packet in ctx.parse(data) + ctx.parse(None):
            for frame in ctx.decode(packet):
                take(frame)
        for frame in ctx.decode(None):
            take(frame)
    except ChunkDecodeError:
        raise  # take()'s own refusal, with its reason
    except (av.error.FFmpegError, ValueError) as exc:
        raise ChunkDecodeError(f"H.264 decode failed: {exc}") from None


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
                f"frame {len(frames)} is {frame.width}x{frame.height}, header announces {expect_size[0]}x{expect_size[1]}",
                "frame_size",
            )
        if expect_frames is not None and len(frames) >= expect_frames:
            raise ChunkDecodeError(f"decoded more than the {expect_frames} frames the header announces", "frame_count")
        frames.append(frame.to_ndarray(format="rgb24"))

    _decode_each(ctx, data, take)
    if not frames:
        raise ChunkDecodeError("no frame decoded")
    if expect_frames is not None and len(frames) != expect_frames:
        raise ChunkDecodeError(f"decoded {len(frames)} frames, header announces {expect_frames}", "frame_count")
    return frames


def _qp_map(params, width: int, height: int) -> np.ndarray:
    """Per-macroblock QP from AVVideoEncParams side data (H.264: QP = base qp + block delta_qp).

    Parsed from the raw struct (LP64 layout: nb_blocks, blocks_offset,
    block_size, type, qp, ...; each block src_x, src_y, w, h, delta_qp as
    int32), so that it works on PyAV versions without ``qp_map()``.
    """
    raw = bytes(params)
    nb_blocks = int(np.frombuffer(raw, np.uint32, 1, 0)[0])
    offset, size = (int(v) for v in np.frombuffer(raw, np.uint64, 2, 8))
    base_qp = int(np.frombuffer(raw, np.int32, 1, 28)[0])
    rows, cols = (height + 15) // 16, (width + 15) // 16
    if nb_blocks != rows * cols or size < 20 or offset + nb_blocks * size > len(raw):
        raise ChunkDecodeError(f"QP side data has {nb_blocks} blocks of {size} bytes, the frame has {rows * cols} macroblocks")
    blocks = np.frombuffer(raw, np.uint8, nb_blocks * size, offset).reshape(nb_blocks, size)[:, :20]
    fields = blocks.copy().view(np.int32).reshape(nb_blocks, 5)
    qp = np.empty((rows, cols), dtype=np.int16)
    qp[fields[:, 1] // 16, fields[:, 0] // 16] = base_qp + fields[:, 4]
    return qp


def read_qp_maps(data: bytes) -> list[np.ndarray]:
    """Every frame's per-macroblock luma QP, ``(rows, cols)`` int16, as the
    bitstream holds it (the decoder's ``venc_params`` export), in display order.

    A macroblock without residual (skipped, or no coded coefficients) has
    no QP of its own in H.264; the decoder reports the QP it inherits from
    the previous block, so averages over P/B frames mix in inherited values.
    """
    ctx = av.CodecContext.create("h264", "r")
    ctx.options = {"export_side_data": "venc_params"}
    maps: list[np.ndarray] = []

    def take(frame) -> None:
        try:
            params = frame.side_data[av.sidedata.sidedata.Type.VIDEO_ENC_PARAMS]
        except KeyError:
            raise ChunkDecodeError(f"frame {len(maps)} carries no QP side data") from None
        maps.append(_qp_map(params, frame.width, frame.height))

    _decode_each(ctx, data, take)
    return maps


def qp_pair(qp_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> tuple[float | None, float | None]:
    """Mean QP over the ROI blocks and over the other blocks of a chunk
    (``None`` where a side has no block): the effective (high, low) quality pair."""
    if len(qp_maps) != len(masks):
        raise ValueError(f"{len(masks)} masks for {len(qp_maps)} QP maps")
    inside: list[np.ndarray] = []
    outside: list[np.ndarray] = []
    for qp, mask in zip(qp_maps, masks):
        if mask is None:
            outside.append(qp.ravel())
            continue
        if mask.shape != qp.shape:
            raise ValueError(f"mask {mask.shape} does not match the QP map {qp.shape}")
        inside.append(qp[mask])
        outside.append(qp[~mask])
    mean_in = np.concatenate(inside) if inside else np.empty(0)
    mean_out = np.concatenate(outside) if outside else np.empty(0)
    return (float(mean_in.mean()) if mean_in.size else None, float(mean_out.mean()) if mean_out.size else None)
