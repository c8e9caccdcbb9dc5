"""The double-buffered student (AMS §3 "Edge device", brief §4).

Two copies of the model: the *active* one labels frames, the *inactive* one
takes model updates. An update is computed from the newest weights (pure:
``delta.apply_delta`` returns a new state), then loaded into the inactive
copy, and the frame loop swaps the two between frames. No frame waits for
an update: :meth:`ModelSlot.swap_if_ready` never blocks, it swaps on a later
frame when an update is being loaded right now.

After a swap the new inactive copy holds older weights; it is brought up to
date by the next :meth:`ModelSlot.stage`, which always loads a complete
state (the unchanged tensors come from the newest copy), so nothing is
copied while frames run unless an update arrives.

Threads: the frame loop calls :attr:`active` and :meth:`swap_if_ready`; one
update thread (the bus's handler thread) calls :meth:`latest_state` and
:meth:`stage`. Nothing here knows about MQTT.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import torch
from cloudtutor.modelstate import params_sha256
from torch import nn

T = TypeVar("T")


def module_of(runner: object) -> nn.Module:
    """The torch module of a runner: a ``Student``'s ``.model``, or the module itself."""
    if isinstance(runner, nn.Module):
        return runner
    model = getattr(runner, "model", None)
    if isinstance(model, nn.Module):
        return model
    raise TypeError(f"{type(runner).__name__} is neither an nn.Module nor has a .model module")


class ModelSlot(Generic[T]):
    """An active and an inactive runner (e.g. two ``Student``s) with versions.

    Both must hold the same weights (``version``) at construction; use
    :meth:`from_runner` to make the inactive copy.
    """

    def __init__(
        self, active: T, inactive: T, *, version: int = 0, module: Callable[[object], nn.Module] = module_of,
    ) -> None:
        if active is inactive or module(active) is module(inactive):
            raise ValueError("the active and inactive runners must be separate copies")
        self._module = module
        self._lock = threading.Lock()
        self._active = active
        self._inactive = inactive
        self._active_version = version
        self._inactive_version = version
        self._pending = False  # the inactive copy holds newer weights, waiting for a swap
        self.swaps = 0

    @classmethod
    def from_runner(cls, runner: T, *, version: int = 0) -> ModelSlot[T]:
        return cls(runner, copy.deepcopy(runner), version=version)

    # ---- frame loop ---------------------------------------------------------------

    @property
    def active(self) -> T:
        return self._active

    @property
    def active_version(self) -> int:
        return self._active_version

    def swap_if_ready(self) -> bool:
        """Between frames: make staged weights active. Never blocks; True if it swapped."""
        if not self._pending:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # an update is being loaded: swap on a later frame
        try:
            if not self._pending:
                return False
            self._active, self._inactive = self._inactive, self._active
            self._active_version, self._inactive_version = self._inactive_version, self._active_version
            self._pending = False
            self.swaps += 1
            return True
        finally:
            self._lock.release()

    # ---- update thread ------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return self._pending

    @property
    def latest_version(self) -> int:
        """Version of the newest weights (staged, else active)."""
        with self._lock:
            return self._inactive_version if self._pending else self._active_version

    def latest_state(self) -> dict[str, torch.Tensor]:
        """State dict (shared tensors, do not modify) of the newest weights."""
        with self._lock:
            runner = self._inactive if self._pending else self._active
            return dict(self._module(runner).state_dict())

    def latest_sha256(self) -> str:
        return params_sha256(self.latest_state())

    def stage(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Load a complete new state into the inactive copy; the next frame swaps it in.

        ``state`` must have every key of the model (``strict`` loading): that is
        what brings a copy left behind by the last swap fully up to date.
        """
        with self._lock:
            with torch.no_grad():
                self._module(self._inactive).load_state_dict(state, strict=True)
            self._inactive_version = version
            self._pending = True
