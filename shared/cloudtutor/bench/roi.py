"""``cloudtutor bench roi``: AccMPEG's accuracy/bytes trade-off on the real videos.

For each video, every ``every``-th frame at the size the edge sends
(``width`` wide, sides multiples of 16), encoded as the edge does (chunks
of ``chunk`` frames, libx264 preset medium through PyAV), decoded, and
scored by the TFLite teacher against the teacher on the pristine frames at
the same size (brief §10.3: per-frame mIoU as the headline, pooled mIoU
and pixel accuracy beside it). Schemes:

* ``uniform``: one CRF for every block, over a CRF grid;
* ``accmodel``: ROI from the trained AccModel, run on one frame every
  ``roi_every`` frames (§4), thresholded at ``alpha``, dilated by ``dilate``;
  ROI blocks ``roi_qoffset x 51`` QP below the background's CRF;
* ``accgrad``: the oracle: ROI from the exact AccGrad of every frame
  (H and L through real H.264 at the AccModel's training CRFs, gradients
  through the frozen ESPNet proxy of the teacher, brief §10.7), thresholded
  like the training labels, dilated likewise;
* ``random``: the control: each oracle mask's blocks shuffled over the
  frame (same share, no knowledge), which tells whether AccGrad picks the
  right blocks even where ROI as such does not pay;
* ``shuffled``: the AccModel's control: each of its masks with the blocks
  shuffled over the frame, kept as long as the mask (same share, same
  churn), which tells whether its saving comes from the blocks it picks or
  from spending its share of the frame at a better QP at all.

ROI points use the same background CRFs (``roi_crfs``). For each, the
effective QPs are read back from the bitstream (mean over ROI blocks and
over the rest; all frames and IDR frames only), with PSNR inside and
outside the ROI against the uniform encode at the same CRF; and the bytes
a uniform encode would need for the same mIoU (linear interpolation on the
uniform curve) give the saving at equal accuracy of that point. The figure
to read is per curve (scheme x QP offset): the Bjøntegaard-style saving
over the mIoU range the ROI and uniform curves share, with a paired
bootstrap interval over the chunks (:func:`bd_table`); single points on a
100-frame video swing by ±10%.

Frames are sent ``width`` wide, never wider than the video itself
(default: each video at its own size, as the edge sends at ``scale`` 1).
The edge-side cost is the AccModel's time per run and per frame (amortised
over ``roi_every``) against the encoder's time per frame, on this CPU.

The AccModel's training video is scored on its held-out tail only; any
other video on all of its sampled frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloudtutor.accuracy import confusion_matrix, frame_miou, pixel_accuracy, pooled_miou
from cloudtutor.bench.bdrate import ChunkedRun, bootstrap_bd_saving
from cloudtutor.bench.superres import psnr

log = logging.getLogger("cloudtutor.bench.roi")

NUM_CLASSES = 19
SCHEMA = "cloudtutor.bench.roi/v1"
PAPER_QP = (30, 40)
#: A dense uniform sweep: the per-curve saving fits it locally, so it pays to have points everywhere.
UNIFORM_CRFS = tuple(range(8, 35, 2))
ROI_CRFS = (12, 16, 20, 24, 28, 32)
#: 3 and 6 QP better inside the ROI (x264 scales qoffset by 51).
ROI_QOFFSETS = (-3 / 51, -6 / 51)
#: The ROI curves: the AccModel, the exact-AccGrad oracle, random blocks of the oracle's share, and of the AccModel's.
ROI_SCHEMES = ("accmodel", "accgrad", "random", "shuffled")


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def encode_scheme(frames: Sequence[np.ndarray], crf: float, *, chunk: int, qoffset: float = 0.0,
                  masks: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """Encode in chunks, decode, read QPs back: decoded frames, bytes, QP maps, encode seconds."""
    from cloudtutor.h264 import EncodeSettings, decode_chunk, encode_chunk, read_qp_maps

    settings = EncodeSettings(crf=crf, roi_qoffset=qoffset)
    decoded, qps, idr, chunk_bytes, seconds = [], [], [], [], 0.0
    for start in range(0, len(frames), chunk):
        part = frames[start:start + chunk]
        roi = None if masks is None else masks[start:start + chunk]
        t = time.perf_counter()
        data = encode_chunk(part, settings, roi=roi)
        seconds += time.perf_counter() - t
        chunk_bytes.append(len(data))
        decoded += decode_chunk(data, expect_frames=len(part))
        maps = read_qp_maps(data)
        qps += maps
        idr += [True] + [False] * (len(maps) - 1)
    return {"decoded": decoded, "bytes": sum(chunk_bytes), "chunk_bytes": chunk_bytes, "qp": qps, "idr": idr,
            "encode_s": seconds}


def proxy_labels(proxy, frame: np.ndarray) -> np.ndarray:
    """The differentiable proxy's own labels (its void channel 19 counts as a miss)."""
    import torch

    from cloudtutor.accmpeg.accgrad import rgb_batch
    from cloudtutor.srtrain import espnet_input

    with torch.no_grad():
        return proxy(espnet_input(rgb_batch(frame)))[0].argmax(0).numpy()


def score(teacher, decoded: Sequence[np.ndarray], references: Sequence[np.ndarray], proxy=None,
          proxy_references: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """Teacher agreement with the teacher on the pristine frames (§10.3); with ``proxy``, also the
    proxy's agreement with itself on the pristine frames (the model AccGrad is exact for).
    ``frame_miou`` keeps every frame's value for the bootstrap of :func:`bd_table`."""
    mious, conf, proxy_mious = [], np.zeros((NUM_CLASSES, NUM_CLASSES + 1), dtype=np.int64), []
    for i, (frame, ref) in enumerate(zip(decoded, references)):
        labels = teacher.predict(frame)
        mious.append(frame_miou(ref, labels, NUM_CLASSES))
        conf += confusion_matrix(ref, labels, NUM_CLASSES)
        if proxy is not None and proxy_references is not None:
            proxy_mious.append(frame_miou(proxy_references[i], proxy_labels(proxy, frame), NUM_CLASSES))
    out: dict[str, Any] = {"teacher_miou": round(float(np.nanmean(mious)), 4), "pooled_miou": round(pooled_miou(conf), 4),
                           "pixel_accuracy": round(pixel_accuracy(conf), 4),
                           "frame_miou": [None if np.isnan(m) else round(float(m), 5) for m in mious]}
    if proxy_mious:
        out["proxy_miou"] = round(float(np.nanmean(proxy_mious)), 4)
    return out


def region_psnr(decoded: Sequence[np.ndarray], originals: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[float | None, float | None]:
    """PSNR over the ROI pixels and over the rest, pooled over frames."""
    from cloudtutor.accmpeg.rects import upsample

    err = {True: [0.0, 0], False: [0.0, 0]}
    for d, o, m in zip(decoded, originals, masks):
        pix = upsample(m)
        sq = ((d.astype(np.float64) - o.astype(np.float64)) ** 2).sum(-1)
        for side in (True, False):
            sel = pix if side else ~pix
            err[side][0] += float(sq[sel].sum())
            err[side][1] += int(sel.sum()) * 3

    def db(side: bool) -> float | None:
        total, n = err[side]
        return None if n == 0 else round(10 * np.log10(255.0**2 / max(total / n, 1e-12)), 2)

    return db(True), db(False)


def qp_summary(qp: Sequence[np.ndarray], idr: Sequence[bool], masks: Sequence[np.ndarray] | None) -> dict[str, Any]:
    from cloudtutor.h264 import qp_pair

    def pair(sel: Sequence[int]) -> list[float | None]:
        ms = [None if masks is None else masks[i] for i in sel]
        return [None if v is None else round(v, 2) for v in qp_pair([qp[i] for i in sel], ms)]

    everything = list(range(len(qp)))
    return {"all_frames": pair(everything), "idr_frames": pair([i for i in everything if idr[i]])}


def bytes_at_equal_accuracy(uniform: Sequence[Mapping[str, Any]], miou: float, key: str = "teacher_miou") -> float | None:
    """Bytes per frame the uniform curve needs for ``miou`` (linear between its points; None outside it)."""
    pts = sorted((u[key], u["bytes_per_frame"]) for u in uniform)
    for (m0, b0), (m1, b1) in zip(pts, pts[1:]):
        if m0 <= miou <= m1:
            return b0 if m1 == m0 else b0 + (b1 - b0) * (miou - m0) / (m1 - m0)
    return None


def oracle_masks(frames: Sequence[np.ndarray], proxy, *, crf_high: float, crf_low: float, alpha: float,
                 dilation: int, acc: str = "cross_entropy") -> list[np.ndarray]:
    from cloudtutor.accmpeg.accgrad import accgrad, accgrad_labels
    from cloudtutor.accmpeg.rects import dilate
    from cloudtutor.accmpeg.train import high_low
    from cloudtutor.srtrain import espnet_input

    high, low = high_low(frames, crf_high, crf_low)
    return [dilate(accgrad_labels(accgrad(proxy, h, lo, normalize=espnet_input, acc=acc), alpha), dilation)
            for h, lo in zip(high, low)]


def _brief(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row for the progress log, without its per-chunk and per-frame lists."""
    return {k: v for k, v in row.items() if k not in ("chunk_bytes", "frame_miou")}


def _chunked(row: Mapping[str, Any], chunk: int) -> ChunkedRun:
    mious = [np.nan if m is None else m for m in row["frame_miou"]]
    return ChunkedRun(row["chunk_bytes"], _chunks(mious, chunk))


def bd_table(schemes: Mapping[str, Sequence[Mapping[str, Any]]], chunk: int, *, rounds: int = 1000) -> list[dict[str, Any]]:
    """The saving of each ROI curve (scheme x QP offset) over the uniform
    curve at equal teacher mIoU, Bjøntegaard style over the accuracy range
    both cover, with a paired bootstrap interval over the chunks
    (:mod:`cloudtutor.bench.bdrate`). Single points swing by ±10% on a
    short video; this is the figure to read."""
    curves: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for name, rows in schemes.items():
        if name == "uniform":
            continue
        for row in rows:
            curves.setdefault((name, row["roi_qoffset"]), []).append(row)
    tests = {key: [_chunked(r, chunk) for r in rows] for key, rows in curves.items()
             if len({r["teacher_miou"] for r in rows}) >= 2}
    boot = bootstrap_bd_saving([_chunked(r, chunk) for r in schemes["uniform"]], tests, rounds=rounds)
    out = []
    for (name, qoffset), bd in boot.items():
        rows = curves[name, qoffset]
        out.append({"scheme": name, "roi_qoffset": qoffset, "points": len(rows),
                    "roi_coverage": round(float(np.mean([r["roi_coverage"] for r in rows])), 4),
                    **{k: (None if v is None else (round(v, 4) if isinstance(v, float) else v)) for k, v in bd.items()},
                    "overlap": None if bd["overlap"] is None else [round(v, 4) for v in bd["overlap"]]})
    return out


def shuffle_blocks(masks: Sequence[np.ndarray], *, seed: int) -> list[np.ndarray]:
    """Each mask with its blocks shuffled over the frame: the same share, no knowledge. A mask
    the list repeats (the planner's, held for ``roi_every`` frames) gets one shuffle, held as long."""
    rng = np.random.default_rng(seed)
    done: dict[int, np.ndarray] = {}
    out = []
    for m in masks:
        if id(m) not in done:
            done[id(m)] = rng.permutation(m.ravel()).reshape(m.shape)
        out.append(done[id(m)])
    return out


def bench_video(video: Path, ckpt, teacher, proxy, *, trained: bool, every: int, width: int | None, held_out: float,
                chunk: int, crfs: Sequence[float], roi_crfs: Sequence[float], qoffsets: Sequence[float], alpha: float,
                dilation: int, roi_every: int, bootstrap: int = 1000,
                roi_schemes: Sequence[str] = ROI_SCHEMES, model_width: int | None = None) -> dict[str, Any]:
    from cloudtutor.accmpeg.roi import RoiPlanner, coverage
    from cloudtutor.accmpeg.train import sent_frames

    train, tail = sent_frames(video, every=every, width=width, held_out=held_out)
    frames = tail if trained else train + tail
    if not frames:
        raise ValueError(f"{video}: no frames to score (lower --every or raise --held-out)")
    h, w = frames[0].shape[:2]
    log.info("%s: %d frames at %dx%d (%s)", video.name, len(frames), w, h, "held-out tail" if trained else "unseen video")
    references = [teacher.predict(f) for f in frames]
    proxy_refs = [proxy_labels(proxy, f) for f in frames]

    uniform = []
    for crf in crfs:
        enc = encode_scheme(frames, crf, chunk=chunk)
        row = {"crf": crf, "bytes_per_frame": round(enc["bytes"] / len(frames)), "chunk_bytes": enc["chunk_bytes"],
               **score(teacher, enc["decoded"], references, proxy, proxy_refs),
               "psnr_db": round(float(np.mean([psnr(d, o) for d, o in zip(enc["decoded"], frames)])), 2),
               "qp_mean": round(float(np.mean([q.mean() for q in enc["qp"]])), 2),
               "encode_ms_per_frame": round(1000 * enc["encode_s"] / len(frames), 2)}
        uniform.append(row)
        log.info("%s uniform CRF %g: %s", video.name, crf, _brief(row))

    planner = RoiPlanner(ckpt.model, width=model_width)
    model_masks = planner.plan(frames, every=roi_every, alpha=alpha, dilation=dilation)
    model_ms = 1000 * planner.model_seconds / max(1, planner.runs)
    log.info("%s: AccModel ran %d times, %.1f ms a run", video.name, planner.runs, model_ms)
    masks_of = {"accmodel": model_masks}
    if "shuffled" in roi_schemes:
        masks_of["shuffled"] = shuffle_blocks(model_masks, seed=1)
    if {"accgrad", "random"} & set(roi_schemes):  # the oracle's gradients take minutes; skip them when unused
        cfg = ckpt.config
        t = time.perf_counter()
        masks_of["accgrad"] = oracle_masks(
            frames, proxy, crf_high=cfg["crf_high"], crf_low=cfg["crf_low"], alpha=cfg["label_alpha"],
            dilation=dilation, acc=cfg.get("agreement", "cross_entropy"))
        log.info("%s: exact AccGrad of %d frames in %.0f s", video.name, len(frames), time.perf_counter() - t)
        masks_of["random"] = shuffle_blocks(masks_of["accgrad"], seed=0)

    schemes: dict[str, list[dict[str, Any]]] = {"uniform": uniform, **{name: [] for name in roi_schemes}}
    flat: dict[float, list[np.ndarray]] = {}  # same CRF without ROI, the PSNR baseline: one encode per CRF
    for name in roi_schemes:
        masks = masks_of[name]
        for qoffset, crf in ((q, c) for q in qoffsets for c in roi_crfs):
            enc = encode_scheme(frames, crf, chunk=chunk, qoffset=qoffset, masks=masks)
            if crf not in flat:
                flat[crf] = encode_scheme(frames, crf, chunk=chunk)["decoded"]
            miou = score(teacher, enc["decoded"], references, proxy, proxy_refs)
            equal = bytes_at_equal_accuracy(uniform, miou["teacher_miou"])
            equal_proxy = bytes_at_equal_accuracy(uniform, miou["proxy_miou"], "proxy_miou")
            bpf = enc["bytes"] / len(frames)
            row = {
                "crf": crf, "roi_qoffset": round(qoffset, 4), "bytes_per_frame": round(bpf), **miou,
                "roi_coverage": round(coverage(masks), 4),
                "effective_qp": qp_summary(enc["qp"], enc["idr"], masks),
                "psnr_roi_db": region_psnr(enc["decoded"], frames, masks),
                "psnr_same_crf_no_roi_db": region_psnr(flat[crf], frames, masks),
                "uniform_bytes_at_equal_miou": None if equal is None else round(equal),
                "saving_at_equal_miou": None if equal is None else round(1 - bpf / equal, 4),
                "saving_at_equal_proxy_miou": None if equal_proxy is None else round(1 - bpf / equal_proxy, 4),
                "encode_ms_per_frame": round(1000 * enc["encode_s"] / len(frames), 2),
                "chunk_bytes": enc["chunk_bytes"],
            }
            schemes[name].append(row)
            log.info("%s %s CRF %g: %s", video.name, name, crf, _brief(row))
    # The edge encodes with the AccModel's masks; the other schemes only stand in when it did not run.
    timed = ["accmodel"] if "accmodel" in roi_schemes else roi_schemes
    encode_ms = float(np.mean([r["encode_ms_per_frame"] for name in timed for r in schemes[name]]))
    return {
        "video": video.name, "split": "held-out tail of the AccModel's training video" if trained else "unseen video",
        "frames": len(frames), "size": [w, h], "every": every, "chunk": chunk, "schemes": schemes,
        "bd_saving": bd_table(schemes, chunk, rounds=bootstrap),
        "edge_cost": {"accmodel_ms_per_run": round(model_ms, 2), "roi_every": roi_every,
                      "accmodel_ms_per_frame": round(model_ms / roi_every, 2),
                      "roi_encode_ms_per_frame": round(encode_ms, 2),
                      "accmodel_vs_encode": round(model_ms / roi_every / encode_ms, 3)},
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _saving(v: float | None) -> str:
    return "outside the uniform curve" if v is None else f"{100 * v:+.1f}%"


def markdown(report: Mapping[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# bench roi (AccMPEG)", "",
        f"AccModel `{report['accmodel']}` trained on **{report['trained_on']}**; AccGrad gradients from "
        f"{report['gradients_from']}. Teacher mIoU against the TFLite teacher on the pristine frames at the sent size. "
        f"ROI: qoffset {_offsets(s)}, alpha {s['alpha']}, dilate {s['dilate']}, "
        f"AccModel every {s['roi_every']} frames, on {_run_width(s)}; chunks of {s['chunk']} frames, x264 preset medium, aq-mode 1.", "",
        "## Saving at equal teacher mIoU, per curve", "",
        "Bjøntegaard-style: log bytes fitted against mIoU for the ROI curve and the uniform CRF curve, the gap "
        "averaged over the mIoU range both cover; interval: paired bootstrap over the chunks "
        f"({s.get('bootstrap', '?')} draws). Positive = the ROI stream is smaller at equal accuracy.", "",
        "| video | split | scheme | ROI QP offset | ROI share | points | mIoU range | saving | 90% interval | P(saving > 0) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        split = "trained (held-out tail)" if r["split"].startswith("held-out") else "unseen"
        for bd in r.get("bd_saving", []):
            rng = "-" if bd["overlap"] is None else f"{100 * bd['overlap'][0]:.1f}-{100 * bd['overlap'][1]:.1f}"
            interval = "-" if bd["low"] is None else f"{100 * bd['low']:+.1f}% … {100 * bd['high']:+.1f}%"
            p = "-" if bd["p_positive"] is None else f"{bd['p_positive']:.2f}"
            lines.append(f"| {r['video']} | {split} | {bd['scheme']} | {51 * bd['roi_qoffset']:+.1f} | "
                         f"{100 * bd['roi_coverage']:.0f}% | {bd['points']} | {rng} | {_saving(bd['saving'])} | {interval} | {p} |")
    lines += [
        "", "## Every point", "",
        "| video | split | scheme | ROI QP offset | CRF | bytes/frame | teacher mIoU | pooled mIoU | ROI share | QP ROI / rest (all) | QP ROI / rest (IDR) "
        "| PSNR ROI / rest | same CRF no ROI | saving at equal mIoU | proxy mIoU | saving at equal proxy mIoU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pair(v) -> str:
        return " / ".join("-" if x is None else f"{x:.1f}" for x in v)

    for r in report["results"]:
        split = "trained (held-out tail)" if r["split"].startswith("held-out") else "unseen"
        for name, rows in r["schemes"].items():
            for row in rows:
                offset = "-" if name == "uniform" else f"{51 * row['roi_qoffset']:+.1f}"
                head = (f"| {r['video']} | {split} | {name} | {offset} | {row['crf']:g} | {row['bytes_per_frame']} | "
                        f"{100 * row['teacher_miou']:.1f} | {100 * row['pooled_miou']:.1f} | ")
                if name == "uniform":
                    lines.append(head + f"- | {row['qp_mean']:.1f} (mean) | - | {row['psnr_db']:.2f} (frame) | - | - | "
                                        f"{_pct(row.get('proxy_miou'))} | - |")
                    continue
                lines.append(head + f"{100 * row['roi_coverage']:.0f}% | {pair(row['effective_qp']['all_frames'])} | "
                             f"{pair(row['effective_qp']['idr_frames'])} | {pair(row['psnr_roi_db'])} | "
                             f"{pair(row['psnr_same_crf_no_roi_db'])} | {_saving(row['saving_at_equal_miou'])} | "
                             f"{_pct(row.get('proxy_miou'))} | {_saving(row.get('saving_at_equal_proxy_miou'))} |")
    lines += ["", "Edge-side cost on this CPU (1 torch thread):", "",
              "| video | AccModel ms/run | runs every | AccModel ms/frame | ROI encode ms/frame | AccModel / encode |",
              "|---|---|---|---|---|---|"]
    for r in report["results"]:
        c = r["edge_cost"]
        lines.append(f"| {r['video']} | {c['accmodel_ms_per_run']:.1f} | {c['roi_every']} | {c['accmodel_ms_per_frame']:.2f} | "
                     f"{c['roi_encode_ms_per_frame']:.2f} | {c['accmodel_vs_encode']:.2f} |")
    lines += ["", f"Paper's QP pair: {PAPER_QP}. Saving = 1 - ROI bytes / uniform bytes at the same mIoU (interpolated on "
              "the uniform curve). Proxy mIoU: the differentiable proxy (whose gradients made AccGrad) against itself on "
              "the pristine frames. QPs are read back per macroblock from the bitstream; blocks without residual report "
              "the QP they inherit, so the IDR column (all blocks intra) is the cleaner pair."]
    return "\n".join(lines) + "\n"


def _run_width(settings: Mapping[str, Any]) -> str:
    w = settings.get("accmodel_run_width")
    return "each frame at its own size" if w is None else f"frames shrunk to at most {w} px wide"


def _offsets(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{q:.4f} (x51 = {51 * q:.1f} QP)" for q in settings["roi_qoffsets"])


def plot(report: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, r in zip(axes[0], results):
        labels = {"uniform": "uniform CRF", "accmodel": "ROI, AccModel", "accgrad": "ROI, exact AccGrad (oracle)",
                  "random": "ROI, random blocks, oracle's share (control)",
                  "shuffled": "ROI, random blocks, AccModel's share (control)"}
        for name, style in (("uniform", "o-"), ("accmodel", "s-"), ("accgrad", "^--"), ("random", "x:"), ("shuffled", "d:")):
            rows = r["schemes"].get(name, [])
            # One curve per ROI QP offset when a run swept several.
            offsets = sorted({x.get("roi_qoffset") for x in rows}, key=lambda q: -(q or 0))
            for q in offsets:
                pts = sorted((x for x in rows if x.get("roi_qoffset") == q), key=lambda x: x["bytes_per_frame"])
                label = labels[name] if len(offsets) == 1 else f"{labels[name]}, {51 * q:+.0f} QP"
                bd = next((b for b in r.get("bd_saving", []) if b["scheme"] == name and b["roi_qoffset"] == q), None)
                if bd is not None and bd["saving"] is not None:
                    label += f" (saving {100 * bd['saving']:+.1f}%)"
                ax.plot([x["bytes_per_frame"] for x in pts], [100 * x["teacher_miou"] for x in pts], style, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("bytes per frame")
        ax.set_ylabel("teacher mIoU vs pristine (%)")
        split = "trained, held-out tail" if r["split"].startswith("held-out") else "unseen"
        ax.set_title(f"{r['video']} ({split})", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench_roi(
    videos: Sequence[Path], accmodel: Path, out: Path, *, crfs: Sequence[float] = UNIFORM_CRFS,
    roi_crfs: Sequence[float] = ROI_CRFS, roi_qoffsets: Sequence[float] = ROI_QOFFSETS, alpha: float = 0.2, dilate: int = 0,
    roi_every: int = 10, every: int = 2, chunk: int = 10, held_out: float | None = None, bootstrap: int = 1000,
    width: int | None = None, schemes: Sequence[str] = ROI_SCHEMES, model_width: int | None = None,
) -> dict[str, Any]:
    """``model_width``: the AccModel runs on frames shrunk to at most this
    width (None: its training width, as the edge runs it; 0: each frame's own)."""
    import torch

    from cloudtutor.accmpeg.accmodel import load_accmodel
    from cloudtutor.models.registry import build_teacher
    from cloudtutor.srrun import frozen_proxy

    if not roi_qoffsets or not all(-1.0 <= q < 0.0 for q in roi_qoffsets):
        raise ValueError(f"each roi_qoffset must lie in [-1, 0), got {list(roi_qoffsets)}")
    torch.set_flush_denormal(True)
    ckpt = load_accmodel(accmodel)
    cfg = ckpt.config
    trained_on = str(cfg.get("video", "(not recorded)"))
    held = cfg.get("held_out", 0.25) if held_out is None else held_out
    run_width = ckpt.width if model_width is None else (model_width or None)
    teacher = build_teacher("cityscapes19")  # one TFLite thread: it shares the process with torch (data README)
    proxy = frozen_proxy(cfg.get("proxy", "espnet"))
    results = []
    for video in videos:
        results.append(bench_video(
            Path(video), ckpt, teacher, proxy, trained=Path(video).name == trained_on, every=every,
            width=width, held_out=held, chunk=chunk, crfs=crfs, roi_crfs=roi_crfs,
            qoffsets=roi_qoffsets, alpha=alpha, dilation=dilate, roi_every=roi_every, bootstrap=bootstrap,
            roi_schemes=schemes, model_width=run_width))
    report = {
        "schema": SCHEMA, "accmodel": str(accmodel), "trained_on": trained_on,
        "gradients_from": f"a frozen copy of the pretrained {cfg.get('proxy', 'espnet')!r} (differentiable proxy of the "
                          "TFLite teacher, brief §10.7)",
        "accgrad_pair_crf": [cfg.get("crf_high"), cfg.get("crf_low")], "label_alpha": cfg.get("label_alpha"),
        "agreement": cfg.get("agreement", "cross_entropy"),
        "settings": {"crfs": list(crfs), "roi_crfs": list(roi_crfs), "roi_qoffsets": list(roi_qoffsets), "alpha": alpha,
                     "schemes": list(schemes),
                     "dilate": dilate, "roi_every": roi_every, "every": every, "chunk": chunk, "width": width,
                     "accmodel_width": ckpt.width, "accmodel_run_width": run_width,
                     "bootstrap": bootstrap},
        "paper_qp": list(PAPER_QP), "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "roi.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "roi.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out / "roi.png")
    return report


def _bench_roi(args: argparse.Namespace) -> int:
    import torch

    from cloudtutor.bench.videos import resolve_videos
    from cloudtutor.config.common import LogSettings
    from cloudtutor.logs import setup_logging

    setup_logging(LogSettings(level="INFO"), "cloudtutor.bench")
    torch.set_num_threads(args.threads)
    if not Path(args.accmodel).is_file():
        print(f"--accmodel: {args.accmodel} not found (train one with `cloudtutor train accmodel`)", file=sys.stderr)
        return 2
    videos = resolve_videos(args.videos)
    if videos is None:
        return 2
    try:
        run_bench_roi(videos, Path(args.accmodel), Path(args.out), crfs=args.crf, roi_crfs=args.roi_crf,
                      roi_qoffsets=args.roi_qoffset, alpha=args.alpha, dilate=args.dilate, roi_every=args.roi_every,
                      every=args.every, chunk=args.chunk, bootstrap=args.bootstrap, width=args.width,
                      schemes=args.schemes, model_width=args.model_width)
    except ValueError as exc:
        print(f"bench roi: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "roi.md").read_text())
    return 0


def add_bench_roi_parser(bench_sub) -> None:
    p = bench_sub.add_parser("roi", help="AccMPEG: bytes and teacher mIoU of uniform CRF vs ROI (AccModel, exact AccGrad)")
    p.add_argument("--accmodel", default="out/accmpeg/accmodel.pt", help="AccModel checkpoint (default: out/accmpeg/accmodel.pt)")
    p.add_argument("--videos", nargs="+", help="videos (default: every video under the data root)")
    p.add_argument("--out", default="out/bench", help="output folder for roi.json, roi.md, roi.png (default: out/bench)")
    p.add_argument("--crf", type=float, nargs="+", default=list(UNIFORM_CRFS),
                   help="uniform CRFs (default: 8 to 34 in steps of 2; the teacher loses half its agreement by CRF 26 on these videos)")
    p.add_argument("--roi-crf", dest="roi_crf", type=float, nargs="+", default=list(ROI_CRFS),
                   help="background CRFs of the ROI points (default: 12 16 20 24 28 32)")
    p.add_argument("--roi-qoffset", dest="roi_qoffset", type=float, nargs="+", default=list(ROI_QOFFSETS),
                   help="addroi qoffset(s) of the ROI blocks, each a curve (x51 QP; default: -3/51 -6/51)")
    p.add_argument("--alpha", type=float, default=0.2, help="AccModel threshold (default: 0.2)")
    p.add_argument("--dilate", type=int, default=0, help="ROI dilation in blocks (default: 0)")
    p.add_argument("--roi-every", dest="roi_every", type=int, default=10, help="run the AccModel every k frames (default: 10)")
    p.add_argument("--every", type=int, default=2, help="every N-th frame of the videos (default: 2)")
    p.add_argument("--chunk", type=int, default=10, help="frames per H.264 chunk (default: 10)")
    p.add_argument("--width", type=int, help="frame width sent, capped at each video's own (default: each video's own, scale 1)")
    p.add_argument("--schemes", nargs="+", choices=ROI_SCHEMES, default=list(ROI_SCHEMES),
                   help="ROI curves beside uniform (default: all; without accgrad and random the oracle's gradients are skipped)")
    p.add_argument("--model-width", dest="model_width", type=int,
                   help="run the AccModel on frames shrunk to this width (default: its training width, as the edge does; 0: each frame's own)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the saving's interval (default: 1000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.set_defaults(func=_bench_roi)


__all__ = ["add_bench_roi_parser", "bytes_at_equal_accuracy", "encode_scheme", "markdown", "region_psnr", "run_bench_roi"]
