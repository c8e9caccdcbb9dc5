"""torchvision's segmentation models: the production defaults of the ``voc21`` profile.

* student: LR-ASPP MobileNetV3-Large (or DeepLabV3-MobileNetV3-Large),
* teacher: DeepLabV3-ResNet101,

all with their ``COCO_WITH_VOC_LABELS_V1`` weight enums (21 VOC categories).

Resolving a weight enum (its categories, preset transforms and URL) never
touches the network. Building with pretrained weights goes through
torchvision's own loader (``weights.get_state_dict``: the torch hub cache,
downloading only when the file is not cached there), or loads a local file.
``download=False`` builds the architecture with ``weights=None`` (and no
backbone weights) so that tests and offline tools never reach the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models import segmentation as seg

__all__ = [
    "TORCHVISION_MODELS",
    "ResolvedWeights",
    "TorchvisionModel",
    "build_torchvision",
    "is_weights_file",
    "resolve_weights",
]


@dataclass(frozen=True)
class TorchvisionModel:
    """A registry entry: torchvision's builder and its weight enum."""

    name: str
    builder: Callable[..., nn.Module]
    weights_enum: type[WeightsEnum]
    default_weights: str = "COCO_WITH_VOC_LABELS_V1"
    # DeepLabV3 checkpoints carry an auxiliary FCN head; LR-ASPP has none.
    has_aux: bool = False


TORCHVISION_MODELS: dict[str, TorchvisionModel] = {
    m.name: m
    for m in (
        TorchvisionModel("lraspp-mobilenet-v3", seg.lraspp_mobilenet_v3_large, seg.LRASPP_MobileNet_V3_Large_Weights),
        TorchvisionModel(
            "deeplabv3-mobilenet-v3",
            seg.deeplabv3_mobilenet_v3_large,
            seg.DeepLabV3_MobileNet_V3_Large_Weights,
            has_aux=True,
        ),
        TorchvisionModel(
            "deeplabv3-resnet101", seg.deeplabv3_resnet101, seg.DeepLabV3_ResNet101_Weights, has_aux=True
        ),
    )
}


@dataclass(frozen=True)
class ResolvedWeights:
    """What a weight enum promises, read from torchvision's metadata only."""

    weights: WeightsEnum
    categories: tuple[str, ...]
    transforms: Callable[[Any], Any]
    url: str
    resize_size: int | None

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def cache_path(self) -> Path:
        """Where torchvision's loader keeps (or would download) the file."""
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(self.url)


def _entry(name: str) -> TorchvisionModel:
    try:
        return TORCHVISION_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown torchvision model {name!r}; known: {sorted(TORCHVISION_MODELS)}") from None


def resolve_weights(name: str, weights: str | WeightsEnum | None = None) -> ResolvedWeights:
    """The weight enum of model ``name`` (default: its ``COCO_WITH_VOC_LABELS_V1``), without downloading.

    ``weights`` may be an enum member, its member name (``"DEFAULT"`` too) or
    its full name (``"LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1"``).
    """
    entry = _entry(name)
    if weights is None:
        weights = entry.default_weights
    if isinstance(weights, str):
        member = weights.rsplit(".", 1)[-1]
        prefix = weights.rsplit(".", 1)[0] if "." in weights else entry.weights_enum.__name__
        if prefix != entry.weights_enum.__name__:
            raise ValueError(f"{weights!r} is not a weight of {name} ({entry.weights_enum.__name__})")
        try:
            weights = entry.weights_enum[member]
        except KeyError:
            known = ["DEFAULT"] + [w.name for w in entry.weights_enum]
            raise ValueError(f"{name} has no weights {member!r}; known: {known}") from None
    weights = entry.weights_enum.verify(weights)
    preset = weights.transforms()
    resize = getattr(preset, "resize_size", None)
    return ResolvedWeights(
        weights=weights,
        categories=tuple(weights.meta["categories"]),
        transforms=weights.transforms,
        url=weights.url,
        resize_size=int(resize[0]) if resize else None,
    )


def build_torchvision(
    name: str,
    weights: str | WeightsEnum | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool = False,
) -> nn.Module:
    """Build torchvision segmentation model ``name`` in eval mode.

    Args:
        name: a key of :data:`TORCHVISION_MODELS`.
        weights: an enum (or its name; ``None`` = the default
            ``COCO_WITH_VOC_LABELS_V1``), or a path to a local ``.pth`` state
            dict of the same architecture (offline deployments).
        download: ``True`` uses torchvision's loader (the torch hub cache,
            fetching the file if it is not there). ``False`` never touches the
            network: the architecture is built with ``weights=None`` and no
            backbone weights, i.e. UNTRAINED, with the enum's class count.
        progress: show torchvision's download progress bar.
    """
    entry = _entry(name)
    if weights is not None and is_weights_file(weights):
        return _build_from_file(entry, Path(weights))
    resolved = resolve_weights(name, weights)
    if download:
        # torchvision's own path: sets num_classes/aux_loss from the enum,
        # loads strictly, verifies the file's hash.
        model = entry.builder(weights=resolved.weights, progress=progress)
    else:
        model = entry.builder(weights=None, weights_backbone=None, num_classes=resolved.num_classes)
    return model.eval()


def is_weights_file(weights: str | WeightsEnum | os.PathLike[str]) -> bool:
    """Whether ``weights`` names a local file rather than a weight enum."""
    if isinstance(weights, WeightsEnum):
        return False
    if not isinstance(weights, str):
        return True
    return weights.endswith((".pth", ".pt")) or os.sep in weights


def _build_from_file(entry: TorchvisionModel, path: Path) -> nn.Module:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"{path}: expected a state dict, got {type(state).__name__}")
    num_classes = len(entry.weights_enum[entry.default_weights].meta["categories"])
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    if entry.has_aux:
        kwargs["aux_loss"] = any(k.startswith("aux_classifier.") for k in state)
    model = entry.builder(**kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()
