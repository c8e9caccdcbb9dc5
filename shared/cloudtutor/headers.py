"""Envelope header models, one per message kind (brief §3, §4).

Every header carries the common fields of :class:`EnvelopeHeader`; each kind
adds its own. ``body_len`` and ``body_sha256`` are filled in by
:func:`cloudtutor.envelope.encode`, so producers leave them at their defaults.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloudtutor.topics import check_name

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Size = tuple[Annotated[int, Field(ge=1, le=16384)], Annotated[int, Field(ge=1, le=16384)]]  # (width, height)


class Kind(str, Enum):
    CHUNK = "chunk"
    ACTIVATIONS = "activations"
    DELTA = "delta"
    SNAPSHOT = "snapshot"


class EnvelopeHeader(BaseModel):
    """Fields every envelope header has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    schema_version: int = 1
    device_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0, description="Per-boot sequence number of this kind of message from this sender.")
    created_at: float = Field(default_factory=time.time, description="Sender's wall time, Unix seconds.")
    body_sha256: str = Field("0" * 64, pattern=r"^[0-9a-f]{64}$")
    body_len: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _device_id_is_a_topic_level(self) -> EnvelopeHeader:
        check_name(self.device_id)
        return self


class ChunkHeader(EnvelopeHeader):
    """An H.264 chunk of sampled frames, edge to cloud (brief §3, §10.2, §10.4)."""

    kind: Literal[Kind.CHUNK] = Kind.CHUNK
    boot_id: str = Field(min_length=8, max_length=64, description="Random per agent start; (device_id, boot_id, seq) names a chunk.")
    codec: Literal["h264"] = "h264"
    frame_pts_ms: list[int] = Field(min_length=1, max_length=10_000, description="Video time of each frame in the chunk, ms.")
    key_frames: list[bool] = Field(default_factory=list, description="2-level selector's key flag per frame (empty: all useful).")
    source_size: Size = Field(description="(width, height) of the camera frames.")
    sent_size: Size = Field(description="(width, height) encoded, multiples of 16 (brief §10.2).")
    fps: float = Field(gt=0, le=1000, description="Source frame rate.")
    crf: float | None = Field(None, ge=0, le=51)
    roi_qoffset: float | None = Field(None, ge=-1, le=1, description="x264 ROI qoffset (scaled by 51 inside x264).")
    qp_pair: tuple[float, float] | None = Field(None, description="Effective (ROI, background) QPs read back from the bitstream.")
    roi_coverage: float | None = Field(None, ge=0, le=1, description="Share of macroblocks encoded at high quality.")
    model_version: int = Field(ge=0, description="Student version the edge ran when it sampled these frames.")

    @model_validator(mode="after")
    def _consistent(self) -> ChunkHeader:
        if self.key_frames and len(self.key_frames) != len(self.frame_pts_ms):
            raise ValueError(f"{len(self.key_frames)} key flags for {len(self.frame_pts_ms)} frames")
        if any(b <= a for a, b in zip(self.frame_pts_ms, self.frame_pts_ms[1:])):
            raise ValueError("frame_pts_ms must be strictly increasing")
        if any(v % 16 for v in self.sent_size):
            raise ValueError(f"sent_size {self.sent_size} is not a multiple of 16")
        return self


class ActivationsHeader(EnvelopeHeader):
    """Compressed intermediate activations, edge to cloud (split mode, brief §10.8)."""

    kind: Literal[Kind.ACTIVATIONS] = Kind.ACTIVATIONS
    boot_id: str = Field(min_length=8, max_length=64)
    model_id: str = Field(min_length=1, max_length=128)
    split_after: str = Field(min_length=1, max_length=64, description="Name of the last stage run on the edge.")
    frame_pts_ms: int = Field(ge=0)
    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, max_length=8)
    codec: str = Field(min_length=1, max_length=64, description="Compression pipeline, e.g. 'q8-uniform+dct+zstd'.")
    reference_seq: int | None = Field(None, ge=0, description="Seq of the activations this one is a temporal delta against.")
    frame_size: Size = Field(description="(width, height) of the source frame.")


TRAINED_THROUGH = (
    "Video time (ms) of the newest sample this version was trained on: lets an edge in lockstep "
    "(demo, benchmarks) wait for the cloud instead of charging its compute to video time (brief §10.1)."
)


class DeltaHeader(EnvelopeHeader):
    """A sparse model update, cloud to edge (brief §4, §10.5)."""

    kind: Literal[Kind.DELTA] = Kind.DELTA
    model_id: str = Field(min_length=1, max_length=128, description="Architecture + parameter-shapes hash.")
    base_version: int = Field(ge=0)
    version: int = Field(ge=1)
    compression: Literal["zlib", "zstd"]
    selected: int = Field(ge=0, description="Number of coordinates carried.")
    params_sha256: Sha256Hex = Field(description="sha256 of the full float16 parameter vector after applying.")
    signature: str | None = Field(None, description="Ed25519 signature (base64) over the signed part, see cloudtutor.signing.")
    metric: float | None = Field(None, description="Accuracy the cloud measured for this update (ShadowTutor).")
    video_ms: int | None = Field(None, ge=0, description=TRAINED_THROUGH)

    @model_validator(mode="after")
    def _forward(self) -> DeltaHeader:
        if self.version <= self.base_version:
            raise ValueError(f"version {self.version} does not follow base_version {self.base_version}")
        return self


class SnapshotHeader(EnvelopeHeader):
    """A full model (bootstrap or resync), cloud to edge."""

    kind: Literal[Kind.SNAPSHOT] = Kind.SNAPSHOT
    model_id: str = Field(min_length=1, max_length=128)
    version: int = Field(ge=0)
    compression: Literal["zlib", "zstd"]
    params_sha256: Sha256Hex
    signature: str | None = None
    video_ms: int | None = Field(None, ge=0, description=TRAINED_THROUGH)


HEADER_MODELS: dict[Kind, type[EnvelopeHeader]] = {
    Kind.CHUNK: ChunkHeader,
    Kind.ACTIVATIONS: ActivationsHeader,
    Kind.DELTA: DeltaHeader,
    Kind.SNAPSHOT: SnapshotHeader,
}
