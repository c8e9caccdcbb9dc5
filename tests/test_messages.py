"""JSON payloads and knob merging."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudtutor.knobs import Knobs, merge_knobs
from cloudtutor.messages import ChunkAck, ControlState, MessageError, ModelReported, Status, decode_json


def test_round_trips():
    for msg in (
        Status(state="online", agent_version="0.1.0", model_version=3),
        ChunkAck(boot_id="b00710ff", seq=4),
        ModelReported(version=2, sha256="0f" * 32, status="applied"),
        ControlState(knobs=Knobs(sample_fps=0.5), version=3, reason="phi rose"),
    ):
        assert decode_json(type(msg), msg.to_bytes()) == msg


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"{not json", "not_json"), (b'{"state": "dancing"}', "invalid"), (b'{"state": "online", "x": 1}', "invalid"),
     (b"[1]", "invalid"), (b" " * 70_000, "oversize")],
)
def test_bad_json_payloads(payload, reason):
    with pytest.raises(MessageError) as err:
        decode_json(Status, payload)
    assert err.value.reason == reason


def test_knob_override_merges_valid_values():
    knobs, rejected = merge_knobs(Knobs(), {"sample_fps": 0.5, "crf": 30})
    assert rejected == [] and (knobs.sample_fps, knobs.crf) == (0.5, 30)


@pytest.mark.parametrize(
    ("override", "needle"),
    [({"sample_fps": 50}, "sample_fps"), ({"warp": 9}, "unknown knob 'warp'"), ({"mode": "turbo"}, "mode"),
     ({"stride": 100}, "max_stride"), ({"useful_threshold": 0.9}, "useful_threshold"), ([1, 2], "JSON object")],
)
def test_out_of_range_overrides_are_rejected_whole(override, needle):
    current = Knobs(sample_fps=0.7)
    knobs, rejected = merge_knobs(current, override)
    assert knobs == current
    assert rejected and any(needle in r for r in rejected), rejected


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(Knobs.model_fields) + ["bogus"]),
                       st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=5), st.none())))
def test_merge_never_raises_and_always_returns_valid_knobs(override):
    knobs, rejected = merge_knobs(Knobs(), override)
    Knobs.model_validate(knobs.model_dump())
    assert isinstance(rejected, list)
