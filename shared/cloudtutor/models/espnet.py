"""ESPNet: Efficient Spatial Pyramid of dilated convolutions (Mehta et al., ECCV 2018).

The full encoder-decoder network ("ESPNet" in the paper, section 3 and
figure 4d), written so that its module names match the state dicts of the
authors' code (sacmehta/ESPNet): a checkpoint trained there loads with
``strict=True``.

The forward pass is expressed as an ordered list of named :class:`Stage`\\ s.
The network is not a plain chain (the input is re-injected at 1/2 and 1/4
resolution and the decoder reads skips from level 1 and level 2), so each
stage names the activations it reads and writes. That lets a caller run the
first ``n`` stages on one machine and the rest on another (split inference,
brief section 10.8: :meth:`ESPNet.live_after` names the tensors that must
travel) or freeze the front of the network for partial distillation
(:meth:`ESPNet.freeze_front`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "BN_EPS",
    "BR",
    "C",
    "CBR",
    "CDilated",
    "DilatedParllelResidualBlockB",
    "DownSamplerB",
    "ESPNet",
    "ESPNetEncoder",
    "InputProjectionA",
    "Stage",
    "flush_denormals_",
    "load_espnet",
]

# The authors trained with eps=1e-3; PyTorch's default (1e-5) would shift
# every normalised activation slightly and cost accuracy.
BN_EPS = 1e-3


class CBR(nn.Module):
    """Convolution, BatchNorm, PReLU. Padding keeps the size (up to stride)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        padding = (kernel - 1) // 2
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class BR(nn.Module):
    """BatchNorm then PReLU: applied after every concatenation in ESPNet."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(x))


class C(nn.Module):
    """A bias-free convolution (the BatchNorm that follows provides the bias)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        padding = (kernel - 1) // 2
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class CDilated(nn.Module):
    """A bias-free dilated convolution whose padding keeps the spatial size."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        padding = (kernel - 1) // 2 * dilation
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False, dilation=dilation
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def _split_width(out_ch: int, k: int = 5) -> tuple[int, int]:
    """Channels per dilated branch: ``k`` branches of ``n``, the first takes the remainder.

    The paper uses d = out/K for every branch; the authors' code gives the
    rounding remainder to the dilation-1 branch so the concatenation is
    exactly ``out_ch`` wide.
    """
    n = out_ch // k
    return n, out_ch - (k - 1) * n


class _ESPBranches(nn.Module):
    """Reduce, split, transform with dilations 1..16, hierarchical feature fusion (HFF).

    Shared body of the two ESP modules. HFF adds each branch's output to the
    sum of the branches with smaller dilation before concatenating; the paper
    does this to remove the gridding artefacts of large dilations.
    """

    def __init__(self, reduce: nn.Module, n: int, n1: int) -> None:
        super().__init__()
        # Registered first so that the state dict's key order is the authors'.
        self.c1 = reduce
        self.d1 = CDilated(n, n1, 3, 1, 1)
        self.d2 = CDilated(n, n, 3, 1, 2)
        self.d4 = CDilated(n, n, 3, 1, 4)
        self.d8 = CDilated(n, n, 3, 1, 8)
        self.d16 = CDilated(n, n, 3, 1, 16)

    def _fuse(self, x: Tensor) -> Tensor:
        reduced = self.c1(x)
        add1 = self.d2(reduced)
        add2 = add1 + self.d4(reduced)
        add3 = add2 + self.d8(reduced)
        add4 = add3 + self.d16(reduced)
        return torch.cat([self.d1(reduced), add1, add2, add3, add4], 1)


class DownSamplerB(_ESPBranches):
    """The strided ESP module: halves the resolution (its reduce is a 3x3, stride 2)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        n, n1 = _split_width(out_ch)
        super().__init__(C(in_ch, n, 3, 2), n, n1)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self._fuse(x)))


class DilatedParllelResidualBlockB(_ESPBranches):
    """The ESP module (the name, misspelling included, is the authors' and their state dicts').

    ``add=True`` makes it residual (input and output widths must match); the
    decoder uses one with ``add=False`` to go from 2C to C channels.
    """

    def __init__(self, in_ch: int, out_ch: int, add: bool = True) -> None:
        if add and in_ch != out_ch:
            raise ValueError(f"a residual ESP block needs in_ch == out_ch, got {in_ch} and {out_ch}")
        n, n1 = _split_width(out_ch)
        super().__init__(C(in_ch, n, 1, 1), n, n1)
        self.bn = BR(out_ch)
        self.add = add

    def forward(self, x: Tensor) -> Tensor:
        out = self._fuse(x)
        if self.add:
            out = x + out
        return self.bn(out)


class InputProjectionA(nn.Module):
    """Downsample the RGB input ``times`` times by 3x3 average pooling.

    ESPNet concatenates the image at 1/2 and 1/4 resolution into the encoder
    (figure 4c); pooling is parameter-free, so this module has no weights.
    """

    def __init__(self, times: int) -> None:
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(times))

    def forward(self, x: Tensor) -> Tensor:
        for pool in self.pool:
            x = pool(x)
        return x


class ESPNetEncoder(nn.Module):
    """ESPNet-C: the encoder, ending in a 1x1 classifier at 1/8 resolution.

    Its ``forward`` is the standalone ESPNet-C network (the decoder does not
    call it: :class:`ESPNet` runs these modules stage by stage).
    """

    def __init__(self, num_classes: int = 20, p: int = 2, q: int = 8) -> None:
        super().__init__()
        self.level1 = CBR(3, 16, 3, 2)
        self.sample1 = InputProjectionA(1)
        self.sample2 = InputProjectionA(2)
        self.b1 = BR(16 + 3)
        self.level2_0 = DownSamplerB(16 + 3, 64)
        self.level2 = nn.ModuleList(DilatedParllelResidualBlockB(64, 64) for _ in range(p))
        self.b2 = BR(128 + 3)
        self.level3_0 = DownSamplerB(128 + 3, 128)
        self.level3 = nn.ModuleList(DilatedParllelResidualBlockB(128, 128) for _ in range(q))
        self.b3 = BR(256)
        self.classifier = C(256, num_classes, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        out0 = self.level1(x)
        out0_cat = self.b1(torch.cat([out0, self.sample1(x)], 1))
        out1_0 = self.level2_0(out0_cat)
        out1 = out1_0
        for block in self.level2:
            out1 = block(out1)
        out1_cat = self.b2(torch.cat([out1, out1_0, self.sample2(x)], 1))
        out2_0 = self.level3_0(out1_cat)
        out2 = out2_0
        for block in self.level3:
            out2 = block(out2)
        return self.classifier(self.b3(torch.cat([out2_0, out2], 1)))


@dataclass(frozen=True)
class Stage:
    """One step of :class:`ESPNet`'s forward pass.

    Attributes:
        name: a stable name (``"level3.4"``); also the split point's label.
        modules: the dotted names of the submodules whose parameters this
            stage owns (state-dict prefixes), for freezing.
        inputs: names of the activations it reads.
        outputs: names of the activations it writes.
        op: the :class:`ESPNet` method that runs it (``"_op_..."``); a name,
            not a bound callable, so that ``copy.deepcopy`` of the model
            (a frozen proxy copy) runs its own modules.
    """

    name: str
    modules: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    op: str


def espnet_stages(p: int, q: int) -> tuple[Stage, ...]:
    """The stage list of an ESPNet with ``p`` level-2 and ``q`` level-3 ESP blocks."""
    stages = [
        # Level 1 also pools the input for the later re-injection points, so
        # that a split after any stage never has to ship the full image.
        Stage("level1", ("encoder.level1", "encoder.b1"), ("input",), ("l1", "l1_cat", "input_4"), "_op_level1"),
        Stage("level2_0", ("encoder.level2_0",), ("l1_cat",), ("l2_0",), "_op_module"),
    ]
    prev = "l2_0"
    for i in range(p):
        stages.append(Stage(f"level2.{i}", (f"encoder.level2.{i}",), (prev,), ("l2",), "_op_module"))
        prev = "l2"
    stages += [
        Stage("b2", ("encoder.b2",), (prev, "l2_0", "input_4"), ("l2_cat",), "_op_concat_module"),
        Stage("level3_0", ("encoder.level3_0",), ("l2_cat",), ("l3_0",), "_op_module"),
    ]
    prev = "l3_0"
    for i in range(q):
        stages.append(Stage(f"level3.{i}", (f"encoder.level3.{i}",), (prev,), ("l3",), "_op_module"))
        prev = "l3"
    stages += [
        Stage("b3", ("encoder.b3",), ("l3_0", prev), ("l3_cat",), "_op_concat_module"),
        # Decoder (figure 4d): class maps at 1/8, upsampled and fused with the
        # level-2 projection at 1/4, then with level 1 at 1/2, then to full size.
        Stage("up_l3", ("encoder.classifier", "br", "up_l3"), ("l3_cat",), ("dec3",), "_op_up_l3"),
        Stage("up_l2", ("level3_C", "combine_l2_l3", "up_l2"), ("l2_cat", "dec3"), ("dec2",), "_op_up_l2"),
        Stage("classifier", ("conv", "classifier"), ("dec2", "l1"), ("logits",), "_op_classifier"),
    ]
    return tuple(stages)


class ESPNet(nn.Module):
    """ESPNet with the light-weight decoder (the paper's full model).

    Args:
        num_classes: output channels (20 for Cityscapes: 19 classes plus void).
        p: ESP blocks at level 2 (1/4 resolution).
        q: ESP blocks at level 3 (1/8 resolution).

    Input height and width must be multiples of 8 (three stride-2 steps are
    undone by three 2x transposed convolutions). The output has the input's
    size: ``(N, num_classes, H, W)`` logits.
    """

    def __init__(self, num_classes: int = 20, p: int = 2, q: int = 8) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = ESPNetEncoder(num_classes, p, q)
        c = num_classes
        self.level3_C = C(128 + 3, c, 1, 1)
        self.br = nn.BatchNorm2d(c, eps=BN_EPS)
        # The skip from level 1 is its 16-channel CBR output, not the
        # 19-channel concatenation with the pooled image (the checkpoint's
        # conv takes 16 + C inputs).
        self.conv = CBR(16 + c, c, 3, 1)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BR(2 * c), DilatedParllelResidualBlockB(2 * c, c, add=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False), BR(c))
        self.classifier = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)
        self.stages: tuple[Stage, ...] = espnet_stages(p, q)

    # -- forward, whole or in pieces ------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        # (Skipped while tracing: the check would be frozen into the trace.)
        if not torch.jit.is_tracing() and (x.shape[-2] % 8 or x.shape[-1] % 8):
            raise ValueError(f"ESPNet needs height and width divisible by 8, got {tuple(x.shape[-2:])}")
        return self.run_stages({"input": x})["logits"]

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def stage_index(self, name: str) -> int:
        """Position of the stage called ``name`` (``run_stages(..., stop=i + 1)`` runs through it)."""
        for i, stage in enumerate(self.stages):
            if stage.name == name:
                return i
        raise KeyError(f"no stage {name!r}; stages are {list(self.stage_names)}")

    def run_stages(
        self, state: Mapping[str, Tensor], start: int = 0, stop: int | None = None
    ) -> dict[str, Tensor]:
        """Run ``stages[start:stop]`` on the named activations in ``state``.

        Start from ``{"input": x}``; the result holds every activation written
        so far (the final logits under ``"logits"``). To split after stage
        ``n``: ``front = run_stages({"input": x}, 0, n)``, send
        ``{k: front[k] for k in live_after(n)}``, then
        ``run_stages(received, n)["logits"]`` on the other side.
        """
        out = dict(state)
        for stage in self.stages[start:stop]:
            try:
                args = [out[name] for name in stage.inputs]
            except KeyError as exc:
                raise KeyError(f"stage {stage.name!r} needs activation {exc.args[0]!r}") from None
            results = getattr(self, stage.op)(stage, *args)
            out.update(zip(stage.outputs, results))
        return out

    def live_after(self, n: int) -> tuple[str, ...]:
        """Activations written by ``stages[:n]`` and read by ``stages[n:]``: a split's payload."""
        if not 0 <= n <= len(self.stages):
            raise ValueError(f"split point must be in 0..{len(self.stages)}, got {n}")
        if n == len(self.stages):
            return ("logits",)
        written = {"input"}
        for stage in self.stages[:n]:
            written.update(stage.outputs)
        needed: list[str] = []
        overwritten: set[str] = set()
        for stage in self.stages[n:]:
            for name in stage.inputs:
                if name in written and name not in overwritten and name not in needed:
                    needed.append(name)
            overwritten.update(stage.outputs)
        return tuple(needed)

    # -- parameters per stage (partial distillation) ------------------------------

    def stage_parameters(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, nn.Parameter]]:
        """``(state-dict name, parameter)`` for the parameters owned by ``stages[start:stop]``."""
        for stage in self.stages[start:stop]:
            for prefix in stage.modules:
                for name, param in self.get_submodule(prefix).named_parameters(prefix=prefix):
                    yield name, param

    def freeze_front(self, n: int) -> None:
        """Stop gradients for ``stages[:n]`` and let the rest learn.

        BatchNorm statistics are not touched: the project keeps BatchNorm in
        eval mode while distilling (brief section 10.5).
        """
        for _, param in self.stage_parameters(0, n):
            param.requires_grad_(False)
        for _, param in self.stage_parameters(n):
            param.requires_grad_(True)

    # -- stage bodies -------------------------------------------------------------

    def _op_level1(self, stage: Stage, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        enc = self.encoder
        l1 = enc.level1(x)
        return l1, enc.b1(torch.cat([l1, enc.sample1(x)], 1)), enc.sample2(x)

    def _op_module(self, stage: Stage, x: Tensor) -> tuple[Tensor]:
        return (self.get_submodule(stage.modules[0])(x),)

    def _op_concat_module(self, stage: Stage, *xs: Tensor) -> tuple[Tensor]:
        return (self.get_submodule(stage.modules[0])(torch.cat(xs, 1)),)

    def _op_up_l3(self, stage: Stage, l3_cat: Tensor) -> tuple[Tensor]:
        return (self.up_l3(self.br(self.encoder.classifier(l3_cat))),)

    def _op_up_l2(self, stage: Stage, l2_cat: Tensor, dec3: Tensor) -> tuple[Tensor]:
        return (self.up_l2(self.combine_l2_l3(torch.cat([self.level3_C(l2_cat), dec3], 1))),)

    def _op_classifier(self, stage: Stage, dec2: Tensor, l1: Tensor) -> tuple[Tensor]:
        return (self.classifier(self.conv(torch.cat([dec2, l1], 1))),)


# (integer view, exponent bits, mantissa bits) per float dtype.
_FLOAT_BITS = {
    torch.float32: (torch.int32, 0x7F800000, 0x007FFFFF),
    torch.float16: (torch.int16, 0x7C00, 0x03FF),
    torch.bfloat16: (torch.int16, 0x7F80, 0x007F),
    torch.float64: (torch.int64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
}


def subnormal_mask(tensor: torch.Tensor) -> torch.Tensor | None:
    """Where ``tensor`` holds subnormal values, read from the bit pattern.

    Comparisons would not do: with ``torch.set_flush_denormal(True)`` on
    (denormals-are-zero), ``x != 0`` is false for a subnormal, so what got
    flushed, and hence the weights' sha256, would depend on process state.
    None for dtypes without a known layout (integers, complex).
    """
    layout = _FLOAT_BITS.get(tensor.dtype)
    if layout is None:
        return None
    itype, exponent, mantissa = layout
    bits = tensor.detach().contiguous().view(itype)
    return ((bits & exponent) == 0) & ((bits & mantissa) != 0)


def flush_denormals_(model: nn.Module) -> int:
    """Set subnormal float32 values in ``model``'s parameters and buffers to zero.

    Returns how many were flushed. Arithmetic on denormals is very slow on
    x86 CPUs: the shipped ESPNet checkpoint has about 18k of them and runs
    ~13x slower without this (data README, second pitfall). Their values
    (< 1.2e-38) cannot matter to the output.
    """
    flushed = 0
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            mask = subnormal_mask(tensor)
            if mask is None:
                continue
            count = int(mask.sum())
            if count:
                tensor.masked_fill_(mask, 0.0)
                flushed += count
    return flushed


def load_espnet(
    path: str | os.PathLike[str],
    *,
    num_classes: int = 20,
    p: int = 2,
    q: int = 8,
    map_location: str | torch.device = "cpu",
) -> ESPNet:
    """Build an ESPNet, strictly load a plain state dict, flush denormals, return it in eval mode.

    ``strict=True``: a missing or unexpected key is an error, because a
    silently half-loaded student would still produce plausible-looking maps.
    A ``module.`` prefix (checkpoints saved from ``nn.DataParallel``) is
    removed first.
    """
    state = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    if not isinstance(state, Mapping):
        raise TypeError(f"{path}: expected a state dict, got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    model = ESPNet(num_classes=num_classes, p=p, q=q)
    model.load_state_dict(state, strict=True)
    flush_denormals_(model)
    return model.eval()
