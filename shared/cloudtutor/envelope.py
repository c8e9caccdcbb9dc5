"""The binary envelope of brief §3: ``b"CT"`` | version | header length | header | body.

::

    offset 0  2 bytes   magic b"CT"
    offset 2  1 byte    envelope version (1)
    offset 3  4 bytes   header length H, big-endian unsigned
    offset 7  H bytes   UTF-8 JSON header (a pydantic model per kind, see headers.py)
    offset 7+H          body (body_len bytes, sha256 = body_sha256)

Decoding checks magic, version, lengths, the kind's size limit and the body
digest before it validates the header's fields, and every failure raises
:class:`EnvelopeError` with one :class:`Reject` reason, so that services can
log and count malformed input by cause and keep serving.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from pydantic import ValidationError

from cloudtutor.headers import HEADER_MODELS, EnvelopeHeader, Kind

MAGIC = b"CT"
VERSION = 1
_PREFIX = struct.Struct(">2sBI")  # magic, version, header length
PREFIX_LEN = _PREFIX.size  # 7
MAX_HEADER_LEN = 256 * 1024  # a chunk of 600 frames carries ~600 timestamps: far below

#: Body size limits per kind, enforced before the body is touched. A
#: 10 s chunk at 1 fps and 960x540 is ~0.1-1 MB; a torchvision LR-ASPP
#: snapshot in float16 is ~6.5 MB.
DEFAULT_LIMITS: dict[Kind, int] = {
    Kind.CHUNK: 8 * 1024 * 1024,
    Kind.ACTIVATIONS: 4 * 1024 * 1024,
    Kind.DELTA: 16 * 1024 * 1024,
    Kind.SNAPSHOT: 64 * 1024 * 1024,
}


class Reject(str, Enum):
    """Why an envelope was rejected (also the metrics label)."""

    TOO_SHORT = "too_short"
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    HEADER_TOO_LONG = "header_too_long"
    TRUNCATED_HEADER = "truncated_header"
    HEADER_NOT_JSON = "header_not_json"
    UNKNOWN_KIND = "unknown_kind"
    WRONG_KIND = "wrong_kind"
    BAD_SCHEMA_VERSION = "bad_schema_version"
    OVERSIZE = "oversize"
    TRUNCATED_BODY = "truncated_body"
    TRAILING_BYTES = "trailing_bytes"
    DIGEST_MISMATCH = "digest_mismatch"
    INVALID_HEADER = "invalid_header"


class EnvelopeError(ValueError):
    def __init__(self, reason: Reject, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


H = TypeVar("H", bound=EnvelopeHeader)


@dataclass(frozen=True)
class Envelope(Generic[H]):
    header: H
    body: bytes


def encode(header: EnvelopeHeader, body: bytes, *, limits: Mapping[Kind, int] = DEFAULT_LIMITS) -> bytes:
    """Serialise ``header`` and ``body``; fills ``body_len`` and ``body_sha256``."""
    body = bytes(body)
    limit = limits[header.kind]
    if len(body) > limit:
        raise EnvelopeError(Reject.OVERSIZE, f"{header.kind.value} body of {len(body)} bytes exceeds the limit of {limit}")
    header = header.model_copy(update={"body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest()})
    header_bytes = header.model_dump_json(exclude_none=True).encode("utf-8")
    if len(header_bytes) > MAX_HEADER_LEN:
        raise EnvelopeError(Reject.HEADER_TOO_LONG, f"header of {len(header_bytes)} bytes exceeds {MAX_HEADER_LEN}")
    return _PREFIX.pack(MAGIC, VERSION, len(header_bytes)) + header_bytes + body


def decode(
    data: bytes | bytearray | memoryview,
    *,
    expect: Kind | None = None,
    limits: Mapping[Kind, int] = DEFAULT_LIMITS,
) -> Envelope[EnvelopeHeader]:
    """Parse and verify an envelope; raises :class:`EnvelopeError` with the first failed check."""
    view = memoryview(data)
    if len(view) < PREFIX_LEN:
        raise EnvelopeError(Reject.TOO_SHORT, f"{len(view)} bytes, need at least {PREFIX_LEN}")
    magic, version, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise EnvelopeError(Reject.BAD_MAGIC, f"magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise EnvelopeError(Reject.BAD_VERSION, f"envelope version {version}, this build reads {VERSION}")
    if header_len > MAX_HEADER_LEN:
        raise EnvelopeError(Reject.HEADER_TOO_LONG, f"header length {header_len} exceeds {MAX_HEADER_LEN}")
    body_start = PREFIX_LEN + header_len
    if len(view) < body_start:
        raise EnvelopeError(Reject.TRUNCATED_HEADER, f"header length {header_len} but only {len(view) - PREFIX_LEN} bytes follow")
    try:
        raw = json.loads(bytes(view[PREFIX_LEN:body_start]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EnvelopeError(Reject.HEADER_NOT_JSON, str(exc)) from None
    except RecursionError:
        raise EnvelopeError(Reject.HEADER_NOT_JSON, "header JSON nested too deeply") from None
    if not isinstance(raw, dict):
        raise EnvelopeError(Reject.HEADER_NOT_JSON, f"header is a JSON {type(raw).__name__}, not an object")

    try:
        kind = Kind(raw.get("kind"))
    except ValueError:
        raise EnvelopeError(Reject.UNKNOWN_KIND, f"kind {raw.get('kind')!r} is not one of {[k.value for k in Kind]}") from None
    if expect is not None and kind != expect:
        raise EnvelopeError(Reject.WRONG_KIND, f"got a {kind.value} envelope where a {expect.value} was expected")
    model = HEADER_MODELS[kind]
    schema = model.model_fields["schema_version"].default
    if raw.get("schema_version") != schema:
        raise EnvelopeError(Reject.BAD_SCHEMA_VERSION, f"{kind.value} schema_version {raw.get('schema_version')!r}, this build reads {schema}")

    body_len = raw.get("body_len")
    if not isinstance(body_len, int) or isinstance(body_len, bool) or body_len < 0:
        raise EnvelopeError(Reject.INVALID_HEADER, f"body_len {body_len!r} is not a non-negative integer")
    limit = limits[kind]
    if body_len > limit:
        raise EnvelopeError(Reject.OVERSIZE, f"{kind.value} body_len {body_len} exceeds the limit of {limit}")
    actual = len(view) - body_start
    if actual < body_len:
        raise EnvelopeError(Reject.TRUNCATED_BODY, f"body_len {body_len} but {actual} bytes follow the header")
    if actual > body_len:
        raise EnvelopeError(Reject.TRAILING_BYTES, f"{actual - body_len} bytes after the {body_len}-byte body")
    body = bytes(view[body_start:])
    digest = hashlib.sha256(body).hexdigest()
    if raw.get("body_sha256") != digest:
        raise EnvelopeError(Reject.DIGEST_MISMATCH, f"body sha256 {digest[:16]}... does not match the header's {str(raw.get('body_sha256'))[:16]}...")

    try:
        header = model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise EnvelopeError(Reject.INVALID_HEADER, f"{where}: {first['msg']} ({exc.error_count()} error(s))") from None
    return Envelope(header, body)
