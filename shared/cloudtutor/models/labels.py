"""Label sets and the explicit mappings between them.

Teacher and student must speak the same label set before their maps can be
compared or distilled (brief section 8). A :class:`LabelMapping` fixes, for
one profile, the common classes and how each model's output indices map onto
them; anything without a counterpart maps to :data:`IGNORE`.

Pure numpy: the edge and light-weight processes import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
    "LabelMapping",
    "VOC21",
    "VOC_CLASSES",
    "apply_lut",
    "camvid_to_cityscapes",
    "cityscapes_to_camvid",
    "get_label_mapping",
]

IGNORE = 255
"""Label of pixels that count for no class (Cityscapes' and VOC's convention)."""

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)
"""The 19 Cityscapes classes, indexed by train id."""

CITYSCAPES_VOID = 19
"""The ESPNet checkpoint's 20th output: void (unlabelled in training)."""

CITYSCAPES_THING_CLASSES: tuple[str, ...] = (
    "pole", "traffic light", "traffic sign", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)
"""The "objects" of ShadowTutor's weighting on Cityscapes (brief section 10.9)."""

CITYSCAPES_THING_IDS: tuple[int, ...] = tuple(CITYSCAPES_CLASSES.index(n) for n in CITYSCAPES_THING_CLASSES)

VOC_CLASSES: tuple[str, ...] = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
"""Pascal VOC's 21 categories, spelt as torchvision's weight enums' ``meta["categories"]``."""

CAMVID_CLASSES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign/symbol",
    "fence", "car", "pedestrian", "bicyclist", "unlabelled",
)
"""The 12 labels of the SegNet CamVid set (index 11 is unlabelled)."""

# CamVid's 11 classes merge several original classes (SegNet's grouping):
# building includes walls, car includes trucks and buses, sign/symbol
# includes traffic lights, bicyclist covers rider and machine. Each maps to
# the Cityscapes class that holds most of its pixels; comparisons at
# CamVid's granularity should use CITYSCAPES_TO_CAMVID on the prediction
# instead.
CAMVID_TO_CITYSCAPES: tuple[int, ...] = (
    10,      # sky
    2,       # building
    5,       # pole
    0,       # road
    1,       # pavement -> sidewalk
    8,       # tree -> vegetation
    7,       # sign/symbol -> traffic sign
    4,       # fence
    13,      # car
    11,      # pedestrian -> person
    12,      # bicyclist -> rider
    IGNORE,  # unlabelled
)

# The coarser direction: every Cityscapes train id to the CamVid class that
# contains it (terrain has no CamVid counterpart).
CITYSCAPES_TO_CAMVID: tuple[int, ...] = (
    3,       # road
    4,       # sidewalk -> pavement
    1,       # building
    1,       # wall -> building
    7,       # fence
    2,       # pole
    6,       # traffic light -> sign/symbol
    6,       # traffic sign -> sign/symbol
    5,       # vegetation -> tree
    IGNORE,  # terrain
    0,       # sky
    9,       # person -> pedestrian
    10,      # rider -> bicyclist
    8,       # car
    8,       # truck -> car
    8,       # bus -> car
    8,       # train -> car
    10,      # motorcycle -> bicyclist
    10,      # bicycle -> bicyclist
)


def apply_lut(labels: np.ndarray, lut: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """Map every value ``v`` of ``labels`` to ``lut[v]``; values outside the table become IGNORE.

    Returns uint8 (every label set here has fewer than 255 classes).
    """
    table = np.full(256, IGNORE, dtype=np.uint8)
    lut_arr = np.asarray(lut, dtype=np.int64)
    if lut_arr.size > 255:
        raise ValueError(f"a label table of {lut_arr.size} entries does not fit uint8 labels")
    table[: lut_arr.size] = lut_arr
    if labels.dtype == np.uint8:
        # A 256-entry table covers every uint8 value: one gather, no masks.
        return table[labels]
    out = np.full(labels.shape, IGNORE, dtype=np.uint8)
    valid = (labels >= 0) & (labels < 256)
    out[valid] = table[labels[valid].astype(np.intp)]
    return out


def camvid_to_cityscapes(labels: np.ndarray) -> np.ndarray:
    """CamVid label map (0..11) to Cityscapes train ids; unlabelled to IGNORE."""
    return apply_lut(labels, CAMVID_TO_CITYSCAPES)


def cityscapes_to_camvid(labels: np.ndarray) -> np.ndarray:
    """Cityscapes train ids to CamVid's classes (many to one); terrain and IGNORE to IGNORE."""
    return apply_lut(labels, CITYSCAPES_TO_CAMVID)


@dataclass(frozen=True)
class LabelMapping:
    """The common label set of one profile and each model's map onto it.

    Attributes:
        name: the profile's label-set name (``"cityscapes19"``).
        classes: names of the common classes; their indices are the labels
            that maps, metrics and training targets use.
        teacher_lut: ``teacher_lut[i]`` is the common label of the teacher's
            output index ``i`` (or IGNORE).
        student_lut: the same for the student's output indices.
        thing_ids: common labels counted as objects (ShadowTutor's weighting).
    """

    name: str
    classes: tuple[str, ...]
    teacher_lut: tuple[int, ...]
    student_lut: tuple[int, ...]
    thing_ids: tuple[int, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def teacher_outputs(self) -> int:
        return len(self.teacher_lut)

    @property
    def student_outputs(self) -> int:
        return len(self.student_lut)

    def map_teacher(self, labels: np.ndarray) -> np.ndarray:
        return apply_lut(labels, self.teacher_lut)

    def map_student(self, labels: np.ndarray) -> np.ndarray:
        return apply_lut(labels, self.student_lut)


CITYSCAPES19 = LabelMapping(
    name="cityscapes19",
    classes=CITYSCAPES_CLASSES,
    # The TFLite DeepLab emits the 19 train ids directly.
    teacher_lut=tuple(range(19)),
    # ESPNet has a 20th "void" output; a pixel it calls void counts for no class.
    student_lut=tuple(range(19)) + (IGNORE,),
    thing_ids=CITYSCAPES_THING_IDS,
)

VOC21 = LabelMapping(
    name="voc21",
    classes=VOC_CLASSES,
    # Both torchvision models (COCO_WITH_VOC_LABELS weights) output VOC's 21 categories.
    teacher_lut=tuple(range(21)),
    student_lut=tuple(range(21)),
    thing_ids=tuple(range(1, 21)),
)

LABEL_MAPPINGS: dict[str, LabelMapping] = {m.name: m for m in (CITYSCAPES19, VOC21)}


def get_label_mapping(name: str) -> LabelMapping:
    """The mapping called ``name``; a clear error lists the known ones."""
    try:
        return LABEL_MAPPINGS[name]
    except KeyError:
        raise KeyError(f"unknown label set {name!r}; known: {sorted(LABEL_MAPPINGS)}") from None
