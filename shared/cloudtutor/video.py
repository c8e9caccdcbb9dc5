"""Frames from a video file, an RTSP URL or a camera, with video-time
timestamps from the stream's PTS (brief §10.1).

Several files can be chained, and the chain looped, into one stream whose
timestamps keep increasing: the demo and the benchmarks use that to make
minutes of video with a real scene change out of short clips.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class Frame:
    pts_ms: int  # video time since the start of the (chained) stream
    rgb: np.ndarray  # HxWx3 uint8
    source: str  # which input it came from
    index: int  # frame number within the chained stream


def _open(source: str) -> av.container.InputContainer:
    options: dict[str, str] = {}
    fmt = None
    if source.startswith(("rtsp://", "rtsps://")):
        options = {"rtsp_transport": "tcp", "stimeout": "5000000"}
    elif source.startswith("/dev/video"):
        fmt = "v4l2"
    return av.open(source, format=fmt, options=options)


def read_frames(source: str, *, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(pts_ms from the stream's start, RGB frame) of one input."""
    with _open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first: int | None = None
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        for n, frame in enumerate(container.decode(stream)):
            if max_frames is not None and n >= max_frames:
                return
            if frame.pts is not None and frame.time_base is not None:
                ms = int(round(float(frame.pts * frame.time_base) * 1000))
            else:  # raw streams without timestamps: count frames
                ms = int(round(n * 1000 / rate))
            first = ms if first is None else first
            yield ms - first, frame.to_ndarray(format="rgb24")


def frame_interval_ms(source: str) -> float:
    with _open(source) as container:
        stream = container.streams.video[0]
        return 1000.0 / float(stream.average_rate or stream.guessed_rate or 25)


def chained(sources: Sequence[str | Path], *, duration_s: float | None = None, loop: bool = False) -> Iterator[Frame]:
    """Frames of ``sources`` one after another on one clock; with ``loop``
    (or a ``duration_s`` longer than the inputs) start over until
    ``duration_s`` of video time has been produced."""
    if not sources:
        raise ValueError("no video sources given")
    offset_ms, index = 0, 0
    limit_ms = None if duration_s is None else int(duration_s * 1000)
    while True:
        for source in map(str, sources):
            last_ms, step = 0, frame_interval_ms(source)
            for ms, rgb in read_frames(source):
                pts = offset_ms + ms
                if limit_ms is not None and pts >= limit_ms:
                    return
                yield Frame(pts, rgb, source, index)
                index, last_ms = index + 1, ms
            offset_ms += last_ms + int(round(step))
        if not loop and (limit_ms is None or offset_ms == 0):
            return
