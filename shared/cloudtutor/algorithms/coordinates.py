"""Coordinate-selection strategies for AMS coordinate descent.

AMS (`papers/ams.md`) §3.1.2 trains only a γ fraction of the model's
parameters ("coordinates") per training phase and §4.2 Table 3 compares ways
of choosing them: Gradient-Guided, Random, First Layers, Last Layers and
First&Last Layers. Each strategy here is a pure function of the coordinate
count N and the selection size k = ceil(γ·N) (`selection_size`), returning a
flat boolean mask of shape (N,) with exactly k True entries. "Coordinates"
are the trainable floating parameters flattened one after another in
state-dict order (brief §10.5); `flatten_masks` / `split_mask` convert
between that flat view and one mask per tensor (the delta codec's unit).

Numpy only (no torch import), so edge-side code can use the helpers too;
`flatten_masks` also accepts torch tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Literal, TypeVar

import numpy as np

Strategy = Literal["gradient", "random", "first", "last", "first_last", "full"]
STRATEGIES: tuple[str, ...] = ("gradient", "random", "first", "last", "first_last", "full")

_M = TypeVar("_M")


def selection_size(n_coords: int, gamma: float) -> int:
    """k = ceil(γ·N), the number of coordinates trained per phase (brief §5).

    γ is taken as the decimal it prints as (``repr``), so that e.g. γ=0.07,
    N=100 gives 7 and not 8 (0.07*100 is 7.000000000000001 in binary floats).
    """
    if n_coords < 0:
        raise ValueError(f"n_coords must be >= 0, got {n_coords}")
    g = float(gamma)
    if not (0.0 < g <= 1.0):
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    return min(n_coords, math.ceil(Fraction(repr(g)) * n_coords))


def _check(n_coords: int, k: int) -> None:
    if not (0 <= k <= n_coords):
        raise ValueError(f"k must be in [0, {n_coords}], got {k}")


def select_gradient(update: np.ndarray, k: int) -> np.ndarray:
    """Gradient-Guided (AMS Algorithm 2 line 1): the k coordinates with the
    largest |update|; ties go to the lower index.

    ``update`` is the per-coordinate Adam update signal of the previous phase
    (signed; the absolute value is taken here). A stable argsort of −|u| puts
    equal magnitudes in index order, which makes the choice deterministic.
    NaN magnitudes sort last (never preferred).
    """
    u = np.asarray(update).reshape(-1)
    _check(u.size, k)
    order = np.argsort(-np.abs(u), kind="stable")
    mask = np.zeros(u.size, dtype=bool)
    mask[order[:k]] = True
    return mask


def select_random(n_coords: int, k: int, seed: int, phase: int) -> np.ndarray:
    """Random Selection (Table 3): k coordinates uniformly without replacement.

    The draw depends only on (seed, phase) (numpy's default generator seeded
    with both), so no generator state has to be stored to resume exactly:
    the seed and the phase index are the whole RNG state.
    """
    _check(n_coords, k)
    if seed < 0 or phase < 0:
        raise ValueError("seed and phase must be non-negative")
    rng = np.random.default_rng([int(seed), int(phase)])
    mask = np.zeros(n_coords, dtype=bool)
    mask[rng.choice(n_coords, size=k, replace=False)] = True
    return mask


def select_first(n_coords: int, k: int) -> np.ndarray:
    """First Layers (Table 3): the first k coordinates in state-dict order."""
    _check(n_coords, k)
    mask = np.zeros(n_coords, dtype=bool)
    mask[:k] = True
    return mask


def select_last(n_coords: int, k: int) -> np.ndarray:
    """Last Layers (Table 3): the last k coordinates in state-dict order."""
    _check(n_coords, k)
    mask = np.zeros(n_coords, dtype=bool)
    mask[n_coords - k :] = True
    return mask


def select_first_last(n_coords: int, k: int) -> np.ndarray:
    """First&Last Layers (Table 3: "split equally from both").

    ceil(k/2) coordinates from the front and floor(k/2) from the back: when k
    is odd the extra one goes to the front.
    """
    _check(n_coords, k)
    front, back = (k + 1) // 2, k // 2
    mask = np.zeros(n_coords, dtype=bool)
    mask[:front] = True
    if back:
        mask[n_coords - back :] = True
    return mask


def select_full(n_coords: int) -> np.ndarray:
    """Full-model training (Table 3's reference): every coordinate, γ ignored."""
    return np.ones(n_coords, dtype=bool)


def select(
    strategy: str,
    n_coords: int,
    gamma: float,
    *,
    update: np.ndarray | None = None,
    seed: int = 0,
    phase: int = 0,
) -> np.ndarray:
    """Dispatch to one strategy with k = ``selection_size(n_coords, gamma)``.

    ``gradient`` needs ``update`` (the previous phase's signal); without one
    (the first phase) it falls back to ``random``, as Algorithm 2's prose
    says ("In the first training phase, I_n is selected uniformly at random").
    """
    if strategy == "full":
        return select_full(n_coords)
    k = selection_size(n_coords, gamma)
    if strategy == "gradient":
        if update is None:
            return select_random(n_coords, k, seed, phase)
        if np.asarray(update).size != n_coords:
            raise ValueError(f"update has {np.asarray(update).size} entries, expected {n_coords}")
        return select_gradient(update, k)
    if strategy == "random":
        return select_random(n_coords, k, seed, phase)
    if strategy == "first":
        return select_first(n_coords, k)
    if strategy == "last":
        return select_last(n_coords, k)
    if strategy == "first_last":
        return select_first_last(n_coords, k)
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


def flatten_masks(masks: Sequence[Any]) -> np.ndarray:
    """Concatenate per-tensor boolean masks (numpy or torch) into one flat
    (N,) mask, tensors in the given (state-dict) order, each in row-major
    (C) order like ``tensor.reshape(-1)``."""
    parts = []
    for m in masks:
        if hasattr(m, "detach"):  # torch tensor, without importing torch
            m = m.detach().cpu().numpy()
        parts.append(np.asarray(m, dtype=bool).reshape(-1))
    if not parts:
        return np.zeros(0, dtype=bool)
    return np.concatenate(parts)


def split_mask(flat: _M, shapes: Sequence[Sequence[int]]) -> list[_M]:
    """Inverse of `flatten_masks`: cut a flat (N,) array (numpy or torch) into
    one array per tensor shape. Returns views (reshape of contiguous slices)."""
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    n = flat.shape[0]  # type: ignore[attr-defined]
    if len(flat.shape) != 1 or n != total:  # type: ignore[attr-defined]
        raise ValueError(f"flat mask has shape {tuple(flat.shape)}, expected ({total},)")  # type: ignore[attr-defined]
    out: list[_M] = []
    start = 0
    for shape, size in zip(shapes, sizes):
        out.append(flat[start : start + size].reshape(tuple(shape)))  # type: ignore[index]
        start += size
    return out
