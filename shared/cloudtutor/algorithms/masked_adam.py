"""Masked Adam: AMS Algorithm 2, "Gradient-Guided Method for Adam Optimizer".

`papers/ams.md` §3.1.2. One training phase n (run every T_update by
Algorithm 1, lines 10-17) is K Adam iterations in which

* Adam's moments and step count move for ALL coordinates every iteration
  (lines 8-11), so Adam's state follows the points actually visited;
* the Adam update u_{n,k} is computed for every coordinate (line 12), but the
  weights change only where the phase's mask b_n is 1 (line 13:
  w <- w - u * b_n);
* the mask is fixed for the whole phase and chosen at its start (lines 1-2)
  from the previous phase's updates; training continues from the latest
  weights and moments (lines 3-5).

Selection signal (what "largest |Adam update|" ranks), default
``selection_signal="last"`` = the paper: line 15 sets u_n <- u_{n,K}, the
Adam update of the phase's LAST iteration (line 12 with k=K) for every
coordinate, whether or not it was applied; line 1 of the next phase picks the
ceil(γ·N) coordinates with the largest |u_{n-1}| (ties: lower index first).
The prose agrees: "We update u_n at the end of each training phase to
reflect the latest Adam update for all parameters (Line 15)".
``selection_signal="sum"`` instead ranks |Σ_{k=1..K} u_{n,k}|, the update
summed over the phase's iterations (applied or not); it is an option, not
the paper. The first phase (no previous phase with iterations) selects
uniformly at random, seeded (§3.1.2: "In the first training phase, I_n is
selected uniformly at random").

Adam update, line 12 verbatim (``eps_mode="paper"``)::

    u = α · sqrt(1 − β2^i) / (1 − β1^i) · m / sqrt(v + ε)

``eps_mode="tf"`` puts ε outside the root, m / (sqrt(v) + ε), which is what
``tf.train.AdamOptimizer`` (used by the authors' code) computes. Defaults
(§4.1): α = 1e-3, β1 = 0.9, β2 = 0.999, ε = 1e-8.

Coordinates are the trainable (``requires_grad``) floating parameters of a
module in state-dict order, flattened row-major (`trainable_parameters`).
Buffers are not coordinates: BatchNorm stays in eval mode while distilling
(brief §10.5, `freeze_batchnorm`), so its running statistics do not move.

Pure code: no I/O. `MaskedAdam.state_dict` / `load_state_dict` (plain numpy
arrays and Python scalars) and `state_to_bytes` / `state_from_bytes` let a
restarted trainer resume bit for bit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from cloudtutor.algorithms.coordinates import STRATEGIES, select, selection_size, split_mask

EpsMode = Literal["paper", "tf"]
SelectionSignal = Literal["last", "sum"]
StateDict = dict[str, Any]

STATE_FORMAT = 1
_B = TypeVar("_B")


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The coordinates' tensors: trainable floating parameters, in state-dict
    order (``named_parameters`` walks modules in the same order as
    ``state_dict``; shared parameters appear once)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.is_floating_point()]


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Put every BatchNorm in eval mode so its buffers stay put while
    distilling (brief §10.5; AMS trains with frozen batch statistics).
    Call after ``model.train()``, which would undo it."""
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.eval()
    return model


class MaskedAdam:
    """AMS Algorithm 2 over the flat vector of trainable parameters.

    Usage per phase (Algorithm 1 lines 10-16)::

        opt.begin_phase()                      # lines 1-5: pick the mask
        for batch in minibatches:              # line 7, K times
            opt.zero_grad(); loss(batch).backward()
            opt.step()                         # lines 8-13
        masks = opt.end_phase()                # lines 15-16: masks for the codec

    ``gamma`` and ``lr`` are plain attributes (control knobs may change them
    between phases; a new ``gamma`` takes effect at the next `begin_phase`).
    """

    def __init__(
        self,
        params: nn.Module | Iterable[torch.Tensor],
        *,
        gamma: float = 0.05,
        strategy: str = "gradient",
        seed: int = 0,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        eps_mode: EpsMode = "paper",
        selection_signal: SelectionSignal = "last",
    ) -> None:
        if isinstance(params, nn.Module):
            named = trainable_parameters(params)
            self.names = [n for n, _ in named]
            self.params: list[torch.Tensor] = [p for _, p in named]
        else:
            self.params = list(params)
            self.names = [str(i) for i in range(len(self.params))]
        if not self.params:
            raise ValueError("no trainable floating parameters")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("a parameter appears twice")
        if any(not p.is_floating_point() for p in self.params):
            raise ValueError("every parameter must be floating point")
        self.device = self.params[0].device
        if any(p.device != self.device for p in self.params):
            raise ValueError("all parameters must be on one device")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
        if eps_mode not in ("paper", "tf"):
            raise ValueError(f"eps_mode must be 'paper' or 'tf', got {eps_mode!r}")
        if selection_signal not in ("last", "sum"):
            raise ValueError(f"selection_signal must be 'last' or 'sum', got {selection_signal!r}")
        selection_size(1, gamma)  # validates gamma early

        self.gamma = float(gamma)
        self.strategy = strategy
        self.seed = int(seed)
        self.lr = float(lr)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.eps_mode: EpsMode = eps_mode
        self.selection_signal: SelectionSignal = selection_signal

        self.shapes = [tuple(p.shape) for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.n_coords = sum(self.numels)
        # Adam state in float32 (float64 if any parameter is float64).
        self.state_dtype = torch.float64 if any(p.dtype == torch.float64 for p in self.params) else torch.float32
        z = lambda: torch.zeros(self.n_coords, dtype=self.state_dtype, device=self.device)  # noqa: E731
        self._m = z()  # first moment m (line 9)
        self._v = z()  # second moment v (line 10)
        self._acc = z()  # this phase's signal so far: u_{n,k} ("last") or Σ u ("sum")
        self._signal = z()  # u_{n-1}: the last completed phase's signal (line 15)
        self._mask = torch.zeros(self.n_coords, dtype=torch.bool, device=self.device)  # b_n
        self._step = 0  # Adam's global step count i (line 11)
        self._phase = 0  # phases begun; the current/last phase is n = _phase
        self._phase_steps = 0  # iterations run in the current phase
        self._in_phase = False
        self._has_signal = False  # a phase with >= 1 iteration has completed

    # -- read-only views -------------------------------------------------

    @property
    def phase_index(self) -> int:
        """n of the current (or last) phase; 0 before the first."""
        return self._phase

    @property
    def step_count(self) -> int:
        """Adam's global step count i (line 11)."""
        return self._step

    @property
    def in_phase(self) -> bool:
        return self._in_phase

    @property
    def selected_count(self) -> int:
        """Coordinates in the current (or last) mask."""
        return int(self._mask.sum().item())

    def flat_mask(self) -> torch.Tensor:
        """b_n as a flat (N,) bool tensor on the CPU (a copy)."""
        return self._mask.detach().cpu().clone()

    def masks(self) -> list[torch.Tensor]:
        """b_n split per parameter tensor (CPU bool tensors, copies)."""
        return [m.clone() for m in split_mask(self._mask.detach().cpu(), self.shapes)]

    # -- Algorithm 2 -----------------------------------------------------

    def begin_phase(self) -> list[torch.Tensor]:
        """Enter phase n: lines 1-2 choose I_n and b_n; lines 3-5 (continue
        from the latest w, m, v) hold because the state is kept as is.
        Returns b_n per parameter tensor."""
        if self._in_phase:
            raise RuntimeError("begin_phase() called twice; call end_phase() first")
        self._phase += 1
        signal = self._signal.detach().cpu().numpy() if self._has_signal else None
        flat = select(self.strategy, self.n_coords, self.gamma, update=signal, seed=self.seed, phase=self._phase)
        self._mask = torch.from_numpy(flat).to(self.device)
        self._acc.zero_()
        self._phase_steps = 0
        self._in_phase = True
        return self.masks()

    @torch.no_grad()
    def step(self) -> None:
        """One iteration k (lines 8-13), after ``loss.backward()``.

        Line 8 is the gradient of ALL parameters; a parameter whose ``.grad``
        is None did not influence the loss, so its gradient is 0 (its moments
        still decay, as Adam's would with a zero gradient).
        """
        if not self._in_phase:
            raise RuntimeError("step() outside a phase; call begin_phase() first")
        g = torch.cat(
            [
                (p.grad.detach().reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=self.device)).to(
                    self.state_dtype
                )
                for p in self.params
            ]
        )
        b1, b2 = self.beta1, self.beta2
        self._m.mul_(b1).add_(g, alpha=1.0 - b1)  # line 9
        self._v.mul_(b2).addcmul_(g, g, value=1.0 - b2)  # line 10
        self._step += 1  # line 11
        i = self._step
        scale = self.lr * math.sqrt(1.0 - b2**i) / (1.0 - b1**i)
        if self.eps_mode == "paper":
            denom = torch.sqrt(self._v + self.eps)  # line 12 as printed: sqrt(v + eps)
        else:
            denom = torch.sqrt(self._v).add_(self.eps)  # tf.train.AdamOptimizer
        u = self._m / denom * scale  # line 12: u_{n,k} for every coordinate
        if self.selection_signal == "last":
            self._acc.copy_(u)  # line 15 keeps only u_{n,K}
        else:
            self._acc.add_(u)
        # Line 13: w <- w - u * b_n. torch.where keeps unselected weights
        # bit-identical (and immune to a non-finite u there).
        for p, u_p, b_p in zip(self.params, split_mask(u, self.shapes), split_mask(self._mask, self.shapes)):
            p.copy_(torch.where(b_p, p - u_p.to(p.dtype), p))
        self._phase_steps += 1

    def end_phase(self) -> list[torch.Tensor]:
        """Leave phase n: line 15 (u_n <- this phase's signal; kept from the
        previous phase if this one ran no iteration), line 16 (w_n is the
        model's weights as they are). Returns b_n per parameter tensor: the
        coordinates whose new values go to the edge (Algorithm 1 line 17)."""
        if not self._in_phase:
            raise RuntimeError("end_phase() without begin_phase()")
        if self._phase_steps > 0:
            self._signal.copy_(self._acc)
            self._has_signal = True
        self._in_phase = False
        return self.masks()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    # -- persistence -----------------------------------------------------

    def state_dict(self) -> StateDict:
        """Everything needed to resume exactly: numpy arrays (copies) and
        Python scalars/strings. The RNG state is (seed, phase): random
        selections are drawn from a generator seeded with both."""
        arr = lambda t: t.detach().cpu().numpy().copy()  # noqa: E731
        return {
            "format": STATE_FORMAT,
            "numels": np.asarray(self.numels, dtype=np.int64),
            "m": arr(self._m),
            "v": arr(self._v),
            # Between phases the accumulator is dead (zeroed by begin_phase):
            # store it empty, a quarter less to keep in Redis.
            "acc": arr(self._acc) if self._in_phase else np.zeros(0, dtype=np.float32),
            "signal": arr(self._signal),
            "mask": arr(self._mask),
            "step": self._step,
            "phase": self._phase,
            "phase_steps": self._phase_steps,
            "in_phase": self._in_phase,
            "has_signal": self._has_signal,
            "seed": self.seed,
            "gamma": self.gamma,
            "strategy": self.strategy,
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "eps_mode": self.eps_mode,
            "selection_signal": self.selection_signal,
        }

    def load_state_dict(self, state: StateDict) -> None:
        """Restore a `state_dict` (hyperparameters included, as torch's
        optimizers do; set ``gamma``/``lr`` afterwards to apply new knobs).
        The parameters themselves are the model's business (its weights)."""
        if int(state["format"]) != STATE_FORMAT:
            raise ValueError(f"unsupported state format {state['format']!r}")
        numels = [int(x) for x in np.asarray(state["numels"]).reshape(-1)]
        if numels != self.numels:
            raise ValueError("state was saved for parameters of other sizes")
        if str(state["strategy"]) not in STRATEGIES:
            raise ValueError(f"unknown strategy {state['strategy']!r}")

        def put(dst: torch.Tensor, key: str) -> None:
            src = np.asarray(state[key])
            if src.shape != (self.n_coords,):
                raise ValueError(f"{key} has shape {src.shape}, expected ({self.n_coords},)")
            dst.copy_(torch.from_numpy(src.copy()).to(device=dst.device, dtype=dst.dtype))

        put(self._m, "m")
        put(self._v, "v")
        if np.asarray(state["acc"]).size == 0 and not bool(state["in_phase"]):
            self._acc.zero_()
        else:
            put(self._acc, "acc")
        put(self._signal, "signal")
        put(self._mask, "mask")
        self._step = int(state["step"])
        self._phase = int(state["phase"])
        self._phase_steps = int(state["phase_steps"])
        self._in_phase = bool(state["in_phase"])
        self._has_signal = bool(state["has_signal"])
        self.seed = int(state["seed"])
        self.gamma = float(state["gamma"])
        self.strategy = str(state["strategy"])
        self.lr = float(state["lr"])
        self.beta1, self.beta2 = float(state["beta1"]), float(state["beta2"])
        self.eps = float(state["eps"])
        self.eps_mode = str(state["eps_mode"])  # type: ignore[assignment]
        self.selection_signal = str(state["selection_signal"])  # type: ignore[assignment]


def state_to_bytes(state: StateDict) -> bytes:
    """Serialise a `MaskedAdam.state_dict` as an uncompressed .npz (no
    pickle): arrays bit-exact, scalars as 0-d arrays."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in state.items()})
    return buf.getvalue()


def state_from_bytes(data: bytes) -> StateDict:
    """Inverse of `state_to_bytes` (0-d arrays back to Python scalars)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: (npz[k].item() if npz[k].ndim == 0 else npz[k].copy()) for k in npz.files}


@dataclass
class PhaseResult:
    """What one phase produced: b_n per tensor and the loss of each iteration."""

    masks: list[torch.Tensor]
    losses: list[float] = field(default_factory=list)


def run_phase(optimizer: MaskedAdam, loss_fn: Callable[[_B], torch.Tensor], batches: Iterable[_B]) -> PhaseResult:
    """One training phase (Algorithm 2): begin, then for each mini-batch S_k
    (line 7; the caller samples them, K of them) backward and step, then end.
    ``loss_fn(batch)`` returns the scalar loss of the model on the batch."""
    optimizer.begin_phase()
    losses: list[float] = []
    try:
        for batch in batches:
            optimizer.zero_grad()
            loss = loss_fn(batch)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        masks = optimizer.end_phase()
        optimizer.zero_grad()
    return PhaseResult(masks=masks, losses=losses)
