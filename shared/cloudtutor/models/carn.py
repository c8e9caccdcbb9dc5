"""CARN-M: the mobile Cascading Residual Network for super-resolution (Ahn et al., ECCV 2018).

CloudSeg (§3.1) upscales the low-resolution frames the edge sends with CARN
before the cloud's segmentation model sees them. CARN-M is the small variant
the paper recommends for speed: every residual block is an *efficient
residual block* ("residual-E": two grouped 3x3 convolutions and a 1x1
pointwise convolution), and each cascading block reuses one such residual
block three times (shared weights), which is where the "M" gets its ~4x
fewer parameters than CARN.

The structure follows the authors' code (nmhkahn/CARN-pytorch, ``carn_m.py``):

* **local cascade** (:class:`CascadingBlock`): after every residual-E block,
  the block's input and all outputs so far are concatenated and fused back
  to ``channels`` by a 1x1 convolution (+ ReLU);
* **global cascade** (:class:`CARNM`): the same pattern one level up, over
  three cascading blocks, starting from the entry convolution's features;
* **upsampler**: sub-pixel convolution (grouped 3x3 conv to ``4 x channels``,
  ReLU, ``PixelShuffle(2)``), once for x2 and twice for x4.

Unlike the authors' multi-scale network (one body, upsamplers for x2, x3 and
x4: the paper's 412K parameters), a model here has one upsampler for one
scale: the edge's ``scale`` knob picks which model the cloud runs.

One change from the paper: by default (``skip="bicubic"``) the network
predicts a residual over the bicubic upscale of its input, with the exit
convolution initialised to zero, so an untrained model *is* bicubic and
training can only move it from there (VDSR's global skip). With few CPU
training steps this is the difference between beating bicubic and not;
``skip="mean"`` is the authors' mean-shift-only variant.

Input and output are RGB in [0, 1], ``N x 3 x h x w`` -> ``N x 3 x sh x sw``.
The output is not clamped by :meth:`CARNM.forward` (training losses want the
raw value); :func:`upscale_rgb` clamps when it converts back to ``uint8``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CARNM",
    "DIV2K_RGB_MEAN",
    "SCALES",
    "SKIPS",
    "CascadingBlock",
    "EResidualBlock",
    "Upsampler",
    "carn_m",
    "upscale_rgb",
]

#: Scales with a sub-pixel upsampler: x4 is two x2 stages (as in CARN).
SCALES = (2, 4)

#: What the body's output is added to: the bicubic upscale, or the RGB mean only.
SKIPS = ("bicubic", "mean")

#: The RGB mean of DIV2K, the training set of CARN: subtracted at the entry
#: and added back at the exit so that the body learns a zero-centred residual.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class EResidualBlock(nn.Module):
    """Residual-E: grouped 3x3 conv, ReLU, grouped 3x3 conv, ReLU, 1x1 conv, plus the input, ReLU.

    The grouped convolutions cut the 3x3 cost by ``groups``; the 1x1 conv
    mixes information across the groups again (otherwise each group would be
    a separate narrow network).
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + x)


def _fuse(in_channels: int, channels: int) -> nn.Sequential:
    """The 1x1 conv (+ ReLU) that folds a cascade's concatenation back to ``channels``."""
    return nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True))


class CascadingBlock(nn.Module):
    """Three residual-E blocks with a local cascade (CARN figure 3, "cascading block").

    With ``shared=True`` (CARN-M) the three residual blocks are one module
    applied three times: a recursive network, a third of the parameters at
    the same compute. With ``shared=False`` each step has its own weights.
    """

    def __init__(self, channels: int, groups: int, *, shared: bool = True) -> None:
        super().__init__()
        # Shared: one module, applied three times. (Not the same module listed
        # three times: state_dict would then repeat its tensors under three keys.)
        self.blocks = nn.ModuleList([EResidualBlock(channels, groups) for _ in range(1 if shared else 3)])
        self.fuse = nn.ModuleList([_fuse(channels * (i + 2), channels) for i in range(3)])

    def forward(self, x: Tensor) -> Tensor:
        cascade, out = x, x
        for i, fuse in enumerate(self.fuse):
            block = self.blocks[i % len(self.blocks)]
            cascade = torch.cat([cascade, block(out)], dim=1)
            out = fuse(cascade)
        return out


class Upsampler(nn.Sequential):
    """Sub-pixel convolution, ``log2(scale)`` times: grouped 3x3 conv to ``4 x channels``, ReLU, PixelShuffle(2).

    PixelShuffle learns the upsampling in low-resolution space (cheap) and
    has none of a transposed convolution's checkerboard overlap.
    """

    def __init__(self, channels: int, scale: int, groups: int) -> None:
        if scale not in SCALES:
            raise ValueError(f"CARN-M upsamples by {' or '.join(map(str, SCALES))}, not {scale!r}")
        layers: list[nn.Module] = []
        for _ in range(scale.bit_length() - 1):  # 2 -> 1 stage, 4 -> 2 stages
            layers += [
                nn.Conv2d(channels, 4 * channels, 3, padding=1, groups=groups),
                nn.ReLU(inplace=True),
                nn.PixelShuffle(2),
            ]
        super().__init__(*layers)


class CARNM(nn.Module):
    """CARN-M for one upscaling factor: ``N x 3 x h x w`` RGB in [0, 1] -> ``N x 3 x (h*scale) x (w*scale)``.

    Args:
        scale: 2 or 4.
        channels: feature width (64 in the paper).
        groups: groups of the 3x3 convolutions (4 in the paper); must divide ``channels``.
        shared: share the residual-E weights inside each cascading block (CARN-M: yes).
        skip: ``"bicubic"`` (learn a residual over bicubic; starts as bicubic) or ``"mean"`` (the paper's).

    The architecture arguments are kept as attributes (:meth:`arch_args`) so
    that a checkpoint can rebuild the network from the file alone.
    """

    def __init__(self, scale: int, *, channels: int = 64, groups: int = 4, shared: bool = True,
                 skip: str = "bicubic") -> None:
        super().__init__()
        if skip not in SKIPS:
            raise ValueError(f"skip must be one of {SKIPS}, not {skip!r}")
        if scale not in SCALES:
            raise ValueError(f"CARN-M upsamples by {' or '.join(map(str, SCALES))}, not {scale!r}")
        if channels <= 0 or groups <= 0 or channels % groups:
            raise ValueError(f"channels ({channels}) must be a positive multiple of groups ({groups})")
        self.scale = int(scale)
        self.channels = int(channels)
        self.groups = int(groups)
        self.shared = bool(shared)
        self.skip = skip
        # A constant, not a weight: non-persistent, so state dicts hold only what is learned.
        self.register_buffer("rgb_mean", torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.entry = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.ModuleList([CascadingBlock(channels, groups, shared=shared) for _ in range(3)])
        self.fuse = nn.ModuleList([_fuse(channels * (i + 2), channels) for i in range(3)])
        self.upsample = Upsampler(channels, scale, groups)
        self.exit = nn.Conv2d(channels, 3, 3, padding=1)
        if skip == "bicubic":
            nn.init.zeros_(self.exit.weight)
            nn.init.zeros_(self.exit.bias)

    def arch_args(self) -> dict[str, int | bool | str]:
        """The keyword arguments of :func:`carn_m` that rebuild this architecture."""
        return {"scale": self.scale, "channels": self.channels, "groups": self.groups, "shared": self.shared,
                "skip": self.skip}

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N x 3 x h x w RGB batch, got shape {tuple(x.shape)}")
        features = self.entry(x - self.rgb_mean)
        # Global cascade: the same concatenate-and-fuse as inside each block.
        cascade, out = features, features
        for block, fuse in zip(self.blocks, self.fuse):
            cascade = torch.cat([cascade, block(out)], dim=1)
            out = fuse(cascade)
        residual = self.exit(self.upsample(out))
        if self.skip == "bicubic":
            return residual + F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return residual + self.rgb_mean


def carn_m(scale: int, *, channels: int = 64, groups: int = 4, shared: bool = True, skip: str = "bicubic") -> CARNM:
    """An untrained CARN-M for ``scale`` 2 or 4 (ValueError otherwise).

    Weights come from a checkpoint (:func:`cloudtutor.models.sr_checkpoint.load_sr_checkpoint`).
    """
    return CARNM(scale, channels=channels, groups=groups, shared=shared, skip=skip)


def upscale_rgb(model: nn.Module, rgb: np.ndarray) -> np.ndarray:
    """Run an SR ``model`` on one RGB ``uint8`` ``h x w x 3`` frame; ``uint8`` ``sh x sw x 3`` back.

    Runs without autograd on the model's device and dtype; the output is
    clamped to [0, 1] and rounded, so overshoot at sharp edges saturates
    instead of wrapping around. The model's train/eval mode is left alone
    (CARN-M has no batch norm or dropout, so it does not matter for it).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 frame, got {rgb.dtype} {rgb.shape}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1).unsqueeze(0)
        y = model(x.to(dtype).div_(255.0))
        out = y[0].float().clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return out.permute(1, 2, 0).contiguous().cpu().numpy()
