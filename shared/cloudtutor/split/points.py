"""Split points of a staged model (ESPNet's :class:`~cloudtutor.models.espnet.Stage` list).

``split`` = the number of stages run on the edge (the ``split_layer`` knob),
or the name of the last such stage. The payload is every activation written
before the split and read after it (``ESPNet.live_after``): for ESPNet that
always includes the level-1 features the decoder's last stage reads, which
is why no split inside the encoder is small (brief §10.8 offload).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["cloud_back", "edge_front", "resolve_split", "split_names"]


def _check_staged(model: nn.Module) -> None:
    if not (hasattr(model, "stages") and hasattr(model, "run_stages") and hasattr(model, "live_after")):
        raise ValueError(f"{type(model).__name__} is not a staged model (needs stages, run_stages, live_after)")


def split_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the stages a split may come after (all but the last: a split
    after the last stage is local-only inference)."""
    _check_staged(model)
    return tuple(s.name for s in model.stages[:-1])


def resolve_split(model: nn.Module, split: int | str) -> int:
    """The number of edge stages for a stage name or a count, checked."""
    _check_staged(model)
    count = len(model.stages)
    if isinstance(split, str):
        if split not in split_names(model):
            raise ValueError(f"no split after {split!r}; choose one of {list(split_names(model))}")
        return model.stage_index(split) + 1
    if not 1 <= int(split) < count:
        raise ValueError(f"split must be 1..{count - 1} stages, got {split}")
    return int(split)


@torch.inference_mode()
def edge_front(model: nn.Module, x: Tensor, split: int | str) -> dict[str, Tensor]:
    """Run stages ``[0, n)`` on ``x`` and return only the activations that must travel."""
    n = resolve_split(model, split)
    state = model.run_stages({"input": x}, 0, n)
    return {name: state[name] for name in model.live_after(n)}


@torch.inference_mode()
def cloud_back(model: nn.Module, activations: Mapping[str, Tensor], split: int | str) -> Tensor:
    """Resume at stage ``n`` from the received activations; the logits."""
    n = resolve_split(model, split)
    needed = model.live_after(n)
    missing = [k for k in needed if k not in activations]
    if missing:
        raise ValueError(f"split after stage {n} needs activations {missing}")
    return model.run_stages({k: activations[k] for k in needed}, n)["logits"]
