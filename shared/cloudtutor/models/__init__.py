"""Models: ESPNet, the student and teacher wrappers, torchvision builders, CARN-M super-resolution, the registry.

Label sets, geometry and the registry are numpy-only and imported eagerly.
Names that need torch, torchvision or LiteRT are imported on first access
(PEP 562), so that ``import cloudtutor.models.labels`` on an edge device or
in a light-weight process does not pull torch in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cloudtutor.models.labels import (
    CAMVID_CLASSES,
    CAMVID_TO_CITYSCAPES,
    CITYSCAPES19,
    CITYSCAPES_CLASSES,
    CITYSCAPES_THING_CLASSES,
    CITYSCAPES_THING_IDS,
    CITYSCAPES_TO_CAMVID,
    CITYSCAPES_VOID,
    IGNORE,
    LABEL_MAPPINGS,
    VOC21,
    VOC_CLASSES,
    LabelMapping,
    apply_lut,
    camvid_to_cityscapes,
    cityscapes_to_camvid,
    get_label_mapping,
)
from cloudtutor.models.preprocess import (
    STUDENT_WIDTH,
    TEACHER_SIZE,
    Letterbox,
    crop_letterbox,
    espnet_normalize,
    imagenet_normalize,
    letterbox,
    resize_labels,
    resize_rgb,
    resize_scores,
    student_size,
)
from cloudtutor.models.registry import (
    MODELS,
    PROFILES,
    ModelSpec,
    Profile,
    build_model,
    build_student,
    build_superres,
    build_teacher,
    data_root,
    get_model_spec,
    get_profile,
)

if TYPE_CHECKING:
    from cloudtutor.models.carn import CARNM, carn_m, upscale_rgb
    from cloudtutor.models.espnet import ESPNet, Stage, flush_denormals_, load_espnet
    from cloudtutor.models.sr_checkpoint import SrCheckpoint, load_sr_checkpoint, save_sr_checkpoint
    from cloudtutor.models.student import Student
    from cloudtutor.models.teacher import TfliteTeacher, TorchTeacher
    from cloudtutor.models.torchvision_models import (
        TORCHVISION_MODELS,
        ResolvedWeights,
        build_torchvision,
        resolve_weights,
    )

_LAZY = {
    "CARNM": "carn",
    "carn_m": "carn",
    "upscale_rgb": "carn",
    "ESPNet": "espnet",
    "Stage": "espnet",
    "flush_denormals_": "espnet",
    "load_espnet": "espnet",
    "SrCheckpoint": "sr_checkpoint",
    "load_sr_checkpoint": "sr_checkpoint",
    "save_sr_checkpoint": "sr_checkpoint",
    "Student": "student",
    "TfliteTeacher": "teacher",
    "TorchTeacher": "teacher",
    "TORCHVISION_MODELS": "torchvision_models",
    "ResolvedWeights": "torchvision_models",
    "build_torchvision": "torchvision_models",
    "resolve_weights": "torchvision_models",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CAMVID_CLASSES",
    "CAMVID_TO_CITYSCAPES",
    "CITYSCAPES19",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_THING_CLASSES",
    "CITYSCAPES_THING_IDS",
    "CITYSCAPES_TO_CAMVID",
    "CITYSCAPES_VOID",
    "IGNORE",
    "LABEL_MAPPINGS",
    "MODELS",
    "PROFILES",
    "STUDENT_WIDTH",
    "TEACHER_SIZE",
    "VOC21",
    "VOC_CLASSES",
    "LabelMapping",
    "Letterbox",
    "ModelSpec",
    "Profile",
    "apply_lut",
    "build_model",
    "build_student",
    "build_superres",
    "build_teacher",
    "camvid_to_cityscapes",
    "cityscapes_to_camvid",
    "crop_letterbox",
    "data_root",
    "espnet_normalize",
    "get_label_mapping",
    "get_model_spec",
    "get_profile",
    "imagenet_normalize",
    "letterbox",
    "resize_labels",
    "resize_rgb",
    "resize_scores",
    "student_size",
    *_LAZY,
]
