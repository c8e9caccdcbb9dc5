"""The teacher's labels, cached by frame hash (memory, then an on-disk folder).

Every scheme and every sweep point scores the edge against the teacher on
the same pictures and trains on the teacher's labels of the same samples,
so the TFLite teacher runs once per distinct (picture, output size) ever,
also across runs when a folder is given. The key names the teacher too, so
a different teacher file never reads another's labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cloudtutor.schemes.footage import frame_key

log = logging.getLogger("cloudtutor.schemes")

Size = tuple[int, int]


def cache_key(teacher_id: str, key: str, size: Size) -> str:
    """File-name-safe key of the labels of picture ``key`` at ``size = (w, h)``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in teacher_id)
    return f"{safe}-{int(size[0])}x{int(size[1])}-{key[:40]}"


class TeacherLabels:
    """``labels(rgb, size)``: the teacher's label map of ``rgb`` at ``size``.

    ``predict_at(rgb, size)`` is the teacher (``TfliteTeacher.predict_at``);
    ``folder`` (optional) keeps the labels as ``.npy`` files between runs.
    ``hits``/``misses`` count lookups; ``seconds`` is the teacher's time.
    """

    def __init__(self, predict_at: Callable[[np.ndarray, Size], np.ndarray], teacher_id: str,
                 folder: Path | None = None) -> None:
        self.predict_at = predict_at
        self.teacher_id = teacher_id
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, np.ndarray] = {}
        self.hits = self.misses = 0
        self.seconds = 0.0

    def labels(self, rgb: np.ndarray, size: Size, key: str | None = None) -> np.ndarray:
        name = cache_key(self.teacher_id, key or frame_key(rgb), size)
        got = self._memory.get(name)
        if got is None and self.folder is not None:
            path = self.folder / f"{name}.npy"
            if path.is_file():
                try:
                    got = np.load(path)
                except (OSError, ValueError) as exc:  # a torn file from a killed run: label again
                    log.warning("teacher cache: unreadable %s (%s); labelling again", path.name, exc)
                    got = None
                if got is not None and got.shape != (size[1], size[0]):
                    log.warning("teacher cache: %s has shape %s, wanted %s; labelling again", path.name, got.shape, size)
                    got = None
        if got is not None:
            self.hits += 1
            self._memory[name] = got
            return got
        self.misses += 1
        start = time.perf_counter()
        got = np.ascontiguousarray(self.predict_at(rgb, size), dtype=np.uint8)
        self.seconds += time.perf_counter() - start
        if got.shape != (size[1], size[0]):
            raise ValueError(f"teacher returned {got.shape} for size {size}")
        self._memory[name] = got
        if self.folder is not None:
            tmp = self.folder / f".{name}.tmp.npy"
            np.save(tmp, got)
            tmp.replace(self.folder / f"{name}.npy")
        return got

    def stats(self) -> dict[str, float | int]:
        return {"hits": self.hits, "misses": self.misses, "teacher_s": round(self.seconds, 2)}
