"""``cloudtutor bench split``: split-brain inference (`papers/split-brain.md` §3, Figure 3).

For each video, ``frames`` consecutive frames at ``every`` (the edge's
inference rate, e.g. 5 fps of 25 fps video), at the student's input size
(512 wide, brief §10.2). For each split point and codec:

* bytes per frame of the compressed activations, against raw float32
  activations, the JPEG (quality 75) of the frame and the H.264 frame (the
  frames as one CRF-23 chunk, preset medium, as the edge encodes them, IDR
  included), each at the student's input size and at the source size;
* accuracy: per-frame mIoU against the TFLite teacher (brief §10.3) of the
  split inference, its change from unsplit inference on the pristine frame,
  and its agreement with the unsplit labels; the cloud-only baselines pay in
  accuracy too, so the student on the decoded H.264 and JPEG frames is
  scored the same way;
* edge compute per frame: the front stages plus encoding, against running
  the whole student on the edge (one thread, this CPU); the cloud's decode
  and resume times beside them.

Temporal delta runs in frame order with the codec's closed-loop reference
and an intra frame every ``intra_every``, as the edge does.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloudtutor.accuracy import frame_miou

log = logging.getLogger("cloudtutor.bench.split")

SCHEMA = "cloudtutor.bench.split/v1"
NUM_CLASSES = 19
DEFAULT_SPLITS = ("level1", "b2", "b3", "up_l3", "up_l2")
DEFAULT_CODECS = (
    "q8-uniform+zstd", "q4-uniform+zstd", "q4-nonuniform+zstd", "q2-nonuniform+zstd",
    "q4-uniform+dct8+zstd", "q2-uniform+dct8+zstd+delta", "q1-uniform+dct8+zstd", "q1-uniform+dct16+zstd+delta",
)
DEFAULT_CRFS = (23.0, 18.0, 13.0, 8.0)


def jpeg_bytes(rgb: np.ndarray, quality: int = 75) -> tuple[int, np.ndarray]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return len(buf.getvalue()), decoded


def h264_frames(frames: Sequence[np.ndarray], crf: float = 23.0) -> tuple[float, list[np.ndarray]]:
    """Mean bytes per frame of ``frames`` as one chunk (sides padded to 16), and the decoded frames."""
    from cloudtutor.h264 import EncodeSettings, decode_chunk, encode_chunk

    h, w = frames[0].shape[:2]
    H, W = -(-h // 16) * 16, -(-w // 16) * 16
    padded = [np.pad(f, ((0, H - h), (0, W - w), (0, 0)), mode="edge") for f in frames]
    data = encode_chunk(padded, EncodeSettings(crf=crf))
    decoded = [d[:h, :w] for d in decode_chunk(data, expect_frames=len(frames))]
    return len(data) / len(frames), decoded


def _miou(reference: np.ndarray, prediction: np.ndarray) -> float:
    return frame_miou(reference, prediction, NUM_CLASSES)


def _mean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if arr.size and np.isfinite(arr).any() else float("nan")


def bench_video(video: Path, student, teacher, *, frames: int, every: int, splits: Sequence[str],
                codecs: Sequence[str], intra_every: int, crfs: Sequence[float]) -> dict[str, Any]:
    import torch

    from cloudtutor.split.codec import CodecConfig, decode, encode
    from cloudtutor.split.points import cloud_back, edge_front, resolve_split
    from cloudtutor.video import read_frames

    src = [f for i, (_, f) in enumerate(read_frames(str(video), max_frames=frames * every)) if i % every == 0]
    if not src:
        raise ValueError(f"{video}: no frames")
    model = student.model
    xs = [student.prepare(f) for f in src]
    size = (xs[0].shape[-1], xs[0].shape[-2])
    small = [np.asarray(torch.nn.functional.interpolate(  # the student's input frame, for JPEG/H.264 at that size
        torch.from_numpy(f).permute(2, 0, 1)[None].float(), size=(size[1], size[0]), mode="bilinear",
        align_corners=False, antialias=True)[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()) for f in src]
    refs = [teacher.predict_at(f, size) for f in src]

    def labels(logits: torch.Tensor) -> np.ndarray:
        return student.mapping.map_student(logits[0].argmax(0).to(torch.uint8).numpy())

    whole_ms, base = [], []
    for x in xs:
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = model(x)
        whole_ms.append(1000 * (time.perf_counter() - t0))
        base.append(labels(logits))
    base_miou = _mean([_miou(r, b) for r, b in zip(refs, base)])

    baselines: dict[str, Any] = {}
    def delta(decoded: Sequence[np.ndarray]) -> float:
        return _mean([_miou(r, student.predict(d)) for r, d in zip(refs, decoded)]) - base_miou

    for where, imgs in (("student_size", small), ("source_size", src)):
        # A CRF sweep: H.264 at the knob's CRF (the first) loses accuracy too,
        # so the fair comparison is also at equal accuracy.
        sweep = []
        for crf in crfs:
            per_frame, dec_h264 = h264_frames(imgs, crf)
            sweep.append({"crf": crf, "bytes_per_frame": per_frame, "miou_delta": delta(dec_h264)})
        jpeg = [jpeg_bytes(f) for f in imgs]
        within = [p for p in sweep if p["miou_delta"] > -0.01]
        baselines[where] = {
            "size": [imgs[0].shape[1], imgs[0].shape[0]],
            "h264_bytes_per_frame": sweep[0]["bytes_per_frame"], "h264_miou_delta": sweep[0]["miou_delta"],
            "h264_crf": sweep[0]["crf"], "h264_sweep": sweep,
            "h264_within_1pt": min(within, key=lambda p: p["bytes_per_frame"]) if within else None,
            "jpeg_bytes_per_frame": float(np.mean([b for b, _ in jpeg])), "jpeg_miou_delta": delta([d for _, d in jpeg]),
        }
    jpeg_ms = []
    for f in small:
        t0 = time.perf_counter()
        jpeg_bytes(f)
        jpeg_ms.append(1000 * (time.perf_counter() - t0))

    rows = []
    for split in splits:
        n = resolve_split(model, split)
        fronts, front_ms = [], []
        for x in xs:
            t0 = time.perf_counter()
            front = edge_front(model, x, n)
            front_ms.append(1000 * (time.perf_counter() - t0))
            fronts.append({k: v[0].numpy() for k, v in front.items()})
        raw = sum(v.nbytes for v in fronts[0].values())
        shapes = {k: v.shape for k, v in fronts[0].items()}
        for name in codecs:
            cfg = CodecConfig.parse(name, intra_every=intra_every)
            ref_e = ref_d = None
            sizes, enc_ms, dec_ms, back_ms, mious, agree = [], [], [], [], [], []
            for i, (front, ref) in enumerate(zip(fronts, refs)):
                use_ref = ref_e if i % cfg.intra_every else None
                t0 = time.perf_counter()
                body, mine = encode(front, cfg, use_ref)
                enc_ms.append(1000 * (time.perf_counter() - t0))
                t0 = time.perf_counter()
                got = decode(body, cfg, shapes, ref_d if not mine.intra else None)
                dec_ms.append(1000 * (time.perf_counter() - t0))
                ref_e, ref_d = mine.tensors, got.tensors
                t0 = time.perf_counter()
                logits = cloud_back(model, {k: torch.from_numpy(v)[None] for k, v in got.tensors.items()}, n)
                back_ms.append(1000 * (time.perf_counter() - t0))
                pred = labels(logits)
                sizes.append(len(body))
                mious.append(_miou(ref, pred))
                agree.append(_miou(base[i], pred))
            m = _mean(mious)
            rows.append({
                "split": split, "stages_on_edge": n, "live": sorted(shapes), "codec": cfg.name,
                "bytes_per_frame": float(np.mean(sizes)), "raw_fp32_bytes": raw,
                "x_smaller_than_raw": raw / float(np.mean(sizes)),
                "teacher_miou": m, "miou_delta": m - base_miou, "agreement_with_unsplit": _mean(agree),
                "edge_ms": float(np.mean(front_ms) + np.mean(enc_ms)), "front_ms": float(np.mean(front_ms)),
                "encode_ms": float(np.mean(enc_ms)), "decode_ms": float(np.mean(dec_ms)), "resume_ms": float(np.mean(back_ms)),
            })
            log.info("%s %s %s: %.0f B/frame, dmIoU %+.4f, edge %.0f ms", video.name, split, cfg.name,
                     rows[-1]["bytes_per_frame"], rows[-1]["miou_delta"], rows[-1]["edge_ms"])
    return {
        "video": video.name, "frames": len(src), "every": every, "student_size": list(size),
        "unsplit": {"teacher_miou": base_miou, "edge_ms": float(np.mean(whole_ms))},
        "jpeg_encode_ms": float(np.mean(jpeg_ms)), "baselines": baselines, "rows": rows,
    }


def best_points(report: Mapping[str, Any], max_loss: float = 0.01, min_agreement: float = 0.9) -> list[dict[str, Any]]:
    """Per video: the smallest row within ``max_loss`` mIoU of unsplit, and
    whether it beats each H.264 baseline."""
    out = []
    for r in report["results"]:
        ok = [row for row in r["rows"] if row["miou_delta"] > -max_loss]
        best = min(ok, key=lambda row: row["bytes_per_frame"]) if ok else None
        # The teacher-mIoU criterion is loose for a student this far from the
        # teacher (noise can even raise it); agreement with the unsplit labels
        # says how faithful the split inference is.
        faithful = [row for row in ok if row["agreement_with_unsplit"] >= min_agreement]
        strict = min(faithful, key=lambda row: row["bytes_per_frame"]) if faithful else None
        h_small = r["baselines"]["student_size"]["h264_bytes_per_frame"]
        h_src = r["baselines"]["source_size"]["h264_bytes_per_frame"]
        eq = r["baselines"]["student_size"]["h264_within_1pt"]
        out.append({
            "h264_equal_accuracy": eq, "min_agreement": min_agreement,
            "faithful": strict and {k: strict[k] for k in ("split", "codec", "bytes_per_frame", "miou_delta", "agreement_with_unsplit")}, "beats_h264_equal_accuracy": bool(best and eq and best["bytes_per_frame"] < eq["bytes_per_frame"]),
            "video": r["video"], "best": best and {k: best[k] for k in ("split", "codec", "bytes_per_frame", "miou_delta", "agreement_with_unsplit", "edge_ms")},
            "beats_h264_student_size": bool(best and best["bytes_per_frame"] < h_small),
            "beats_h264_source_size": bool(best and best["bytes_per_frame"] < h_src),
            "h264_student_size": h_small, "h264_source_size": h_src,
        })
    return out


def _kb(v: float) -> str:
    return f"{v / 1000:.1f}"


def markdown(report: Mapping[str, Any]) -> str:
    lines = ["# Split-brain inference: bytes, accuracy and edge compute per split point", "",
             "mIoU: per-frame mIoU against the TFLite teacher (brief §10.3); Δ: change from unsplit student "
             "inference on the pristine frame, in points. Edge: front stages + encoding, ms per frame on one "
             "core of this CPU. H.264: CRF 23 (the knob's default) unless said, preset medium, one chunk of all sampled frames (IDR included).", ""]
    for r in report["results"]:
        b = r["baselines"]
        s, S = b["student_size"], b["source_size"]
        lines += [
            f"## {r['video']}: {r['frames']} frames (every {r['every']}th), student input {r['student_size'][0]}x{r['student_size'][1]}", "",
            f"Unsplit: mIoU {100 * r['unsplit']['teacher_miou']:.1f}, whole model on the edge {r['unsplit']['edge_ms']:.0f} ms/frame. "
            f"Cloud-only baselines: at the student's size {s['size'][0]}x{s['size'][1]}: H.264 {_kb(s['h264_bytes_per_frame'])} kB "
            f"(Δ {100 * s['h264_miou_delta']:+.2f}), JPEG q75 {_kb(s['jpeg_bytes_per_frame'])} kB (Δ {100 * s['jpeg_miou_delta']:+.2f}, "
            f"{r['jpeg_encode_ms']:.0f} ms to encode); at the source size {S['size'][0]}x{S['size'][1]}: H.264 "
            f"{_kb(S['h264_bytes_per_frame'])} kB (Δ {100 * S['h264_miou_delta']:+.2f}), JPEG {_kb(S['jpeg_bytes_per_frame'])} kB "
            f"(Δ {100 * S['jpeg_miou_delta']:+.2f}). H.264 CRF sweep at the student's size: "
            + ", ".join(f"CRF {p['crf']:g} {_kb(p['bytes_per_frame'])} kB (Δ {100 * p['miou_delta']:+.2f})" for p in s["h264_sweep"]) + ".", "",
            "| split after | codec | kB/frame | raw fp32 kB | x smaller than raw | vs H.264 (student size) | mIoU | Δ mIoU | agreement w/ unsplit | edge ms (front+enc) | cloud ms (dec+resume) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in r["rows"]:
            lines.append(
                f"| {row['split']} ({row['stages_on_edge']}) | {row['codec']} | {_kb(row['bytes_per_frame'])} | {_kb(row['raw_fp32_bytes'])} | "
                f"{row['x_smaller_than_raw']:.0f} | {row['bytes_per_frame'] / s['h264_bytes_per_frame']:.2f}x | "
                f"{100 * row['teacher_miou']:.1f} | {100 * row['miou_delta']:+.2f} | {100 * row['agreement_with_unsplit']:.1f} | "
                f"{row['front_ms']:.0f}+{row['encode_ms']:.0f} | {row['decode_ms']:.0f}+{row['resume_ms']:.0f} |")
        lines.append("")
    lines += ["## Best point under 1 mIoU point of loss", ""]
    for p in report["best"]:
        if p["best"] is None:
            lines.append(f"- {p['video']}: no split point stays within 1 point of unsplit mIoU.")
            continue
        bp = p["best"]
        verdict = ("smaller than" if p["beats_h264_student_size"] else "NOT smaller than")
        lines.append(
            f"- {p['video']}: after {bp['split']} with {bp['codec']}: {_kb(bp['bytes_per_frame'])} kB/frame at Δ "
            f"{100 * bp['miou_delta']:+.2f} points: {verdict} the H.264 frame at the student's size "
            f"({_kb(p['h264_student_size'])} kB); {'smaller' if p['beats_h264_source_size'] else 'not smaller'} than at "
            f"the source size ({_kb(p['h264_source_size'])} kB); agreement with unsplit labels "
            f"{100 * bp['agreement_with_unsplit']:.1f}%, edge {bp['edge_ms']:.0f} ms. H.264 within 1 point: "
            + (f"CRF {p['h264_equal_accuracy']['crf']:g}, {_kb(p['h264_equal_accuracy']['bytes_per_frame'])} kB: the split is "
               f"{'smaller' if p['beats_h264_equal_accuracy'] else 'larger'}." if p["h264_equal_accuracy"] else "none in the sweep."))
        f = p.get("faithful")
        lines.append(
            f"  - also agreeing with the unsplit labels on >= {100 * p['min_agreement']:.0f}% (mIoU): "
            + (f"after {f['split']} with {f['codec']}, {_kb(f['bytes_per_frame'])} kB/frame "
               f"({f['bytes_per_frame'] / p['h264_student_size']:.0f}x the H.264 frame)." if f else "none."))
    return "\n".join(lines) + "\n"


def plot(report: Mapping[str, Any], path: Path) -> None:
    """The paper's Figure 3: edge compute (x) against bytes across the split (y), with the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    markers = {"uniform": "o", "nonuniform": "s"}
    for ax, r in zip(axes[0], results):
        splits = list(dict.fromkeys(row["split"] for row in r["rows"]))
        colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(splits), 1)))
        for split, color in zip(splits, colors):
            for row in (x for x in r["rows"] if x["split"] == split):
                q = "nonuniform" if "nonuniform" in row["codec"] else "uniform"
                ok = row["miou_delta"] > -0.01
                ax.scatter(row["edge_ms"], row["bytes_per_frame"], marker=markers[q], color=color,
                           facecolors=color if ok else "none", s=36)
            ax.scatter([], [], color=color, label=f"split after {split}")
        b = r["baselines"]["student_size"]
        ax.axhline(b["h264_bytes_per_frame"], color="red", ls="--", label="cloud-only H.264 (student size)")
        ax.scatter([r["jpeg_encode_ms"]], [b["jpeg_bytes_per_frame"]], color="red", marker="*", s=120,
                   label="cloud-only JPEG q75 (student size)")
        ax.axvline(r["unsplit"]["edge_ms"], color="black", ls=":", label="local-only (whole model)")
        ax.set_yscale("log")
        ax.set_xlabel("edge compute per frame (ms, front + encode, 1 core)")
        ax.set_ylabel("bytes per frame across the split")
        ax.set_title(f"{r['video']}  (filled: < 1 point mIoU loss; o uniform, s non-uniform)", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench_split(
    videos: Sequence[Path], out: Path, *, frames: int = 8, every: int = 5, splits: Sequence[str] = DEFAULT_SPLITS,
    codecs: Sequence[str] = DEFAULT_CODECS, intra_every: int = 10, crfs: Sequence[float] = DEFAULT_CRFS, width: int = 512,
) -> dict[str, Any]:
    import torch

    from cloudtutor.models.registry import build_student, build_teacher
    from cloudtutor.split.codec import CodecConfig
    from cloudtutor.split.points import resolve_split

    if frames < 1 or every < 1:
        raise ValueError("frames and every must be >= 1")
    for name in codecs:
        CodecConfig.parse(name)  # a typo fails before minutes of work
    student = build_student("cityscapes19", width=width)
    for split in splits:
        resolve_split(student.model, split)
    teacher = build_teacher("cityscapes19")  # one TFLite thread: it shares the process with torch (data README)
    torch.set_flush_denormal(True)
    results = [bench_video(Path(v), student, teacher, frames=frames, every=every, splits=splits, codecs=codecs,
                           intra_every=intra_every, crfs=crfs) for v in videos]
    report: dict[str, Any] = {
        "schema": SCHEMA, "model": "espnet (cityscapes19 student)", "threads": torch.get_num_threads(),
        "settings": {"frames": frames, "every": every, "splits": list(splits), "codecs": list(codecs),
                     "intra_every": intra_every, "crfs": list(crfs), "width": width},
        "results": results,
    }
    report["best"] = best_points(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "split.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out / "split.png")
    return report


def _bench_split(args: argparse.Namespace) -> int:
    import torch

    from cloudtutor.bench.videos import resolve_videos
    from cloudtutor.config.common import LogSettings
    from cloudtutor.logs import setup_logging

    setup_logging(LogSettings(level="INFO"), "cloudtutor.bench")
    torch.set_num_threads(args.threads)
    videos = resolve_videos(args.videos)
    if videos is None:
        return 2
    try:
        run_bench_split(videos, Path(args.out), frames=args.frames, every=args.every, splits=args.split,
                        codecs=args.codec, intra_every=args.intra_every, crfs=args.crf)
    except ValueError as exc:
        print(f"bench split: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "split.md").read_text())
    return 0


def add_bench_split_parser(bench_sub) -> None:
    p = bench_sub.add_parser("split", help="split-brain: activation bytes vs raw/JPEG/H.264, mIoU change, edge compute (Figure 3)")
    p.add_argument("--videos", nargs="+", help="videos (default: every video under the data root)")
    p.add_argument("--out", default="out/bench", help="output folder for split.json, split.md, split.png (default: out/bench)")
    p.add_argument("--split", nargs="+", default=list(DEFAULT_SPLITS), help=f"split points (stage names; default: {' '.join(DEFAULT_SPLITS)})")
    p.add_argument("--codec", nargs="+", default=list(DEFAULT_CODECS), help="codecs, e.g. q4-uniform+dct8+zstd+delta")
    p.add_argument("--frames", type=int, default=8, help="frames per video (default: 8)")
    p.add_argument("--every", type=int, default=5, help="every N-th frame, the edge's inference rate (default: 5)")
    p.add_argument("--intra-every", dest="intra_every", type=int, default=10, help="intra frame every N frames with +delta (default: 10)")
    p.add_argument("--crf", type=float, nargs="+", default=list(DEFAULT_CRFS),
                   help="CRFs of the H.264 baseline; the first is the headline (default: 23 18 13 8; 23 is the knob's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.set_defaults(func=_bench_split)


__all__ = ["add_bench_split_parser", "best_points", "h264_frames", "jpeg_bytes", "markdown", "run_bench_split"]
