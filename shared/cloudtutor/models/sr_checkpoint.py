"""Checkpoints of the super-resolution model (``cloudtutor train sr`` writes them, superres reads them).

One file holds everything needed to rebuild and resume a model:

=====================  ==========================================================
key                    value
=====================  ==========================================================
``format``             :data:`FORMAT`, the marker that tells this file from any
                       other torch pickle (a bare state dict, an ESPNet file)
``version``            :data:`VERSION`
``arch``               ``"carn-m"``
``arch_args``          :meth:`CARNM.arch_args`: scale, channels, groups, shared, skip
``state_dict``         the model's weights
``config``             the training configuration (a plain dict)
``step``               optimiser steps taken so far
``optimizer_state``    the optimiser's state dict, or ``None``
=====================  ==========================================================

Only plain containers, numbers, strings and tensors go in, so the file loads
with ``torch.load(..., weights_only=True)``: reading a checkpoint never runs
code from it. Writes are atomic (a temporary file in the same directory, then
``os.replace``): a run killed mid-save leaves the previous checkpoint intact,
never a truncated one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cloudtutor.models.carn import CARNM, carn_m

__all__ = ["ARCH", "FORMAT", "VERSION", "SrCheckpoint", "load_sr_checkpoint", "save_sr_checkpoint"]

FORMAT = "cloudtutor-sr-checkpoint"
VERSION = 2  # 2: arch_args has "skip" (version 1 models are skip="mean")
ARCH = "carn-m"

# Keys of ``config`` that also describe the architecture: they must agree with the model.
_ARCH_KEYS = ("scale", "channels", "groups", "skip")


@dataclass
class SrCheckpoint:
    """A loaded checkpoint: the rebuilt model (eval mode, on the CPU) and what trained it."""

    model: CARNM
    config: dict[str, Any]
    step: int
    optimizer_state: dict[str, Any] | None
    arch_args: dict[str, Any]

    @property
    def scale(self) -> int:
        """The model's upscaling factor (from the architecture, whatever the config says)."""
        return int(self.arch_args["scale"])


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is something ``weights_only=True`` loads back as it was.

    Checked at save time: a ``Path`` or a pydantic model in the config would
    otherwise be written fine and only fail, much later, at load time.
    """
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; a checkpoint holds only None, bool, int, float, str, "
        "tensors, lists, tuples and dicts (convert it, e.g. str(path) or model_dump(mode='json'))"
    )


def save_sr_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    config: Mapping[str, Any],
    step: int,
    optimizer_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a :class:`CARNM`), its training ``config``, ``step`` and optimiser state to ``path``, atomically.

    ``config`` keys ``scale``, ``channels`` and ``groups``, when present, must
    match the model (ValueError otherwise): a config that disagrees with the
    weights would mislead whoever reads it. Returns ``path``.
    """
    if not isinstance(model, CARNM):
        raise TypeError(f"expected a CARNM, got {type(model).__name__}")
    arch_args = model.arch_args()
    config = dict(config)
    for key in _ARCH_KEYS:
        if key in config and config[key] != arch_args[key]:
            raise ValueError(f"config[{key!r}] = {config[key]!r} but the model has {key} = {arch_args[key]!r}")
    _check_plain(config, "config")
    if optimizer_state is not None:
        optimizer_state = dict(optimizer_state)
        _check_plain(optimizer_state, "optimizer_state")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": ARCH,
        "arch_args": arch_args,
        # Detached CPU copies: the file must not depend on the training device.
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config,
        "step": int(step),
        "optimizer_state": optimizer_state,
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_sr_checkpoint(path: str | os.PathLike[str]) -> SrCheckpoint:
    """Rebuild the model from a file written by :func:`save_sr_checkpoint` (strict: every weight must match).

    ValueError for a file that is not such a checkpoint (unreadable by
    ``torch.load``, no format marker, a newer version, another architecture);
    a missing file raises FileNotFoundError as usual.
    """
    try:
        data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for non-checkpoints
        raise ValueError(f"{path}: not a super-resolution checkpoint (torch.load failed: {err})") from err
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        what = "a state dict or other mapping" if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(
            f"{path}: not a super-resolution checkpoint ({what} without format={FORMAT!r}); "
            "write one with save_sr_checkpoint / `cloudtutor train sr`"
        )
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(f"{path}: SR checkpoint version {version!r}; this code reads version {VERSION} and older")
    if data.get("arch") != ARCH:
        raise ValueError(f"{path}: SR checkpoint of architecture {data.get('arch')!r}; only {ARCH!r} is known")
    try:
        arch_args = dict(data["arch_args"])
        if version < 2:
            arch_args.setdefault("skip", "mean")
        model = carn_m(**arch_args)
        model.load_state_dict(data["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # RuntimeError: missing/unexpected/mis-shaped weights
        raise ValueError(f"{path}: damaged SR checkpoint ({type(err).__name__}: {err})") from err
    return SrCheckpoint(
        model=model.eval(),
        config=dict(data["config"]),
        step=int(data["step"]),
        optimizer_state=data.get("optimizer_state"),
        arch_args=arch_args,
    )
