"""Pacing video time against wall time (brief §10.1).

``speed`` 1 plays a file at its own rate (what a camera does by itself),
2 twice as fast, 0 as fast as the work allows. Only waits, never skips: a
loop slower than ``speed`` falls behind and catches up later without
sleeping. Live sources deliver frames in real time already; pacing them at
speed 1 costs nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Pacer:
    """Sleeps until a frame's video time is due in wall time."""

    def __init__(self, speed: float, *, now: Callable[[], float] = time.monotonic) -> None:
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        self.speed = speed
        self._now = now
        self._anchor: tuple[float, int] | None = None  # (wall, pts_ms) of the first frame

    def delay(self, pts_ms: int) -> float:
        """Seconds to wait before the frame at ``pts_ms`` (anchors on the first call)."""
        if self.speed == 0:
            return 0.0
        now = self._now()
        if self._anchor is None:
            self._anchor = (now, pts_ms)
            return 0.0
        wall0, pts0 = self._anchor
        return max(0.0, wall0 + (pts_ms - pts0) / 1000.0 / self.speed - now)

    def wait(self, pts_ms: int, stop: threading.Event | None = None) -> bool:
        """Wait until the frame is due; False if ``stop`` was set meanwhile."""
        delay = self.delay(pts_ms)
        if delay <= 0:
            return not (stop is not None and stop.is_set())
        if stop is None:
            time.sleep(delay)
            return True
        return not stop.wait(delay)
