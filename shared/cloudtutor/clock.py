"""One clock for every time-based rule (brief §10.1).

Production reads wall time. The demo and the benchmarks read video time: the
timestamps of the frames processed so far, advancing as fast as the work
allows, so compute is never charged to the simulated clock.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...

    def now_s(self) -> float: ...


class WallClock:
    """Unix time."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def now_s(self) -> float:
        return time.time()


class VideoClock:
    """Video time, advanced by whoever reads frames; never goes backwards."""

    def __init__(self, start_ms: int = 0) -> None:
        self._ms = start_ms
        self._lock = threading.Lock()

    def advance_to(self, pts_ms: int) -> int:
        """Move to ``pts_ms`` if that is later; returns the current time."""
        with self._lock:
            if pts_ms > self._ms:
                self._ms = pts_ms
            return self._ms

    def now_ms(self) -> int:
        with self._lock:
            return self._ms

    def now_s(self) -> float:
        return self.now_ms() / 1000.0
