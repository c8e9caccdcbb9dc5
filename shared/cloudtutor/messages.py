"""JSON payloads of the small MQTT messages (brief §2) and their decoding.

Binary messages go in envelopes (envelope.py); everything else is one of
these JSON documents. :func:`decode_json` gives a :class:`MessageError` with
a reason label for metrics, as the envelope decoder does.
"""

from __future__ import annotations

import json
import time
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloudtutor.knobs import Knobs

MAX_JSON_BYTES = 64 * 1024


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode("utf-8")


class Status(Message):
    """``status`` of a device or service; also the last will (``offline``)."""

    state: Literal["online", "offline", "stopped"]
    agent_version: str | None = None
    model_version: int | None = Field(None, ge=0)
    since: float | None = Field(default_factory=time.time, description="When this state began; null in a last will (fixed at connect time).")


class ChunkAck(Message):
    """``chunks/ack``: ingest has the chunk's frames in Redis (brief §10.4)."""

    boot_id: str = Field(min_length=8, max_length=64)
    seq: int = Field(ge=0)


class Telemetry(Message):
    fps: float = Field(ge=0)
    inference_ms: float = Field(ge=0)
    uplink_bytes: int = Field(ge=0)
    bandwidth_kbps: float | None = Field(None, ge=0)
    queue_depth: int = Field(0, ge=0)
    model_version: int = Field(ge=0)
    spool_bytes: int = Field(0, ge=0)
    video_ms: int | None = Field(None, ge=0)


class ResyncRequest(Message):
    """``model/resync``: the edge asks for a snapshot."""

    have_version: int = Field(ge=0)
    reason: str = Field(max_length=500)


class ModelReported(Message):
    """``model/reported``: what the edge runs now, retained."""

    version: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    status: Literal["applied", "rejected"]
    reason: str | None = Field(None, max_length=500)


class ControlState(Message):
    """``control/state``: the device's knobs, retained; ``rejected`` explains a refused ``control/set``."""

    knobs: Knobs = Field(default_factory=Knobs)
    version: int = Field(0, ge=0, description="Increments on every change.")
    reason: str | None = Field(None, max_length=2000, description="Why the controller last changed the knobs.")
    video_ms: int | None = Field(None, ge=0, description="Video time of the evidence behind the last change (none: an operator's set).")
    rejected: list[str] = Field(default_factory=list)


class MessageError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


T = TypeVar("T", bound=BaseModel)


def parse_json(payload: bytes | str) -> object:
    """The JSON value of a small message; MessageError("oversize" | "not_json")."""
    if len(payload) > MAX_JSON_BYTES:
        raise MessageError("oversize", f"{len(payload)} bytes exceeds {MAX_JSON_BYTES}")
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError("not_json", str(exc)) from None
    except RecursionError:
        # A few KB of "[[[[..." nest deeper than the parser's stack.
        raise MessageError("not_json", "JSON nested too deeply") from None


def decode_json(model: type[T], payload: bytes | str) -> T:
    """Parse ``payload`` as ``model``; MessageError(reason) on any problem."""
    data = parse_json(payload)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise MessageError("invalid", f"{model.__name__}.{where}: {first['msg']}") from None
