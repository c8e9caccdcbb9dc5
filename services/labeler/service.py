"""labeler: frames at source size (UPSCALED) -> teacher labels, the devices'
training horizons and φ-scores (AMS §3.2, brief §10.3).

For each FrameRef on UPSCALED (read with its consumer group):

1. run the teacher on the frame and take its labels at the student's size
   (``student_size(source w, h, models.student_width)``, brief §10.2):
   uint8 class ids, 255 = ignore;
2. store the frame resized to that size (``sample_blob(dev, pts)``, RGB
   uint8) and the labels (``label_blob(dev, pts)``) as array blobs;
3. append ``{sample, label, model_version, pts_ms[, phi]}`` to the device's
   horizon stream at ID ``{pts_ms}-*`` (video time, brief §10.1);
4. φ = 1 − mIoU of these labels against those of the device's previous
   sampled frame (``phi_score``) as a ``phi`` Signal on SIGNALS; none for a
   device's first frame;
5. remember this label as the device's previous one, and the device in the
   ``devices`` set the trainer scans;
6. trim the device's horizon to the last ``labeler.t_horizon_s`` seconds of
   video time before the newest sample, deleting the trimmed samples' blobs
   (their TTL is only a safety net, brief §10.1);
7. acknowledge.

T_horizon's one source of truth for what the horizon HOLDS is
``labeler.t_horizon_s``; the trainer samples within it (the per-device
``t_horizon_s`` knob may narrow its window, never widen it beyond this).

Per-device order: horizon IDs must not go back in time, and φ compares with
the previous frame, so one device's frames must be labeled in order by one
consumer. With one replica that is trivial (ingest adds a chunk's frames in
order and superres keeps it); with several, device affinity (leases, the
fleet issue, brief §10.4) must route a device to one labeler. Meanwhile a
frame older than the device's newest labeled one (a late reclaim, or a
second replica) is dropped and counted (``reason="stale"``), never
inserted out of order, and a redelivered frame is not added twice.

Threads: ``models.teacher_threads`` sets the TFLite interpreter's threads.
This process runs no torch (the TFLite teacher does not import it), so the
XNNPACK slow-down of torch (data README, first pitfall) cannot happen here:
set ``CLOUDTUTOR_MODELS__TEACHER_THREADS=2`` (or more) for the labeler's
container. The default stays 1 for processes that share torch.

Redis keys, besides blobs, streams and horizons:
``{prefix}:devices`` (set of device ids, no TTL: the trainer's index) and
``{prefix}:labeler:prev:{device}`` (JSON ``{label, pts_ms}`` of the
device's newest labeled frame, TTL ``framebuffer.blob_ttl_s``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from cloudtutor.algorithms.asr import phi_score
from cloudtutor.framebuffer import GroupReader, HorizonOrderError, StreamEntry
from cloudtutor.models.preprocess import resize_labels, resize_rgb, student_size
from cloudtutor.models.registry import build_teacher
from cloudtutor.service import Service
from cloudtutor.streams import SIGNALS, UPSCALED, FrameRef, Signal, StreamEntryError, label_blob, sample_blob


LABELED = "cloudtutor_labeler_frames_total"
TEACHER_SECONDS = "cloudtutor_labeler_teacher_seconds_total"
TEACHER_MS = "cloudtutor_labeler_teacher_ms"  # gauge: last frame's teacher time
PHI = "cloudtutor_labeler_phi_total"  # phi signals sent


@dataclass(frozen=True)
class Previous:
    """A device's newest labeled frame: its label blob and video time."""

    label: str
    pts_ms: int


class LabelerService(Service):
    """UPSCALED -> horizon samples, labels and φ signals."""

    name = "labeler"

    def setup(self) -> None:
        self.settings = self.config.labeler
        models = self.config.models
        self.teacher = build_teacher(
            models.model_name("teacher"), models.weights_path("teacher"),
            num_threads=models.teacher_threads, data_root_path=models.data_root,
        )
        self.num_classes = self.teacher.mapping.num_classes
        self.metrics.describe(TEACHER_SECONDS, "Seconds spent in the teacher.")
        # blob_field: entries whose frame expired are dropped and counted as they are read.
        self.reader = GroupReader(self.fb, UPSCALED, self.group, self.consumer, count=self.settings.batch_size,
                                  claim_every_s=self.settings.claim_every_s, blob_field="frame")

    def step(self) -> bool:
        entries = self.reader.next()
        done = [e for e in entries if self._process(e)]
        self.reader.ack([e.id for e in done])  # only after the outputs are written
        self._release(done)
        return bool(entries)

    def _release(self, entries: list[StreamEntry]) -> None:
        """Delete the frames just labelled (upscaled and low-resolution): the
        labeler is their last reader, the horizon keeps its own resized copy.
        Left to the blob TTL (a safety net, brief §10.1) they held every frame
        of the last hour in Redis: ~3 MB per sampled frame, growing all
        through `bench load`. After the ack, so a crash in between leaves
        them to the TTL rather than losing a frame."""
        names = []
        for entry in entries:
            ref = FrameRef.from_fields(entry.fields)
            names += [n for n in (ref.frame, ref.lowres) if n]
        self.fb.delete(*names)

    # -- one frame --------------------------------------------------------------------

    def _process(self, entry: StreamEntry) -> bool:
        """Label one entry; True when its outputs are written (ack it), False when dropped (already acked)."""
        try:
            ref = FrameRef.from_fields(entry.fields)
        except StreamEntryError as exc:
            return self._drop(entry, "malformed", str(exc))
        prev = self._previous(ref.device_id)
        if prev is not None and ref.pts_ms < prev.pts_ms:
            return self._drop(entry, "stale", f"{ref.device_id} frame at {ref.pts_ms} ms after one at {prev.pts_ms} ms")
        frame = self.fb.get_array(ref.frame)
        if frame is None:
            self.fb.drop(UPSCALED, self.group, [entry.id], reason="blob_expired")
            return False
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            return self._drop(entry, "malformed", f"frame {ref.frame} is {frame.dtype} {frame.shape}, not RGB uint8")

        size = student_size(ref.source_width, ref.source_height, self.config.models.student_width)
        labels = self._teacher(frame, size)
        label_name = label_blob(ref.device_id, ref.pts_ms)
        sample_name = sample_blob(ref.device_id, ref.pts_ms)
        self.fb.put_array(sample_name, resize_rgb(frame, size))
        self.fb.put_array(label_name, labels)
        phi = self._phi(ref, labels, prev)
        try:
            self._add_sample(ref, sample_name, label_name, phi)
        except HorizonOrderError as exc:
            # Older than the horizon's newest sample although the previous-label
            # record said otherwise (it expired or was lost): never insert out of order.
            self.fb.delete(sample_name, label_name)
            return self._drop(entry, "stale", str(exc))
        if phi is not None:
            self.fb.add(SIGNALS, Signal(device_id=ref.device_id, kind="phi", value=phi, video_ms=ref.pts_ms).to_fields())
            self.metrics.inc(PHI)
        self._remember(ref, label_name)
        self._trim(ref.device_id, ref.pts_ms)
        self.metrics.inc(LABELED)
        return True

    def _drop(self, entry: StreamEntry, reason: str, detail: str) -> bool:
        self.reject("frame_ref", reason, detail, entry=entry.id)
        self.fb.drop(UPSCALED, self.group, [entry.id], reason=reason)
        return False

    def _teacher(self, frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        started = time.perf_counter()
        labels = self.teacher.predict_at(frame, size)
        elapsed = time.perf_counter() - started
        self.metrics.inc(TEACHER_SECONDS, elapsed)
        self.metrics.set(TEACHER_MS, elapsed * 1000.0)
        return np.ascontiguousarray(labels, dtype=np.uint8)

    # -- horizon ------------------------------------------------------------------------

    def _add_sample(self, ref: FrameRef, sample_name: str, label_name: str, phi: float | None) -> None:
        # A redelivered frame (crash after this, before the ack) is already there.
        if self.fb.horizon_range(ref.device_id, ref.pts_ms, ref.pts_ms, count=1):
            return
        fields = {"sample": sample_name, "label": label_name, "model_version": ref.model_version, "pts_ms": ref.pts_ms}
        if phi is not None:  # the trainer's fleet schedule weighs devices by recent φ (brief §10.10)
            fields["phi"] = f"{phi:.6f}"
        self.fb.horizon_add(ref.device_id, ref.pts_ms, fields)

    def _trim(self, device_id: str, newest_ms: int) -> None:
        """Keep the last t_horizon_s of video time; the trimmed samples' blobs go too."""
        min_ms = newest_ms - round(self.settings.t_horizon_s * 1000.0)
        if min_ms <= 0:
            return
        old = self.fb.horizon_range(device_id, 0, min_ms - 1)
        if not old:
            return
        self.fb.delete(*[s.text(f) for s in old for f in ("sample", "label") if f in s.fields])
        self.fb.trim_horizon(device_id, min_ms)

    # -- φ and per-device state ---------------------------------------------------------------

    def _prev_key(self, device_id: str) -> str:
        return f"{self.fb.prefix}:labeler:prev:{device_id}"

    def _previous(self, device_id: str) -> Previous | None:
        raw = self.fb.redis.get(self._prev_key(device_id))
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return Previous(str(data["label"]), int(data["pts_ms"]))
        except (ValueError, KeyError, TypeError):
            self.log.warning("unreadable previous-label record of %s; starting over", device_id)
            return None

    def _phi(self, ref: FrameRef, labels: np.ndarray, prev: Previous | None) -> float | None:
        """φ against the previous sampled frame; none for the first frame (or a redelivered one)."""
        if prev is None or prev.pts_ms >= ref.pts_ms:
            return None
        prev_labels = self.fb.get_array(prev.label)
        if prev_labels is None:
            return None  # expired: nothing to compare with (counted by the frame buffer)
        if prev_labels.shape != labels.shape:
            # The source size changed between the two frames: compare at this one's.
            prev_labels = resize_labels(prev_labels, (labels.shape[1], labels.shape[0]))
        return phi_score(labels, prev_labels, num_classes=self.num_classes)

    def _remember(self, ref: FrameRef, label_name: str) -> None:
        record = json.dumps({"label": label_name, "pts_ms": ref.pts_ms})
        pipe = self.fb.redis.pipeline(transaction=True)
        pipe.set(self._prev_key(ref.device_id), record, ex=self.fb.settings.blob_ttl_s)
        pipe.sadd(self.fb.devices_key(), ref.device_id)
        pipe.execute()


SERVICE = LabelerService
