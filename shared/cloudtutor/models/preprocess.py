"""Frame geometry and input normalisation (brief section 10.2).

* Student: 512 wide (configurable), aspect kept, height rounded to a multiple
  of 8 (ESPNet downsamples three times and upsamples back).
* Teacher: fixed 513x513 input; letterbox (long side to 513, aspect kept,
  padded at the bottom/right), then crop the padding off its labels.
* Labels are compared at the student's output size; teacher labels are
  resized there with nearest neighbour (never interpolate class ids).

Pure functions on numpy arrays, no I/O and no torch, so that the edge and
light-weight processes can import them. Frames are RGB uint8 ``HxWx3``;
sizes are ``(width, height)`` as in PIL and OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "ESPNET_MEAN_BGR",
    "ESPNET_STD_BGR",
    "IMAGENET_MEAN_RGB",
    "IMAGENET_STD_RGB",
    "STUDENT_MULTIPLE",
    "STUDENT_WIDTH",
    "TEACHER_SIZE",
    "Letterbox",
    "crop_letterbox",
    "espnet_normalize",
    "imagenet_normalize",
    "letterbox",
    "resize_labels",
    "resize_rgb",
    "resize_scores",
    "round_to_multiple",
    "student_size",
]

STUDENT_WIDTH = 512
STUDENT_MULTIPLE = 8
TEACHER_SIZE = 513

# ESPNet's training statistics (sacmehta/ESPNet), per channel in BGR order
# and on the 0..255 pixel scale.
ESPNET_MEAN_BGR = np.array([72.3923111, 82.90893555, 73.15840149], dtype=np.float32)
ESPNET_STD_BGR = np.array([45.3192215, 46.15289307, 44.91483307], dtype=np.float32)

# torchvision's segmentation weights: RGB, on the 0..1 scale.
IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)

Size = tuple[int, int]


def round_to_multiple(value: float, multiple: int) -> int:
    """Nearest positive multiple of ``multiple`` (never 0)."""
    return max(multiple, int(round(value / multiple)) * multiple)


def student_size(width: int, height: int, target_width: int = STUDENT_WIDTH, multiple: int = STUDENT_MULTIPLE) -> Size:
    """The student's input (and output) size ``(w, h)`` for a ``width`` x ``height`` frame.

    ``target_width`` must itself be a multiple of ``multiple``: rounding it
    silently would change the geometry the caller asked for.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if target_width <= 0 or target_width % multiple:
        raise ValueError(f"student width must be a positive multiple of {multiple}, got {target_width}")
    return target_width, round_to_multiple(height * target_width / width, multiple)


def _check_rgb(frame: np.ndarray) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 frame, got {frame.dtype} {frame.shape}")


def resize_rgb(frame: np.ndarray, size: Size) -> np.ndarray:
    """Bilinear resize of an RGB uint8 frame to ``size = (w, h)``.

    PIL's bilinear filter widens its support when shrinking (antialiasing),
    which matters for the 4x reduction of a 2048-wide Cityscapes frame.
    """
    _check_rgb(frame)
    if (frame.shape[1], frame.shape[0]) == tuple(size):
        return frame
    img = Image.fromarray(np.ascontiguousarray(frame))
    return np.asarray(img.resize(tuple(size), Image.BILINEAR))


def espnet_normalize(frame: np.ndarray) -> np.ndarray:
    """ESPNet's input: RGB uint8 ``HxWx3`` -> float32 ``3xHxW``.

    BGR order, ``(x - mean) / std`` in pixel scale, THEN divided by 255: the
    authors' loader does both, and the checkpoint collapses without the
    final division (data README).
    """
    _check_rgb(frame)
    bgr = frame[:, :, ::-1].astype(np.float32)
    out = (bgr - ESPNET_MEAN_BGR) / ESPNET_STD_BGR
    out /= 255.0
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def imagenet_normalize(frame: np.ndarray) -> np.ndarray:
    """torchvision's input: RGB uint8 ``HxWx3`` -> float32 ``3xHxW``, ``(x/255 - mean) / std``."""
    _check_rgb(frame)
    out = (frame.astype(np.float32) / 255.0 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    return np.ascontiguousarray(out.transpose(2, 0, 1))


@dataclass(frozen=True)
class Letterbox:
    """Where a frame sits inside the teacher's square input.

    The frame was resized to ``content = (w, h)`` and placed at the top-left
    of a ``size`` x ``size`` canvas; ``source = (w, h)`` is its original size.
    """

    size: int
    content: Size
    source: Size

    @property
    def scale(self) -> float:
        return self.content[0] / self.source[0]


def letterbox(frame: np.ndarray, size: int = TEACHER_SIZE, fill: int = 0) -> tuple[np.ndarray, Letterbox]:
    """Resize the long side to ``size`` keeping aspect, pad to ``size`` x ``size``.

    Padding goes at the bottom and right (as Coral's ``set_resized_input``
    does for this model), so cropping it off is a plain slice.
    """
    _check_rgb(frame)
    h, w = frame.shape[:2]
    scale = size / max(w, h)
    content = (min(size, max(1, round(w * scale))), min(size, max(1, round(h * scale))))
    resized = resize_rgb(frame, content)
    canvas = np.full((size, size, 3), fill, dtype=np.uint8)
    canvas[: content[1], : content[0]] = resized
    return canvas, Letterbox(size=size, content=content, source=(w, h))


def crop_letterbox(array: np.ndarray, box: Letterbox) -> np.ndarray:
    """Cut the padding off an output whose first two axes are the teacher's ``HxW``."""
    if array.shape[0] != box.size or array.shape[1] != box.size:
        raise ValueError(f"expected a {box.size}x{box.size} map, got {array.shape}")
    return array[: box.content[1], : box.content[0]]


def _nearest_index(src: int, dst: int) -> np.ndarray:
    # Sample each output pixel's centre, as PIL's NEAREST and OpenCV's
    # INTER_NEAREST_EXACT do (plain INTER_NEAREST shifts by half a pixel).
    return np.minimum(((np.arange(dst) + 0.5) * (src / dst)).astype(np.intp), src - 1)


def resize_labels(labels: np.ndarray, size: Size) -> np.ndarray:
    """Nearest-neighbour resize of a label map (any integer dtype) to ``size = (w, h)``."""
    if labels.ndim != 2:
        raise ValueError(f"expected an HxW label map, got shape {labels.shape}")
    h, w = labels.shape
    if (w, h) == tuple(size):
        return labels
    rows = _nearest_index(h, size[1])
    cols = _nearest_index(w, size[0])
    return labels[rows[:, None], cols[None, :]]


def resize_scores(scores: np.ndarray, size: Size) -> np.ndarray:
    """Bilinear resize of per-class scores ``CxHxW`` (float) to ``Cx size[1] x size[0]``."""
    if scores.ndim != 3:
        raise ValueError(f"expected CxHxW scores, got shape {scores.shape}")
    if (scores.shape[2], scores.shape[1]) == tuple(size):
        return scores
    out = np.empty((scores.shape[0], size[1], size[0]), dtype=np.float32)
    for c, plane in enumerate(scores):
        img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode "F"
        out[c] = np.asarray(img.resize(tuple(size), Image.BILINEAR))
    return out
