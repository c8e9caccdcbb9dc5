"""The simulated-clock loop: plays the footage to a scheme and scores the
edge against the teacher on every processed frame (AMS §4.1, brief §10.1,
§10.11).

Video time advances frame by frame as fast as the work allows; compute is
never charged to it, so an update trained at video time t reaches the edge
before the frame at t is labelled (every scheme alike). The edge labels one
frame per ``1/infer_fps`` s of video time (0: every frame); its labels are
batched between model changes, which changes nothing but the speed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from cloudtutor import distill
from cloudtutor.clock import VideoClock
from cloudtutor.h264 import EncodeSettings, decode_chunk, encode_chunk, sent_size
from cloudtutor.models.labels import LabelMapping
from cloudtutor.models.preprocess import resize_rgb
from cloudtutor.modelstate import model_id
from cloudtutor.schemes.footage import Footage, Tick
from cloudtutor.schemes.ledger import DOWN, UP, EveryGate, Ledger, Scoreboard
from cloudtutor.schemes.teacher_cache import TeacherLabels

log = logging.getLogger("cloudtutor.schemes")

DEVICE_ID = "bench-edge"


class EdgeModel:
    """The edge's student: labels queued frames in batches; a new model view
    first labels everything queued with the old one."""

    def __init__(self, model: nn.Module, ctx: Context, batch: int = 4) -> None:
        self.model, self.ctx, self.batch = model.eval(), ctx, batch
        self.version = 0
        self._queue: list[Tick] = []

    def queue(self, tick: Tick) -> None:
        self._queue.append(tick)
        if len(self._queue) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self._queue:
            return
        ticks, self._queue = self._queue, []
        frames = [self.ctx.footage.small[t.uid] for t in ticks]
        preds = distill.predict(self.model, frames, normalize=self.ctx.normalize, mapping=self.ctx.mapping,
                                batch_size=self.batch)
        for tick, pred in zip(ticks, preds):
            self.ctx.score(tick, pred, self.version)

    def load(self, view: Mapping[str, torch.Tensor], version: int | None = None) -> None:
        """Apply a model view (what a delta or snapshot gives the edge)."""
        self.flush()
        self.model.load_state_dict(dict(view))
        self.version = self.version + 1 if version is None else version


@dataclass
class Context:
    """What a scheme sees: the footage, the teacher, the student's label
    mapping, the clock, the wire and the scores."""

    footage: Footage
    teacher: TeacherLabels
    mapping: LabelMapping
    normalize: Any
    seed: int = 0
    clock: VideoClock = field(default_factory=VideoClock)
    ledger: Ledger = field(default_factory=Ledger)
    scores: Scoreboard = field(default_factory=Scoreboard)
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    cloud_seconds: float = 0.0  # training compute (wall), reported beside the video time
    notes: dict[str, Any] = field(default_factory=dict)  # scheme-specific counters for the report
    edge: EdgeModel | None = None
    lut: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.lut = distill.target_lut(self.mapping)

    def small_size(self, uid: int) -> tuple[int, int]:
        f = self.footage.small[uid]
        return f.shape[1], f.shape[0]

    def teacher_small(self, uid: int) -> np.ndarray:
        """The teacher's labels of a distinct frame at the student's size (cached)."""
        return self.teacher.labels(self.footage.frames[uid], self.small_size(uid), self.footage.keys[uid])

    def score(self, tick: Tick, pred: np.ndarray, version: int) -> float:
        return self.scores.add(tick.pts_ms, self.footage.source_at(tick), tick.first_pass, self.teacher_small(tick.uid),
                               pred, version)

    def send(self, tick: Tick, direction: str, nbytes: int, what: str) -> None:
        self.ledger.add(tick.pts_ms, direction, nbytes, what, self.footage.source_at(tick))


class Uplink:
    """The edge's sampled frames, encoded as the edge does: H.264 chunks at
    ``1/scale`` size (multiples of 16) and ``crf``, one chunk per flush (and
    per change of size, brief §10.2). ``flush`` returns each frame as the
    cloud decodes it when ``decode`` is set."""

    def __init__(self, ctx: Context, *, crf: float = 23.0, scale: float = 1.0, preset: str = "medium",
                 decode: bool = False) -> None:
        self.ctx, self.scale, self.decode = ctx, scale, decode
        self.settings = EncodeSettings(crf=crf, preset=preset)
        self._buffer: list[Tick] = []
        self.chunks = self.frames = 0
        self.encode_s = 0.0

    def add(self, tick: Tick) -> None:
        self._buffer.append(tick)

    def pending(self) -> int:
        return len(self._buffer)

    def flush(self, at: Tick) -> list[tuple[Tick, np.ndarray | None]]:
        out: list[tuple[Tick, np.ndarray | None]] = []
        runs: list[list[Tick]] = []
        for tick in self._buffer:
            src = self.ctx.footage.frames[tick.uid]
            size = sent_size((src.shape[1], src.shape[0]), self.scale)
            if runs and sent_size(self._shape(runs[-1][0]), self.scale) == size:
                runs[-1].append(tick)
            else:
                runs.append([tick])
        self._buffer = []
        for run in runs:
            src = self.ctx.footage.frames[run[0].uid]
            size = sent_size((src.shape[1], src.shape[0]), self.scale)
            frames = [resize_rgb(self.ctx.footage.frames[t.uid], size) for t in run]
            start = time.perf_counter()
            data = encode_chunk(frames, self.settings)
            self.encode_s += time.perf_counter() - start
            self.ctx.send(at, UP, len(data), "chunk")
            self.chunks += 1
            self.frames += len(run)
            decoded = decode_chunk(data, expect_frames=len(run)) if self.decode else [None] * len(run)
            out.extend(zip(run, decoded))
        return out

    def _shape(self, tick: Tick) -> tuple[int, int]:
        f = self.ctx.footage.frames[tick.uid]
        return f.shape[1], f.shape[0]

    def stats(self) -> dict[str, Any]:
        return {"chunks": self.chunks, "frames": self.frames, "encode_s": round(self.encode_s, 2)}


class Scheme:
    """One adaptation scheme. ``on_frame`` sees every frame of the video
    (sampling, training, updates); ``infer`` labels a processed frame: the
    default queues it for the edge's student."""

    name = "scheme"

    def start(self, ctx: Context) -> None:
        pass

    def on_frame(self, ctx: Context, tick: Tick) -> None:
        pass

    def infer(self, ctx: Context, tick: Tick) -> None:
        assert ctx.edge is not None
        ctx.edge.queue(tick)

    def finish(self, ctx: Context, tick: Tick) -> None:
        pass

    def settings(self) -> dict[str, Any]:
        return {}


def send_delta(ctx: Context, tick: Tick, cloud: nn.Module, masks: Mapping[str, torch.Tensor], *,
               metric: float | None = None) -> int:
    """The update from the edge's view to ``cloud`` on ``masks`` through the
    real delta codec (signed, zlib), counted on the downlink and applied to
    the edge; returns its bytes."""
    from cloudtutor.delta import encode_delta

    assert ctx.edge is not None
    version = ctx.edge.version
    data, view = encode_delta(ctx.edge.model.state_dict(), cloud.state_dict(), masks, device_id=DEVICE_ID,
                              seq=version + 1, model_id=model_id(cloud), base_version=version, version=version + 1,
                              key=ctx.key, metric=metric, video_ms=tick.pts_ms)
    ctx.send(tick, DOWN, len(data), "delta")
    ctx.edge.load(view, version + 1)
    return len(data)


def send_snapshot(ctx: Context, tick: Tick, cloud: nn.Module) -> int:
    """The whole model (float16, zlib, signed) on the downlink."""
    from cloudtutor.delta import encode_snapshot

    assert ctx.edge is not None
    version = ctx.edge.version + 1
    data = encode_snapshot(cloud.state_dict(), device_id=DEVICE_ID, seq=version, model_id=model_id(cloud),
                           version=version, key=ctx.key, video_ms=tick.pts_ms)
    ctx.send(tick, DOWN, len(data), "snapshot")
    ctx.edge.load(cloud.state_dict(), version)
    return len(data)


def run_scheme(scheme: Scheme, ctx: Context, edge_model: nn.Module, *, infer_fps: float = 5.0) -> Context:
    """Play the whole footage to ``scheme``; ``ctx`` then holds its bytes and scores."""
    ctx.edge = EdgeModel(edge_model, ctx)
    gate = EveryGate(infer_fps)
    scheme.start(ctx)
    ticks = ctx.footage.ticks
    started, report_every = time.perf_counter(), max(1, len(ticks) // 10)
    for i, tick in enumerate(ticks):
        ctx.clock.advance_to(tick.pts_ms)
        scheme.on_frame(ctx, tick)
        if gate(tick.pts_ms):
            scheme.infer(ctx, tick)
        if (i + 1) % report_every == 0:
            log.info("%s: %d%% (%.0f of %.0f s of video, %.0f s wall)", scheme.name, 100 * (i + 1) // len(ticks),
                     tick.pts_ms / 1000, ctx.footage.duration_s, time.perf_counter() - started)
    ctx.edge.flush()
    scheme.finish(ctx, ticks[-1])
    return ctx
