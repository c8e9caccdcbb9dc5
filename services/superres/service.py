"""superres: low-resolution frames (FRAMES) -> frames at source size (UPSCALED).

Consumes FRAMES with its consumer group; for each FrameRef it reads the
decoded frame, brings it to the source size and adds a FrameRef to UPSCALED
naming the result (``frame``), the method (``upscaled_by``) and the decoded
frame (``lowres``, for models that use both, CloudSeg §3.2); then it
acknowledges. Frames whose blob has expired are dropped and counted.

Methods: ``model``, a CARN-M checkpoint from ``cloudtutor train sr``
(CloudSeg §3.1), for frames sent at its scale, bicubic for any other; or
``bicubic`` alone, the fallback CloudSeg compares against, and then the
service says so in its retained status (``superres_method``, ``note``) and
in its metrics. A frame already at its source size passes through as the
same blob (``upscaled_by="none"``).

Every ``claim_every_s`` it also takes over FRAMES entries that a dead
replica read but never acknowledged (XAUTOCLAIM after ``claim_idle_ms``).
"""

from __future__ import annotations

import time

import numpy as np

from cloudtutor import upscale
from cloudtutor.framebuffer import GroupReader, StreamEntry
from cloudtutor.service import Service
from cloudtutor.streams import FRAMES, UPSCALED, FrameRef, StreamEntryError, frame_blob

UPSCALED_FRAMES = "cloudtutor_superres_frames_total"  # {method}
SECONDS = "cloudtutor_superres_seconds_total"  # {method}: time spent upscaling
FRAME_MS = "cloudtutor_superres_frame_ms"  # gauge {method}: last frame's upscaling time
METHOD = "cloudtutor_superres_method"  # gauge {method}: 1 for the method in use

FALLBACK_NOTE = "bicubic fallback: no super-resolution model is configured (superres.method: model)"


class SuperresService(Service):
    """FRAMES -> UPSCALED, by the SR model (CloudSeg) or bicubic."""

    name = "superres"

    def setup(self) -> None:
        self.settings = self.config.superres
        self.sr: upscale.SrUpscaler | None = None
        if self.settings.method == "model":
            self.sr = upscale.SrUpscaler.from_checkpoint(self.settings.model_path)
            self.method = upscale.MODEL
            self.bus.set_status_fields(superres_method=self.method, sr_scale=self.sr.scale)
            self.log.info("super-resolution model x%d from %s", self.sr.scale, self.settings.model_path)
        else:
            self.method = upscale.BICUBIC
            self.bus.set_status_fields(superres_method=self.method, note=FALLBACK_NOTE)
            self.log.warning(FALLBACK_NOTE)
        self.metrics.describe(UPSCALED_FRAMES, "Frames written to the upscaled stream, by method (none: passed through).")
        self.metrics.describe(SECONDS, "Seconds spent upscaling, by method.")
        self.metrics.set(METHOD, 1, method=self.method)
        # blob_field: entries whose frame expired are dropped and counted as they are read.
        self.reader = GroupReader(self.fb, FRAMES, self.group, self.consumer, count=self.settings.batch_size,
                                  claim_every_s=self.settings.claim_every_s, blob_field="frame")

    def step(self) -> bool:
        entries = self.reader.next()
        done = [e.id for e in entries if self._process(e)]
        # Acknowledge only after the outputs are written (a crash before this
        # leaves the entries to be reclaimed, and redoing them is harmless).
        self.reader.ack(done)
        return bool(entries)

    # -- one frame --------------------------------------------------------------------

    def _process(self, entry: StreamEntry) -> bool:
        """Upscale one entry; True when its output is written (ack it), False when it was dropped (already acked)."""
        try:
            ref = FrameRef.from_fields(entry.fields)
        except StreamEntryError as exc:
            self.reject("frame_ref", "invalid", str(exc), entry=entry.id)
            self.fb.drop(FRAMES, self.group, [entry.id], reason="malformed")
            return False
        method = upscale.method_for((ref.width, ref.height), (ref.source_width, ref.source_height), self.method)
        if method == upscale.NONE:
            out = self._pass_through(entry, ref)
        else:
            out = self._upscale(entry, ref, method)
        if out is None:
            return False
        self.fb.add(UPSCALED, out.to_fields())
        self.metrics.inc(UPSCALED_FRAMES, method=out.upscaled_by)
        return True

    def _drop_expired(self, entry: StreamEntry) -> None:
        self.fb.drop(FRAMES, self.group, [entry.id], reason="blob_expired")

    def _pass_through(self, entry: StreamEntry, ref: FrameRef) -> FrameRef | None:
        if not self.fb.redis.exists(self.fb.array_key(ref.frame)):
            self._drop_expired(entry)
            return None
        return ref.model_copy(update={"upscaled_by": upscale.NONE, "lowres": ref.frame})

    def _upscale(self, entry: StreamEntry, ref: FrameRef, method: str) -> FrameRef | None:
        lowres = self.fb.get_array(ref.frame)
        if lowres is None:
            self._drop_expired(entry)
            return None
        if lowres.ndim != 3 or lowres.shape[2] != 3 or lowres.dtype != np.uint8:
            # Redoing it would fail the same way: refuse it instead of retrying forever.
            self.reject("frame", "not_rgb", f"frame {ref.frame} is {lowres.dtype} {lowres.shape}", entry=entry.id)
            self.fb.drop(FRAMES, self.group, [entry.id], reason="malformed")
            return None
        size = (ref.source_width, ref.source_height)
        started = time.perf_counter()
        if self.sr is not None:
            highres, method = self.sr(lowres, size)  # bicubic for frames sent at another scale
        else:
            highres = upscale.bicubic(lowres, size)
        elapsed = time.perf_counter() - started
        self.metrics.inc(SECONDS, elapsed, method=method)
        self.metrics.set(FRAME_MS, elapsed * 1000.0, method=method)
        name = frame_blob(ref.device_id, ref.boot_id, ref.chunk_seq, ref.index, "hr")
        self.fb.put_array(name, highres)
        return ref.model_copy(update={
            "frame": name, "width": size[0], "height": size[1], "upscaled_by": method, "lowres": ref.frame,
        })


SERVICE = SuperresService
