"""Remote+Tracking (AMS §4.1): the teacher's labels of one processed frame a
second come down; the edge carries the newest ones to every processed frame
with dense optical flow.

Flow: OpenCV's DIS (preset ``medium``) on grey frames at the student's size
(512 wide), backward (current -> previous processed frame), labels pulled
along it by nearest-neighbour remapping, frame to frame. AMS used Farneback
at 1024x512; brief §10.11 allows DIS at 512 wide. Each sample goes up at
once as a one-frame chunk ("full quality": ``crf`` 18 by default, since
the labels cannot wait for a buffered chunk); labels go down as the zlib'd
uint8 map at the student's size.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from cloudtutor.models.labels import IGNORE
from cloudtutor.schemes.footage import Tick
from cloudtutor.schemes.ledger import DOWN, EveryGate
from cloudtutor.schemes.runner import Context, Scheme, Uplink


@dataclass(frozen=True)
class TrackingSettings:
    rate_fps: float = 1.0
    crf: float = 18.0


def warp_labels(labels: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``labels`` (previous frame) pulled along the backward ``flow``
    (current -> previous, ``HxWx2``) onto the current frame; pixels that
    come from outside the frame become IGNORE (the student's void)."""
    h, w = labels.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(labels, xs + flow[..., 0], ys + flow[..., 1], interpolation=cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=int(IGNORE))


class RemoteTracking(Scheme):
    name = "remote_tracking"

    def __init__(self, settings: TrackingSettings = TrackingSettings()) -> None:
        self.s = settings
        self.labels: np.ndarray | None = None
        self.prev_grey: np.ndarray | None = None
        self.flow_s = 0.0
        self.flows = self.keys = 0

    def start(self, ctx: Context) -> None:
        self.gate = EveryGate(self.s.rate_fps)
        self.uplink = Uplink(ctx, crf=self.s.crf)
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def infer(self, ctx: Context, tick: Tick) -> None:
        frame = ctx.footage.small[tick.uid]
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self.gate(tick.pts_ms):  # a sample: up as one frame, its labels down
            self.uplink.add(tick)
            self.uplink.flush(tick)
            self.labels = ctx.teacher_small(tick.uid)
            ctx.send(tick, DOWN, len(zlib.compress(self.labels.tobytes(), 9)), "labels")
            self.keys += 1
        elif self.labels is not None and self.prev_grey is not None:
            if self.prev_grey.shape != grey.shape:  # a new clip of another size: no motion to follow
                self.labels = cv2.resize(self.labels, (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_NEAREST)
            else:
                start = time.perf_counter()
                flow = self.dis.calc(grey, self.prev_grey, None)
                self.labels = warp_labels(self.labels, flow)
                self.flow_s += time.perf_counter() - start
                self.flows += 1
        self.prev_grey = grey
        pred = self.labels if self.labels is not None else np.full(grey.shape, IGNORE, dtype=np.uint8)
        ctx.score(tick, pred, self.keys)

    def finish(self, ctx: Context, tick: Tick) -> None:
        if self.keys and not self.flows:  # infer_fps <= rate_fps: nothing was tracked
            ctx.notes["warning"] = ("every processed frame was a labelled sample (infer_fps <= rate_fps): "
                                    "the score is the teacher's own, not tracking; use a higher --infer-fps")
        ctx.notes.update({"label_frames": self.keys, "flows": self.flows,
                          "flow_ms": round(1000 * self.flow_s / max(1, self.flows), 1), "uplink": self.uplink.stats(),
                          "flow": "OpenCV DIS, preset medium, grey, at the student's size (512 wide)"})

    def settings(self) -> dict[str, Any]:
        return asdict(self.s)
