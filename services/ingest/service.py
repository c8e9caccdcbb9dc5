"""ingest: edge chunks (MQTT) -> decoded frames in the frame buffer (Redis).

For every message on ``{prefix}/devices/+/chunks`` (one shared subscription,
so replicas split the load):

1. validate the envelope (magic, version, lengths, digest, size limit, kind
   ``chunk``) and that the header's device id is the topic's;
2. if ``(device_id, boot_id, seq)`` was ingested before, only acknowledge it
   again (the edge resends chunks whose ack it did not get, brief §10.4);
3. decode the H.264, checking the announced frame count and sent size;
4. store each frame as an array blob (``frame_blob(dev, boot, seq, i, "lr")``);
5. in ONE Redis transaction: one FrameRef per frame on FRAMES, a ``chunk``
   Signal (bytes on the wire, for the controller's bandwidth estimate) on
   SIGNALS, and the chunk's dedup key. Either all of it happened or none,
   so a crash can neither lose a chunk nor ingest it twice; WATCH on the
   dedup key makes two replicas racing on the same chunk add it once;
6. publish ``ChunkAck{boot_id, seq}`` on the device's ``chunks/ack``.

Anything malformed is refused with :meth:`Service.reject` (one structured
line and one counter per reason) and never acknowledged.

Redis keys, besides the frame buffer's blobs and streams:
``{prefix}:ingest:chunk:{device}:{boot}:{seq}`` (string, TTL
``ingest.dedup_ttl_s``): JSON ``{frames, ingested_at, created_at}``, the
ingest time in wall seconds next to the edge's send time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import redis

from cloudtutor.bus import Message
from cloudtutor.envelope import DEFAULT_LIMITS, EnvelopeError, decode
from cloudtutor.h264 import ChunkDecodeError, decode_chunk
from cloudtutor.headers import ChunkHeader, Kind
from cloudtutor.messages import ChunkAck
from cloudtutor.service import Service
from cloudtutor.streams import FRAMES, SIGNALS, FrameRef, Signal, frame_blob
from cloudtutor.topics import Leaf, TopicError, shared

CHUNKS = "cloudtutor_ingest_chunks_total"  # {result}: ingested | duplicate
FRAMES_IN = "cloudtutor_ingest_frames_total"
BYTES_IN = "cloudtutor_ingest_bytes_total"
DECODE_SECONDS = "cloudtutor_ingest_decode_seconds_total"
LAG = "cloudtutor_ingest_lag_seconds"  # gauge: ingest time minus the edge's created_at (two wall clocks)


class ChunkRejected(Exception):
    """A chunk refused for ``reason`` (a metrics label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Chunk:
    """A validated chunk: who sent it, its header and H.264 body, its wire size."""

    device_id: str
    header: ChunkHeader
    body: bytes
    wire_bytes: int
    received_at: float = field(default_factory=time.time)  # the bitrate controller's link-rate estimate


class IngestService(Service):
    """Validates, decodes, stores, deduplicates and acknowledges chunks.

    All the work happens in the MQTT handler (the bus's worker thread, one
    message at a time); the inherited ``step`` only idles.
    """

    name = "ingest"

    def setup(self) -> None:
        self.settings = self.config.ingest
        self.limits = {**DEFAULT_LIMITS, Kind.CHUNK: self.settings.max_chunk_bytes}
        self.metrics.describe(CHUNKS, "Chunks handled, by result (ingested, duplicate).")
        self.metrics.describe(LAG, "Wall seconds from the edge's created_at to ingest (clock skew included).")
        self.bus.subscribe(shared(self.group, self.topics.all_devices(Leaf.CHUNKS)), self.on_chunk, qos=1)
        # Split mode (brief §10.8): activations in, labels out on `results` (services/ingest/split.py).
        from cloudtutor_services.ingest.split import SplitResumer

        self.split = SplitResumer(self)
        self.bus.subscribe(shared(self.group, self.topics.all_devices(Leaf.ACTIVATIONS)), self.split.on_activations, qos=1)

    # -- the handler ------------------------------------------------------------------

    def on_chunk(self, message: Message) -> None:
        """One chunk message: ingest it (or recognise it) and ack, or reject it."""
        device_id: str | None = None
        try:
            device_id = self._device_of(message.topic)
            chunk = self._validate(device_id, message.payload)
            if not self._seen(chunk):
                frames = self._decode(chunk)
                self._store(chunk, frames)
        except ChunkRejected as exc:
            self.reject("chunk", exc.reason, exc.detail, device_id=device_id, topic=message.topic)
            return
        self._ack(chunk)

    def _device_of(self, topic: str) -> str:
        try:
            return self.topics.parse_device(topic).device_id
        except TopicError as exc:
            raise ChunkRejected("bad_topic", str(exc)) from None

    def _validate(self, device_id: str, payload: bytes) -> Chunk:
        try:
            envelope = decode(payload, expect=Kind.CHUNK, limits=self.limits)
        except EnvelopeError as exc:
            raise ChunkRejected(exc.reason.value, exc.detail) from None
        header = envelope.header
        assert isinstance(header, ChunkHeader)  # decode(expect=CHUNK) gives a ChunkHeader
        if header.device_id != device_id:
            # A device may only speak for itself (the broker's ACL should agree).
            raise ChunkRejected("device_mismatch", f"header device {header.device_id!r} on the topic of {device_id!r}")
        width, height = header.sent_size
        decoded_mb = len(header.frame_pts_ms) * width * height * 3 / 2**20
        if decoded_mb > self.settings.max_decoded_mb:
            # Checked before decoding: a few KB of H.264 can expand to gigabytes.
            raise ChunkRejected(
                "oversize", f"{len(header.frame_pts_ms)} frames of {width}x{height} decode to {decoded_mb:.0f} MiB "
                f"(limit {self.settings.max_decoded_mb})",
            )
        return Chunk(device_id, header, envelope.body, len(payload))

    def _decode(self, chunk: Chunk) -> list[np.ndarray]:
        started = time.perf_counter()
        try:
            # Bounded by the header: a hostile stream stops at its first frame
            # of another size or past the announced count, not after decoding it all.
            frames = decode_chunk(
                chunk.body, expect_frames=len(chunk.header.frame_pts_ms), expect_size=chunk.header.sent_size,
            )
        except ChunkDecodeError as exc:
            raise ChunkRejected(exc.reason, str(exc)) from None
        self.metrics.inc(DECODE_SECONDS, time.perf_counter() - started)
        announced = len(chunk.header.frame_pts_ms)
        if len(frames) != announced:
            raise ChunkRejected("frame_count", f"decoded {len(frames)} frames, header announces {announced}")
        width, height = chunk.header.sent_size
        for i, frame in enumerate(frames):
            if frame.shape[:2] != (height, width):
                raise ChunkRejected(
                    "frame_size", f"frame {i} is {frame.shape[1]}x{frame.shape[0]}, header announces {width}x{height}",
                )
        return frames

    # -- Redis ----------------------------------------------------------------------------

    def dedup_key(self, device_id: str, boot_id: str, seq: int) -> str:
        return f"{self.fb.prefix}:ingest:chunk:{device_id}:{boot_id}:{seq}"

    def _key_of(self, chunk: Chunk) -> str:
        return self.dedup_key(chunk.device_id, chunk.header.boot_id, chunk.header.seq)

    def _seen(self, chunk: Chunk) -> bool:
        """Whether this chunk was ingested before (then it is only re-acked)."""
        if self.fb.redis.exists(self._key_of(chunk)):
            self._duplicate(chunk)
            return True
        return False

    def _duplicate(self, chunk: Chunk) -> None:
        self.metrics.inc(CHUNKS, result="duplicate")
        self.log.info(
            "duplicate chunk re-acked",
            extra={"fields": {"device_id": chunk.device_id, "boot_id": chunk.header.boot_id, "seq": chunk.header.seq}},
        )

    def _refs(self, chunk: Chunk, frames: list[np.ndarray]) -> list[FrameRef]:
        h = chunk.header
        width, height = h.sent_size
        src_w, src_h = h.source_size
        return [
            FrameRef(
                device_id=chunk.device_id, boot_id=h.boot_id, chunk_seq=h.seq, index=i, pts_ms=pts,
                frame=frame_blob(chunk.device_id, h.boot_id, h.seq, i, "lr"),
                width=width, height=height, source_width=src_w, source_height=src_h,
                key_frame=bool(h.key_frames[i]) if h.key_frames else False,
                model_version=h.model_version,
            )
            for i, pts in enumerate(h.frame_pts_ms)
        ]

    def _store(self, chunk: Chunk, frames: list[np.ndarray]) -> None:
        refs = self._refs(chunk, frames)
        # Blobs first: rewriting them for a redelivered chunk is harmless
        # (same names, same pixels), and a reference is only ever added once
        # its blob exists.
        for ref, frame in zip(refs, frames):
            self.fb.put_array(ref.frame, frame)
        signal = Signal(
            device_id=chunk.device_id, kind="chunk", value=float(len(frames)),
            video_ms=chunk.header.frame_pts_ms[-1], bytes=chunk.wire_bytes,
            sent_at=chunk.header.created_at, arrived_at=chunk.received_at,
            source_width=chunk.header.source_size[0], source_height=chunk.header.source_size[1],
            sent_width=chunk.header.sent_size[0], sent_height=chunk.header.sent_size[1],
            crf=chunk.header.crf, roi_qoffset=chunk.header.roi_qoffset,
        )
        if self._commit(chunk, refs, signal):
            self.metrics.inc(CHUNKS, result="ingested")
            self.metrics.inc(FRAMES_IN, len(frames))
            self.metrics.inc(BYTES_IN, chunk.wire_bytes)
        else:
            self._duplicate(chunk)

    def _commit(self, chunk: Chunk, refs: list[FrameRef], signal: Signal) -> bool:
        """FrameRefs, the chunk signal and the dedup key in one MULTI, under
        WATCH of the dedup key; False when another replica committed first.

        FrameBuffer.add is one transaction per entry, so this writes the
        streams itself, with the same MAXLEN cap and the same added/trimmed
        counters (XLEN before and after inside the MULTI make them exact).
        """
        key = self._key_of(chunk)
        frames_key, signals_key = self.fb.stream_key(FRAMES), self.fb.stream_key(SIGNALS)
        cap = self.fb.settings.stream_maxlen
        record = json.dumps({"frames": len(refs), "ingested_at": time.time(), "created_at": chunk.header.created_at})
        with self.fb.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                if pipe.exists(key):
                    return False
                pipe.multi()
                pipe.xlen(frames_key)
                for ref in refs:
                    pipe.xadd(frames_key, ref.to_fields(), maxlen=cap, approximate=True)  # type: ignore[arg-type]
                pipe.xlen(frames_key)
                pipe.xlen(signals_key)
                pipe.xadd(signals_key, signal.to_fields(), maxlen=cap, approximate=True)  # type: ignore[arg-type]
                pipe.xlen(signals_key)
                pipe.set(key, record, ex=self.settings.dedup_ttl_s)
                replies = pipe.execute()
            except redis.WatchError:
                return False
        n = len(refs)
        frames_before, frames_after = int(replies[0]), int(replies[n + 1])
        signals_before, signals_after = int(replies[n + 2]), int(replies[n + 4])
        self.fb.count_added(FRAMES, n, frames_before + n - frames_after)
        self.fb.count_added(SIGNALS, 1, signals_before + 1 - signals_after)
        self.metrics.set(LAG, max(0.0, time.time() - chunk.header.created_at))
        return True

    # -- MQTT ---------------------------------------------------------------------------

    def _ack(self, chunk: Chunk) -> None:
        topic = self.topics.chunks_ack(chunk.device_id)
        ack = ChunkAck(boot_id=chunk.header.boot_id, seq=chunk.header.seq)
        self.bus.publish(topic, ack.to_bytes(), qos=self.topics.qos_of(topic))


SERVICE = IngestService
