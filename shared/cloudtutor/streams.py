"""The cloud's data-plane contracts: Redis stream names, the fields of their
entries, and the blob names they point to (brief §1).

::

    edge --chunks(MQTT)--> ingest --FRAMES--> superres --UPSCALED--> labeler
        labeler --horizon:{device}--> trainer --UPDATES--> publisher --model/delta(MQTT)--> edge
        labeler, trainer --SIGNALS--> controller --control/state(MQTT)--> edge

Entries are small flat records (strings) that name blobs; the pixels and
weights live in blobs with a safety-net TTL. Every service reads with a
consumer group named after itself (or its configured share group) and
acknowledges only after its output is written, so a replica that dies
mid-work leaves its entries to be reclaimed (XAUTOCLAIM) by another.
"""

from __future__ import annotations

from typing import ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Work streams (names inside FrameBuffer's key prefix).
FRAMES = "frames"  # ingest -> superres: decoded low-resolution frames
UPSCALED = "upscaled"  # superres -> labeler: frames at source resolution
SIGNALS = "signals"  # labeler (phi), trainer (accuracy, updates) -> controller
UPDATES = "updates"  # trainer -> publisher: a new edge-view version to send


class StreamEntryError(ValueError):
    """A stream entry that does not match its contract."""


class Record(BaseModel):
    """Base of stream entries: flat, string-valued on the wire."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stream: ClassVar[str]

    def to_fields(self) -> dict[str, str]:
        return {k: ("" if v is None else str(int(v)) if isinstance(v, bool) else str(v))
                for k, v in self.model_dump(mode="json").items()}

    @classmethod
    def from_fields(cls: type[R], fields: dict[str, bytes] | dict[str, str]) -> R:
        data = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in fields.items()}
        data = {k: (None if v == "" else v) for k, v in data.items()}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise StreamEntryError(f"{cls.__name__}.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


R = TypeVar("R", bound=Record)


class FrameRef(Record):
    """One decoded frame of a chunk (ingest -> superres, superres -> labeler)."""

    stream: ClassVar[str] = FRAMES
    device_id: str
    boot_id: str
    chunk_seq: int = Field(ge=0)
    index: int = Field(ge=0, description="Position in the chunk.")
    pts_ms: int = Field(ge=0, description="Video time of the frame.")
    frame: str = Field(description="Blob name of the RGB frame (an array blob).")
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    source_width: int = Field(ge=1)
    source_height: int = Field(ge=1)
    key_frame: bool = False
    model_version: int = Field(ge=0, description="Student version the edge ran on this frame.")
    upscaled_by: str | None = Field(None, description="superres method that produced this frame (None: as decoded).")
    lowres: str | None = Field(None, description="Blob of the decoded low-resolution frame, kept for models that use both (CloudSeg §3.2).")


class Signal(Record):
    """A measurement for the controller."""

    stream: ClassVar[str] = SIGNALS
    device_id: str
    kind: Literal["phi", "accuracy", "update", "chunk"]
    value: float
    video_ms: int = Field(ge=0)
    bytes: int | None = Field(None, ge=0, description="Payload size, for chunk and update signals.")
    # Chunk signals: what the bitrate policy needs from the header and the arrival (issue 8).
    sent_at: float | None = Field(None, description="Chunk: the edge's created_at (wall s).")
    arrived_at: float | None = Field(None, description="Chunk: when ingest received it (wall s).")
    source_width: int | None = Field(None, ge=1, description="Chunk: camera frame width.")
    source_height: int | None = Field(None, ge=1, description="Chunk: camera frame height.")
    sent_width: int | None = Field(None, ge=1, description="Chunk: encoded width.")
    sent_height: int | None = Field(None, ge=1, description="Chunk: encoded height.")
    crf: float | None = Field(None, ge=0, le=51, description="Chunk: x264 CRF it was encoded at.")
    roi_qoffset: float | None = Field(None, ge=-1, le=1, description="Chunk: ROI qoffset it was encoded at.")


class UpdateRef(Record):
    """A new edge-view version for the publisher (trainer -> publisher)."""

    stream: ClassVar[str] = UPDATES
    device_id: str
    model_id: str
    base_version: int = Field(ge=0)
    version: int = Field(ge=1)
    state: str = Field(description="Blob name of the new edge view (float16 parameter vector).")
    masks: str = Field(description="Blob name of the packed per-tensor masks of the changed coordinates.")
    params_sha256: str
    metric: float | None = None
    video_ms: int = Field(ge=0)


# Blob names: one place, so services agree on them.
def frame_blob(device_id: str, boot_id: str, chunk_seq: int, index: int, what: str = "lr") -> str:
    return f"frame:{device_id}:{boot_id}:{chunk_seq}:{index}:{what}"


def label_blob(device_id: str, pts_ms: int) -> str:
    return f"label:{device_id}:{pts_ms}"


def sample_blob(device_id: str, pts_ms: int) -> str:
    """The frame at the student's input size, kept for training."""
    return f"sample:{device_id}:{pts_ms}"


def model_blob(device_id: str, version: int) -> str:
    return f"model:{device_id}:v{version}"


def masks_blob(device_id: str, version: int) -> str:
    return f"masks:{device_id}:v{version}"
