"""The uplink: sample batches -> H.264 chunks -> spool -> ``chunks`` topic (AMS §3.2, brief §10.4).

One worker thread, so that neither encoding (x264 preset medium) nor a
broker that stops acknowledging ever stalls the frame loop:

1. takes a closed :class:`~cloudtutor_edge.sampler.Batch` from a small
   queue (the frame loop blocks only if several chunks are waiting, which
   means the encoder cannot keep up at all);
2. encodes it as one self-contained H.264 chunk at the batch's CRF, wraps
   it in a ``ChunkHeader`` envelope (``boot_id``, ``seq`` from 0 per boot)
   and writes it to the spool (splitting a batch whose envelope would
   exceed the chunk size limit);
3. publishes every due spool entry (new ones, unacked ones past their ack
   timeout, everything after a reconnect) with QoS 1 while connected.

``chunks/ack`` messages reach :meth:`Uplink.ack` from the bus's handler
thread and delete the chunk from the spool.

ROI encoding (AccMPEG §4): given a :class:`~cloudtutor.accmpeg.roi.RoiPlanner`
(the AccModel, from ``EdgeConfig.roi_accmodel``) and a knob ``roi_qoffset``
below 0, the worker asks the planner for one macroblock mask per frame
(the AccModel runs every ``roi_every`` frames), encodes with those blocks
``roi_qoffset x 51`` QP below the CRF, reads the effective QPs back from
the chunk it just made and reports them in the header (``qp_pair``,
``roi_coverage``; brief §10.6: measured, never assumed).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from cloudtutor import envelope
from cloudtutor.bus import Bus, BusError
from cloudtutor.h264 import EncodeSettings, encode_chunk, qp_pair, read_qp_maps
from cloudtutor.headers import ChunkHeader
from cloudtutor.knobs import Knobs
from cloudtutor.metrics import Metrics

from cloudtutor_edge.sampler import Batch
from cloudtutor_edge.spool import Spool

log = logging.getLogger("cloudtutor.edge.uplink")

#: Due chunks published per pass: after a long outage the resends take turns
#: with new batches, so the frame loop never waits on a full encode queue.
SEND_BATCH = 8


class _M:
    PUBLISHED = "cloudtutor_edge_chunks_published_total"  # first sends
    RESENT = "cloudtutor_edge_chunks_resent_total"
    ACKED = "cloudtutor_edge_chunks_acked_total"
    DROPPED = "cloudtutor_edge_chunks_dropped_total"  # {reason}: spool_full, too_large, encode_failed
    FRAMES = "cloudtutor_edge_chunk_frames_total"
    BYTES = "cloudtutor_edge_uplink_bytes_total"  # every send, resends included
    ENCODE_SECONDS = "cloudtutor_edge_encode_seconds_total"
    SPOOL_BYTES = "cloudtutor_edge_spool_bytes"
    SPOOL_CHUNKS = "cloudtutor_edge_spool_chunks"
    ACCMODEL_SECONDS = "cloudtutor_edge_accmodel_seconds_total"  # AccModel inference (ROI planning)
    ROI_CHUNKS = "cloudtutor_edge_roi_chunks_total"


class Uplink:
    """Encodes, spools, publishes and resends chunks on a worker thread."""

    def __init__(
        self,
        bus: Bus,
        topic: str,
        spool: Spool,
        *,
        device_id: str,
        boot_id: str,
        metrics: Metrics | None = None,
        preset: str = "medium",
        queue_size: int = 4,
        poll_s: float = 0.1,
        roi=None,
        knobs: Callable[[], Knobs] | None = None,
    ) -> None:
        """``roi``: a :class:`cloudtutor.accmpeg.roi.RoiPlanner` (None: ROI off);
        ``knobs``: the current knobs (its ``roi_*`` values are read per chunk)."""
        self.bus = bus
        self.topic = topic
        self.spool = spool
        self.device_id = device_id
        self.boot_id = boot_id
        self.metrics = metrics if metrics is not None else Metrics()
        self.preset = preset
        self.poll_s = poll_s
        self.roi = roi
        self.knobs = knobs
        self.next_seq = 0
        self._queue: queue.Queue[tuple[Batch, float]] = queue.Queue(maxsize=queue_size)
        self._idle = threading.Condition()
        self._outstanding = 0  # batches submitted and not yet in the spool
        self._stop = threading.Event()
        self._connections_seen = 0
        self._thread = threading.Thread(target=self._run, name="edge-uplink", daemon=True)

    # ---- frame loop side ------------------------------------------------------------

    def start(self) -> Uplink:
        self._thread.start()
        return self

    def submit(self, batch: Batch, fps: float) -> None:
        """Queue a closed batch (blocks while ``queue_size`` batches wait for the encoder)."""
        with self._idle:
            self._outstanding += 1
        self._queue.put((batch, fps))

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted batch is spooled and every chunk acked; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._outstanding:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._idle.wait(min(remaining, 0.5))
        return self.spool.wait_empty(max(0.0, deadline - time.monotonic()))

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- handler thread side --------------------------------------------------------

    def ack(self, boot_id: str, seq: int) -> bool:
        """A ``chunks/ack``: drop the chunk from the spool; False if it was not there."""
        if self.spool.ack(boot_id, seq):
            self.metrics.inc(_M.ACKED)
            self._gauges()
            return True
        return False

    # ---- worker ---------------------------------------------------------------------

    def _run(self) -> None:
        more = False  # the last pass left due chunks behind: do not sleep
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0 if more else self.poll_s)
            except queue.Empty:
                item = None
            if item is not None:
                try:
                    self._spool_batch(*item)
                except Exception:  # keep the uplink alive; the frames of this batch are lost
                    self.metrics.inc(_M.DROPPED, reason="encode_failed")
                    log.exception("could not encode a chunk of %d frames", len(item[0]))
                finally:
                    with self._idle:
                        self._outstanding -= 1
                        self._idle.notify_all()
            try:
                more = self._send_due()
            except Exception:
                more = False
                log.exception("sending spooled chunks failed; retrying")

    def _spool_batch(self, batch: Batch, fps: float) -> None:
        for seq, data, frames in self._encode(batch, fps):
            for entry in self.spool.add(self.boot_id, seq, data):
                reason = "too_large" if entry.key == (self.boot_id, seq) else "spool_full"
                self.metrics.inc(_M.DROPPED, reason=reason)
                if reason == "too_large":  # not kept, but worth one try
                    self._publish(data, first=True)
            self.metrics.inc(_M.FRAMES, frames)
        self._gauges()

    def _encode(self, batch: Batch, fps: float) -> list[tuple[int, bytes, int]]:
        """(seq, envelope, frames) of the chunk(s) of a batch: halves when too big for one envelope."""
        fmt = batch.fmt
        knobs = self.knobs() if self.knobs is not None else None
        masks, qoffset, roi_fields = None, 0.0, {}
        if self.roi is not None and knobs is not None and knobs.roi_qoffset < 0:
            from cloudtutor.accmpeg.roi import coverage

            qoffset = knobs.roi_qoffset
            before = self.roi.model_seconds
            masks = self.roi.plan(batch.frames, every=knobs.roi_every, alpha=knobs.roi_alpha, dilation=knobs.roi_dilate)
            self.metrics.inc(_M.ACCMODEL_SECONDS, self.roi.model_seconds - before)
            roi_fields = {"roi_qoffset": qoffset, "roi_coverage": round(coverage(masks), 4)}
        started = time.perf_counter()
        body = encode_chunk(batch.frames, EncodeSettings(crf=fmt.crf, preset=self.preset, roi_qoffset=qoffset), roi=masks)
        self.metrics.inc(_M.ENCODE_SECONDS, time.perf_counter() - started)
        if masks is not None:
            # The QPs x264 really used, from the bitstream (also proves the chunk decodes).
            inside, outside = qp_pair(read_qp_maps(body), masks)
            if inside is not None and outside is not None:
                roi_fields["qp_pair"] = (round(inside, 2), round(outside, 2))
            self.metrics.inc(_M.ROI_CHUNKS)
        header = ChunkHeader(
            device_id=self.device_id, seq=self.next_seq, boot_id=self.boot_id, frame_pts_ms=batch.pts_ms,
            source_size=fmt.source_size, sent_size=fmt.sent_size, fps=fps, crf=fmt.crf,
            model_version=batch.model_version, key_frames=batch.key_frames, **roi_fields,
        )
        try:
            data = envelope.encode(header, body)
        except envelope.EnvelopeError as exc:
            if exc.reason != envelope.Reject.OVERSIZE or len(batch) < 2:
                raise
            half = len(batch) // 2
            log.info("chunk of %d frames is too large (%s): splitting", len(batch), exc.detail)
            return (self._encode(Batch(fmt, batch.samples[:half]), fps)
                    + self._encode(Batch(fmt, batch.samples[half:]), fps))
        self.next_seq += 1
        log.debug("chunk %d: %d frames, %d bytes", header.seq, len(batch), len(data))
        return [(header.seq, data, len(batch))]

    def _send_due(self) -> bool:
        """Publish up to ``SEND_BATCH`` due chunks; True if more are due (new batches go first)."""
        connections = self.bus.connections
        if connections != self._connections_seen:
            if self._connections_seen:
                # What was in flight on the old connection may be gone; ingest
                # deduplicates what was not.
                log.info("reconnected: resending %d unacknowledged chunk(s)", len(self.spool))
                self.spool.mark_all_due()
            self._connections_seen = connections
        if not self.bus.connected:
            return False  # spooled; sent after the reconnect
        due = self.spool.due(limit=SEND_BATCH)
        for entry in due:
            if self._stop.is_set() or not self.bus.connected:
                return False
            data = self.spool.read(entry)
            if data is None:
                continue  # acked or dropped meanwhile
            if not self._publish(data, first=entry.sends == 0):
                return False
            self.spool.mark_sent(entry)
        return len(due) == SEND_BATCH

    def _publish(self, data: bytes, first: bool) -> bool:
        try:
            # Blocks while max_inflight publishes await PUBACK (backpressure).
            self.bus.publish(self.topic, data, qos=1)
        except BusError as exc:
            log.warning("chunk publish failed (%s); it stays spooled", exc)
            return False
        self.metrics.inc(_M.PUBLISHED if first else _M.RESENT)
        self.metrics.inc(_M.BYTES, len(data))
        return True

    def _gauges(self) -> None:
        self.metrics.set(_M.SPOOL_BYTES, self.spool.bytes)
        self.metrics.set(_M.SPOOL_CHUNKS, len(self.spool))

    # ---- numbers --------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        m = self.metrics
        return {
            "chunks_made": self.next_seq,  # seqs 0..n-1 of this boot: published, or dropped from the spool first
            "chunks_published": m.get(_M.PUBLISHED),
            "chunks_resent": m.get(_M.RESENT),
            "chunks_acked": self.spool.acked,  # counted before wait_empty() wakes (the metric may lag)
            "chunks_dropped": m.total(_M.DROPPED),
            "chunk_frames": m.get(_M.FRAMES),
            "roi_chunks": m.get(_M.ROI_CHUNKS),
            "uplink_bytes": m.get(_M.BYTES),
            "spool_chunks": len(self.spool),
            "spool_bytes": self.spool.bytes,
        }
