"""The model registry (brief section 8) and the production profiles (section 10.13).

A *model* name maps to a builder and a weight source:

==========================  =========  ==========================================  ============
name                        framework  weights                                     label set
==========================  =========  ==========================================  ============
``espnet``                  torch      local checkpoint (state dict)               cityscapes19
``tflite-deeplab-edgetpu``  tflite     local ``.tflite`` file                      cityscapes19
``lraspp-mobilenet-v3``     torch      torchvision enum ``COCO_WITH_VOC_LABELS_V1`` voc21
``deeplabv3-resnet101``     torch      torchvision enum ``COCO_WITH_VOC_LABELS_V1`` voc21
``deeplabv3-mobilenet-v3``  torch      torchvision enum ``COCO_WITH_VOC_LABELS_V1`` voc21
``torchscript``             torch      any TorchScript ``.pt`` file                given by caller
``carn-m-x2``               torch      SR checkpoint (``cloudtutor train sr``)     (RGB out)
``carn-m-x4``               torch      SR checkpoint (``cloudtutor train sr``)     (RGB out)
``accmodel``                torch      AccModel checkpoint (``train accmodel``)    (ROI mask)
==========================  =========  ==========================================  ============

The ``carn-m-*`` entries are CloudSeg's super-resolution models (role
``superres``, :func:`build_superres`). No trained file ships under the data
root: their weights always come from a checkpoint path, and building one
without weights (random initialisation) needs ``untrained=True``, so that
an untrained network never stands in for a trained one by accident.

A *profile* fixes a teacher, a student and the label set they share:
``cityscapes19`` (TFLite DeepLab teacher, ESPNet student: the benchmark
setting) and ``voc21`` (torchvision DeepLabV3-ResNet101 teacher, LR-ASPP
MobileNetV3 student).

Local default files are looked up under the data root: ``$CLOUDTUTOR_DATA``,
else ``../shared/data`` next to this checkout. Every builder also takes an
explicit path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloudtutor.config.common import DATA_ENV, default_data_root
from cloudtutor.models.labels import LabelMapping, get_label_mapping
from cloudtutor.models.preprocess import STUDENT_WIDTH, espnet_normalize, imagenet_normalize

if TYPE_CHECKING:
    from torch import nn

    from cloudtutor.models.student import Student
    from cloudtutor.models.teacher import TfliteTeacher, TorchTeacher

__all__ = [
    "UnknownModelError",
    "DATA_ENV",
    "MODELS",
    "NORMALIZERS",
    "PROFILES",
    "ModelSpec",
    "Profile",
    "build_model",
    "build_student",
    "build_superres",
    "build_teacher",
    "data_root",
    "get_model_spec",
    "get_profile",
]


NORMALIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "espnet": espnet_normalize,
    "imagenet": imagenet_normalize,
}


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Attributes:
        name: the registry name.
        framework: ``"torch"`` or ``"tflite"``.
        source: ``"checkpoint"``, ``"tflite"``, ``"torchvision"``, ``"torchscript"``
            ``"sr-checkpoint"`` (:mod:`cloudtutor.models.sr_checkpoint`) or ``"accmodel-checkpoint"``.
        roles: ``"student"`` and/or ``"teacher"``, or ``"superres"``, or ``"roi"`` (AccMPEG).
        labels: the label set it outputs (``None``: the caller must say).
        default_file: path under the data root of the default weights, if any.
        normalize: key of :data:`NORMALIZERS` for its input (``None``: by label set).
        scale: upscaling factor (``superres`` entries only).
    """

    name: str
    framework: str
    source: str
    roles: frozenset[str]
    labels: str | None
    default_file: str | None = None
    normalize: str | None = None
    description: str = ""
    scale: int | None = None


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "espnet", "torch", "checkpoint", frozenset({"student"}), "cityscapes19",
            "models/student-espnet-p2-q8-cityscapes.pth", "espnet",
            "ESPNet p=2 q=8 (Mehta et al. 2018), 20 outputs (void=19)",
        ),
        ModelSpec(
            "tflite-deeplab-edgetpu", "tflite", "tflite", frozenset({"teacher"}), "cityscapes19",
            "models/teacher-deeplab-edgetpu-slim-cityscapes-int8.tflite", None,
            "EdgeTPU-DeepLab-slim int8 through ai-edge-litert, 513x513 letterboxed",
        ),
        ModelSpec(
            "lraspp-mobilenet-v3", "torch", "torchvision", frozenset({"student"}), "voc21",
            None, "imagenet", "torchvision LR-ASPP MobileNetV3-Large, COCO_WITH_VOC_LABELS_V1",
        ),
        ModelSpec(
            "deeplabv3-mobilenet-v3", "torch", "torchvision", frozenset({"student", "teacher"}), "voc21",
            None, "imagenet", "torchvision DeepLabV3 MobileNetV3-Large, COCO_WITH_VOC_LABELS_V1",
        ),
        ModelSpec(
            "deeplabv3-resnet101", "torch", "torchvision", frozenset({"teacher"}), "voc21",
            None, "imagenet", "torchvision DeepLabV3-ResNet101, COCO_WITH_VOC_LABELS_V1",
        ),
        ModelSpec(
            "torchscript", "torch", "torchscript", frozenset({"student", "teacher"}), None,
            None, None, "any TorchScript file (torch.jit.save); give labels= and the weights path",
        ),
        ModelSpec(
            "carn-m-x2", "torch", "sr-checkpoint", frozenset({"superres"}), None,
            None, None, "CARN-M x2 super-resolution (Ahn et al. 2018; CloudSeg), from a checkpoint", scale=2,
        ),
        ModelSpec(
            "carn-m-x4", "torch", "sr-checkpoint", frozenset({"superres"}), None,
            None, None, "CARN-M x4 super-resolution (Ahn et al. 2018; CloudSeg), from a checkpoint", scale=4,
        ),
        ModelSpec(
            "accmodel", "torch", "accmodel-checkpoint", frozenset({"roi"}), None,
            None, "espnet", "AccMPEG AccModel: ESPNet-encoder features at stride 16 + 3 convs, one high/low output "
            "per macroblock (cloudtutor.accmpeg), from a checkpoint",
        ),
    )
}


@dataclass(frozen=True)
class Profile:
    """A consistent teacher/student pair and their common label set."""

    name: str
    teacher: str
    student: str
    labels: str

    @property
    def mapping(self) -> LabelMapping:
        return get_label_mapping(self.labels)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("cityscapes19", teacher="tflite-deeplab-edgetpu", student="espnet", labels="cityscapes19"),
        Profile("voc21", teacher="deeplabv3-resnet101", student="lraspp-mobilenet-v3", labels="voc21"),
    )
}


def data_root(env: Mapping[str, str] | None = None) -> Path:
    """``$CLOUDTUTOR_DATA``, else ``<checkout>/../shared/data`` (see cloudtutor.config.common)."""
    return default_data_root(env)


class UnknownModelError(KeyError, ValueError):
    """A model or profile name the registry does not hold. A ValueError too,
    so that configuration validation reports it like any bad value."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {sorted(MODELS)}; known profiles: {sorted(PROFILES)}"
        ) from None


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownModelError(f"unknown profile {name!r}; known profiles: {sorted(PROFILES)}") from None


def _resolve(name: str, role: str) -> tuple[ModelSpec, str | None]:
    """A model spec for a profile or model name, and the profile's label set if a profile was named."""
    if name in PROFILES:
        profile = PROFILES[name]
        return MODELS[getattr(profile, role)], profile.labels
    if name not in MODELS:
        raise UnknownModelError(
            f"unknown {role} {name!r}; known profiles: {sorted(PROFILES)}; known models: {sorted(MODELS)}"
        )
    spec = MODELS[name]
    if role not in spec.roles:
        raise ValueError(f"model {name!r} is not registered as a {role} (roles: {sorted(spec.roles)})")
    return spec, None


def _weights_path(spec: ModelSpec, weights: str | os.PathLike[str] | None, root: str | os.PathLike[str] | None) -> Path:
    if weights is not None:
        return Path(weights)
    if spec.default_file is None:
        raise ValueError(f"model {spec.name!r} has no default weights file: pass weights=PATH")
    return Path(root if root is not None else data_root()) / spec.default_file


def _mapping(spec: ModelSpec, labels: str | LabelMapping | None, profile_labels: str | None) -> LabelMapping:
    chosen = labels if labels is not None else profile_labels or spec.labels
    if chosen is None:
        raise ValueError(f"model {spec.name!r} does not fix a label set: pass labels='cityscapes19' or 'voc21'")
    return chosen if isinstance(chosen, LabelMapping) else get_label_mapping(chosen)


def _normalizer(spec: ModelSpec, mapping: LabelMapping, normalize: str | None) -> Callable[[np.ndarray], np.ndarray]:
    key = normalize or spec.normalize or ("espnet" if mapping.name == "cityscapes19" else "imagenet")
    try:
        return NORMALIZERS[key]
    except KeyError:
        raise UnknownModelError(f"unknown normalisation {key!r}; known: {sorted(NORMALIZERS)}") from None


def build_model(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    data_root_path: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> nn.Module:
    """The bare torch module of registry model ``name`` (eval mode), for training or export.

    ``weights``: a local file (``espnet``, ``torchscript``, or a torchvision
    state dict), or a torchvision enum name; ``None`` = the model's default.
    ``download`` only concerns torchvision enums (see :func:`build_torchvision`).
    """
    spec = get_model_spec(name)
    if spec.source == "checkpoint":
        from cloudtutor.models.espnet import load_espnet

        return load_espnet(_weights_path(spec, weights, data_root_path))
    if spec.source == "torchvision":
        from cloudtutor.models.torchvision_models import build_torchvision

        return build_torchvision(spec.name, weights, download=download)
    if spec.source == "sr-checkpoint":
        if weights is None:
            raise ValueError(
                f"model {name!r} has no default weights file: pass weights=PATH (a `cloudtutor train sr` "
                f"checkpoint), or build_superres({name!r}, untrained=True) for a randomly initialised network"
            )
        return build_superres(name, weights)
    if spec.source == "accmodel-checkpoint":
        from cloudtutor.accmpeg.accmodel import load_accmodel

        if weights is None:
            raise ValueError("model 'accmodel' has no default weights file: pass weights=PATH (a `cloudtutor train accmodel` checkpoint)")
        return load_accmodel(weights).model
    if spec.source == "torchscript":
        import torch

        if weights is None:
            raise ValueError("model 'torchscript' needs weights=PATH to a TorchScript file")
        return torch.jit.load(os.fspath(weights), map_location="cpu").eval()
    raise ValueError(f"model {name!r} ({spec.framework}) is not a torch module; use build_teacher")


def build_student(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    labels: str | LabelMapping | None = None,
    normalize: str | None = None,
    width: int = STUDENT_WIDTH,
    threads: int | None = None,
    channels_last: bool = True,
    data_root_path: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Student:
    """A :class:`Student` for a profile (``"cityscapes19"``) or a model name (``"espnet"``).

    ``weights`` overrides the default source (a path, or a torchvision enum
    name). ``labels`` and ``normalize`` are needed only for ``torchscript``.
    """
    from cloudtutor.models.student import Student

    spec, profile_labels = _resolve(name, "student")
    mapping = _mapping(spec, labels, profile_labels)
    model = build_model(spec.name, weights, data_root_path=data_root_path, download=download)
    return Student(
        model,
        mapping=mapping,
        normalize=_normalizer(spec, mapping, normalize),
        width=width,
        threads=threads,
        channels_last=channels_last,
    )


def build_teacher(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    labels: str | LabelMapping | None = None,
    normalize: str | None = None,
    num_threads: int | None = None,
    soft_scores: bool = False,
    data_root_path: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> TfliteTeacher | TorchTeacher:
    """A teacher for a profile (``"cityscapes19"``) or a model name (``"tflite-deeplab-edgetpu"``).

    ``num_threads``: the TFLite interpreter's threads, 1 when not given (see
    :class:`TfliteTeacher` on sharing a process with torch); for torch
    teachers, ``torch.set_num_threads`` (process-wide) when given.
    ``soft_scores`` matters for the TFLite teacher only (torch teachers always
    have logits).
    """
    spec, profile_labels = _resolve(name, "teacher")
    mapping = _mapping(spec, labels, profile_labels)
    if spec.source == "tflite":
        from cloudtutor.models.teacher import TfliteTeacher

        path = _weights_path(spec, weights, data_root_path)
        return TfliteTeacher(path, num_threads=num_threads or 1, soft_scores=soft_scores, mapping=mapping)

    from cloudtutor.models.teacher import TorchTeacher

    short_side = 520
    if spec.source == "torchvision":
        from cloudtutor.models.torchvision_models import is_weights_file, resolve_weights

        enum_name = None if weights is None or is_weights_file(weights) else str(weights)
        short_side = resolve_weights(spec.name, enum_name).resize_size or short_side
    model = build_model(spec.name, weights, data_root_path=data_root_path, download=download)
    return TorchTeacher(
        model,
        mapping=mapping,
        normalize=_normalizer(spec, mapping, normalize),
        short_side=short_side,
        threads=num_threads,
    )



def build_superres(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    untrained: bool = False,
) -> nn.Module:
    """The super-resolution network of registry entry ``name`` (``"carn-m-x2"``, ``"carn-m-x4"``), eval mode.

    ``weights``: an SR checkpoint (:func:`cloudtutor.models.sr_checkpoint.save_sr_checkpoint`);
    its scale must be the entry's. Without one, ``untrained=True`` must say
    that a randomly initialised network is wanted (tests, the start of
    training): there is no default file to fall back on.
    """
    superres = sorted(n for n, s in MODELS.items() if "superres" in s.roles)
    if name not in MODELS:
        raise UnknownModelError(f"unknown superres model {name!r}; known superres models: {superres}")
    spec = MODELS[name]
    if "superres" not in spec.roles or spec.scale is None:
        raise ValueError(f"model {name!r} is not registered as a superres model (known: {superres})")
    if weights is None:
        if not untrained:
            raise ValueError(
                f"model {name!r} has no default weights file: pass weights=PATH (a `cloudtutor train sr` "
                "checkpoint), or untrained=True for a randomly initialised network"
            )
        from cloudtutor.models.carn import carn_m

        return carn_m(spec.scale).eval()
    if untrained:
        raise ValueError("pass either weights=PATH or untrained=True, not both")
    from cloudtutor.models.sr_checkpoint import load_sr_checkpoint

    ckpt = load_sr_checkpoint(weights)
    if ckpt.scale != spec.scale:
        raise ValueError(f"{weights}: a x{ckpt.scale} checkpoint, but {name!r} is x{spec.scale}")
    return ckpt.model
