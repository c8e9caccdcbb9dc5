"""Split mode on the edge (brief §10.8, `papers/split-brain.md` §3): run the
student's first ``split_layer`` stages, compress the live activations
(:mod:`cloudtutor.split.codec`, temporal delta against the previous frame
with an intra frame every ``intra_every``), publish them as an
``activations`` envelope (QoS 1), and take the labels the cloud returns on
``results`` (QoS 0) into the label sink, in the frame loop's thread.

At most ``max_pending`` frames wait for their labels: the loop holds the
next frame until one returns (on the simulated clock that keeps the edge
from outrunning the cloud; results lost on QoS 0 are given up after
``result_timeout_s``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from cloudtutor import envelope
from cloudtutor.headers import ActivationsHeader
from cloudtutor.split.codec import CodecConfig, encode
from cloudtutor.split.points import edge_front, resolve_split
from cloudtutor.split.results import SplitResult, decode_result
from cloudtutor.video import Frame

log = logging.getLogger("cloudtutor.edge.split")


class SplitEdge:
    def __init__(self, *, publish: Callable[[bytes], None], device_id: str, boot_id: str, model_id: str,
                 codec: str, intra_every: int = 10, max_pending: int = 4, result_timeout_s: float = 60.0) -> None:
        self.cfg = CodecConfig.parse(codec, intra_every=intra_every)
        self._publish, self.device_id, self.boot_id, self.model_id = publish, device_id, boot_id, model_id
        self.max_pending, self.result_timeout_s = max_pending, result_timeout_s
        self._results: queue.SimpleQueue[SplitResult] = queue.SimpleQueue()
        self._pending: dict[int, tuple[int, float]] = {}  # seq -> (model version, wall sent)
        self._seq = 0
        self._ref: tuple[int, int, dict] | None = None  # (seq, split, reconstruction)
        self.sent = self.received = self.rejected = self.lost = 0
        self.bytes = 0
        self.front_s = self.encode_s = 0.0
        self._bad_split_logged = False

    def send(self, frame: Frame, student: Any, version: int, split_layer: int) -> bool:
        """Run the front and publish; False if ``split_layer`` is no split point of this model (run locally)."""
        try:
            n = resolve_split(student.model, split_layer)
        except ValueError as exc:
            if not self._bad_split_logged:
                self._bad_split_logged = True
                log.warning("split mode: %s; inferring locally", exc)
            return False
        started = time.perf_counter()
        acts = {k: v[0].float().cpu().numpy() for k, v in edge_front(student.model, student.prepare(frame.rgb), n).items()}
        mid = time.perf_counter()
        ref = None
        if self._ref is not None and self._ref[1] == n and self._seq % self.cfg.intra_every:
            ref = self._ref[2]
        body, mine = encode(acts, self.cfg, ref)
        self.front_s += mid - started
        self.encode_s += time.perf_counter() - mid
        first = next(iter(acts.values()))
        height, width = frame.rgb.shape[:2]
        header = ActivationsHeader(
            device_id=self.device_id, seq=self._seq, boot_id=self.boot_id, model_id=self.model_id,
            split_after=student.model.stages[n - 1].name, frame_pts_ms=frame.pts_ms, shape=list(first.shape),
            codec=self.cfg.name, reference_seq=None if mine.intra else self._ref[0],  # type: ignore[index]
            frame_size=(width, height))
        data = envelope.encode(header, body)
        self._ref = (self._seq, n, mine.tensors)
        self._pending[self._seq] = (version, time.monotonic())
        self._seq += 1
        self._publish(data)
        self.sent += 1
        self.bytes += len(data)
        return True

    def on_result(self, payload: bytes) -> None:
        """The bus thread: queue a result for the frame loop."""
        try:
            result = decode_result(payload)
        except ValueError as exc:
            self.rejected += 1
            log.warning("rejected a result: %s", exc)
            return
        if result.boot_id == self.boot_id:
            self._results.put(result)

    def drain(self) -> list[tuple[SplitResult, int]]:
        """Results arrived so far, with the model version their frame ran, in arrival order."""
        out = []
        while True:
            try:
                r = self._results.get_nowait()
            except queue.Empty:
                break
            held = self._pending.pop(r.seq, None)
            if held is not None:
                self.received += 1
                out.append((r, held[0]))
        now = time.monotonic()
        for seq in [s for s, (_, t) in self._pending.items() if now - t > self.result_timeout_s]:
            del self._pending[seq]
            self.lost += 1
        return out

    def wait_room(self, stop: threading.Event, limit: int | None = None) -> list[tuple[SplitResult, int]]:
        """Hold the loop while ``limit`` (default max_pending) frames await labels; returns what arrived."""
        limit = self.max_pending if limit is None else limit
        got = self.drain()
        while len(self._pending) >= max(limit, 1) and not stop.wait(0.01):
            got += self.drain()
        return got

    @property
    def pending(self) -> int:
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        return {"split_sent": self.sent, "split_received": self.received, "split_lost": self.lost,
                "split_bytes": self.bytes, "split_mean_bytes": round(self.bytes / self.sent, 1) if self.sent else None,
                "split_front_ms": round(1000 * self.front_s / self.sent, 2) if self.sent else None,
                "split_encode_ms": round(1000 * self.encode_s / self.sent, 2) if self.sent else None}
