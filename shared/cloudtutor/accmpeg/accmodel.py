"""The AccModel (AccMPEG §4): a cheap network with one binary output per macroblock.

Feature extractor: the early layers of the pretrained ESPNet encoder
(level 1, level 2 with its two ESP blocks, and the strided level-3 ESP
module: stride 8, 128 channels), average-pooled to stride 16 so that one
feature vector is one 16x16 macroblock. The paper starts from a pretrained
MobileNet-SSD; none is available offline, so the ESPNet encoder's early
layers stand in (brief §10.7). Then three convolutions classify each block
as high (1) or low (0) quality. Only convolutions, BatchNorm and
activations, so the cost is proportional to the frame's area.

The checkpoint (:func:`save_accmodel`, :func:`load_accmodel`) carries the
architecture, weights, training configuration, step and optimiser state;
it loads with ``weights_only=True`` and is written atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cloudtutor.accmpeg.accgrad import rgb_batch
from cloudtutor.accmpeg.rects import MB, block_grid
from cloudtutor.models.espnet import BR, CBR, DilatedParllelResidualBlockB, DownSamplerB, InputProjectionA
from cloudtutor.srtrain import espnet_input

FORMAT = "cloudtutor-accmodel-checkpoint"
VERSION = 1
ARCH = "accmodel-espnet"

#: ESPNet encoder modules the feature extractor reuses, by state-dict name.
_ENCODER_PARTS = ("level1", "sample1", "sample2", "b1", "level2_0", "level2", "b2", "level3_0")


class AccModel(nn.Module):
    """ESPNet-encoder features at stride 16 plus three convolutions; ``N x 2 x H/16 x W/16`` logits.

    Input: a batch normalised like ESPNet's (:func:`cloudtutor.srtrain.espnet_input`).
    """

    def __init__(self, head: int = 64, p: int = 2) -> None:
        super().__init__()
        self.head_channels, self.p = head, p
        self.level1 = CBR(3, 16, 3, 2)
        self.sample1 = InputProjectionA(1)
        self.sample2 = InputProjectionA(2)
        self.b1 = BR(16 + 3)
        self.level2_0 = DownSamplerB(16 + 3, 64)
        self.level2 = nn.ModuleList(DilatedParllelResidualBlockB(64, 64) for _ in range(p))
        self.b2 = BR(128 + 3)
        self.level3_0 = DownSamplerB(128 + 3, 128)
        self.head = nn.Sequential(
            nn.Conv2d(128, head, 3, padding=1, bias=False), nn.BatchNorm2d(head), nn.ReLU(inplace=True),
            nn.Conv2d(head, head, 3, padding=1, bias=False), nn.BatchNorm2d(head), nn.ReLU(inplace=True),
            nn.Conv2d(head, 2, 1),
        )

    def arch_args(self) -> dict[str, int]:
        return {"head": self.head_channels, "p": self.p}

    def features(self, x: Tensor) -> Tensor:
        if x.shape[-2] % MB or x.shape[-1] % MB:
            raise ValueError(f"AccModel input must be a multiple of {MB} on both sides, got {tuple(x.shape[-2:])}")
        l1 = self.level1(x)
        l1_cat = self.b1(torch.cat([l1, self.sample1(x)], 1))
        l2_0 = self.level2_0(l1_cat)
        l2 = l2_0
        for block in self.level2:
            l2 = block(l2)
        l2_cat = self.b2(torch.cat([l2, l2_0, self.sample2(x)], 1))
        return F.avg_pool2d(self.level3_0(l2_cat), 2)  # stride 8 -> 16: one vector per macroblock

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def freeze_features(self, frozen: bool = True) -> None:
        for name in _ENCODER_PARTS:
            getattr(self, name).requires_grad_(not frozen)

    @torch.no_grad()
    def predict(self, rgb: np.ndarray, width: int | None = None) -> np.ndarray:
        """Probability that each macroblock should be high quality, ``(rows, cols)`` float32.

        ``width``: a frame wider than this is shrunk to it (height in aspect, sides
        rounded to 16) before the model runs, and the probabilities are stretched
        back to the frame's own block grid. A model sees objects at the pixel scale
        it learned them at (its training width), and on a frame twice that wide it
        runs on a quarter of the pixels.
        """
        rows, cols = block_grid(rgb.shape[1], rgb.shape[0])
        if width is not None and width < 1:
            raise ValueError(f"AccModel width must be >= 1 pixel, got {width}")
        small = rgb
        if width is not None and rgb.shape[1] > width:
            from cloudtutor.h264 import sent_size
            from cloudtutor.models.preprocess import resize_rgb

            small = resize_rgb(rgb, sent_size((rgb.shape[1], rgb.shape[0]), rgb.shape[1] / width))
        was_training = self.training
        self.eval()
        try:
            probs = self(espnet_input(rgb_batch(small))).softmax(1)[:, 1:]
        finally:
            self.train(was_training)
        if probs.shape[-2:] != (rows, cols):
            probs = F.interpolate(probs, size=(rows, cols), mode="bilinear", align_corners=False)
        return probs[0, 0].float().numpy()


def from_espnet(espnet: nn.Module, head: int = 64) -> AccModel:
    """An AccModel whose feature extractor starts from ``espnet``'s encoder (copied, not shared)."""
    from cloudtutor.models.espnet import flush_denormals_

    p = len(espnet.encoder.level2)
    model = AccModel(head=head, p=p)
    for name in _ENCODER_PARTS:
        getattr(model, name).load_state_dict(getattr(espnet.encoder, name).state_dict())
    flush_denormals_(model)  # the ESPNet checkpoint's denormals cost 13x on the CPU (data README)
    return model


def high_quality_loss(logits: Tensor, labels: Tensor, high_weight: float = 4.0) -> Tensor:
    """Cross-entropy with ``high_weight`` on the high-quality blocks (AccMPEG §5: 4x)."""
    weight = torch.tensor([1.0, float(high_weight)], dtype=logits.dtype)
    return F.cross_entropy(logits, labels.long(), weight=weight)


# ---------------------------------------------------------------- checkpoint


@dataclass
class AccModelCheckpoint:
    model: AccModel
    config: dict[str, Any]
    step: int
    optimizer_state: dict[str, Any] | None
    arch_args: dict[str, Any]

    @property
    def width(self) -> int | None:
        """The frame width it was trained at, the one to run it at (None: not recorded)."""
        return self.config.get("width")


def save_accmodel(
    path: str | os.PathLike[str], model: AccModel, *, config: Mapping[str, Any], step: int,
    optimizer_state: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "version": VERSION, "arch": ARCH, "arch_args": model.arch_args(),
        "state_dict": model.state_dict(), "config": dict(config), "step": int(step),
        "optimizer_state": None if optimizer_state is None else dict(optimizer_state),
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_accmodel(path: str | os.PathLike[str]) -> AccModelCheckpoint:
    """Read a checkpoint (no code runs from it); the model comes back in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AccModel checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable AccModel checkpoint: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an AccModel checkpoint (no {FORMAT!r} marker)")
    if payload.get("version") != VERSION or payload.get("arch") != ARCH:
        raise ValueError(f"{path}: unsupported AccModel checkpoint version {payload.get('version')} / arch {payload.get('arch')}")
    args = dict(payload["arch_args"])
    model = AccModel(**args)
    model.load_state_dict(payload["state_dict"])
    return AccModelCheckpoint(model.eval(), dict(payload["config"]), int(payload["step"]),
                              payload.get("optimizer_state"), args)


__all__ = ["ARCH", "FORMAT", "AccModel", "AccModelCheckpoint", "from_espnet", "high_quality_loss",
           "load_accmodel", "save_accmodel"]
