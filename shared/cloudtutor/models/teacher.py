"""Teachers: the cloud-side "large" models that label frames for distillation.

* :class:`TfliteTeacher` runs the real int8 EdgeTPU-DeepLab (Cityscapes, 19
  classes) through ``ai_edge_litert`` on the CPU.
* :class:`TorchTeacher` runs a torch segmentation model (torchvision's
  DeepLabV3-ResNet101 in the ``voc21`` profile).

Both return label maps in the profile's label set, cropped to the frame's
aspect ratio, and optionally soft scores (logits) for soft-target losses.
``*_at(frame, size)`` gives them at the student's output size (brief
section 10.2).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudtutor.models.labels import CITYSCAPES19, LabelMapping
from cloudtutor.models.preprocess import (
    TEACHER_SIZE,
    Letterbox,
    crop_letterbox,
    imagenet_normalize,
    letterbox,
    resize_labels,
    resize_rgb,
    resize_scores,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["SCORES_TENSOR", "TfliteTeacher", "TorchTeacher"]

SCORES_TENSOR = "ResizeBilinear_1"
"""The EdgeTPU-DeepLab's last tensor before its ArgMax: 1x513x513x19 uint8 logits."""

Size = tuple[int, int]


class _TeacherBase:
    """The size helpers shared by both teachers."""

    mapping: LabelMapping

    def predict(self, frame: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_with_scores(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def predict_at(self, frame: np.ndarray, size: Size) -> np.ndarray:
        """Labels resized (nearest neighbour) to ``size = (w, h)``, e.g. the student's output size."""
        return resize_labels(self.predict(frame), size)

    def predict_with_scores_at(self, frame: np.ndarray, size: Size) -> tuple[np.ndarray, np.ndarray]:
        """Labels (nearest) and scores (bilinear) resized to ``size = (w, h)``."""
        labels, scores = self.predict_with_scores(frame)
        return resize_labels(labels, size), resize_scores(scores, size)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.predict(frame)


class TfliteTeacher(_TeacherBase):
    """The int8 EdgeTPU-DeepLab-slim (Cityscapes) through the LiteRT interpreter.

    Args:
        model_path: the ``.tflite`` file (1x513x513x3 uint8 in, 1x513x513 train ids out).
        num_threads: interpreter threads. Defaults to 1 on purpose: an
            XNNPACK pool of 2 threads in the same process as PyTorch made
            torch's forward pass about 12x slower on 2 cores (data README,
            first pitfall). Use more only in a process without torch.
        soft_scores: also expose the per-class logits (tensor
            ``ResizeBilinear_1``). Intermediate tensors are only readable
            with ``experimental_preserve_all_tensors`` and without the default
            (XNNPACK) delegate, which is slower (~0.09 s instead of ~0.05 s
            a frame on one thread here), so it is opt-in.
        mapping: the label mapping (``cityscapes19``: identity).

    Frames of any size are letterboxed to 513x513 and the padding is cropped
    off the outputs, so maps have the frame's aspect at the letterbox's
    resolution (513 on the long side).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        num_threads: int = 1,
        soft_scores: bool = False,
        mapping: LabelMapping = CITYSCAPES19,
    ) -> None:
        # Imported here so that this module (and the registry) imports on
        # machines without the LiteRT runtime (the edge image).
        from ai_edge_litert import interpreter as litert

        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        kwargs: dict[str, Any] = {"model_path": os.fspath(model_path), "num_threads": num_threads}
        if soft_scores:
            kwargs["experimental_preserve_all_tensors"] = True
            kwargs["experimental_op_resolver_type"] = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self._interp = litert.Interpreter(**kwargs)
        self._interp.allocate_tensors()
        self.num_threads = num_threads
        self.soft_scores = soft_scores
        self.mapping = mapping

        (inp,) = self._interp.get_input_details()
        (out,) = self._interp.get_output_details()
        if inp["dtype"] != np.uint8 or tuple(inp["shape"][1:]) != (TEACHER_SIZE, TEACHER_SIZE, 3):
            raise ValueError(f"{model_path}: expected a 1x513x513x3 uint8 input, got {inp['dtype']} {inp['shape']}")
        self._input_index = int(inp["index"])
        self._output_index = int(out["index"])
        self.size = TEACHER_SIZE

        self._scores_index: int | None = None
        self.scores_scale = 1.0
        self.scores_zero_point = 0
        if soft_scores:
            detail = next((d for d in self._interp.get_tensor_details() if d["name"] == SCORES_TENSOR), None)
            if detail is None:
                raise ValueError(f"{model_path}: no tensor named {SCORES_TENSOR!r} to read soft scores from")
            self._scores_index = int(detail["index"])
            # Read the quantisation from the model (scale ~0.2015, zero point 82
            # for the shipped one) rather than trusting constants.
            scale, zero_point = detail["quantization"]
            if scale:
                self.scores_scale, self.scores_zero_point = float(scale), int(zero_point)

    def _invoke(self, frame: np.ndarray) -> Letterbox:
        canvas, box = letterbox(frame, self.size)
        self._interp.set_tensor(self._input_index, canvas[None])
        self._interp.invoke()
        return box

    def _labels(self, box: Letterbox) -> np.ndarray:
        raw = crop_letterbox(self._interp.get_tensor(self._output_index)[0], box)
        return self.mapping.map_teacher(raw.astype(np.uint8))

    def predict(self, frame: np.ndarray) -> np.ndarray:
        """uint8 label map of an RGB uint8 frame, cropped to the frame's aspect (513 on its long side)."""
        return self._labels(self._invoke(frame))

    def predict_with_scores(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels and float32 ``CxHxW`` logits (dequantised ``ResizeBilinear_1``), both cropped.

        The labels are the model's own ArgMax of the same tensor.
        """
        if self._scores_index is None:
            raise RuntimeError("soft scores need TfliteTeacher(..., soft_scores=True)")
        box = self._invoke(frame)
        q = crop_letterbox(self._interp.get_tensor(self._scores_index)[0], box)
        scores = (q.astype(np.float32) - self.scores_zero_point) * self.scores_scale
        return self._labels(box), np.ascontiguousarray(scores.transpose(2, 0, 1))


class TorchTeacher(_TeacherBase):
    """A torch segmentation model as a teacher (e.g. torchvision DeepLabV3-ResNet101).

    Args:
        model: returns logits or torchvision's ``{"out": logits}``.
        mapping: the profile's label mapping (teacher side).
        normalize: RGB uint8 ``HxWx3`` -> float32 ``3xHxW`` (ImageNet statistics by default).
        short_side: the frame is resized so that its short side has this
            many pixels (torchvision's VOC weights were evaluated at 520).
        threads: if given, ``torch.set_num_threads`` (process-wide).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mapping: LabelMapping,
        normalize: Callable[[np.ndarray], np.ndarray] = imagenet_normalize,
        short_side: int = 520,
        threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        import torch

        torch.set_flush_denormal(True)
        if threads is not None:
            torch.set_num_threads(threads)
        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.mapping = mapping
        self.normalize = normalize
        self.short_side = short_side

    def _logits(self, frame: np.ndarray) -> torch.Tensor:
        from cloudtutor.models.student import logits_of

        h, w = frame.shape[:2]
        scale = self.short_side / min(h, w)
        resized = resize_rgb(frame, (max(1, round(w * scale)), max(1, round(h * scale))))
        x = self._torch.from_numpy(self.normalize(resized))[None].to(self.device)
        with self._torch.inference_mode():
            return logits_of(self.model(x))[0]

    def predict(self, frame: np.ndarray) -> np.ndarray:
        raw = self._logits(frame).argmax(0).to(self._torch.uint8).cpu().numpy()
        return self.mapping.map_teacher(raw)

    def predict_with_scores(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = self._logits(frame)
        raw = logits.argmax(0).to(self._torch.uint8).cpu().numpy()
        return self.mapping.map_teacher(raw), logits.float().cpu().numpy()
