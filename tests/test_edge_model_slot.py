"""The double-buffered model and the update rules, on a tiny model (no MQTT)."""

from __future__ import annotations

import threading

import pytest
import torch
from cloudtutor.delta import encode_delta, encode_snapshot
from cloudtutor.headers import Kind
from cloudtutor.modelstate import model_id, params_sha256, round_to_fp16_
from cloudtutor.signing import generate_key
from cloudtutor_edge.model_slot import ModelSlot
from cloudtutor_edge.updates import ModelUpdater
from torch import nn

DEVICE = "edge-t"


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return round_to_fp16_(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.PReLU(8), nn.Conv2d(8, 4, 1)).eval())


def shifted(state: dict[str, torch.Tensor], amount: float) -> dict[str, torch.Tensor]:
    """A full state with every floating tensor moved (float16-exact steps)."""
    return {k: (v + amount).to(torch.float16).to(v.dtype) if torch.is_floating_point(v) else v for k, v in state.items()}


def test_updates_go_to_the_inactive_copy_and_swap_between_frames():
    model = tiny()
    slot = ModelSlot.from_runner(model)
    v0 = params_sha256(model)
    assert not slot.swap_if_ready() and slot.active is model
    new = shifted(model.state_dict(), 0.5)
    slot.stage(new, 1)
    assert slot.pending and slot.active is model and slot.active_version == 0 and slot.latest_version == 1
    assert params_sha256(slot.active) == v0  # the running model is untouched
    assert slot.latest_sha256() == params_sha256(new)
    assert slot.swap_if_ready() and not slot.swap_if_ready()
    assert slot.active is not model and slot.active_version == 1 and slot.swaps == 1
    assert params_sha256(slot.active) == params_sha256(new)


def test_the_copy_left_behind_by_a_swap_is_brought_fully_up_to_date():
    model = tiny()
    slot = ModelSlot.from_runner(model)
    s1 = shifted(model.state_dict(), 0.25)
    slot.stage(s1, 1)
    slot.swap_if_ready()
    # The inactive copy now holds version 0; the next update is computed from
    # the newest weights (version 1) and loaded completely.
    base = slot.latest_state()
    assert params_sha256(base) == params_sha256(s1)
    s2 = dict(base)
    s2["0.weight"] = (base["0.weight"] + 1).to(torch.float16).float()
    slot.stage(s2, 2)
    slot.swap_if_ready()
    assert params_sha256(slot.active) == params_sha256(s2)
    for name, tensor in slot.active.state_dict().items():
        assert torch.equal(tensor, s2[name]), name


def test_two_updates_before_a_swap_chain_on_the_staged_copy():
    model = tiny()
    slot = ModelSlot.from_runner(model)
    s1 = shifted(model.state_dict(), 0.25)
    slot.stage(s1, 1)
    s2 = shifted(slot.latest_state(), 0.25)
    slot.stage(s2, 2)
    assert slot.active_version == 0 and slot.latest_version == 2
    slot.swap_if_ready()
    assert slot.active_version == 2 and params_sha256(slot.active) == params_sha256(s2)


def test_swap_never_waits_for_an_update_being_loaded():
    slot = ModelSlot.from_runner(tiny())
    slot.stage(shifted(slot.latest_state(), 0.5), 1)
    with slot._lock:  # an update is being loaded on the handler thread right now
        assert not slot.swap_if_ready()  # returns at once; the frame runs the old model
    assert slot.swap_if_ready()


def test_frames_only_ever_see_complete_versions():
    model = tiny()
    slot = ModelSlot.from_runner(model)
    states = [model.state_dict()]
    for v in range(1, 30):
        states.append(shifted(states[-1], 0.125))
    valid = {params_sha256(s): v for v, s in enumerate(states)}
    seen = []

    def updater() -> None:
        for v in range(1, 30):
            slot.stage(states[v], v)

    thread = threading.Thread(target=updater)
    thread.start()
    while thread.is_alive() or slot.pending:
        slot.swap_if_ready()
        seen.append((slot.active_version, params_sha256(slot.active)))
    thread.join()
    for version, sha in seen:
        assert valid.get(sha) == version
    assert seen[-1][0] == 29


def test_slot_needs_two_copies():
    model = tiny()
    with pytest.raises(ValueError):
        ModelSlot(model, model)


# ---------------------------------------------------------------- ModelUpdater


@pytest.fixture
def cloud():
    """The cloud's side: key, model id, edge view and a way to make a delta."""
    key = generate_key()
    model = tiny()
    mid = model_id(model, "tiny")
    view = {k: v.clone() for k, v in model.state_dict().items()}

    def delta(base_state, base_version, version, *, signer=key, seq=0, video_ms=None):
        gen = torch.Generator().manual_seed(version)
        masks = {n: torch.rand(p.shape, generator=gen) < 0.3 for n, p in model.named_parameters()}
        new = {n: t + torch.randn(t.shape, generator=gen) * 0.1 if n in masks else t for n, t in base_state.items()}
        return encode_delta(base_state, new, masks, device_id=DEVICE, seq=seq, model_id=mid,
                            base_version=base_version, version=version, key=signer, video_ms=video_ms)

    return key, mid, view, delta


def updater_for(key, mid) -> ModelUpdater:
    return ModelUpdater(ModelSlot.from_runner(tiny()), device_id=DEVICE, model_id=mid, public_key=key.public_key())


def test_updater_applies_a_signed_delta_and_reports_the_cloud_view(cloud):
    key, mid, view, delta = cloud
    up = updater_for(key, mid)
    first = up.current()
    assert first.version == 0 and first.status == "applied" and first.sha256 == params_sha256(view)
    data, view1 = delta(view, 0, 1)
    out = up.handle(data, Kind.DELTA)
    assert out.applied and out.resync is None
    assert out.reported.version == 1 and out.reported.sha256 == params_sha256(view1) == up.slot.latest_sha256()
    # A QoS 1 redelivery of the same update is ignored silently.
    again = up.handle(data, Kind.DELTA)
    assert again.reported is None and again.resync is None and up.slot.latest_version == 1


def test_updater_tracks_the_video_time_the_cloud_trained_through(cloud):
    # What a lockstep edge (demo, bench) waits on; signed like the rest.
    key, mid, view, delta = cloud
    up = updater_for(key, mid)
    assert up.trained_through_ms is None
    data1, view1 = delta(view, 0, 1, video_ms=15_000)
    assert up.handle(data1, Kind.DELTA).applied and up.trained_through_ms == 15_000
    raw = bytearray(delta(view1, 1, 2, video_ms=25_000)[0])
    raw[raw.index(b'"video_ms":25000') + 11] = ord("9")  # claims 95 s: breaks the signature
    assert not up.handle(bytes(raw), Kind.DELTA).applied and up.trained_through_ms == 15_000


@pytest.mark.parametrize("case", ["tampered", "gap", "bad_signature", "wrong_kind", "wrong_device"])
def test_updater_rejects_keeps_the_model_and_asks_for_a_resync(cloud, case):
    key, mid, view, delta = cloud
    up = updater_for(key, mid)
    data1, view1 = delta(view, 0, 1)
    up.handle(data1, Kind.DELTA)
    kind = Kind.DELTA
    if case == "tampered":
        raw = bytearray(delta(view1, 1, 2)[0])
        raw[-3] ^= 0x40
        data = bytes(raw)
    elif case == "gap":
        data = delta(view, 0, 2)[0]  # built on version 0, edge is at 1
    elif case == "bad_signature":
        data = delta(view1, 1, 2, signer=generate_key())[0]
    elif case == "wrong_kind":
        data, kind = delta(view1, 1, 2)[0], Kind.SNAPSHOT  # a delta on the snapshot topic
    else:
        data = encode_delta(view1, view1, {}, device_id="someone-else", seq=1, model_id=mid,
                            base_version=1, version=2, key=key)[0]
    out = up.handle(data, kind)
    expected = {"tampered": "digest_mismatch", "gap": "version_gap", "bad_signature": "signature",
                "wrong_kind": "wrong_kind", "wrong_device": "wrong_device"}[case]
    assert out.reported.status == "rejected" and expected in out.reported.reason
    assert out.reported.version == 1 and out.reported.sha256 == params_sha256(view1)
    assert out.resync is not None and out.resync.have_version == 1
    assert up.slot.latest_version == 1 and up.slot.latest_sha256() == params_sha256(view1)


def test_snapshot_brings_the_edge_back_after_a_gap(cloud):
    key, mid, view, _ = cloud
    up = updater_for(key, mid)
    target = shifted(view, 0.5)
    snap = encode_snapshot(target, device_id=DEVICE, seq=3, model_id=mid, version=7, key=key)
    out = up.handle(snap, Kind.SNAPSHOT)
    assert out.applied and out.reported.version == 7 and out.reported.sha256 == params_sha256(target)
    # An older snapshot is refused without a resync (the edge is ahead of it).
    old = encode_snapshot(view, device_id=DEVICE, seq=4, model_id=mid, version=3, key=key)
    stale = up.handle(old, Kind.SNAPSHOT)
    assert stale.reported.status == "rejected" and "stale" in stale.reported.reason and stale.resync is None
    assert up.slot.latest_version == 7
