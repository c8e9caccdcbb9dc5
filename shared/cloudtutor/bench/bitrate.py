"""``cloudtutor bench bitrate``: the offline accuracy/bytes profile of the
bitrate policy (AWStream's profiling, CloudSeg §3.3) on the real videos.

For each (scale, CRF) of a grid, every ``every``-th frame goes down by
``scale`` and through real H.264 exactly as the edge sends it (its
``sent_size``, chunks of ``chunk`` frames, libx264 through PyAV), comes back
up to the source size by bicubic (what ``superres`` does without a model),
and is scored by the TFLite teacher against the teacher on the original
frame (per-frame mIoU, brief §10.3). Bytes per frame are the chunks' bytes.

The ``profile`` of the JSON (bytes relative to scale 1 at the reference
CRF, mean teacher mIoU over the videos) is what the controller starts from
(``controller.bitrate.prior``); online, chunk sizes and accuracy signals
correct it per device (``cloudtutor.algorithms.bitrate``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cloudtutor.accuracy import frame_miou

log = logging.getLogger("cloudtutor.bench.bitrate")

NUM_CLASSES = 19
SCHEMA = "cloudtutor.bench.bitrate/v1"


def encode_as_edge(frames: Sequence[np.ndarray], scale: float, crf: float, chunk: int) -> tuple[list[np.ndarray], int]:
    """Frames resized to the edge's ``sent_size`` and through H.264 chunks; (decoded, bytes)."""
    from cloudtutor.h264 import EncodeSettings, decode_chunk, encode_chunk, sent_size
    from cloudtutor.models.preprocess import resize_rgb

    h, w = frames[0].shape[:2]
    size = sent_size((w, h), scale)
    low = [resize_rgb(f, size) for f in frames]
    decoded: list[np.ndarray] = []
    total = 0
    for start in range(0, len(low), chunk):
        data = encode_chunk(low[start:start + chunk], EncodeSettings(crf=crf))
        total += len(data)
        decoded.extend(decode_chunk(data, expect_frames=len(low[start:start + chunk])))
    return decoded, total


def bench_video(video: Path, teacher, *, scales: Sequence[float], crfs: Sequence[float], every: int, frames: int,
                chunk: int) -> dict[str, Any]:
    from cloudtutor.srframes import video_frames

    originals = video_frames(video, every=every, multiple=16, held_out=0.0, limit=frames).train
    if not originals:
        raise ValueError(f"{video}: no frames")
    h, w = originals[0].shape[:2]
    references = [teacher.predict(f) for f in originals]
    points = []
    for scale in scales:
        for crf in crfs:
            decoded, nbytes = encode_as_edge(originals, scale, crf, chunk)
            mious = []
            for low, ref in zip(decoded, references):
                up = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
                mious.append(frame_miou(ref, teacher.predict_at(up, (ref.shape[1], ref.shape[0])), NUM_CLASSES))
            point = {"scale": scale, "crf": crf, "bytes_per_frame": round(nbytes / len(originals)),
                     "teacher_miou": round(float(np.nanmean(mious)), 4)}
            log.info("%s x%g crf %g: %s", video.name, scale, crf, point)
            points.append(point)
    return {"video": video.name, "size": [w, h], "frames": len(originals), "points": points}


def profile_of(results: Sequence[dict[str, Any]], ref_crf: float) -> list[dict[str, Any]]:
    """Mean over videos of bytes relative to (scale 1, ``ref_crf``) and of teacher mIoU, per grid point."""
    rows: dict[tuple[float, float], list[tuple[float, float]]] = {}
    for r in results:
        ref = next(p["bytes_per_frame"] for p in r["points"] if p["scale"] == 1 and p["crf"] == ref_crf)
        for p in r["points"]:
            rows.setdefault((p["scale"], p["crf"]), []).append((p["bytes_per_frame"] / ref, p["teacher_miou"]))
    return [{"scale": s, "crf": c, "roi_qoffset": 0.0, "relative_bytes": round(float(np.mean([v[0] for v in vals])), 4),
             "accuracy": round(float(np.mean([v[1] for v in vals])), 4)} for (s, c), vals in sorted(rows.items())]


def markdown(report: dict[str, Any]) -> str:
    lines = ["# bench bitrate (the policy's offline profile)", "",
             "Teacher mIoU against the teacher on the original frames after the edge's downscale, real H.264 and "
             "bicubic upscaling; bytes per frame of the chunks.", "",
             "| video | scale | CRF | bytes/frame | teacher mIoU |", "|---|---|---|---|---|"]
    for r in report["results"]:
        for p in r["points"]:
            lines.append(f"| {r['video']} | x{p['scale']:g} | {p['crf']:g} | {p['bytes_per_frame']} | {100 * p['teacher_miou']:.1f} |")
    lines += ["", f"Profile (mean over videos; bytes relative to x1 CRF {report['ref_crf']:g}):", "",
              "| scale | CRF | relative bytes | accuracy |", "|---|---|---|---|"]
    lines += [f"| x{p['scale']:g} | {p['crf']:g} | {p['relative_bytes']:.3f} | {p['accuracy']:.3f} |" for p in report["profile"]]
    return "\n".join(lines) + "\n"


def run_bench_bitrate(videos: Sequence[Path], out: Path, *, scales: Sequence[float], crfs: Sequence[float],
                      every: int = 25, frames: int = 12, chunk: int = 10) -> dict[str, Any]:
    from cloudtutor.models.registry import build_teacher

    if 1 not in scales:
        raise ValueError("the grid needs scale 1 (the reference of relative bytes)")
    teacher = build_teacher("cityscapes19")
    results = [bench_video(Path(v), teacher, scales=scales, crfs=crfs, every=every, frames=frames, chunk=chunk)
               for v in videos]
    report = {"schema": SCHEMA, "ref_crf": min(crfs), "settings": {"scales": list(scales), "crfs": list(crfs),
              "every": every, "frames": frames, "chunk": chunk, "upscale": "bicubic"}, "results": results}
    report["profile"] = profile_of(results, report["ref_crf"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "bitrate.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "bitrate.md").write_text(markdown(report), encoding="utf-8")
    return report


def _bench_bitrate(args: argparse.Namespace) -> int:
    from cloudtutor.bench.videos import resolve_videos
    from cloudtutor.config.common import LogSettings
    from cloudtutor.logs import setup_logging

    setup_logging(LogSettings(level="INFO"), "cloudtutor.bench")
    videos = resolve_videos(args.videos)
    if videos is None:
        return 2
    try:
        run_bench_bitrate(videos, Path(args.out), scales=args.scale, crfs=args.crf, every=args.every,
                          frames=args.frames, chunk=args.chunk)
    except ValueError as exc:
        print(f"bench bitrate: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "bitrate.md").read_text())
    return 0


def add_bench_bitrate_parser(bench_sub) -> None:
    p = bench_sub.add_parser("bitrate", help="the bitrate policy's offline profile: bytes and teacher mIoU per scale x CRF")
    p.add_argument("--videos", nargs="+", help="videos (default: every video under the data root)")
    p.add_argument("--out", default="out/bench", help="output folder for bitrate.json and bitrate.md (default: out/bench)")
    p.add_argument("--scale", type=float, nargs="+", default=[1, 1.5, 2, 3, 4], help="downscale factors (default: 1 1.5 2 3 4)")
    p.add_argument("--crf", type=float, nargs="+", default=[18, 23, 28, 33], help="CRFs (default: 18 23 28 33)")
    p.add_argument("--every", type=int, default=25, help="every N-th frame (default: 25, about one per second)")
    p.add_argument("--frames", type=int, default=12, help="frames per video (default: 12)")
    p.add_argument("--chunk", type=int, default=10, help="frames per H.264 chunk (default: 10)")
    p.set_defaults(func=_bench_bitrate)


__all__ = ["add_bench_bitrate_parser", "encode_as_edge", "markdown", "profile_of", "run_bench_bitrate"]
