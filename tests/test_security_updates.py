"""Model updates are verified on the edge (brief §4, §10.5): the fleet's
Ed25519 key signs each update for one device (the signature covers the
device id, both versions and the body's digest), devices hold only the
public key. Every flipped bit, a replayed old update, an update signed with
any other key and one meant for another device are all refused, and the
edge keeps running the weights it had."""

from __future__ import annotations

import copy
import hashlib
import json
import struct

import pytest
import torch

from cloudtutor.delta import encode_delta, encode_snapshot
from cloudtutor.envelope import decode
from cloudtutor.headers import Kind
from cloudtutor.modelstate import params_sha256
from cloudtutor.signing import generate_key
from cloudtutor.testing.fuzz import tiny_model, tiny_state
from cloudtutor_edge.model_slot import ModelSlot
from cloudtutor_edge.updates import ModelUpdater

A, B = "cam-a", "cam-b"
FLEET = generate_key()


def edge(device: str = A) -> ModelUpdater:
    _, mid = tiny_state()
    return ModelUpdater(ModelSlot.from_runner(copy.deepcopy(tiny_model())), device_id=device, model_id=mid, public_key=FLEET.public_key())


def trained(state: dict, step: int) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(step)
    masks = {k: torch.rand(v.shape, generator=gen) < 0.3 for k, v in state.items() if v.is_floating_point()}
    return {k: v + 0.125 * step if v.is_floating_point() else v for k, v in state.items()}, masks


def delta(base: dict, base_version: int, *, device: str = A, key=FLEET, seq: int = 0) -> tuple[bytes, dict]:
    new, masks = trained(base, base_version + 1)
    _, mid = tiny_state()
    return encode_delta(base, new, masks, device_id=device, seq=seq, model_id=mid, base_version=base_version,
                        version=base_version + 1, key=key)


def assert_refused(updater: ModelUpdater, data: bytes, reason_part: str, *, version: int, sha: str) -> None:
    outcome = updater.handle(data, Kind.DELTA)
    assert not outcome.applied
    assert updater.slot.latest_version == version and updater.slot.latest_sha256() == sha
    assert outcome.reported is not None and reason_part in (outcome.reported.reason or "")


def test_the_intact_signed_update_applies():
    updater = edge()
    data, view = delta(tiny_state()[0], 0)
    assert updater.handle(data, Kind.DELTA).applied
    assert updater.slot.latest_sha256() == params_sha256(view)


def test_every_flipped_bit_of_a_signed_update_is_refused():
    """Each bit of the envelope flipped in turn (the prefix, every header bit,
    and every 13th of the body): none applies, the edge keeps version 0."""
    data, _ = delta(tiny_state()[0], 0)
    (header_len,) = struct.unpack_from(">I", data, 3)
    body_start = 7 + header_len
    body_bits = range(body_start * 8, len(data) * 8, 13)  # every 13th bit of the body (its digest is in the header)
    positions = [*range(body_start * 8), *body_bits]
    updater = edge()
    sha0 = updater.slot.latest_sha256()
    same_values = 0
    for bit in positions:
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        outcome = updater.handle(bytes(flipped), Kind.DELTA)
        if outcome.applied:
            # The signature covers the header's values: a flip in a digit past
            # float64 precision (the 17th of created_at) spells the same values,
            # so this is the same update, not a forged one.
            got, want = decode(bytes(flipped)), decode(data)
            assert got.header == want.header and got.body == want.body, f"bit {bit} flipped still applied"
            same_values += 1
            updater = edge()
            continue
        assert updater.slot.latest_version == 0 and updater.slot.latest_sha256() == sha0
    refused = len(positions) - same_values
    assert refused > 2500 and same_values <= 8
    print(f"{refused} single-bit flips refused, {same_values} spelled the same header values")
    assert updater.handle(data, Kind.DELTA).applied  # and the untouched update still does


def test_a_replayed_old_update_is_refused():
    updater = edge()
    v1, view1 = delta(tiny_state()[0], 0, seq=0)
    v2, view2 = delta(view1, 1, seq=1)
    assert updater.handle(v1, Kind.DELTA).applied and updater.handle(v2, Kind.DELTA).applied
    sha2 = params_sha256(view2)
    assert_refused(updater, v1, "stale", version=2, sha=sha2)  # version 1 again, base 0
    # An old snapshot (a rollback to version 0) is refused too.
    _, mid = tiny_state()
    old = encode_snapshot(tiny_state()[0], device_id=A, seq=2, model_id=mid, version=0, key=FLEET)
    outcome = updater.handle(old, Kind.SNAPSHOT)
    assert not outcome.applied and updater.slot.latest_version == 2 and updater.slot.latest_sha256() == sha2
    # A redelivery of the newest one changes nothing and asks for nothing.
    again = updater.handle(v2, Kind.DELTA)
    assert again.reported is None and updater.slot.latest_version == 2


def test_an_update_signed_with_any_other_key_is_refused():
    """A device holds only the fleet's public key; a key of its own (or
    anyone's) cannot sign an update another device would take."""
    stolen = generate_key()  # e.g. what an attacker controls after taking a device apart
    data, _ = delta(tiny_state()[0], 0, key=stolen)
    updater = edge()
    assert_refused(updater, data, "signature", version=0, sha=updater.slot.latest_sha256())
    unsigned, _ = delta(tiny_state()[0], 0, key=None)
    assert_refused(updater, unsigned, "not signed", version=0, sha=updater.slot.latest_sha256())


def test_an_update_for_another_device_is_refused_even_re_addressed():
    data_b, _ = delta(tiny_state()[0], 0, device=B)
    updater = edge(A)
    sha0 = updater.slot.latest_sha256()
    assert_refused(updater, data_b, "for 'cam-b'", version=0, sha=sha0)
    # Rewriting the device id (digest and lengths made consistent) breaks the signature.
    (n,) = struct.unpack_from(">I", data_b, 3)
    header, body = json.loads(data_b[7:7 + n]), data_b[7 + n:]
    header["device_id"] = A
    assert header["body_sha256"] == hashlib.sha256(body).hexdigest()
    hb = json.dumps(header).encode()
    readdressed = data_b[:3] + struct.pack(">I", len(hb)) + hb + body
    assert_refused(updater, readdressed, "signature", version=0, sha=sha0)
    assert updater.rejected == 2


@pytest.mark.parametrize("respell", ["last", "padding"])
def test_a_signature_has_one_spelling(respell):
    """base64 ignores a last character's spare bits: a second spelling of the
    same signature is refused, so one update has exactly one byte form."""
    data, _ = delta(tiny_state()[0], 0)
    (n,) = struct.unpack_from(">I", data, 3)
    header, body = json.loads(data[7:7 + n]), data[7 + n:]
    sig = header["signature"]
    header["signature"] = sig[:-3] + chr(ord(sig[-3]) ^ 1) + sig[-2:] if respell == "last" else sig.rstrip("=")
    hb = json.dumps(header).encode()
    updater = edge()
    assert_refused(updater, data[:3] + struct.pack(">I", len(hb)) + hb + body, "signature", version=0, sha=updater.slot.latest_sha256())
