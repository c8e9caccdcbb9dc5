"""Fuzz targets: every decoder of untrusted bytes, wrapped so that a refusal
is an outcome and anything else is a crash (brief §3, issue 10).

Each target takes the raw bytes an attacker or a broken peer could send and
returns ``"accepted"`` or the reason label the decoder gave; the only
exceptions a target lets through are the ones the decoder was never meant
to raise (a ``KeyError``, a ``RecursionError``, a third-party error), which
is what a fuzzer reports as a crash. The property-based tests
(``tests/test_fuzz_*.py``) and the coverage-guided atheris run share them::

    python -m cloudtutor.testing.fuzz --target envelope --runs 20000   # atheris (libFuzzer)
    python -m cloudtutor.testing.fuzz --list

Seeds (:func:`seeds`) are valid messages of each kind, so mutations reach
past the first checks into the header, body and payload parsers.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

from cloudtutor import envelope
from cloudtutor.headers import ActivationsHeader, ChunkHeader, Kind
from cloudtutor.knobs import Knobs, merge_knobs
from cloudtutor.messages import (
    ChunkAck,
    ControlState,
    MessageError,
    ModelReported,
    ResyncRequest,
    Status,
    Telemetry,
    decode_json,
    parse_json,
)

DEVICE = "fuzz-0"
MESSAGE_MODELS = {m.__name__: m for m in (Status, ChunkAck, Telemetry, ResyncRequest, ModelReported, ControlState)}
ACTIVATION_CODEC = "q4-uniform+dct8+zstd"
ACTIVATION_SHAPES = {"b1": (4, 16, 16), "b2": (2, 8, 8)}


# ---- material the targets decode against (built once per process) ----------------


@cache
def tiny_model():
    """A small float16-rounded model: what the updates apply to."""
    import torch
    from torch import nn

    from cloudtutor.modelstate import round_to_fp16_

    torch.manual_seed(0)
    return round_to_fp16_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)).eval())


@cache
def tiny_state() -> tuple[dict, str]:
    """The tiny model's state dict and model id."""
    from cloudtutor.modelstate import model_id

    model = tiny_model()
    return {k: v.clone() for k, v in model.state_dict().items()}, model_id(model, "fuzz")


@cache
def update_key():
    from cloudtutor.signing import generate_key

    return generate_key()


@cache
def activation_codec():
    from cloudtutor.split.codec import CodecConfig

    return CodecConfig.parse(ACTIVATION_CODEC)


# ---- the targets ---------------------------------------------------------------------


def target_envelope(data: bytes) -> str:
    try:
        envelope.decode(data)
    except envelope.EnvelopeError as exc:
        assert isinstance(exc.reason, envelope.Reject), exc
        return exc.reason.value
    return "accepted"


def _message_target(model) -> Callable[[bytes], str]:
    def target(data: bytes) -> str:
        try:
            decode_json(model, data)
        except MessageError as exc:
            assert exc.reason in ("oversize", "not_json", "invalid"), exc
            return exc.reason
        return "accepted"

    target.__name__ = f"target_{model.__name__}"
    return target


def target_control_set(data: bytes) -> str:
    """What the controller does with ``control/set``: parse, then merge all-or-nothing."""
    try:
        override = parse_json(data)
    except MessageError as exc:
        return exc.reason
    current = Knobs()
    knobs, rejected = merge_knobs(current, override)
    assert isinstance(knobs, Knobs)
    if rejected:
        assert knobs == current and all(isinstance(r, str) and r for r in rejected)
        return "out_of_range"
    return "accepted"


def target_update(data: bytes) -> str:
    """A delta or snapshot through the decoder and the applier (unsigned: the
    body parser is reached; signatures have their own tests)."""
    from cloudtutor.delta import UpdateRejected, apply_delta, apply_snapshot, decode_update

    state, mid = tiny_state()
    try:
        env = decode_update(data)
        if env.header.kind == Kind.DELTA:
            # At the delta's own base version, so the version checks pass and the body is parsed.
            apply_delta(state, env, device_id=DEVICE, model_id=mid, version=env.header.base_version, key=None)
        else:
            apply_snapshot(state, env, device_id=DEVICE, model_id=mid, version=0, key=None)
    except envelope.EnvelopeError as exc:
        return exc.reason.value
    except UpdateRejected as exc:
        return exc.reason.value
    return "accepted"


def target_edge_update(data: bytes) -> str:
    """The edge's handler of ``model/delta``: never raises, keeps version 0 unless it applied."""
    from cloudtutor_edge.model_slot import ModelSlot
    from cloudtutor_edge.updates import ModelUpdater

    _, mid = tiny_state()
    slot = ModelSlot.from_runner(copy.deepcopy(tiny_model()))
    updater = ModelUpdater(slot, device_id=DEVICE, model_id=mid, public_key=update_key().public_key())
    outcome = updater.handle(data, Kind.DELTA)
    if outcome.applied:
        return "accepted"
    assert slot.latest_version == 0
    return "rejected" if outcome.reported is not None else "ignored"


def target_activations(data: bytes) -> str:
    from cloudtutor.split.codec import CodecError, decode

    try:
        decode(data, activation_codec(), ACTIVATION_SHAPES, reference=None)
    except CodecError as exc:
        assert str(exc), "a rejection without a reason"
        return "codec_error"
    return "accepted"


def target_result(data: bytes) -> str:
    from cloudtutor.split.results import decode_result

    try:
        decode_result(data)
    except ValueError as exc:
        assert str(exc)
        return "invalid"
    return "accepted"


def target_h264(data: bytes) -> str:
    from cloudtutor.h264 import ChunkDecodeError, decode_chunk

    try:
        decode_chunk(data, expect_frames=3, expect_size=(64, 48))
    except ChunkDecodeError as exc:
        assert str(exc)
        return "bad_h264"
    return "accepted"


TARGETS: dict[str, Callable[[bytes], str]] = {
    "envelope": target_envelope,
    **{f"message.{name}": _message_target(model) for name, model in MESSAGE_MODELS.items()},
    "control_set": target_control_set,
    "update": target_update,
    "edge_update": target_edge_update,
    "activations": target_activations,
    "result": target_result,
    "h264": target_h264,
}


# ---- valid seeds ------------------------------------------------------------------------


def seed_chunk(body: bytes = b"\x00\x00\x00\x01" + b"h264" * 8) -> bytes:
    header = ChunkHeader(
        device_id=DEVICE, seq=1, boot_id="boot-fuzz-0", frame_pts_ms=[0, 500, 1000], key_frames=[True, False, False],
        source_size=(128, 96), sent_size=(64, 48), fps=15.0, crf=23, model_version=0,
    )
    return envelope.encode(header, body)


def seed_h264() -> bytes:
    import numpy as np

    from cloudtutor.h264 import encode_chunk

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return encode_chunk([np.roll(base, 4 * i, axis=1) for i in range(3)])


def seed_updates() -> tuple[bytes, bytes]:
    """A signed delta (version 0 -> 1) and a signed snapshot of the tiny model."""
    import torch

    from cloudtutor.delta import encode_delta, encode_snapshot

    state, mid = tiny_state()
    gen = torch.Generator().manual_seed(1)
    masks = {k: torch.rand(v.shape, generator=gen) < 0.3 for k, v in state.items() if v.is_floating_point()}
    new = {k: v + 0.25 if v.is_floating_point() else v for k, v in state.items()}
    delta, _ = encode_delta(state, new, masks, device_id=DEVICE, seq=0, model_id=mid, base_version=0, version=1, key=update_key())
    snapshot = encode_snapshot(state, device_id=DEVICE, seq=1, model_id=mid, version=0, key=update_key())
    return delta, snapshot


def seed_activations() -> bytes:
    import numpy as np

    from cloudtutor.split.codec import encode

    rng = np.random.default_rng(0)
    body, _ = encode({k: rng.normal(size=s).astype(np.float32) for k, s in ACTIVATION_SHAPES.items()}, activation_codec())
    return body


def seed_result() -> bytes:
    import numpy as np

    from cloudtutor.split.results import SplitResult, encode_result

    return encode_result(SplitResult("boot-fuzz-0", 3, 1500, np.arange(24 * 32, dtype=np.uint8).reshape(24, 32) % 19))


def seed_activations_envelope() -> bytes:
    body = seed_activations()
    header = ActivationsHeader(
        device_id=DEVICE, seq=0, boot_id="boot-fuzz-0", model_id="espnet", split_after="b1", frame_pts_ms=0,
        shape=[4, 16, 16], codec=ACTIVATION_CODEC, frame_size=(64, 48),
    )
    return envelope.encode(header, body)


@cache
def seeds(target: str) -> tuple[bytes, ...]:
    """Valid inputs of ``target`` to start mutating from (the same bytes for the whole process)."""
    return tuple(_seeds(target))


def _seeds(target: str) -> list[bytes]:
    if target == "envelope":
        delta, snapshot = seed_updates()
        return [seed_chunk(), delta, snapshot, seed_activations_envelope()]
    if target.startswith("message."):
        docs = {
            "Status": Status(state="online", agent_version="1", model_version=3),
            "ChunkAck": ChunkAck(boot_id="boot-fuzz-0", seq=4),
            "Telemetry": Telemetry(fps=5.0, inference_ms=30.0, uplink_bytes=1000, model_version=2),
            "ResyncRequest": ResyncRequest(have_version=2, reason="sha_mismatch"),
            "ModelReported": ModelReported(version=2, sha256="a" * 64, status="applied"),
            "ControlState": ControlState(knobs=Knobs(), version=2, reason="asr"),
        }
        return [docs[target.split(".", 1)[1]].to_bytes()]
    if target == "control_set":
        return [json.dumps(o).encode() for o in ({"sample_fps": 0.5}, {"scale": 2, "crf": 30}, {"mode": "split"})]
    if target in ("update", "edge_update"):
        return list(seed_updates())
    if target == "activations":
        return [seed_activations()]
    if target == "result":
        return [seed_result()]
    if target == "h264":
        return [seed_h264()]
    raise KeyError(target)


# ---- atheris (coverage-guided; an optional dev dependency) -------------------------------


def _instrument_own_code(atheris) -> int:
    """Coverage feedback from this project's functions only (instrumenting
    everything loaded, torch included, takes minutes); the count instrumented."""
    import inspect

    count = 0
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] not in ("cloudtutor", "cloudtutor_edge", "cloudtutor_services") or name == __name__:
            continue
        for obj in list(vars(module).values()):
            members = [obj] if inspect.isfunction(obj) else list(vars(obj).values()) if inspect.isclass(obj) else []
            for fn in members:
                if inspect.isfunction(fn) and fn.__module__ == name:
                    atheris.instrument_func(fn)
                    count += 1
    return count


def run_atheris(target: str, runs: int, max_len: int = 65536) -> int:
    """libFuzzer over ``target`` from its seeds; returns when ``runs`` inputs
    were tried (exit 0) or at the first crash (libFuzzer exits non-zero)."""
    import atheris

    func = TARGETS[target]
    corpus = Path(tempfile.mkdtemp(prefix=f"cloudtutor-fuzz-{target}-"))
    for i, seed in enumerate(seeds(target)):
        (corpus / f"seed-{i}").write_bytes(seed)
    func(seeds(target)[0])  # build the cached material outside the fuzz loop
    _instrument_own_code(atheris)

    def one(data: bytes) -> None:
        func(data)

    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-max_len={max_len}", "-print_final_stats=1", str(corpus)], one)
    atheris.Fuzz()  # libFuzzer exits the process itself
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cloudtutor.testing.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=sorted(TARGETS), help="decoder to fuzz")
    p.add_argument("--runs", type=int, default=20000, help="inputs to try (default: 20000)")
    p.add_argument("--list", action="store_true", help="list the targets")
    args = p.parse_args(argv)
    if args.list or not args.target:
        print("\n".join(sorted(TARGETS)))
        return 0
    return run_atheris(args.target, args.runs)


if __name__ == "__main__":
    sys.exit(main())
