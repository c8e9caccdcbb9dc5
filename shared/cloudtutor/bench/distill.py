"""``cloudtutor bench distill``: AMS Table 1 (and Figures 4, 5) on the real videos.

Every scheme of AMS §4.1 plays the same footage (the chained real clips,
looped to ``--minutes``) on the simulated clock (``cloudtutor.schemes``):
No Customization, One-Time, Remote+Tracking, Just-In-Time, AMS (γ 5%, ASR),
ShadowTutor and cloudtutor's pipeline (AMS at half resolution with bicubic
upscaling in the cloud and the 2-level frame selector; no SR or ROI model is
used unless one is built and given, see the report's ``pipeline`` note).
The edge is scored against the teacher on every processed frame
(``--infer-fps`` of video time, brief §10.11): per-frame mIoU (headline),
pooled mIoU, pixel accuracy, main-class mIoU, per class, first pass apart
(looped video trains on what it later tests), per clip. Bytes are those the
real H.264 encoder and delta codec produced, as Kbps of video time. Sweeps
of T_update (AMS) and of the accuracy threshold (Just-In-Time) give
mIoU vs downlink Kbps (Figure 4); per-frame gains over No Customization
give Figure 5's CDF.

Teacher labels are cached by frame hash (``--cache``), shared by all
schemes and runs. Wall and CPU time are reported per scheme and in all.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudtutor.schemes.ledger import DOWN, UP, gains

log = logging.getLogger("cloudtutor.bench.distill")

SCHEMA = "cloudtutor.bench.distill/v1"
SCHEMES = ("no_customization", "one_time", "remote_tracking", "just_in_time", "ams", "shadowtutor", "cloudtutor")
LABELS = {
    "no_customization": "No Customization", "one_time": "One-Time", "remote_tracking": "Remote+Tracking",
    "just_in_time": "Just-In-Time", "ams": "AMS", "shadowtutor": "ShadowTutor", "cloudtutor": "cloudtutor pipeline",
}


MACHINE_NOTE = ("2 shared CPU cores (other engineers' jobs ran at the same time: wall time is inflated; CPU time is "
                "this process's own)")
NOTES = [
    "Scale-1 schemes train on the pristine frames' teacher labels; their uplink bytes are the real chunks the edge "
    "would send. The cloudtutor pipeline trains on what the cloud decodes (half size, bicubic upscaling; no SR model "
    "or AccModel file was given, so no learned SR and no ROI).",
    "Updates reach the edge before the next processed frame (simulated clock, every scheme alike).",
]


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def versions() -> dict[str, str]:
    import av
    import cv2
    import torch

    import cloudtutor

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "av": av.__version__, "opencv": cv2.__version__, "cloudtutor": getattr(cloudtutor, "__version__", ""),
            "git_commit": commit or "unknown", "machine": f"{platform.machine()}, {platform.processor() or '?'}"}


@dataclass
class Bench:
    """What every run shares: the footage, the cached teacher, the version-0 student."""

    footage: Any
    teacher: Any
    base: Any  # nn.Module, float16-rounded pretrained student (version 0)
    mapping: Any
    normalize: Any
    infer_fps: float
    seed: int

    def fresh(self):
        return copy.deepcopy(self.base)


def prepare(videos: Sequence[Path], *, minutes: float | None, infer_fps: float, cache: Path | None, seed: int,
            threads: int, width: int = 512) -> Bench:
    import torch

    from cloudtutor import distill
    from cloudtutor.models.registry import build_student, build_teacher
    from cloudtutor.schemes.footage import load_footage
    from cloudtutor.schemes.teacher_cache import TeacherLabels

    torch.manual_seed(seed)
    student = build_student("cityscapes19", width=width, threads=threads)
    base = student.model.eval()
    distill.bootstrap_view_(base)
    teacher = build_teacher("cityscapes19")  # one TFLite thread: it shares the process with torch (data README)
    footage = load_footage(videos, None if minutes is None else minutes * 60.0, width=width)
    labels = TeacherLabels(teacher.predict_at, "tflite-deeplab-edgetpu-cityscapes19", cache)
    start = time.perf_counter()
    for uid, (frame, small) in enumerate(zip(footage.frames, footage.small)):
        labels.labels(frame, (small.shape[1], small.shape[0]), footage.keys[uid])
        if (uid + 1) % 50 == 0:
            log.info("teacher labels: %d of %d distinct frames (%.0f s)", uid + 1, len(footage.frames),
                     time.perf_counter() - start)
    return Bench(footage, labels, base, student.mapping, student.normalize, infer_fps, seed)


def make_scheme(bench: Bench, kind: str, **overrides: Any):
    """A scheme by name, its settings overridden (e.g. ``t_update_s=20``)."""
    from dataclasses import replace

    from cloudtutor.schemes.ams import Ams, AmsSettings
    from cloudtutor.schemes.baselines import JitSettings, JustInTime, NoCustomization, OneTime, OneTimeSettings
    from cloudtutor.schemes.shadow import ShadowSettings, ShadowTutor
    from cloudtutor.schemes.tracking import RemoteTracking, TrackingSettings

    if kind == "no_customization":
        return NoCustomization()
    if kind == "one_time":
        return OneTime(bench.fresh(), replace(OneTimeSettings(), **overrides))
    if kind == "remote_tracking":
        return RemoteTracking(replace(TrackingSettings(), **overrides))
    if kind == "just_in_time":
        return JustInTime(bench.fresh(), replace(JitSettings(), **overrides))
    if kind == "ams":
        return Ams(bench.fresh(), replace(AmsSettings(), **overrides))
    if kind == "cloudtutor":
        settings = replace(AmsSettings(scale=2.0, selector=True), **overrides)
        return Ams(bench.fresh(), settings, name="cloudtutor")
    if kind == "shadowtutor":
        return ShadowTutor(bench.fresh(), replace(ShadowSettings(), **overrides))
    raise ValueError(f"unknown scheme {kind!r}; expected one of {SCHEMES}")


def run_one(bench: Bench, kind: str, label: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Play the footage to one scheme; its row of the report."""
    from cloudtutor.schemes.runner import Context, run_scheme

    scheme = make_scheme(bench, kind, **overrides)
    ctx = Context(bench.footage, bench.teacher, bench.mapping, bench.normalize, seed=bench.seed)
    wall, cpu = time.perf_counter(), cpu_seconds()
    run_scheme(scheme, ctx, bench.fresh(), infer_fps=bench.infer_fps)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    seconds = bench.footage.duration_s
    sources = sorted({s for s in bench.footage.sources})
    row = {
        "scheme": kind, "label": label or LABELS.get(kind, kind), "settings": scheme.settings(),
        "scores": ctx.scores.summary(),
        "uplink_kbps": round(ctx.ledger.kbps(UP, seconds), 2), "downlink_kbps": round(ctx.ledger.kbps(DOWN, seconds), 2),
        "uplink_bytes": ctx.ledger.total(UP), "downlink_bytes": ctx.ledger.total(DOWN),
        "updates": ctx.ledger.count(DOWN), "per_clip_kbps": {
            s: {"up": round(ctx.ledger.total(UP, s) * 8 / 1000 / _clip_seconds(bench, s), 2),
                "down": round(ctx.ledger.total(DOWN, s) * 8 / 1000 / _clip_seconds(bench, s), 2)} for s in sources},
        "notes": ctx.notes, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "train_wall_s": round(ctx.cloud_seconds, 1),
        "series": [[t, None if not np.isfinite(m) else round(m, 4)] for t, m in ctx.scores.series()],
    }
    row["_frames"] = ctx.scores.frames
    log.info("%s: mIoU %.4f (first pass %s), up %.1f Kbps, down %.1f Kbps, %d updates; %.0f s wall, %.0f s CPU",
             row["label"], row["scores"]["all"]["miou"] or float("nan"), row["scores"].get("first", {}).get("miou"),
             row["uplink_kbps"], row["downlink_kbps"], row["updates"], wall, cpu)
    return row


def _clip_seconds(bench: Bench, source: str) -> float:
    """Video time during which ``source`` played (frame count x its mean interval)."""
    ticks = bench.footage.ticks
    n = sum(1 for t in ticks if bench.footage.sources[t.uid] == source)
    return max(1e-9, n * bench.footage.duration_s / len(ticks))


def add_gains(rows: list[dict[str, Any]]) -> None:
    """Per-frame gain over No Customization (AMS Figure 5): summary and CDF points."""
    base = next((r for r in rows if r["scheme"] == "no_customization"), None)
    if base is None:
        return
    for row in rows:
        g = gains(row["_frames"], base["_frames"])
        if g.size:
            qs = np.linspace(0, 1, 21)
            row["gain_over_no_customization"] = {
                "mean": round(float(g.mean()), 4), "better_share": round(float((g > 0).mean()), 4),
                "quantiles": [round(float(v), 4) for v in np.quantile(g, qs)],
            }


def series_gains(rows: list[dict[str, Any]]) -> None:
    """:func:`add_gains` from the stored per-frame series (rows read back from JSON)."""
    from cloudtutor.schemes.ledger import FrameRecord

    for row in rows:
        row["_frames"] = [FrameRecord(int(t), "", False, float("nan") if m is None else float(m), 0)
                          for t, m in row.get("series", [])]
    add_gains(rows)
    for row in rows:
        row.pop("_frames")


def merge_reports(paths: Sequence[Path], out: Path) -> dict[str, Any]:
    """One report from several runs of the same footage (schemes run in
    parallel processes): the first row of each scheme and setting wins; the
    gains are recomputed from the per-frame series."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    rows, seen = [], set()
    for rep in reports:
        for row in rep.get("results", []):
            key = (row["scheme"], json.dumps(row["settings"], sort_keys=True))
            if key not in seen:
                seen.add(key)
                rows.append(row)
    rows.sort(key=lambda r: SCHEMES.index(r["scheme"]) if r["scheme"] in SCHEMES else len(SCHEMES))
    series_gains(rows)
    full = next((r for r in reports if "footage" in r), None)
    if full is None:  # partial files only: describe the footage from the rows themselves
        if not rows:
            raise ValueError("nothing to merge: no results in the given files")
        last_ms = max((t for r in rows for t, _ in r.get("series", [])), default=0)
        full = {"schema": SCHEMA, "footage": {"duration_s": round(last_ms / 1000 + 0.5),
                                              "clips": sorted({c for r in rows for c in r["per_clip_kbps"]})},
                "settings": {"infer_fps": float("nan")}, "versions": versions(), "sweep": [],
                "timing": {"teacher": "cached"}, "machine_note": MACHINE_NOTE, "notes": NOTES}
    report = {**full, "results": rows, "merged_from": [str(p) for p in paths],
              "failed": {k: v for rep in reports for k, v in rep.get("failed", {}).items()},
              "timing": {**full["timing"], "wall_s": sum(r["wall_s"] for r in rows),
                         "cpu_s": sum(r["cpu_s"] for r in rows), "note": "sums over the merged rows"}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "distill.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out)
    return report


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown(report: Mapping[str, Any]) -> str:
    rows = report["results"]
    heads = [r["label"] for r in rows]
    lines = [f"# AMS Table 1 on real video ({report['footage']['duration_s']:.0f} s: "
             f"{' + '.join(report['footage']['clips'])}, looped)", "",
             f"Edge scored against the teacher on every processed frame ({report['settings']['infer_fps']:g} fps of "
             "video time); mIoU in %, per frame over the classes present (brief §10.3). Kbps of video time, bytes "
             "from the real H.264 encoder and delta codec.", "",
             "| clip | metric | " + " | ".join(heads) + " |", "| --- | --- | " + " | ".join("---:" for _ in heads) + " |"]

    def line(clip: str, metric: str, values: Sequence[str]) -> None:
        lines.append(f"| {clip} | {metric} | " + " | ".join(values) + " |")

    line("all", "mIoU", [_pct(r["scores"]["all"]["miou"]) for r in rows])
    line("all", "mIoU, first pass", [_pct(r["scores"].get("first", {}).get("miou")) for r in rows])
    line("all", "pooled mIoU", [_pct(r["scores"]["all"]["pooled_miou"]) for r in rows])
    line("all", "main-class mIoU", [_pct(r["scores"]["all"]["main_classes_miou"]) for r in rows])
    line("all", "uplink Kbps", [f"{r['uplink_kbps']:.1f}" for r in rows])
    line("all", "downlink Kbps", [f"{r['downlink_kbps']:.1f}" for r in rows])
    for clip in report["footage"]["clips"]:
        line(clip, "mIoU", [_pct(r["scores"].get(f"src:{clip}", {}).get("miou")) for r in rows])
        line(clip, "uplink Kbps", [f"{r['per_clip_kbps'].get(clip, {}).get('up', 0):.1f}" for r in rows])
        line(clip, "downlink Kbps", [f"{r['per_clip_kbps'].get(clip, {}).get('down', 0):.1f}" for r in rows])
    line("all", "gain over No Cust., share of frames better",
         [_pct(r.get("gain_over_no_customization", {}).get("better_share")) for r in rows])
    line("", "wall s / CPU s", [f"{r['wall_s']:.0f} / {r['cpu_s']:.0f}" for r in rows])
    lines += ["", "Per class IoU (%), mean over frames where the class is present:", "",
              "| class | " + " | ".join(heads) + " |", "| --- | " + " | ".join("---:" for _ in heads) + " |"]
    from cloudtutor.models.labels import CITYSCAPES_CLASSES

    for c, name in enumerate(CITYSCAPES_CLASSES):
        values = [r["scores"]["per_class_iou"][c] for r in rows]
        if any(v is not None for v in values):
            lines.append(f"| {name} | " + " | ".join(_pct(v) for v in values) + " |")
    if report.get("sweep"):
        lines += ["", "mIoU vs downlink (AMS Figure 4):", "", "| scheme | parameter | mIoU | downlink Kbps | uplink Kbps |",
                  "| --- | --- | ---: | ---: | ---: |"]
        for p in report["sweep"]:
            lines.append(f"| {p['label']} | {p['parameter']} | {_pct(p['miou'])} | {p['downlink_kbps']:.1f} | "
                         f"{p['uplink_kbps']:.1f} |")
    t = report["timing"]
    lines += ["", f"Run: {t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} s CPU (teacher labels {t['teacher']}); "
              f"{report['machine_note']}", ""]
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def plot(report: Mapping[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for r in rows:
        pts = [(t / 1000, m) for t, m in r["series"] if m is not None]
        if pts:
            t, m = np.array(pts).T
            k = max(1, int(len(m) // 60))  # a moving mean over about 1/60 of the run
            smooth = np.convolve(m, np.ones(k) / k, mode="same")
            ax.plot(t, 100 * smooth, label=r["label"], lw=1.2)
    ax.set_xlabel("video time (s)")
    ax.set_ylabel("mIoU vs teacher (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=4)
    ax.set_title("mIoU over time per scheme (moving mean)")
    fig.tight_layout()
    fig.savefig(out / "miou_time.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        q = r.get("gain_over_no_customization")
        if q and r["scheme"] != "no_customization":
            ax.plot(100 * np.array(q["quantiles"]), np.linspace(0, 1, len(q["quantiles"])), label=r["label"])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("per-frame mIoU gain over No Customization (points)")
    ax.set_ylabel("CDF over frames")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gain_cdf.png", dpi=110)
    plt.close(fig)

    if report.get("sweep"):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for label, style in (("AMS", "o-"), ("Just-In-Time", "s--")):
            pts = sorted((p["downlink_kbps"], 100 * p["miou"], p["parameter"]) for p in report["sweep"]
                         if p["label"] == label and p["miou"] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
                for x, y, name in pts:
                    ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("downlink Kbps")
        ax.set_ylabel("mIoU (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("mIoU vs downlink (AMS Figure 4)")
        fig.tight_layout()
        fig.savefig(out / "miou_vs_downlink.png", dpi=110)
        plt.close(fig)


def sweep_points(bench: Bench, rows: Sequence[Mapping[str, Any]], t_updates: Sequence[float],
                 thresholds: Sequence[float], run: Callable[..., dict[str, Any]] = run_one) -> list[dict[str, Any]]:
    """Figure 4: AMS over T_update, Just-In-Time over its threshold (the
    main runs are reused where their setting is a sweep point)."""
    points = []

    def point(label: str, parameter: str, row: Mapping[str, Any]) -> None:
        points.append({"label": label, "parameter": parameter, "miou": row["scores"]["all"]["miou"],
                       "downlink_kbps": row["downlink_kbps"], "uplink_kbps": row["uplink_kbps"],
                       "wall_s": row["wall_s"], "cpu_s": row["cpu_s"]})

    main = {r["scheme"]: r for r in rows}
    plain = run

    def run(*args: Any, **kwargs: Any) -> dict[str, Any] | None:  # a failed point is left out, not fatal
        try:
            return plain(*args, **kwargs)
        except Exception:
            log.exception("sweep point %s failed", kwargs)
            return None

    sweeps = [("AMS", "ams", "t_update_s", t_updates, "T_update {:g} s"),
              ("Just-In-Time", "just_in_time", "threshold", thresholds, "threshold {:g}")]
    for label, scheme, setting, values, name in sweeps:
        for value in values:
            r = main.get(scheme)
            if r is None or r["settings"][setting] != value:
                r = run(bench, scheme, **{setting: float(value)})
            if r is not None:
                point(label, name.format(value), r)
    return points


def run_bench_distill(videos: Sequence[Path], out: Path, *, minutes: float | None = 3.0, infer_fps: float = 5.0,
                      schemes: Sequence[str] = SCHEMES, t_updates: Sequence[float] = (10, 20, 40),
                      thresholds: Sequence[float] = (0.55, 0.65, 0.75), cache: Path | None = None, seed: int = 0,
                      threads: int = 1) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    bench = prepare(videos, minutes=minutes, infer_fps=infer_fps, cache=cache, seed=seed, threads=threads)
    teacher_note = dict(bench.teacher.stats())
    rows, failed = [], {}
    out.mkdir(parents=True, exist_ok=True)
    for kind in schemes:
        try:
            rows.append(run_one(bench, kind))
        except Exception as exc:  # one broken scheme must not cost the others' results
            log.exception("scheme %s failed", kind)
            failed[kind] = f"{type(exc).__name__}: {exc}"
        partial = [{k: v for k, v in r.items() if k != "_frames"} for r in rows]
        (out / "distill.partial.json").write_text(json.dumps({"results": partial, "failed": failed}, indent=1) + "\n")
    add_gains(rows)
    sweep = sweep_points(bench, rows, t_updates, thresholds) if (t_updates or thresholds) else []
    report = {
        "schema": SCHEMA, "videos": [str(v) for v in videos], "versions": versions(),
        "footage": {"duration_s": bench.footage.duration_s, "frames": len(bench.footage.ticks),
                    "distinct_frames": len(bench.footage.frames), "clips": sorted(set(bench.footage.sources))},
        "settings": {"minutes": minutes, "infer_fps": infer_fps, "seed": seed, "threads": threads,
                     "schemes": list(schemes), "t_updates": list(t_updates), "thresholds": list(thresholds),
                     "teacher": "tflite-deeplab-edgetpu (1 thread)", "student": "espnet, 512 wide",
                     "clock": "simulated (video time; compute not charged, brief §10.1)"},
        "results": [{k: v for k, v in r.items() if k != "_frames"} for r in rows], "sweep": sweep, "failed": failed,
        "timing": {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(cpu_seconds() - cpu, 1),
                   "teacher": {"prefill": teacher_note, "end": bench.teacher.stats()}},
        "machine_note": MACHINE_NOTE, "notes": NOTES,
    }
    (out / "distill.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "distill.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out)
    return report


def default_videos() -> list[Path]:
    from cloudtutor.bench.videos import real_videos

    return sorted(real_videos(), key=lambda p: (not p.name.startswith("highway"), p.name))


def common_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--videos", nargs="+", help="videos, chained in order (default: the real videos, highway first)")
    p.add_argument("--minutes", type=float, default=3.0, help="loop the chain to this many minutes (default: 3)")
    p.add_argument("--infer-fps", dest="infer_fps", type=float, default=5.0,
                   help="frames of video time the edge labels per second, all scored (default: 5; 0 = every frame)")
    p.add_argument("--cache", default="out/bench-cache/teacher", help="teacher label cache folder (default: out/bench-cache/teacher)")
    p.add_argument("--seed", type=int, default=0, help="seed of coordinate and mini-batch sampling (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")


def resolve_videos(args: argparse.Namespace) -> list[Path] | None:
    from cloudtutor.bench.videos import resolve_videos as resolve

    return resolve(args.videos, default_videos)


def _bench_distill(args: argparse.Namespace) -> int:
    from cloudtutor.config.common import LogSettings
    from cloudtutor.logs import setup_logging

    setup_logging(LogSettings(level="INFO"), "cloudtutor.bench")
    if args.merge:
        try:
            merge_reports([Path(p) for p in args.merge], Path(args.out))
        except (OSError, ValueError, KeyError) as exc:
            print(f"bench distill --merge: {exc}", file=sys.stderr)
            return 2
        print((Path(args.out) / "distill.md").read_text())
        return 0
    videos = resolve_videos(args)
    if videos is None:
        return 2
    unknown = [s for s in args.schemes if s not in SCHEMES]
    if unknown:
        print(f"unknown scheme(s) {unknown}; expected some of {list(SCHEMES)}", file=sys.stderr)
        return 2
    try:
        run_bench_distill(videos, Path(args.out), minutes=args.minutes, infer_fps=args.infer_fps, schemes=args.schemes,
                          t_updates=args.t_update, thresholds=args.threshold, cache=Path(args.cache) if args.cache else None,
                          seed=args.seed, threads=args.threads)
    except ValueError as exc:
        print(f"bench distill: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "distill.md").read_text())
    return 0


def add_bench_distill_parser(bench_sub) -> None:
    p = bench_sub.add_parser("distill", help="AMS Table 1: mIoU, uplink and downlink Kbps of every adaptation scheme")
    common_args(p, "out/bench-distill")
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES), help=f"schemes (default: all of {' '.join(SCHEMES)})")
    p.add_argument("--t-update", dest="t_update", type=float, nargs="*", default=[10, 20, 40],
                   help="AMS T_update sweep for mIoU vs downlink (default: 10 20 40; none to skip)")
    p.add_argument("--threshold", type=float, nargs="*", default=[0.55, 0.65, 0.75],
                   help="Just-In-Time threshold sweep (default: 0.55 0.65 0.75; none to skip)")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="instead of running: merge distill.json / distill.partial.json files of runs of the same "
                        "footage (schemes run in parallel processes) into one report in --out")
    p.set_defaults(func=_bench_distill)


__all__ = ["SCHEMES", "add_bench_distill_parser", "markdown", "merge_reports", "prepare", "run_bench_distill", "run_one"]
