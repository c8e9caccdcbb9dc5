"""Sanity figures and per-frame cost of the real student and teacher.

Run one measurement per process, so that the teacher's thread pool and
torch's never share one (data README, first pitfall)::

    python -m cloudtutor.models.measure sanity
    python -m cloudtutor.models.measure student --threads 2
    python -m cloudtutor.models.measure teacher --threads 1

``teacher`` never imports torch. The data root is ``--data``, else
``$CLOUDTUTOR_DATA``, else ``../shared/data`` next to the checkout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cloudtutor.models.registry import data_root

__all__ = ["sanity_figures", "time_per_frame", "time_student", "time_teacher"]

ESPNET = "models/student-espnet-p2-q8-cityscapes.pth"
TFLITE = "models/teacher-deeplab-edgetpu-slim-cityscapes-int8.tflite"
FRAME = "sanity/cityscapes-frame.bmp"
MASK = "sanity/cityscapes-frame-teacher-mask.bmp"
FRANKFURT = "sanity/frankfurt.png"


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def time_per_frame(fn: Callable[[], object], runs: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median wall and process-CPU seconds of ``fn()`` over ``runs`` calls after ``warmup`` calls.

    CPU time sums every thread of the process, so with N busy threads it is
    up to N times the wall time.
    """
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "runs": runs}


def time_student(root: Path, threads: int, width: int = 512, runs: int = 5, channels_last: bool = True) -> dict[str, Any]:
    """ESPNet on the Frankfurt frame: the model's forward alone and frame-to-labels."""
    import torch

    from cloudtutor.models.espnet import load_espnet
    from cloudtutor.models.student import Student

    student = Student(load_espnet(root / ESPNET), threads=threads, width=width, channels_last=channels_last)
    frame = _rgb(root / FRANKFURT)
    x = student.prepare(frame)

    def forward() -> None:
        with torch.inference_mode():
            student.model(x)

    return {
        "what": "student espnet",
        "input": list(x.shape[-2:][::-1]),
        "threads": torch.get_num_threads(),
        "channels_last": channels_last,
        "forward": time_per_frame(forward, runs),
        "frame_to_labels": time_per_frame(lambda: student.predict(frame), runs),
    }


def time_teacher(root: Path, threads: int, runs: int = 5, soft_scores: bool = False) -> dict[str, Any]:
    """The TFLite teacher on the Frankfurt frame (letterboxed), frame to labels."""
    from cloudtutor.models.teacher import TfliteTeacher

    teacher = TfliteTeacher(root / TFLITE, num_threads=threads, soft_scores=soft_scores)
    frame = _rgb(root / FRANKFURT)
    call = (lambda: teacher.predict_with_scores(frame)) if soft_scores else (lambda: teacher.predict(frame))
    return {
        "what": "teacher tflite",
        "threads": threads,
        "soft_scores": soft_scores,
        "torch_in_process": "torch" in sys.modules,
        "frame_to_labels": time_per_frame(call, runs),
    }


def sanity_figures(root: Path) -> dict[str, Any]:
    """Teacher vs its reference mask, student vs teacher, classes the student finds on Frankfurt."""
    from cloudtutor.accuracy import confusion_matrix, frame_miou, pixel_accuracy
    from cloudtutor.models.espnet import load_espnet
    from cloudtutor.models.labels import CITYSCAPES_CLASSES, IGNORE
    from cloudtutor.models.student import Student
    from cloudtutor.models.teacher import TfliteTeacher

    frame = _rgb(root / FRAME)
    mask = np.asarray(Image.open(root / MASK))  # train ids as 8-bit grey values
    teacher = TfliteTeacher(root / TFLITE, num_threads=1)
    student = Student(load_espnet(root / ESPNET))

    teacher_labels = teacher.predict(frame)
    student_labels = student.predict(frame)
    size = (student_labels.shape[1], student_labels.shape[0])
    teacher_small = teacher.predict_at(frame, size)
    frankfurt = student.predict(_rgb(root / FRANKFURT))
    ids, counts = np.unique(frankfurt, return_counts=True)

    def name(i: int) -> str:
        return "void" if i == IGNORE else CITYSCAPES_CLASSES[i]

    return {
        "teacher_vs_mask_agreement": float(np.mean(teacher_labels == mask)),
        "teacher_vs_mask_miou": frame_miou(mask, teacher_labels, 19),
        "student_vs_teacher_size": list(size),
        "student_vs_teacher_agreement": float(np.mean(student_labels == teacher_small)),
        "student_vs_teacher_pixel_accuracy": pixel_accuracy(confusion_matrix(teacher_small, student_labels, 19)),
        "student_vs_teacher_miou": frame_miou(teacher_small, student_labels, 19),
        "student_void_fraction": float(np.mean(student_labels == IGNORE)),
        "frankfurt_student_size": [frankfurt.shape[1], frankfurt.shape[0]],
        "frankfurt_student_classes": {name(int(i)): round(float(c) / frankfurt.size, 4) for i, c in zip(ids, counts)},
    }


#: Issue 2's acceptance thresholds on cityscapes-frame.bmp.
TEACHER_VS_MASK_MIN = 0.90
STUDENT_VS_TEACHER_MIN = 0.80


def _run_isolated(args: list[str], root: Path) -> dict[str, Any]:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "cloudtutor.models.measure", *args, "--data", str(root)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measure {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def check_report(root: Path, runs: int = 5) -> dict[str, Any]:
    """Sanity figures and timings, each measured in a fresh process (so the
    TFLite thread pool never shares a process with torch), with pass/fail."""
    sanity = _run_isolated(["sanity"], root)
    timings = [
        _run_isolated(["student", "--threads", "2", "--runs", str(runs)], root),
        _run_isolated(["teacher", "--threads", "1", "--runs", str(runs)], root),
        _run_isolated(["teacher", "--threads", "2", "--runs", str(runs)], root),
    ]
    checks = {
        "teacher_vs_mask_agreement >= 0.90": sanity["teacher_vs_mask_agreement"] >= TEACHER_VS_MASK_MIN,
        "student_vs_teacher_agreement >= 0.80": sanity["student_vs_teacher_agreement"] >= STUDENT_VS_TEACHER_MIN,
    }
    return {
        "schema": "cloudtutor.models-check/v1",
        "data_root": str(root),
        "sanity": sanity,
        "timings": timings,
        "checks": checks,
        "passed": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudtutor.models.measure", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["sanity", "student", "teacher"])
    parser.add_argument("--data", type=Path, default=None, help="data root (default: $CLOUDTUTOR_DATA or ../shared/data)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=512, help="student input width")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--soft-scores", action="store_true", help="teacher: also read the soft scores")
    args = parser.parse_args(argv)
    root = args.data or data_root()
    if args.what == "sanity":
        result = sanity_figures(root)
    elif args.what == "student":
        result = time_student(root, args.threads, args.width, args.runs, not args.no_channels_last)
    else:
        result = time_teacher(root, args.threads, args.runs, args.soft_scores)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
