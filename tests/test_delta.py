"""Model updates: the edge's weights equal the cloud's edge view bit for bit,
and tampered, misdirected, replayed or gapped updates are refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cloudtutor import envelope
from cloudtutor.delta import Reason, UpdateRejected, apply_delta, apply_snapshot, decode_update, encode_delta, encode_snapshot
from cloudtutor.headers import DeltaHeader
from cloudtutor.modelstate import model_id, param_count, params_sha256, round_to_fp16_
from cloudtutor.signing import generate_key


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return round_to_fp16_(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.PReLU(8), nn.Conv2d(8, 4, 1)).eval())


def trained_copy(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a phase of training leaves: new values on the masked coordinates."""
    new = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    for name, mask in masks.items():
        new[name] = torch.where(mask, new[name] + torch.randn(new[name].shape, generator=gen) * 0.1, new[name])
    return new


def random_masks(model: nn.Module, gamma: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return {n: torch.rand(p.shape, generator=gen) < gamma for n, p in model.named_parameters()}


@pytest.fixture()
def setup():
    edge = tiny_model()
    cloud_view = {k: v.clone() for k, v in edge.state_dict().items()}
    key = generate_key()
    masks = random_masks(edge, 0.2)
    new = trained_copy(edge, masks)
    mid = model_id(edge, "tiny")
    data, view = encode_delta(cloud_view, new, masks, device_id="edge-0", seq=0, model_id=mid,
                              base_version=0, version=1, key=key)
    return edge, view, data, key, mid, masks


def test_delta_gives_edge_the_cloud_view_bit_for_bit(setup):
    edge, view, data, key, mid, masks = setup
    env = decode_update(data)
    assert env.header.selected == sum(int(m.sum()) for m in masks.values())
    new_state = apply_delta(edge.state_dict(), env, device_id="edge-0", model_id=mid, version=0, key=key.public_key())
    edge.load_state_dict(new_state)
    assert params_sha256(edge) == params_sha256(view) == env.header.params_sha256
    for name, tensor in edge.state_dict().items():
        assert torch.equal(tensor, view[name]), name


def test_a_second_delta_chains_on_the_first(setup):
    edge, view, data, key, mid, _ = setup
    edge.load_state_dict(apply_delta(edge.state_dict(), decode_update(data), device_id="edge-0", model_id=mid, version=0, key=key.public_key()))
    masks = random_masks(edge, 0.05)
    data2, view2 = encode_delta(view, trained_copy(edge, masks), masks, device_id="edge-0", seq=1, model_id=mid,
                                base_version=1, version=2, key=key)
    state = apply_delta(edge.state_dict(), decode_update(data2), device_id="edge-0", model_id=mid, version=1, key=key.public_key())
    assert params_sha256(state) == params_sha256(view2)


def _rejected(data: bytes, edge, mid, key, *, version=0, device_id="edge-0") -> Reason:
    with pytest.raises(UpdateRejected) as err:
        apply_delta(edge.state_dict(), decode_update(data), device_id=device_id, model_id=mid, version=version, key=key)
    return err.value.reason


def test_tampered_update_is_rejected(setup):
    edge, _view, data, key, mid, _ = setup
    env = decode_update(data)
    # Flip a bit of the body and re-seal it with a correct digest but no valid
    # signature, as an attacker on the path could.
    body = bytearray(env.body)
    body[len(body) // 2] ^= 0x01
    forged = envelope.encode(env.header, bytes(body))
    assert _rejected(forged, edge, mid, key.public_key()) is Reason.BAD_SIGNATURE
    # The flipped bit without re-sealing fails the envelope's digest first.
    raw = bytearray(data)
    raw[-3] ^= 0x01
    with pytest.raises(envelope.EnvelopeError) as err:
        decode_update(bytes(raw))
    assert err.value.reason is envelope.Reject.DIGEST_MISMATCH


def test_wrong_base_version_replay_and_wrong_device_are_rejected(setup):
    edge, _view, data, key, mid, _ = setup
    pub = key.public_key()
    assert _rejected(data, edge, mid, pub, version=3) is Reason.STALE  # replay of an old update
    header = decode_update(data).header
    gapped = DeltaHeader(**(header.model_dump() | {"base_version": 5, "version": 6, "signature": None}))
    body = decode_update(data).body
    from cloudtutor.signing import sign_header

    gapped = sign_header(gapped, key)
    assert _rejected(envelope.encode(gapped, body), edge, mid, pub) is Reason.VERSION_GAP
    assert _rejected(data, edge, mid, pub, device_id="edge-1") is Reason.WRONG_DEVICE
    assert _rejected(data, edge, "other-0123", pub) is Reason.WRONG_MODEL


def test_update_signed_with_another_key_is_rejected(setup):
    edge, _view, data, _key, mid, _ = setup
    assert _rejected(data, edge, mid, generate_key().public_key()) is Reason.BAD_SIGNATURE


def test_sha_mismatch_when_the_edge_drifted(setup):
    edge, _view, data, key, mid, masks = setup
    # Drift a coordinate the delta does not touch: only the final hash can tell.
    name, mask = next(iter(masks.items()))
    untouched = int((~mask).view(-1).nonzero()[0])
    with torch.no_grad():
        dict(edge.named_parameters())[name].view(-1)[untouched] += 0.5
    assert _rejected(data, edge, mid, key.public_key()) is Reason.SHA_MISMATCH


def test_snapshot_round_trip_and_rollback_refused():
    cloud = tiny_model(seed=3)
    edge = tiny_model(seed=4)
    key = generate_key()
    mid = model_id(cloud, "tiny")
    data = encode_snapshot(cloud.state_dict(), device_id="e", seq=0, model_id=mid, version=7, key=key, compression="zstd")
    state = apply_snapshot(edge.state_dict(), decode_update(data), device_id="e", model_id=mid, version=2, key=key.public_key())
    edge.load_state_dict(state)
    assert params_sha256(edge) == params_sha256(cloud)
    with pytest.raises(UpdateRejected) as err:
        apply_snapshot(edge.state_dict(), decode_update(data), device_id="e", model_id=mid, version=8, key=key.public_key())
    assert err.value.reason is Reason.STALE


def test_decompression_bomb_is_a_corrupt_body():
    edge = tiny_model()
    key = generate_key()
    mid = model_id(edge, "tiny")
    import zlib

    header = DeltaHeader(device_id="e", seq=0, model_id=mid, base_version=0, version=1, compression="zlib",
                         selected=1, params_sha256="0" * 64)
    from cloudtutor.delta import _seal

    data = _seal(header, zlib.compress(b"\0" * 50_000_000, 9), key)
    with pytest.raises(UpdateRejected) as err:
        apply_delta(edge.state_dict(), decode_update(data), device_id="e", model_id=mid, version=0, key=key.public_key())
    assert err.value.reason is Reason.CORRUPT_BODY


def test_fp16_rounding_is_idempotent_and_hash_is_stable():
    model = tiny_model()
    before = params_sha256(model)
    round_to_fp16_(model)
    assert params_sha256(model) == before
    assert param_count(model) == sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    assert math.isfinite(sum(float(t.sum()) for t in model.state_dict().values() if t.is_floating_point()))
