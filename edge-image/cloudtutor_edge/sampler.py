"""Sampling decisions in video time, without I/O (AMS §3.2, brief §10.1).

* :class:`RateGate` picks frames at a rate of video time: the ``sample_fps``
  knob (frames sent to the cloud) and the ``infer_fps`` knob (frames the
  student labels; 0 = every frame) each have one.
* :class:`SampleBuffer` collects the sampled frames of one ``T_update``
  window and hands them over as one :class:`Batch` (one H.264 chunk) when
  the window ends, when the chunk's format changes (source, encoded size,
  CRF: brief §10.2, a change starts a new chunk) or when it holds
  :data:`MAX_CHUNK_FRAMES`.
* :class:`FrameRateEstimator` gives a source's frame rate from its
  timestamps (for the chunk header), without opening the source again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

#: Upper bound of frames per chunk, whatever sample_fps x t_update_s says:
#: keeps the buffered frames' memory and the envelope (8 MiB) bounded.
MAX_CHUNK_FRAMES = 120

# PTS are rounded to whole milliseconds (15 fps gives 0, 67, 133, ...), so a
# frame 1 ms early for its slot still takes it rather than the next frame.
_SLACK_MS = 1.0


class RateGate:
    """Passes frames at ``fps`` frames per second of video time (0: every frame).

    Slots lie on a grid of period ``1000/fps`` ms from the first passed
    frame; a frame passes when it is the first at or after its slot, so the
    long-run rate is exact on any frame rate above ``fps``. After a gap in
    the video (or with a frame rate below ``fps``) the grid restarts at the
    next frame instead of passing a burst.
    """

    def __init__(self, fps: float) -> None:
        self.fps = -1.0  # forces set_rate() below to take the rate
        self._period: float | None = None
        self._next: float | None = None
        self._last: int | None = None
        self.set_rate(fps)

    def set_rate(self, fps: float) -> None:
        """Change the rate; the next slot is one new period after the last passed frame."""
        if fps < 0:
            raise ValueError(f"rate must be >= 0, got {fps}")
        if fps == self.fps:
            return
        self.fps = fps
        self._period = 1000.0 / fps if fps > 0 else None
        self._next = self._last + self._period if self._period is not None and self._last is not None else None

    def __call__(self, pts_ms: int) -> bool:
        if self._period is None:
            self._last = pts_ms
            return True
        if self._next is not None and pts_ms < self._next - _SLACK_MS:
            return False
        if self._next is None:
            self._next = pts_ms + self._period
        else:
            self._next += self._period
            if self._next <= pts_ms:  # a gap: restart the grid rather than catch up in a burst
                self._next = pts_ms + self._period
        self._last = pts_ms
        return True


@dataclass(frozen=True)
class ChunkFormat:
    """What must be the same for every frame of one chunk."""

    source: str
    source_size: tuple[int, int]  # (width, height)
    sent_size: tuple[int, int]  # (width, height), multiples of 16
    crf: float


@dataclass(frozen=True)
class Sample:
    """One sampled frame, already downscaled to ``fmt.sent_size``."""

    pts_ms: int
    rgb: np.ndarray
    fmt: ChunkFormat
    model_version: int
    key: bool = False  # the 2-level frame selector's KEY class (CloudSeg §3.2)


@dataclass
class Batch:
    """The samples of one chunk, in increasing video time."""

    fmt: ChunkFormat
    samples: list[Sample] = field(default_factory=list)

    @property
    def pts_ms(self) -> list[int]:
        return [s.pts_ms for s in self.samples]

    @property
    def frames(self) -> list[np.ndarray]:
        return [s.rgb for s in self.samples]

    @property
    def key_frames(self) -> list[bool]:
        return [s.key for s in self.samples]

    @property
    def model_version(self) -> int:
        """The student version at the latest sample (the header carries one)."""
        return self.samples[-1].model_version

    def __len__(self) -> int:
        return len(self.samples)


class SampleBuffer:
    """Buffers samples for ``T_update`` seconds of video time (AMS §3.2).

    Windows are consecutive intervals of video time, the first starting at
    the first frame seen. Call :meth:`push` once per frame, sampled or not,
    with the sample if it was one; it returns the batches completed by that
    frame (the ended window's, or the previous format's). A new
    ``t_update_s`` applies from the next window on.
    """

    def __init__(self, t_update_s: float, *, max_frames: int = MAX_CHUNK_FRAMES) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be >= 1")
        self.max_frames = max_frames
        self._period_ms = self._check(t_update_s)
        self._window_end: float | None = None
        self._batch: Batch | None = None
        self._last_pts: int | None = None

    @staticmethod
    def _check(t_update_s: float) -> float:
        if t_update_s <= 0:
            raise ValueError(f"t_update_s must be > 0, got {t_update_s}")
        return t_update_s * 1000.0

    def set_period(self, t_update_s: float) -> None:
        self._period_ms = self._check(t_update_s)

    @property
    def window_end_ms(self) -> float | None:
        """End of the current window in video ms (None before the first frame)."""
        return self._window_end

    def __len__(self) -> int:
        return 0 if self._batch is None else len(self._batch)

    def push(self, pts_ms: int, sample: Sample | None = None) -> list[Batch]:
        """Advance video time to ``pts_ms`` and buffer ``sample`` (taken at ``pts_ms``)."""
        if sample is not None and sample.pts_ms != pts_ms:
            raise ValueError(f"sample at {sample.pts_ms} ms pushed with frame time {pts_ms} ms")
        if self._last_pts is not None and pts_ms <= self._last_pts:
            raise ValueError(f"frame at {pts_ms} ms does not follow {self._last_pts} ms")
        self._last_pts = pts_ms
        done: list[Batch] = []
        if self._window_end is None:
            self._window_end = pts_ms + self._period_ms
        elif pts_ms >= self._window_end:
            # Skip whole empty windows after a gap, keeping the window grid.
            missed = (pts_ms - self._window_end) // self._period_ms
            self._window_end += (missed + 1) * self._period_ms
            done += self._take()
        if sample is not None:
            if self._batch is not None and (self._batch.fmt != sample.fmt or len(self._batch) >= self.max_frames):
                done += self._take()
            if self._batch is None:
                self._batch = Batch(sample.fmt)
            self._batch.samples.append(sample)
        return done

    def flush(self) -> Batch | None:
        """Hand over what is buffered (None when empty), e.g. at the end of the video."""
        batch = self._take()
        return batch[0] if batch else None

    def _take(self) -> list[Batch]:
        batch, self._batch = self._batch, None
        return [batch] if batch else []


class FrameRateEstimator:
    """Frame rate of each source from the span of its recent timestamps.

    The mean spacing over a window, not the median: PTS rounded to whole
    ms (15 fps: 67, 66, 67, ...) would bias a median.
    """

    def __init__(self, default_fps: float = 30.0, window: int = 32) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.default_fps = default_fps
        self.window = window
        self._recent: dict[str, deque[int]] = {}

    def observe(self, source: str, pts_ms: int) -> None:
        recent = self._recent.setdefault(source, deque(maxlen=self.window + 1))
        if not recent or pts_ms > recent[-1]:
            recent.append(pts_ms)

    def fps(self, source: str) -> float:
        recent = self._recent.get(source)
        if not recent or len(recent) < 2:
            return self.default_fps
        return min(1000.0, 1000.0 * (len(recent) - 1) / (recent[-1] - recent[0]))
