"""Envelope encode/decode (brief §3): round trips, and each malformation
rejected with its own reason; fuzzed with hypothesis."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudtutor.envelope import DEFAULT_LIMITS, PREFIX_LEN, EnvelopeError, Reject, decode, encode
from cloudtutor.headers import ChunkHeader, DeltaHeader, Kind, SnapshotHeader


def chunk_header(**kw) -> ChunkHeader:
    base = dict(
        device_id="edge-0", seq=7, boot_id="b00710ff", frame_pts_ms=[0, 1000, 2000],
        key_frames=[True, False, False], source_size=(960, 540), sent_size=(480, 272),
        fps=25.0, crf=23, model_version=3,
    )
    return ChunkHeader(**(base | kw))


def raw_envelope(header: dict, body: bytes, *, magic=b"CT", version=1) -> bytes:
    hb = json.dumps(header).encode()
    return struct.pack(">2sBI", magic, version, len(hb)) + hb + body


def good_header_dict(body: bytes) -> dict:
    d = json.loads(chunk_header().model_dump_json())
    d.update(body_len=len(body), body_sha256=hashlib.sha256(body).hexdigest())
    return d


def test_round_trip_fills_length_and_digest():
    body = bytes(range(256)) * 10
    env = decode(encode(chunk_header(), body), expect=Kind.CHUNK)
    assert env.body == body
    assert env.header.body_len == len(body)
    assert env.header.body_sha256 == hashlib.sha256(body).hexdigest()
    assert env.header.frame_pts_ms == [0, 1000, 2000] and env.header.sent_size == (480, 272)


def test_every_kind_round_trips():
    sha = "ab" * 32
    for header in (
        chunk_header(),
        DeltaHeader(device_id="e", seq=0, model_id="espnet-1", base_version=1, version=2, compression="zlib", selected=10, params_sha256=sha),
        SnapshotHeader(device_id="e", seq=0, model_id="espnet-1", version=0, compression="zstd", params_sha256=sha),
    ):
        assert decode(encode(header, b"payload")).header.kind == header.kind


GOOD_BODY = b"\x00\x01body" * 50


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"CT\x01", Reject.TOO_SHORT),
        (raw_envelope(good_header_dict(GOOD_BODY), GOOD_BODY, magic=b"XX"), Reject.BAD_MAGIC),
        (raw_envelope(good_header_dict(GOOD_BODY), GOOD_BODY, version=9), Reject.BAD_VERSION),
        (raw_envelope(good_header_dict(GOOD_BODY), GOOD_BODY)[:PREFIX_LEN + 10], Reject.TRUNCATED_HEADER),
        (struct.pack(">2sBI", b"CT", 1, 10**9) + b"{}", Reject.HEADER_TOO_LONG),
        (struct.pack(">2sBI", b"CT", 1, 3) + b"{x}", Reject.HEADER_NOT_JSON),
        (struct.pack(">2sBI", b"CT", 1, 2) + b"[]", Reject.HEADER_NOT_JSON),
        (raw_envelope(good_header_dict(GOOD_BODY) | {"kind": "video"}, GOOD_BODY), Reject.UNKNOWN_KIND),
        (raw_envelope(good_header_dict(GOOD_BODY) | {"schema_version": 2}, GOOD_BODY), Reject.BAD_SCHEMA_VERSION),
        (raw_envelope(good_header_dict(GOOD_BODY) | {"body_len": DEFAULT_LIMITS[Kind.CHUNK] + 1}, GOOD_BODY), Reject.OVERSIZE),
        (raw_envelope(good_header_dict(GOOD_BODY), GOOD_BODY[:-1]), Reject.TRUNCATED_BODY),
        (raw_envelope(good_header_dict(GOOD_BODY), GOOD_BODY + b"!"), Reject.TRAILING_BYTES),
        (raw_envelope(good_header_dict(GOOD_BODY), GOOD_BODY[:-1] + b"!"), Reject.DIGEST_MISMATCH),
        (raw_envelope(good_header_dict(GOOD_BODY) | {"sent_size": [481, 272]}, GOOD_BODY), Reject.INVALID_HEADER),
        (raw_envelope(good_header_dict(GOOD_BODY) | {"frame_pts_ms": [5, 5]}, GOOD_BODY), Reject.INVALID_HEADER),
        (raw_envelope(good_header_dict(GOOD_BODY) | {"device_id": "a/b"}, GOOD_BODY), Reject.INVALID_HEADER),
        (raw_envelope(good_header_dict(GOOD_BODY) | {"surprise": 1}, GOOD_BODY), Reject.INVALID_HEADER),
    ],
)
def test_malformed_envelopes_have_distinct_reasons(data, reason):
    with pytest.raises(EnvelopeError) as err:
        decode(data)
    assert err.value.reason is reason, str(err.value)


def test_wrong_kind_for_the_topic():
    with pytest.raises(EnvelopeError) as err:
        decode(encode(chunk_header(), b"x"), expect=Kind.DELTA)
    assert err.value.reason is Reject.WRONG_KIND


def test_oversize_is_refused_before_the_body_is_hashed():
    limits = dict(DEFAULT_LIMITS) | {Kind.CHUNK: 100}
    big = b"z" * 101
    with pytest.raises(EnvelopeError) as err:
        encode(chunk_header(), big, limits=limits)
    assert err.value.reason is Reject.OVERSIZE
    # A lying header cannot make the decoder read (or hash) past the limit:
    # the check uses the declared length, before the digest.
    data = raw_envelope(good_header_dict(big) | {"body_sha256": "0" * 64}, big)
    with pytest.raises(EnvelopeError) as err:
        decode(data, limits=limits)
    assert err.value.reason is Reject.OVERSIZE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_decoder(data):
    try:
        decode(data)
    except EnvelopeError as exc:
        assert isinstance(exc.reason, Reject)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255))
def test_any_single_byte_corruption_is_rejected(position_seed, value):
    data = bytearray(encode(chunk_header(), GOOD_BODY))
    position = position_seed % len(data)
    if data[position] == value:
        return
    data[position] = value
    try:
        env = decode(bytes(data))
    except EnvelopeError as exc:
        assert isinstance(exc.reason, Reject)
    else:
        # A flip inside the JSON header can yield another valid header (a
        # digit of created_at, say); the body itself is always protected.
        assert env.body == GOOD_BODY and position < len(data) - len(GOOD_BODY)
