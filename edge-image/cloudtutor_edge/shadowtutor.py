"""ShadowTutor on the edge: Algorithm 4 (`papers/shadowtutor.md` §4.3).

:class:`KeyFrameScheduler` is the algorithm's bookkeeping, pure: a key frame
every ``stride`` inferred frames (the first frame is one), the update
awaited at most MIN_STRIDE frames after it, and NextStride (Algorithm 2) on
the metric the update carries. :class:`ShadowTutorEdge` connects it to the
agent: it sends each key frame at once as a one-frame chunk, lets the
student keep inferring, notices the key frame's update (the one trained
through the key frame's video time) once the updater has verified it,
swaps it in between frames, and blocks at MIN_STRIDE frames until it came
(``WaitUntilComplete``; bounded by ``wait_timeout_s`` of wall time so a
dead cloud cannot freeze the device: then the stride stays).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from cloudtutor.algorithms.stride import MAX_STRIDE, MIN_STRIDE, THRESHOLD, next_stride
from cloudtutor.h264 import sent_size
from cloudtutor.models.preprocess import resize_rgb
from cloudtutor.video import Frame

from cloudtutor_edge.sampler import Batch, ChunkFormat, Sample

log = logging.getLogger("cloudtutor.edge.shadowtutor")


class KeyFrameScheduler:
    """Algorithm 4's stride, step and ``updated`` flag."""

    def __init__(self, min_stride: int = MIN_STRIDE, max_stride: int = MAX_STRIDE, *, stride: float | None = None,
                 threshold: float = THRESHOLD) -> None:
        self.set_bounds(min_stride, max_stride)
        self.threshold = threshold
        self.stride = float(min_stride if stride is None else min(max(stride, min_stride), max_stride))  # line 1
        self.step = math.inf  # line 2: the first frame is a key frame
        self.updated = True  # line 3
        self.key_frames = 0
        self.frames = 0
        self.strides: list[float] = []
        self.metrics: list[float | None] = []

    def set_bounds(self, min_stride: int, max_stride: int) -> None:
        if not 1 <= min_stride <= max_stride:
            raise ValueError(f"need 1 <= min_stride <= max_stride, got {min_stride} and {max_stride}")
        self.min_stride, self.max_stride = int(min_stride), int(max_stride)

    def begin_frame(self) -> bool:
        """Lines 6-11: True if this frame is a key frame (then it goes to the cloud)."""
        self.frames += 1
        if self.step >= self.stride:
            self.step = 0
            self.updated = False
            self.key_frames += 1
            return True
        return False

    def end_frame(self) -> bool:
        """Lines 13-16, after the frame's inference: True if the update must now be awaited."""
        self.step += 1
        return not self.updated and self.step >= self.min_stride

    def complete(self, metric: float | None) -> float:
        """Lines 19-21: the update arrived with ``metric``; returns the next stride."""
        value = math.nan if metric is None else float(metric)
        self.stride = next_stride(self.stride, value, threshold=self.threshold,
                                  min_stride=self.min_stride, max_stride=self.max_stride)
        self.updated = True
        self.strides.append(self.stride)
        self.metrics.append(None if math.isnan(value) else value)
        return self.stride

    def give_up(self) -> None:
        """The update never came (timeout): go on with the old stride."""
        self.updated = True


class ShadowTutorEdge:
    """The agent's side of Algorithm 4 (one per agent; the frame loop's thread only)."""

    def __init__(self, *, submit: Callable[[Batch, float], None], trained_through: Callable[[], int | None],
                 last_metric: Callable[[], float | None], swap: Callable[[], bool], model_version: Callable[[], int],
                 stop_event: threading.Event, wait_timeout_s: float = 300.0) -> None:
        self.scheduler = KeyFrameScheduler()
        self._submit, self._trained_through, self._last_metric = submit, trained_through, last_metric
        self._swap, self._version, self._stop = swap, model_version, stop_event
        self.wait_timeout_s = wait_timeout_s
        self._key_pts: int | None = None
        self._key_wall = 0.0
        self.round_trips: list[float] = []  # wall s from sending a key frame to its update in use
        self.waited_s = 0.0
        self.waits = 0
        self.timeouts = 0
        self.infer_s = 0.0  # wall s between before_ and after_inference: t_si of §4.4
        self.first_wall: float | None = None
        self.last_wall: float | None = None
        self._t_infer = 0.0

    def configure(self, knobs: Any) -> None:
        self.scheduler.set_bounds(knobs.min_stride, knobs.max_stride)

    def before_inference(self, frame: Frame, knobs: Any, fps: float) -> bool:
        """Line 6-11: on a key frame, send it now as a one-frame chunk. True if it was one."""
        if self.first_wall is None:
            self.first_wall = time.monotonic()
        self._poll()
        if not self.scheduler.begin_frame():
            self._t_infer = time.monotonic()
            return False
        height, width = frame.rgb.shape[:2]
        size = sent_size((width, height), knobs.scale)
        fmt = ChunkFormat(frame.source, (width, height), size, knobs.crf)
        sample = Sample(frame.pts_ms, resize_rgb(frame.rgb, size), fmt, self._version(), key=True)
        self._submit(Batch(fmt, [sample]), fps)
        self._key_pts, self._key_wall = frame.pts_ms, time.monotonic()
        self._t_infer = time.monotonic()
        return True

    def after_inference(self) -> None:
        """Lines 13-23: count the frame; at MIN_STRIDE wait for the update; apply it when complete."""
        self.infer_s += time.monotonic() - self._t_infer
        if self.scheduler.end_frame():
            self.waits += 1
            started = time.monotonic()
            while not self._arrived():
                if self._stop.wait(0.02):
                    break
                if time.monotonic() - started > self.wait_timeout_s:
                    self.timeouts += 1
                    self.scheduler.give_up()
                    log.warning("no update for the key frame at %s ms after %.0f s; keeping stride %.1f",
                                self._key_pts, self.wait_timeout_s, self.scheduler.stride)
                    break
            self.waited_s += time.monotonic() - started
        self._poll()
        self.last_wall = time.monotonic()

    def _arrived(self) -> bool:
        trained = self._trained_through()
        return self._key_pts is not None and trained is not None and trained >= self._key_pts

    def _poll(self) -> None:
        """Line 18-22: once the key frame's update is verified, swap it in and set the stride."""
        if self.scheduler.updated or not self._arrived():
            return
        self._swap()
        self.round_trips.append(time.monotonic() - self._key_wall)
        stride = self.scheduler.complete(self._last_metric())
        log.info("key frame at %s ms: update in use after %.2f s, metric %s, next stride %.1f", self._key_pts,
                 self.round_trips[-1], self.scheduler.metrics[-1], stride)

    def stats(self) -> dict[str, Any]:
        s = self.scheduler
        rtt = self.round_trips
        metrics = [m for m in s.metrics if m is not None]
        return {
            "st_frames": s.frames, "st_key_frames": s.key_frames,
            "st_key_frame_ratio": round(s.key_frames / s.frames, 4) if s.frames else None,
            "st_updates": len(rtt), "st_waits": self.waits, "st_wait_s": round(self.waited_s, 3),
            "st_timeouts": self.timeouts, "st_round_trip_s": round(sum(rtt) / len(rtt), 3) if rtt else None,
            "st_mean_stride": round(sum(s.strides) / len(s.strides), 2) if s.strides else None,
            "st_mean_metric": round(sum(metrics) / len(metrics), 4) if metrics else None,
            "st_infer_s": round(self.infer_s, 3),
            "st_wall_s": round(self.last_wall - self.first_wall, 3) if self.first_wall and self.last_wall else None,
        }
