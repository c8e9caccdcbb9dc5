"""Online distillation as AMS defines it (`papers/ams.md` §3), as pure code.

The trainer service is a thin loop around this module; the benchmarks reuse
it. Nothing here touches Redis or MQTT: arrays in, tensors and bytes out.

Algorithm 1 (the server, per device), with where each line lives:

* lines 1-2 (pretrained w_0, float16-rounded = version 0): the service's
  bootstrap, with :func:`state_vector`;
* lines 5-9 (teacher labels into the buffer B): the labeler (upstream);
* line 10 + Algorithm 2 lines 1-5 (choose I_n, continue from the latest w,
  m, v): :class:`~cloudtutor.algorithms.masked_adam.MaskedAdam.begin_phase`,
  called by :func:`train_phase`;
* lines 11-15 + Algorithm 2 lines 6-14 (K iterations on mini-batches drawn
  uniformly from the last T_horizon): :func:`sample_minibatches` and
  :func:`train_phase`;
* line 16 + Algorithm 2 lines 15-16 (w_n, u_n): the end of
  :func:`train_phase`, then float16 rounding (brief §10.5);
* line 17 (send (w_n, I_n)): the edge view as bytes, :func:`state_vector`
  and :func:`pack_masks`, for the publisher.

The accuracy the controller receives (the deployed student's mIoU against
the teacher on the new samples, per frame, then ``nanmean``) is
:func:`evaluate`.

Byte formats shared with the publisher:

``state_vector``
    every floating tensor of the state dict (parameters and BatchNorm
    buffers) in state-dict order, as little-endian float16, concatenated:
    the parameter vector of brief §10.5, so ``sha256(state_vector(m)) ==
    modelstate.params_sha256(m)``.
``pack_masks``
    for each floating tensor of the state dict, in the same order,
    ``numpy.packbits(mask.ravel())`` (big bit order, each tensor padded to
    whole bytes), concatenated: exactly the mask section of a delta's body
    (delta.py). Buffers are never selected (their masks are all zero).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cloudtutor.accuracy import frame_miou
from cloudtutor.algorithms.masked_adam import MaskedAdam, freeze_batchnorm, run_phase
from cloudtutor.models.labels import IGNORE, LabelMapping
from cloudtutor.models.preprocess import STUDENT_MULTIPLE, resize_labels, resize_rgb, student_size
from cloudtutor.models.student import logits_of
from cloudtutor.modelstate import floating_items, fp16_bytes, round_to_fp16_

__all__ = [
    "Batch",
    "bootstrap_view_",
    "PhaseReport",
    "distill_phase",
    "distillation_loss",
    "evaluate",
    "load_state_vector",
    "pack_masks",
    "phase_rng",
    "predict",
    "sample_minibatches",
    "state_from_vector",
    "state_masks",
    "state_vector",
    "target_lut",
    "to_batch",
    "to_inputs",
    "to_targets",
    "train_phase",
    "training_size",
    "union_masks",
    "unpack_masks",
    "vector_sha256",
]

Normalize = Callable[[np.ndarray], np.ndarray]
Batch = tuple[Tensor, Tensor]  # (N x 3 x H x W inputs, N x H x W long targets)
State = Mapping[str, Tensor]


# ---------------------------------------------------------------- targets and batches


def target_lut(mapping: LabelMapping) -> np.ndarray:
    """256-entry table from a common label (the teacher's, as stored in the
    horizon) to the student's output channel; IGNORE where the student has
    no channel for it. For ESPNet/cityscapes19 it is the identity on 0..18:
    the void channel 19 is never a target (the teacher never says void), so
    training pushes it down like any other wrong class."""
    table = np.full(256, IGNORE, dtype=np.uint8)
    for channel, label in enumerate(mapping.student_lut):
        if 0 <= label < 255 and table[label] == IGNORE:
            table[label] = channel
    return table


def training_size(frame_shape: Sequence[int], width: int | None, multiple: int = STUDENT_MULTIPLE) -> tuple[int, int]:
    """``(w, h)`` to train at: the stored sample's own size when ``width`` is
    None (the labeler stores samples at the student's input size), else
    ``width`` wide keeping the aspect (height a multiple of 8, brief §10.2)."""
    h, w = int(frame_shape[0]), int(frame_shape[1])
    if width is None:
        return w, h
    return student_size(w, h, width, multiple)


def to_inputs(
    frames: Sequence[np.ndarray],
    *,
    normalize: Normalize,
    width: int | None = None,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
) -> Tensor:
    """Stack RGB uint8 frames into the student's ``N x 3 x H x W`` input, every
    frame brought to the first one's training size (bilinear)."""
    if not frames:
        raise ValueError("no frames")
    size = training_size(frames[0].shape, width)
    x = torch.from_numpy(np.stack([normalize(resize_rgb(f, size)) for f in frames])).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def to_targets(
    labels: Sequence[np.ndarray], size: tuple[int, int], *, lut: np.ndarray, device: torch.device | str = "cpu",
) -> Tensor:
    """Stack teacher label maps into ``N x H x W`` long targets of the
    student's channels (``lut``, see :func:`target_lut`), resized to
    ``size = (w, h)`` by nearest neighbour (class ids are never interpolated)."""
    ys = [lut[resize_labels(np.asarray(label, dtype=np.uint8), size)] for label in labels]
    return torch.from_numpy(np.stack(ys).astype(np.int64)).to(device)


def to_batch(
    frames: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    normalize: Normalize,
    lut: np.ndarray,
    width: int | None = None,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
) -> Batch:
    """One mini-batch of horizon samples: inputs and targets at the first
    sample's training size, so a horizon spanning a change of source size
    still batches."""
    if len(frames) != len(labels):
        raise ValueError(f"need as many labels as frames (got {len(frames)} and {len(labels)})")
    for frame, label in zip(frames, labels):
        if label.shape != frame.shape[:2]:
            raise ValueError(f"labels {label.shape} do not match frame {frame.shape[:2]}")
    x = to_inputs(frames, normalize=normalize, width=width, device=device, channels_last=channels_last)
    return x, to_targets(labels, (x.shape[-1], x.shape[-2]), lut=lut, device=device)


def phase_rng(seed: int, stream: int, phase: int) -> np.random.Generator:
    """The mini-batch generator of phase ``phase`` of one device (``stream``):
    a function of the three numbers only, so a restarted trainer draws the
    same mini-batches without storing generator state."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(stream) & 0xFFFFFFFF, int(phase)])


def sample_minibatches(n_samples: int, iterations: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of the K mini-batches S_1..S_K (Algorithm 2 line 7; Algorithm 1
    line 12): each drawn uniformly from the ``n_samples`` of the horizon,
    without replacement inside a batch (with replacement only when the
    horizon holds fewer samples than a batch)."""
    if n_samples <= 0:
        raise ValueError("no samples to draw mini-batches from")
    if iterations < 1 or batch_size < 1:
        raise ValueError("iterations and batch_size must be >= 1")
    replace = n_samples < batch_size
    return [np.sort(rng.choice(n_samples, size=batch_size, replace=replace)) for _ in range(iterations)]


# ---------------------------------------------------------------- the phase


def distillation_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Cross-entropy of the student's logits against the teacher's labels
    (ignore_index 255): supervised knowledge distillation (AMS §3). Logits
    that are not at the labels' size are resized bilinearly to it."""
    x, y = batch
    logits = logits_of(model(x))
    if logits.shape[-2:] != y.shape[-2:]:
        logits = F.interpolate(logits, size=tuple(y.shape[-2:]), mode="bilinear", align_corners=False)
    if not bool((y != IGNORE).any()):
        return logits.sum() * 0.0  # nothing to learn from: zero gradient, not nan
    return F.cross_entropy(logits, y, ignore_index=IGNORE)


@dataclass
class PhaseReport:
    """What one training phase did."""

    masks: dict[str, Tensor]  # b_n per trainable tensor (state-dict names)
    losses: list[float] = field(default_factory=list)  # loss of each iteration, before its step
    seconds: float = 0.0  # wall time of the K iterations

    @property
    def selected(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))


def train_phase(
    model: nn.Module, optimizer: MaskedAdam, batches: Iterable[Batch], *, round_fp16: bool = True,
) -> PhaseReport:
    """One training phase n (Algorithm 2; Algorithm 1 lines 10-16).

    The model is put in training mode with every BatchNorm in eval mode
    (brief §10.5: running statistics do not move, so only the selected
    coordinates change), then ``begin_phase`` (lines 1-5), one masked Adam
    step per mini-batch (lines 6-14), ``end_phase`` (lines 15-16). With
    ``round_fp16`` the weights are then rounded to float16 (brief §10.5):
    the edge view. Leaves the model in eval mode.
    """
    model.train()
    freeze_batchnorm(model)
    start = time.perf_counter()
    try:
        result = run_phase(optimizer, lambda batch: distillation_loss(model, batch), batches)
    finally:
        model.eval()
    seconds = time.perf_counter() - start
    if round_fp16:
        round_to_fp16_(model)
    return PhaseReport(masks=dict(zip(optimizer.names, result.masks)), losses=result.losses, seconds=seconds)


def distill_phase(
    model: nn.Module,
    optimizer: MaskedAdam,
    frames: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    iterations: int,
    batch_size: int,
    rng: np.random.Generator,
    normalize: Normalize,
    lut: np.ndarray,
    width: int | None = None,
    round_fp16: bool = True,
) -> PhaseReport:
    """:func:`train_phase` on K mini-batches sampled uniformly from the given
    horizon samples (Algorithm 2 line 7), built lazily one at a time."""
    device = next(model.parameters()).device
    picks = sample_minibatches(len(frames), iterations, batch_size, rng)

    def batches() -> Iterator[Batch]:
        for idx in picks:
            yield to_batch([frames[i] for i in idx], [labels[i] for i in idx],
                           normalize=normalize, lut=lut, width=width, device=device)

    return train_phase(model, optimizer, batches(), round_fp16=round_fp16)


# ---------------------------------------------------------------- evaluation


@torch.inference_mode()
def predict(
    model: nn.Module,
    frames: Sequence[np.ndarray],
    *,
    normalize: Normalize,
    mapping: LabelMapping,
    batch_size: int = 4,
    width: int | None = None,
) -> list[np.ndarray]:
    """The student's label maps (common labels, uint8, at each frame's
    training size) for ``frames``, in batches of frames of one size."""
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for start in range(0, len(frames), batch_size):
        chunk = list(frames[start:start + batch_size])
        groups: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(chunk):
            groups.setdefault(training_size(frame.shape, width), []).append(i)
        maps: dict[int, np.ndarray] = {}
        for idx in groups.values():
            x = to_inputs([chunk[i] for i in idx], normalize=normalize, width=width, device=device)
            raw = logits_of(model(x)).argmax(1).to(torch.uint8).cpu().numpy()
            for i, r in zip(idx, raw):
                maps[i] = mapping.map_student(r)
        out.extend(maps[i] for i in range(len(chunk)))
    return out


def evaluate(
    model: nn.Module,
    frames: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    normalize: Normalize,
    mapping: LabelMapping,
    batch_size: int = 4,
    width: int | None = None,
) -> float:
    """The deployed student's accuracy against the teacher: per-frame mIoU
    over the classes present (accuracy.frame_miou, brief §10.3), averaged
    with ``nanmean``; ``nan`` when no frame has anything to score."""
    if not frames:
        return float("nan")
    preds = predict(model, frames, normalize=normalize, mapping=mapping, batch_size=batch_size, width=width)
    scores = []
    for pred, ref in zip(preds, labels):
        ref = resize_labels(np.asarray(ref, dtype=np.uint8), (pred.shape[1], pred.shape[0]))
        scores.append(frame_miou(ref, pred, mapping.num_classes))
    arr = np.asarray(scores, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


# ---------------------------------------------------------------- edge view and masks as bytes


@torch.no_grad()
def bootstrap_view_(model: nn.Module) -> nn.Module:
    """Version 0 of the edge view (Algorithm 1 line 1, brief §10.5), in place:
    every floating tensor rounded to float16, and every zero made +0.0.

    Why the zeros: whether a denormal weight of the checkpoint loads as +0.0
    or survives to be rounded to -0.0 depends on the process's flush-denormal
    mode at load time (``espnet.flush_denormals_`` compares with 0, and with
    denormals-are-zero on, a denormal compares equal to 0 and is left as is:
    9060 ESPNet weights). The sha256 of the float16 bytes sees the sign of
    zero, so two processes would name version 0 differently. ``x + 0.0`` is
    ``x`` for every value except -0.0, which becomes +0.0. Only version 0 is
    normalised so: later versions carry their bytes in the updates.
    """
    round_to_fp16_(model)
    for _, tensor in floating_items(model.state_dict(keep_vars=True)):
        tensor.data.add_(0.0)
    return model


def _state(model_or_state: nn.Module | State) -> State:
    return model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state


def state_vector(model_or_state: nn.Module | State) -> bytes:
    """The parameter vector (brief §10.5) as little-endian float16 bytes;
    its sha256 is ``modelstate.params_sha256``."""
    return b"".join(fp16_bytes(t) for _, t in floating_items(_state(model_or_state)))


def vector_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _split_vector(data: bytes, template: State) -> Iterator[tuple[str, Tensor, np.ndarray]]:
    items = list(floating_items(template))
    total = sum(t.numel() for _, t in items)
    if len(data) != 2 * total:
        raise ValueError(f"parameter vector of {len(data)} bytes; the model needs {2 * total}")
    values = np.frombuffer(data, dtype="<f2")
    pos = 0
    for name, tensor in items:
        n = tensor.numel()
        yield name, tensor, values[pos:pos + n]
        pos += n


def state_from_vector(data: bytes, template: State) -> dict[str, Tensor]:
    """A state dict shaped like ``template`` holding the vector's values
    (floating tensors in their own dtype; other entries as in template)."""
    out: dict[str, Tensor] = dict(template)
    for name, tensor, values in _split_vector(data, template):
        out[name] = torch.from_numpy(values.astype(np.float32)).to(tensor.dtype).reshape(tensor.shape)
    return out


@torch.no_grad()
def load_state_vector(model: nn.Module, data: bytes) -> None:
    """Copy a parameter vector into the model's tensors in place."""
    state = model.state_dict(keep_vars=True)
    for _, tensor, values in _split_vector(data, state):
        src = torch.from_numpy(values.astype(np.float32)).reshape(tensor.shape)
        tensor.data.copy_(src.to(tensor.device, tensor.dtype))


def state_masks(masks: Mapping[str, Tensor], template: State) -> dict[str, Tensor]:
    """Masks for every floating tensor of ``template`` (CPU bool), all-False
    where ``masks`` has none (buffers, frozen parameters)."""
    out: dict[str, Tensor] = {}
    for name, tensor in floating_items(template):
        m = masks.get(name)
        if m is None:
            out[name] = torch.zeros(tuple(tensor.shape), dtype=torch.bool)
        else:
            m = m.detach().to("cpu", torch.bool)
            if tuple(m.shape) != tuple(tensor.shape):
                raise ValueError(f"mask of {name} has shape {tuple(m.shape)}, tensor {tuple(tensor.shape)}")
            out[name] = m
    return out


def pack_masks(masks: Mapping[str, Tensor], template: State) -> bytes:
    """Per-tensor masks as one blob: packbits per floating tensor of
    ``template``, state-dict order (the delta body's mask section)."""
    full = state_masks(masks, template)
    return b"".join(np.packbits(full[name].numpy().reshape(-1)).tobytes() for name, _ in floating_items(template))


def unpack_masks(data: bytes, template: State) -> dict[str, Tensor]:
    """Inverse of :func:`pack_masks`."""
    items = list(floating_items(template))
    need = sum((t.numel() + 7) // 8 for _, t in items)
    if len(data) != need:
        raise ValueError(f"mask blob of {len(data)} bytes; the model needs {need}")
    raw = np.frombuffer(data, dtype=np.uint8)
    out: dict[str, Tensor] = {}
    pos = 0
    for name, tensor in items:
        n = tensor.numel()
        nbytes = (n + 7) // 8
        bits = np.unpackbits(raw[pos:pos + nbytes], count=n).astype(bool)
        out[name] = torch.from_numpy(bits).reshape(tensor.shape)
        pos += nbytes
    return out


def union_masks(masks: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Element-wise OR of several per-tensor mask sets (coalesced updates)."""
    out: dict[str, Tensor] = {}
    for mask_set in masks:
        for name, m in mask_set.items():
            out[name] = out[name] | m if name in out else m.clone()
    return out
