"""The model's state as both sides of the link see it (brief §4, §10.5).

The "parameter vector" is every floating tensor of the state dict
(parameters and BatchNorm buffers) in state-dict order. Both sides keep
those tensors rounded to float16 (stored as float32), so that the edge and
the cloud's edge view hold bit-identical weights and one sha256 of the
little-endian float16 bytes names a model version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

import numpy as np
import torch


def floating_items(state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the floating tensors, in state-dict order."""
    for name, tensor in state.items():
        if torch.is_floating_point(tensor):
            yield name, tensor


def round_to_fp16_(model: torch.nn.Module) -> torch.nn.Module:
    """Round every floating tensor to float16 precision, in place."""
    with torch.no_grad():
        for _, tensor in floating_items(model.state_dict(keep_vars=True)):
            tensor.data.copy_(tensor.data.to(torch.float16).to(tensor.dtype))
    return model


def fp16_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().to("cpu", torch.float16).contiguous().numpy().astype("<f2", copy=False).tobytes()


def params_sha256(state: Mapping[str, torch.Tensor] | torch.nn.Module) -> str:
    """sha256 of the parameter vector as little-endian float16 bytes."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    digest = hashlib.sha256()
    for _, tensor in floating_items(state):
        digest.update(fp16_bytes(tensor))
    return digest.hexdigest()


def param_count(state: Mapping[str, torch.Tensor] | torch.nn.Module) -> int:
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    return sum(t.numel() for _, t in floating_items(state))


def model_id(model: torch.nn.Module, arch: str | None = None) -> str:
    """Architecture name + a hash of the floating tensors' names and shapes.

    Two models with the same id can exchange deltas and snapshots.
    """
    digest = hashlib.sha256()
    for name, tensor in floating_items(model.state_dict()):
        digest.update(f"{name}:{tuple(tensor.shape)}\n".encode())
    return f"{arch or type(model).__name__.lower()}-{digest.hexdigest()[:16]}"


def vector_from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f2")
