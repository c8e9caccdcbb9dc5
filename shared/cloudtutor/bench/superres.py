"""``cloudtutor bench superres``: CloudSeg Table 1 on the real videos.

For each video's held-out frames (the tail the SR models never trained on)
and each scale with a checkpoint: the frames go down by ``scale`` and
through real H.264 exactly as the edge sends them
(:func:`cloudtutor.srframes.edge_low_res`), come back up by bilinear,
bicubic, and each SR checkpoint, and are scored by

* the teacher's mIoU against the teacher on the original frames (the
  reference, as the demo scores the edge), and the share of the
  bicubic-to-original gap a method closes (the original scores 1.0);
* PSNR and SSIM against the original;
* bytes per frame of the LR chunk and of the full-resolution chunk at the same CRF;
* upscaling time per frame on this CPU.

Each row says whether the video was one the SR models trained on (then
only its held-out tail is scored) or an unseen video (then all of its
sampled frames are).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cloudtutor.accuracy import frame_miou
from cloudtutor.srframes import edge_low_res, video_frames

log = logging.getLogger("cloudtutor.bench.superres")

NUM_CLASSES = 19
SCHEMA = "cloudtutor.bench.superres/v1"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of the luma (BT.601), 11x11 Gaussian window (sigma 1.5), the usual constants."""
    def luma(x: np.ndarray) -> torch.Tensor:
        y = x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return torch.from_numpy(y)[None, None]

    x, y = luma(a), luma(b)
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = (g / g.sum())
    window = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def bench_video(
    video: Path, scale: int, checkpoints: Mapping[str, Any], teacher, *, crf: float, every: int, held_out: float,
    trained: bool = True,
) -> dict[str, Any]:
    """One video at one scale; ``checkpoints`` maps a method name to a loaded SR model."""
    from cloudtutor.models.carn import upscale_rgb

    split = video_frames(video, every=every, multiple=16 * scale, held_out=held_out)
    # A training video is scored on its held-out tail only; an unseen one on all of it.
    originals = split.held_out if trained else split.train + split.held_out
    if not originals:
        raise ValueError(f"{video}: no held-out frames (raise --held-out or lower --every)")
    h, w = originals[0].shape[:2]
    decoded, lr_bytes = edge_low_res(originals, scale, crf)
    _, hr_bytes = edge_low_res(originals, 1, crf)
    references = [teacher.predict(f) for f in originals]
    methods: dict[str, Any] = {
        "bilinear": lambda x: cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR),
        "bicubic": lambda x: cv2.resize(x, (w, h), interpolation=cv2.INTER_CUBIC),
    }
    for name, model in checkpoints.items():
        methods[name] = lambda x, m=model: upscale_rgb(m, x)
    rows = {}
    for name, up in methods.items():
        mious, psnrs, ssims, seconds = [], [], [], 0.0
        for lr, original, reference in zip(decoded, originals, references):
            started = time.perf_counter()
            with torch.no_grad():
                high = up(lr)
            seconds += time.perf_counter() - started
            labels = teacher.predict_at(high, (reference.shape[1], reference.shape[0]))
            mious.append(frame_miou(reference, labels, NUM_CLASSES))
            psnrs.append(psnr(high, original))
            ssims.append(ssim(high, original))
        rows[name] = {
            "teacher_miou": round(float(np.nanmean(mious)), 4),
            "psnr_db": round(float(np.mean(psnrs)), 2),
            "ssim": round(float(np.mean(ssims)), 4),
            "ms_per_frame": round(1000 * seconds / len(originals), 2),
        }
        log.info("%s x%d %s: %s", video.name, scale, name, rows[name])
    bicubic = rows["bicubic"]["teacher_miou"]
    for row in rows.values():
        row["bicubic_gap_closed"] = None if bicubic >= 1 else round((row["teacher_miou"] - bicubic) / (1 - bicubic), 4)
    return {
        "video": video.name, "scale": scale, "frames": len(originals), "size": [w, h], "crf": crf,
        "split": "held-out tail of a training video" if trained else "unseen video",
        "bytes_per_frame": {"low_res": round(lr_bytes / len(originals)), "full_res": round(hr_bytes / len(originals))},
        "methods": rows,
    }


def markdown(report: Mapping[str, Any]) -> str:
    lines = [
        "# bench superres (CloudSeg Table 1)", "",
        "Teacher mIoU against the teacher on the original frames (a training video's held-out tail, all of an "
        "unseen video), after downscaling, "
        "H.264 at one CRF and upscaling; gap closed = share of the bicubic-to-original mIoU gap.", "",
        f"Training videos of the SR models: {', '.join(report['trained_on'])}.", "",
        "| video | frames | scale | CRF | method | teacher mIoU | gap closed | PSNR dB | SSIM | ms/frame | bytes/frame LR / full |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        b = r["bytes_per_frame"]
        for name, m in r["methods"].items():
            gap = "n/a" if m["bicubic_gap_closed"] is None else f"{100 * m['bicubic_gap_closed']:+.1f}%"
            split = "trained (held-out tail)" if r["split"].startswith("held-out") else "unseen"
            lines.append(f"| {r['video']} | {split} | x{r['scale']} | {r['crf']:g} | {name} | {100 * m['teacher_miou']:.1f} | {gap} | "
                         f"{m['psnr_db']:.2f} | {m['ssim']:.3f} | {m['ms_per_frame']:.1f} | {b['low_res']} / {b['full_res']} |")
    return "\n".join(lines) + "\n"


def run_bench_superres(
    videos: Sequence[Path], checkpoints: Mapping[str, Path], out: Path, *, crfs: Sequence[float] = (23.0,),
    every: int = 10, held_out: float = 0.25,
) -> dict[str, Any]:
    """``checkpoints``: method name -> SR checkpoint; grouped by their scale."""
    from cloudtutor.models.registry import build_teacher
    from cloudtutor.models.sr_checkpoint import load_sr_checkpoint

    loaded = {name: load_sr_checkpoint(path) for name, path in checkpoints.items()}
    scales = sorted({c.scale for c in loaded.values()}) or [4]
    trained_on = sorted({str(v) for c in loaded.values() for v in c.config.get("videos", [])}) or ["(not recorded)"]
    teacher = build_teacher("cityscapes19")
    results = []
    for scale in scales:
        models = {name: c.model for name, c in loaded.items() if c.scale == scale}
        for video in videos:
            for crf in crfs:
                results.append(bench_video(Path(video), scale, models, teacher, crf=crf, every=every,
                                           held_out=held_out, trained=Path(video).name in trained_on))
    report = {"schema": SCHEMA, "trained_on": trained_on, "checkpoints": {k: str(v) for k, v in checkpoints.items()},
              "results": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "superres.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "superres.md").write_text(markdown(report), encoding="utf-8")
    return report


__all__ = ["bench_video", "markdown", "psnr", "run_bench_superres", "ssim"]
