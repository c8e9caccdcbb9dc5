"""Property-based fuzzing of every decoder of untrusted bytes (issue 10, bad input).

Each test throws hypothesis-generated inputs at one target of
``cloudtutor.testing.fuzz``: arbitrary bytes, valid messages with bytes
flipped, cut, inserted or repeated, and valid framing around hostile JSON
(wrong types, huge numbers, NaN, deep nesting, unknown keys). A target
returns the decoder's reason label and raises only on a crash, so "no test
fails" means: every input was accepted or refused with a reason.

``CLOUDTUTOR_FUZZ_EXAMPLES`` sets the examples per test (default 120; the
long run uses 5000); ``CLOUDTUTOR_FUZZ_REPORT=FILE`` writes how many inputs
each decoder got and the reasons it gave, as JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudtutor.envelope import MAGIC, VERSION, decode
from cloudtutor.knobs import Knobs
from cloudtutor.testing import fuzz

EXAMPLES = int(os.environ.get("CLOUDTUTOR_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

TRIED: dict[str, Counter] = defaultdict(Counter)  # target -> reason -> inputs
# The suite's 300 s per test is too short for the long runs on a busy machine.
pytestmark = pytest.mark.timeout(max(300, EXAMPLES))


def run(target: str, data: bytes) -> str:
    outcome = fuzz.TARGETS[target](data)
    assert isinstance(outcome, str) and outcome
    TRIED[target][outcome] += 1
    return outcome


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    summary = {t: {"inputs": sum(c.values()), "outcomes": dict(sorted(c.items()))} for t, c in sorted(TRIED.items())}
    print("\nfuzz inputs per decoder:", json.dumps({t: s["inputs"] for t, s in summary.items()}))
    path = os.environ.get("CLOUDTUTOR_FUZZ_REPORT")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"examples_per_test": EXAMPLES, "decoders": summary}, indent=2))


# ---- strategies ------------------------------------------------------------------------

EDGE_NUMBERS = st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**40, 1e308, -1e308, math.inf, -math.inf, math.nan, 0.5, 1e-320])
EDGE_TEXT = st.sampled_from(["", " ", "x" * 300, "\u0000", "../..", "+", "#", "\ud7ff", "é" * 70, "cloudtutor/devices/x"])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | EDGE_NUMBERS | EDGE_TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """``seed`` after 1-6 random edits: bit flips, byte sets, cuts, inserts, repeats."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "repeat", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("{"), ord('"'), ord("9")]))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "repeat":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 256))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def seed_of(target: str) -> st.SearchStrategy[bytes]:
    """One of ``target``'s valid seeds (built lazily: collection stays cheap)."""
    return st.deferred(lambda: st.sampled_from(fuzz.seeds(target)))


def seeded(target: str) -> st.SearchStrategy[bytes]:
    return seed_of(target).flatmap(mutated)


def envelope_parts(data: bytes) -> tuple[dict, bytes]:
    (header_len,) = struct.unpack_from(">I", data, 3)
    return json.loads(data[7:7 + header_len]), data[7 + header_len:]


def frame_envelope(header: dict, body: bytes, *, fix_digest: bool = True) -> bytes:
    """Envelope bytes around ``header`` (made consistent with ``body`` unless told not to)."""
    if fix_digest:
        header = {**header, "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}
    hb = json.dumps(header).encode()  # NaN/Infinity allowed: Python's json reads them back
    return struct.pack(">2sBI", MAGIC, VERSION, len(hb)) + hb + body


@st.composite
def hostile_header(draw, seed: bytes) -> bytes:
    """A seed envelope whose header has random fields overwritten, dropped or added; digest kept right."""
    header, body = envelope_parts(seed)
    for key in draw(st.lists(st.sampled_from(sorted(header) + ["extra", "signature"]), min_size=1, max_size=4, unique=True)):
        if draw(st.integers(0, 5)) == 0:
            header.pop(key, None)
        else:
            header[key] = draw(JSON)
    return frame_envelope(header, body, fix_digest=draw(st.integers(0, 9)) > 0)


# ---- the envelope (every kind) ---------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048))
def test_envelope_arbitrary_bytes(data):
    run("envelope", data)


@FUZZ
@given(st.binary(max_size=256).map(lambda tail: MAGIC + bytes([VERSION]) + tail))
def test_envelope_bytes_after_a_valid_prefix(data):
    run("envelope", data)


@FUZZ
@given(seeded("envelope"))
def test_envelope_mutated_messages_of_every_kind(data):
    run("envelope", data)


@FUZZ
@given(seed_of("envelope").flatmap(hostile_header))
def test_envelope_hostile_headers_of_every_kind(data):
    run("envelope", data)


def test_envelope_deeply_nested_header_is_refused_not_a_crash():
    assert run("envelope", frame_envelope({}, b"")[:3] + struct.pack(">I", 60000) + b"[" * 60000) == "header_not_json"


# ---- small JSON messages, control/set ---------------------------------------------------------


@pytest.mark.parametrize("model", sorted(fuzz.MESSAGE_MODELS))
def test_json_messages(model):
    target = f"message.{model}"
    doc = json.loads(fuzz.seeds(target)[0])

    @FUZZ
    @given(st.one_of(
        st.binary(max_size=512),
        seeded(target),
        st.dictionaries(st.sampled_from(sorted(doc) + ["extra"]), JSON, max_size=4).map(lambda o: json.dumps({**doc, **o}).encode()),
        JSON.map(lambda v: json.dumps(v).encode()),
    ))
    def check(data):
        run(target, data)

    check()
    assert run(target, b"[" * 50_000) == "not_json"
    assert run(target, b" " * (70 * 1024)) == "oversize"


KNOB_NAMES = sorted(Knobs.model_fields)


@FUZZ
@given(st.one_of(
    st.dictionaries(st.sampled_from(KNOB_NAMES + ["bogus"]), JSON | EDGE_NUMBERS, max_size=5).map(lambda o: json.dumps(o).encode()),
    JSON.map(lambda v: json.dumps(v).encode()),
    seeded("control_set"),
))
def test_control_set_overrides(data):
    run("control_set", data)


@pytest.mark.parametrize(("override", "outcome"), [
    ({"sample_fps": 1000}, "out_of_range"), ({"scale": 0}, "out_of_range"), ({"crf": math.nan}, "out_of_range"),
    ({"t_update_s": math.inf}, "out_of_range"), ({"stride": 10**30}, "out_of_range"), ({"mode": "root"}, "out_of_range"),
    ({"sample_fps": "1"}, "accepted"),  # pydantic's lax mode reads a numeric string; still in range
    ([1, 2], "out_of_range"), ({"bogus": 1}, "out_of_range"),
])
def test_out_of_range_knobs_are_refused_whole(override, outcome):
    assert run("control_set", json.dumps(override).encode()) == outcome


# ---- model updates (delta, snapshot) and the edge's handler ---------------------------------


@FUZZ
@given(st.one_of(seeded("update"), seed_of("update").flatmap(hostile_header)))
def test_updates_through_decoder_and_applier(data):
    run("update", data)


@FUZZ
@given(seed_of("update"), st.sampled_from(["zlib", "zstd"]), st.binary(max_size=600), st.booleans(), st.integers(0, 400))
def test_update_bodies_behind_valid_headers(seed, compression, raw, compressed, selected):
    """Any body, raw or validly compressed, behind a header that passes every check up to the body."""
    from cloudtutor.delta import compress

    header, _ = envelope_parts(seed)
    header = {**header, "compression": compression}
    if header["kind"] == "delta":
        header["selected"] = selected
    run("update", frame_envelope(header, compress(raw, compression) if compressed else raw))


@FUZZ
@given(st.one_of(seeded("edge_update"), seed_of("edge_update").flatmap(hostile_header)))
def test_edge_update_handler_never_raises_and_applies_only_intact_signed_deltas(data):
    outcome = run("edge_update", data)
    if outcome == "accepted":
        # Only the signed delta itself may apply: any change to what the signature
        # covers (every header field, and the body through its digest) is refused.
        got, want = (decode(d) for d in (data, fuzz.seeds("edge_update")[0]))
        assert got.header == want.header and got.body == want.body


# ---- split mode: activations up, results down -----------------------------------------------


@st.composite
def hostile_activation_meta(draw) -> bytes:
    body = fuzz.seeds("activations")[0]
    (n,) = struct.unpack_from("<I", body, 4)
    meta, payload = json.loads(body[8:8 + n]), body[8 + n:]
    choice = draw(st.integers(0, 2))
    if choice == 0:
        meta[draw(st.sampled_from(sorted(meta)))] = draw(JSON)
    elif choice == 1:
        tensor = meta["tensors"][draw(st.integers(0, len(meta["tensors"]) - 1))]
        tensor[draw(st.sampled_from(sorted(tensor) + ["extra"]))] = draw(JSON | EDGE_NUMBERS)
    else:
        meta = draw(JSON)
    mb = json.dumps(meta).encode()
    return body[:4] + struct.pack("<I", len(mb)) + mb + payload


@FUZZ
@given(st.one_of(st.binary(max_size=512), seeded("activations"), hostile_activation_meta()))
def test_activations(data):
    run("activations", data)


@FUZZ
@given(st.one_of(st.binary(max_size=512), seeded("result")))
def test_split_results(data):
    run("result", data)


# ---- H.264 (real libx264 output, mutated; decoded by PyAV) ----------------------------------


@settings(FUZZ, max_examples=max(EXAMPLES // 2, 20))
@given(st.one_of(seeded("h264"), st.binary(max_size=1024)))
def test_h264_chunks(data):
    run("h264", data)
