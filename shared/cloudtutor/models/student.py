"""The student as an inference function: RGB frames in, label maps out.

Wraps any torch segmentation model (ESPNet by default, or a torchvision model
whose output is a dict with ``"out"``). Geometry and the label mapping
follow brief section 10.2 and the profile's :class:`LabelMapping`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import Tensor, nn

from cloudtutor.models.labels import CITYSCAPES19, LabelMapping
from cloudtutor.models.preprocess import (
    STUDENT_MULTIPLE,
    STUDENT_WIDTH,
    espnet_normalize,
    resize_rgb,
    student_size,
)

__all__ = ["Student", "logits_of"]

Normalize = Callable[[np.ndarray], np.ndarray]


def logits_of(output: Any) -> Tensor:
    """The logits tensor of a model's output (torchvision segmentation models return ``{"out": ...}``)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "out" in output:
        return output["out"]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


class Student:
    """Runs a segmentation model on RGB uint8 frames.

    Args:
        model: the network; put in eval mode here (BatchNorm must use its
            running statistics at inference) and moved to ``device`` and
            ``channels_last`` in place (``nn.Module.to``), so a trainer
            sharing it sees the same tensors.
        mapping: the profile's label mapping; output indices are mapped with
            ``mapping.student_lut`` (ESPNet's void output becomes IGNORE).
        normalize: RGB uint8 ``HxWx3`` -> float32 ``3xHxW`` (ESPNet's by default).
        width: the student's input width; height follows the aspect ratio,
            rounded to a multiple of ``multiple``.
        threads: if given, ``torch.set_num_threads(threads)``. This is
            process-wide: it affects every torch computation of the process.
        channels_last: run in NHWC memory format; about 1.5x faster for ESPNet
            on x86 CPUs (data README).

    The constructor also calls ``torch.set_flush_denormal(True)`` (process-wide):
    denormal weights or activations make CPU convolutions an order of
    magnitude slower (data README, second pitfall).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mapping: LabelMapping = CITYSCAPES19,
        normalize: Normalize = espnet_normalize,
        width: int = STUDENT_WIDTH,
        multiple: int = STUDENT_MULTIPLE,
        threads: int | None = None,
        channels_last: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        torch.set_flush_denormal(True)
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        # Validate the width now rather than on the first frame.
        student_size(width, width, width, multiple)
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.mapping = mapping
        self.normalize = normalize
        self.width = width
        self.multiple = multiple

    def input_size(self, frame_width: int, frame_height: int) -> tuple[int, int]:
        """The student's input and output size ``(w, h)`` for a frame of that size."""
        return student_size(frame_width, frame_height, self.width, self.multiple)

    def prepare(self, frame: np.ndarray) -> Tensor:
        """Resize and normalise one frame to a ``1x3xHxW`` tensor on the model's device."""
        size = self.input_size(frame.shape[1], frame.shape[0])
        x = torch.from_numpy(self.normalize(resize_rgb(frame, size)))[None]
        return x.to(self.device, memory_format=self.memory_format)

    def logits(self, frame: np.ndarray) -> Tensor:
        """Raw logits ``1xCxHxW`` (C = the model's outputs) at the student's size."""
        with torch.inference_mode():
            return logits_of(self.model(self.prepare(frame)))

    @overload
    def predict(self, frame: np.ndarray, return_logits: Literal[False] = ...) -> np.ndarray: ...

    @overload
    def predict(self, frame: np.ndarray, return_logits: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...

    def predict(self, frame: np.ndarray, return_logits: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Label map (uint8 ``HxW`` at the student's size, in the profile's label set).

        With ``return_logits=True`` also returns the float32 ``CxHxW`` logits
        (C = the model's outputs, before the label mapping).
        """
        logits = self.logits(frame)
        raw = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
        labels = self.mapping.map_student(raw)
        if return_logits:
            return labels, logits[0].float().contiguous().cpu().numpy()
        return labels

    __call__ = predict
