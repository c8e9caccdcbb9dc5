"""cloudtutor.distill: one AMS training phase on the real ESPNet student and
real CamVid frames with their human labels (mapped to Cityscapes ids)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cloudtutor import distill
from cloudtutor.algorithms.coordinates import flatten_masks, selection_size
from cloudtutor.algorithms.masked_adam import MaskedAdam
from cloudtutor.models.labels import IGNORE, camvid_to_cityscapes
from cloudtutor.models.preprocess import resize_labels, resize_rgb, student_size
from cloudtutor.models.registry import build_student
from cloudtutor.modelstate import floating_items, params_sha256, round_to_fp16_

pytestmark = pytest.mark.timeout(120)

WIDTH = 256


def camvid(data_root: Path, count: int, width: int = WIDTH) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every 4th CamVid frame at the student's input size, with its human
    labels in Cityscapes train ids (nearest neighbour)."""
    folder = data_root / "video" / "camvid-0016E5"
    names = sorted(p.name for p in (folder / "frames").glob("*.png"))[::4][:count]
    frames, labels = [], []
    for name in names:
        rgb = np.asarray(Image.open(folder / "frames" / name).convert("RGB"))
        size = student_size(rgb.shape[1], rgb.shape[0], width)
        frames.append(resize_rgb(rgb, size))
        labels.append(resize_labels(camvid_to_cityscapes(np.asarray(Image.open(folder / "labels" / name))), size))
    return frames, labels


@pytest.fixture(scope="module")
def student(data_root):
    torch.set_flush_denormal(True)
    return build_student("cityscapes19", data_root_path=data_root, width=WIDTH, threads=2)


@pytest.fixture(scope="module")
def samples(data_root):
    return camvid(data_root, 8)


@pytest.fixture
def model(student):
    """A fresh float16-rounded copy of the pretrained student (version 0)."""
    return round_to_fp16_(copy.deepcopy(student.model))


def test_one_phase_reduces_the_training_loss_on_its_batch(student, samples, model):
    frames, labels = samples
    lut = distill.target_lut(student.mapping)
    batch = distill.to_batch(frames[:4], labels[:4], normalize=student.normalize, lut=lut)
    with torch.no_grad():
        before = float(distill.distillation_loss(model.eval(), batch))
    optimizer = MaskedAdam(model, gamma=0.05, seed=3)
    report = distill.train_phase(model, optimizer, [batch] * 10)
    with torch.no_grad():
        after = float(distill.distillation_loss(model, batch))
    assert len(report.losses) == 10
    assert report.losses[0] == pytest.approx(before, rel=1e-4)  # BatchNorm frozen: train == eval forward
    assert after < 0.95 * before, (before, after)
    assert not model.training


def test_exactly_ceil_gamma_n_coordinates_change(student, samples, model):
    frames, labels = samples
    gamma = 0.05
    optimizer = MaskedAdam(model, gamma=gamma, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = distill.distill_phase(
        model, optimizer, frames, labels, iterations=3, batch_size=2, rng=distill.phase_rng(0, 1, 1),
        normalize=student.normalize, lut=distill.target_lut(student.mapping), round_fp16=False,
    )
    k = selection_size(optimizer.n_coords, gamma)
    assert optimizer.n_coords == 364_569  # ESPNet p=2 q=8's trainable coordinates
    assert report.selected == k == 18_229
    after = model.state_dict()
    changed = np.concatenate([(after[n] != before[n]).reshape(-1).numpy() for n in optimizer.names])
    mask = flatten_masks([report.masks[n] for n in optimizer.names])
    assert not (changed & ~mask).any(), "no unselected coordinate moves"
    # A selected coordinate stays put only if it had no gradient: the
    # checkpoint has dead units (zero weights feeding zeroed channels).
    m = optimizer.state_dict()["m"]
    assert np.abs(m[mask & ~changed]).max(initial=0.0) < 1e-9
    assert changed.sum() > 0.8 * k
    for name, tensor in floating_items(after):
        if name not in report.masks:  # BatchNorm buffers (eval mode while distilling)
            assert torch.equal(tensor, before[name]), name

    # Rounding to float16 (the edge view) can only move a coordinate back.
    round_to_fp16_(model)
    rounded = np.concatenate([(model.state_dict()[n] != before[n]).reshape(-1).numpy() for n in optimizer.names])
    assert not (rounded & ~mask).any()

    # Phase 2 picks the k largest |u| of phase 1 (Algorithm 2 line 1), ties by index.
    signal = optimizer.state_dict()["signal"]
    optimizer.begin_phase()
    expected = np.zeros(signal.size, dtype=bool)
    expected[np.argsort(-np.abs(signal), kind="stable")[:k]] = True
    assert np.array_equal(optimizer.flat_mask().numpy(), expected)
    optimizer.end_phase()


def test_the_evaluation_gives_a_number_in_0_1(student, samples, model):
    frames, labels = samples
    kwargs = dict(normalize=student.normalize, mapping=student.mapping, batch_size=3)
    miou = distill.evaluate(model, frames, labels, **kwargs)
    assert 0.0 <= miou <= 1.0
    assert 0.05 < miou < 0.95  # the student on CamVid: far from perfect, far from useless
    own = distill.predict(model, frames, **kwargs)
    assert own[0].shape == frames[0].shape[:2] and own[0].dtype == np.uint8
    assert distill.evaluate(model, frames, own, **kwargs) == 1.0
    assert np.isnan(distill.evaluate(model, frames[:1], [np.full_like(labels[0], IGNORE)], **kwargs))


def test_minibatches_are_uniform_reproducible_and_in_range():
    draw = lambda phase: distill.sample_minibatches(30, 20, 4, distill.phase_rng(7, 1, phase))  # noqa: E731
    first, again, other = draw(1), draw(1), draw(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert all(len(b) == 4 and len(set(b.tolist())) == 4 and b.min() >= 0 and b.max() < 30 for b in first)
    counts = np.bincount(np.concatenate(distill.sample_minibatches(10, 5000, 2, np.random.default_rng(0))), minlength=10)
    assert counts.min() > 0.9 * counts.mean()  # uniform over the horizon
    assert [len(b) for b in distill.sample_minibatches(1, 2, 3, np.random.default_rng(0))] == [3, 3]


def test_target_lut_maps_teacher_labels_onto_student_channels(student):
    lut = distill.target_lut(student.mapping)
    assert lut[:19].tolist() == list(range(19))  # channel 19 (void) is never a target
    assert lut[19] == IGNORE and lut[IGNORE] == IGNORE


def test_edge_view_and_masks_round_trip_as_bytes(student, model):
    template = model.state_dict()
    vector = distill.state_vector(model)
    assert len(vector) == 2 * 368_341
    assert hashlib.sha256(vector).hexdigest() == distill.vector_sha256(vector) == params_sha256(model)
    state = distill.state_from_vector(vector, template)
    assert params_sha256(state) == params_sha256(model)
    other = round_to_fp16_(copy.deepcopy(student.model))
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    assert params_sha256(other) != params_sha256(model)
    distill.load_state_vector(other, vector)
    assert params_sha256(other) == params_sha256(model)

    rng = np.random.default_rng(0)
    names = [n for n, _ in model.named_parameters()]
    masks = {n: torch.from_numpy(rng.random(tuple(template[n].shape)) < 0.1) for n in names[:5]}
    packed = distill.pack_masks(masks, template)
    back = distill.unpack_masks(packed, template)
    assert set(back) == {n for n, _ in floating_items(template)}
    assert all(torch.equal(back[n], masks[n]) for n in masks)
    assert sum(int(m.sum()) for m in back.values()) == sum(int(m.sum()) for m in masks.values())
    union = distill.union_masks([{names[0]: masks[names[0]]}, {names[0]: ~masks[names[0]]}])
    assert bool(union[names[0]].all())
    with pytest.raises(ValueError):
        distill.unpack_masks(packed[:-1], template)
    with pytest.raises(ValueError):
        distill.state_from_vector(vector[:-2], template)


def test_version_zero_does_not_depend_on_the_flush_denormal_mode(data_root):
    """The checkpoint's denormals load as +0 or stay (and round to -0)
    depending on the process's flush-denormal mode; version 0 must not."""
    from cloudtutor.models.registry import build_model

    torch.set_flush_denormal(False)
    try:
        plain = distill.bootstrap_view_(build_model("espnet", data_root_path=data_root))
        torch.set_flush_denormal(True)
        flushed = distill.bootstrap_view_(build_model("espnet", data_root_path=data_root))
    finally:
        torch.set_flush_denormal(True)
    assert params_sha256(plain) == params_sha256(flushed)
    assert not any(bool(torch.signbit(t[t == 0]).any()) for _, t in floating_items(plain.state_dict()))
