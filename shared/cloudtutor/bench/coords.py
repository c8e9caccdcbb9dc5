"""``cloudtutor bench coords``: AMS Table 3, coordinate selection strategies.

AMS at a fixed sampling rate (ASR off, so every run trains on the same
samples) with each strategy of ``algorithms/coordinates.py`` (last layers,
first layers, first&last, random, gradient-guided) at each γ, against
full-model training (every coordinate, every phase): the mIoU difference
from full training and the downlink Kbps the real delta codec produced.
Same footage, simulated clock, cached teacher and scoring as ``bench
distill``.
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

from cloudtutor.bench.distill import common_args, cpu_seconds, prepare, resolve_videos, run_one, versions

log = logging.getLogger("cloudtutor.bench.coords")

SCHEMA = "cloudtutor.bench.coords/v1"
STRATEGIES = ("last", "first", "first_last", "random", "gradient")
NAMES = {"last": "Last Layers", "first": "First Layers", "first_last": "First&Last Layers", "random": "Random",
         "gradient": "Gradient-Guided", "full": "Full model"}
PAPER = "AMS Table 3: gradient-guided 5% is -0.73 mIoU vs full training at 205 vs 3302 Kbps"


def delta_rows(full: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each run's mIoU difference from full training (points) and its share of full's downlink."""
    base = full["scores"]["all"]["miou"]
    out = []
    for r in runs:
        miou = r["scores"]["all"]["miou"]
        out.append({
            "strategy": r["settings"]["strategy"], "gamma": r["settings"]["gamma"], "miou": miou,
            "delta_miou_points": None if miou is None or base is None else round(100 * (miou - base), 2),
            "downlink_kbps": r["downlink_kbps"],
            "downlink_share": round(r["downlink_kbps"] / full["downlink_kbps"], 4) if full["downlink_kbps"] else None,
            "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
        })
    return out


def markdown(report: Mapping[str, Any]) -> str:
    full = report["full"]
    gammas = report["settings"]["gammas"]
    cells = {(r["strategy"], r["gamma"]): r for r in report["table"]}
    lines = [f"# AMS Table 3 on real video ({report['footage']['duration_s']:.0f} s)", "",
             f"mIoU difference (points) vs full-model training ({100 * full['miou']:.2f} mIoU, "
             f"{full['downlink_kbps']:.0f} Kbps down); downlink Kbps in brackets.", "",
             "| strategy | " + " | ".join(f"γ = {100 * g:g}%" for g in gammas) + " |",
             "| --- | " + " | ".join("---:" for _ in gammas) + " |"]
    for s in report["settings"]["strategies"]:
        row = []
        for g in gammas:
            c = cells.get((s, g))
            row.append("–" if c is None or c["delta_miou_points"] is None else
                       f"{c['delta_miou_points']:+.2f} ({c['downlink_kbps']:.0f})")
        lines.append(f"| {NAMES.get(s, s)} | " + " | ".join(row) + " |")
    target = report.get("target")
    if target:
        lines += ["", f"Target (gradient-guided 5% within 1.5 points at <= 1/10 of full's downlink): "
                      f"{target['delta_miou_points']:+.2f} points at {target['downlink_share']:.3f} of full's "
                      f"downlink: {'met' if target['met'] else 'NOT met'}."]
    t = report["timing"]
    lines += ["", f"{PAPER}.", f"Run: {t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} s CPU.", ""]
    return "\n".join(lines) + "\n"


def run_bench_coords(videos: Sequence[Path], out: Path, *, minutes: float | None = 1.0, infer_fps: float = 2.0,
                     gammas: Sequence[float] = (0.2, 0.1, 0.05, 0.01), strategies: Sequence[str] = STRATEGIES,
                     cache: Path | None = None, seed: int = 0, threads: int = 1) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    bench = prepare(videos, minutes=minutes, infer_fps=infer_fps, cache=cache, seed=seed, threads=threads)
    fixed = {"asr": False, "rate_fps": 1.0}
    full = run_one(bench, "ams", label="full", strategy="full", gamma=1.0, **fixed)
    runs: list[Mapping[str, Any]] = []

    def written() -> dict[str, Any]:
        # Written after every finished cell: a 20-run grid is long, and a
        # cut-off run should still leave a (partial) table.
        report = _report(bench, videos, full, runs, minutes=minutes, infer_fps=infer_fps, seed=seed,
                         threads=threads, gammas=gammas, strategies=strategies, wall=wall, cpu=cpu)
        _write(out, report)
        return report

    report = written()
    cells = [(float(g), s) for g in gammas for s in strategies]
    for g, s in cells:
        runs.append(run_one(bench, "ams", label=f"{s} {g:g}", strategy=s, gamma=g, **fixed))
        report = written()
        log.info("coords: %d/%d cells done", len(runs), len(cells))
    return report


def _report(bench: Any, videos: Sequence[Path], full: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], *,
            minutes: float | None, infer_fps: float, seed: int, threads: int, gammas: Sequence[float],
            strategies: Sequence[str], wall: float, cpu: float) -> dict[str, Any]:
    table = delta_rows(full, runs)
    target = next((r for r in table if r["strategy"] == "gradient" and abs(r["gamma"] - 0.05) < 1e-9), None)
    if target is not None and target["delta_miou_points"] is not None and target["downlink_share"] is not None:
        target = {**target, "met": target["delta_miou_points"] >= -1.5 and target["downlink_share"] <= 0.1}
    else:
        target = None
    return {
        "schema": SCHEMA, "videos": [str(v) for v in videos], "versions": versions(),
        "footage": {"duration_s": bench.footage.duration_s, "frames": len(bench.footage.ticks),
                    "distinct_frames": len(bench.footage.frames)},
        "settings": {"minutes": minutes, "infer_fps": infer_fps, "seed": seed, "threads": threads,
                     "gammas": list(gammas), "strategies": list(strategies), "sampling": "1 fps fixed (ASR off)",
                     "ams": full["settings"]},
        "full": {"miou": full["scores"]["all"]["miou"], "downlink_kbps": full["downlink_kbps"],
                 "uplink_kbps": full["uplink_kbps"], "scores": full["scores"], "wall_s": full["wall_s"]},
        "table": table, "target": target,
        "timing": {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(cpu_seconds() - cpu, 1)},
    }


def _write(out: Path, report: Mapping[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "coords.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "coords.md").write_text(markdown(report), encoding="utf-8")


def _bench_coords(args: argparse.Namespace) -> int:
    from cloudtutor.config.common import LogSettings
    from cloudtutor.logs import setup_logging

    setup_logging(LogSettings(level="INFO"), "cloudtutor.bench")
    videos = resolve_videos(args)
    if videos is None:
        return 2
    bad = [s for s in args.strategies if s not in STRATEGIES]
    if bad or any(not 0 < g <= 1 for g in args.gamma):
        print(f"bench coords: strategies must be among {list(STRATEGIES)} and gammas in (0, 1]", file=sys.stderr)
        return 2
    run_bench_coords(videos, Path(args.out), minutes=args.minutes, infer_fps=args.infer_fps, gammas=args.gamma,
                     strategies=args.strategies, cache=Path(args.cache) if args.cache else None, seed=args.seed,
                     threads=args.threads)
    print((Path(args.out) / "coords.md").read_text())
    return 0


def add_bench_coords_parser(bench_sub) -> None:
    p = bench_sub.add_parser("coords", help="AMS Table 3: coordinate selection strategies vs full-model training")
    common_args(p, "out/bench-coords")
    p.set_defaults(minutes=1.0, infer_fps=2.0)
    p.add_argument("--gamma", type=float, nargs="+", default=[0.2, 0.1, 0.05, 0.01],
                   help="fractions of coordinates (default: 0.2 0.1 0.05 0.01)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                   help=f"strategies (default: {' '.join(STRATEGIES)})")
    p.set_defaults(func=_bench_coords)


__all__ = ["add_bench_coords_parser", "delta_rows", "markdown", "run_bench_coords"]
