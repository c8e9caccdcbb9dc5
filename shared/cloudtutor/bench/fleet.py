"""``cloudtutor bench fleet``: 1, 2, 4, 8 devices against one trainer (AMS §4, multiple devices).

Simulated clock (brief §10.1): video time advances as fast as the work
allows. Every device plays a real video, looped (the two real clips, each
device starting at another point of its clip), through a grid of frames
(``--grid-fps``): the edge's student labels each grid frame with the model
version it holds at that video time, scored against the teacher (per-frame
mIoU, brief §10.3); it samples frames for the cloud at ``--sample-fps``.

The one trainer has a capacity of ``--capacity`` phases per T_update of
video time (how fast its hardware trains, relative to the video); phases
run one after another, each deployed when it finishes (``T_update /
capacity`` after the previous one). Every T_update, the devices with new
samples are due; the trainer serves them in smooth weighted round-robin
order with weight = recent φ̄ (:mod:`cloudtutor.algorithms.fleet_schedule`,
what the trainer service does), as many as its capacity allows; the others
wait, so their update lag grows. Each phase is the trainer's: the device's
weights and masked-Adam state are loaded, K iterations run on mini-batches
from its last T_horizon of samples (:func:`distill.distill_phase`), the
float16 view is what the edge gets.

Per device count N: each device's mIoU next to the same device served
alone (its single-device run), the loss in points, the update lag (video
seconds from a device becoming due to its update reaching it), phases per
device, and the process CPU seconds. The summary names the largest N whose
mean loss is under one point. Teacher labels are computed once per grid
frame and shared by every run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloudtutor.algorithms import fleet_schedule

log = logging.getLogger("cloudtutor.bench.fleet")

SCHEMA = "cloudtutor.bench.fleet/v1"
DEFAULT_COUNTS = (1, 2, 4, 8)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Clip:
    """A video's grid frames at the student's size, with the teacher's labels."""

    name: str
    frames: list[np.ndarray]
    labels: list[np.ndarray]
    step_ms: int  # video time between grid frames


@dataclass
class Device:
    """One simulated edge: where in which clip it starts."""

    name: str
    clip: Clip
    offset: int  # grid frames

    def frame_at(self, k: int) -> int:
        return (self.offset + k) % len(self.clip.frames)


@dataclass
class Settings:
    duration_s: float = 40.0
    grid_fps: float = 1.0
    sample_fps: float = 1.0
    t_update_s: float = 10.0
    t_horizon_s: float = 240.0
    capacity: float = 2.0
    iterations: int = 10
    batch_size: int = 2
    gamma: float = 0.05
    lr: float = 1e-3
    width: int = 512
    phi_window: int = 10
    seed: int = 0


def load_clip(path: Path, teacher: Any, grid_fps: float, width: int, cache: Path | None = None) -> Clip:
    """One grid frame per 1/grid_fps of the clip's video time, with teacher labels at the student's
    size (kept in ``cache``, keyed by clip, frame and size, so a rerun does not pay the teacher again)."""
    from cloudtutor.models.preprocess import resize_rgb, student_size
    from cloudtutor.video import frame_interval_ms, read_frames

    interval = frame_interval_ms(str(path))
    every = max(1, round(1000.0 / grid_fps / interval))
    frames, labels = [], []
    for i, (_, rgb) in enumerate(read_frames(str(path))):
        if i % every:
            continue
        size = student_size(rgb.shape[1], rgb.shape[0], width)
        frames.append(resize_rgb(rgb, size))
        cached = cache / f"{path.stem}-{i}-{size[0]}x{size[1]}.npy" if cache is not None else None
        if cached is not None and cached.exists():
            labels.append(np.load(cached))
            continue
        labels.append(np.ascontiguousarray(teacher.predict_at(rgb, size), dtype=np.uint8))
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, labels[-1])
    log.info("%s: %d grid frames (every %d-th), teacher-labelled", path.name, len(frames), every)
    return Clip(path.name, frames, labels, round(every * interval))


def make_devices(clips: Sequence[Clip], n: int) -> list[Device]:
    """Device i plays clip i mod len(clips), starting (i // len(clips)) quarters of the way in."""
    out = []
    for i in range(n):
        clip = clips[i % len(clips)]
        quarter = (i // len(clips)) % 4
        out.append(Device(f"cam-{i}", clip, quarter * len(clip.frames) // 4))
    return out


@dataclass
class DeviceRun:
    device: Device
    weights: bytes
    optimizer: bytes
    horizon: list[tuple[int, int]] = field(default_factory=list)  # (video ms, grid frame)
    phis: list[float] = field(default_factory=list)
    versions: list[tuple[int, bytes]] = field(default_factory=list)  # (deployed at ms, weights)
    due_since: int | None = None
    lags_ms: list[int] = field(default_factory=list)
    phases: int = 0


def simulate(devices: Sequence[Device], s: Settings, model: Any, student: Any, lut: np.ndarray,
             base: bytes) -> dict[str, Any]:
    """One trainer, these devices, the simulated clock; per-device scores. ``base``: version 0
    (the float16-rounded pretrained student) every device starts from."""
    from cloudtutor import distill
    from cloudtutor.accuracy import frame_miou
    from cloudtutor.algorithms.asr import phi_score
    from cloudtutor.algorithms.masked_adam import MaskedAdam, state_from_bytes, state_to_bytes

    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    distill.load_state_vector(model, base)

    def optimizer_for(i: int) -> MaskedAdam:
        return MaskedAdam(model, gamma=s.gamma, strategy="gradient", seed=s.seed + i, lr=s.lr)

    runs = [DeviceRun(d, base, state_to_bytes(optimizer_for(i).state_dict()), versions=[(0, base)])
            for i, d in enumerate(devices)]
    period_ms = round(s.t_update_s * 1000)
    slot_ms = period_ms / s.capacity
    end_ms = round(s.duration_s * 1000)
    credit: dict[str, float] = {}
    trainer_free_ms = 0.0
    phase_seconds: list[float] = []

    def grid(run: DeviceRun, t_ms: int) -> int:
        return run.device.frame_at(t_ms // run.device.clip.step_ms)

    # Samples: one per 1/sample_fps of video time, phi against the previous sample.
    sample_ms = round(1000 / s.sample_fps)
    for t in range(0, end_ms, period_ms):
        for run in runs:
            for ts in range(t, min(t + period_ms, end_ms), sample_ms):
                k = grid(run, ts)
                if run.horizon:
                    prev = run.device.clip.labels[run.horizon[-1][1]]
                    run.phis.append(phi_score(run.device.clip.labels[k], prev))
                run.horizon.append((ts, k))
            if run.due_since is None:
                run.due_since = t + period_ms  # the window's chunk has arrived: due
        window_end = t + period_ms
        if window_end >= end_ms:
            break  # an update after the end would reach no scored frame
        # The trainer's phases for this window, in weighted round-robin order, within its capacity.
        trainer_free_ms = max(trainer_free_ms, window_end)
        served: set[int] = set()
        while trainer_free_ms + slot_ms <= window_end + period_ms:
            due = {r.device.name: fleet_schedule.device_weight(
                float(np.mean(r.phis[-s.phi_window:])) if r.phis else None, floor=0.05)
                for j, r in enumerate(runs) if r.due_since is not None and j not in served}
            if not due:
                break
            pick = fleet_schedule.wrr_order(credit, due)[0]
            credit = fleet_schedule.wrr_charge(credit, due, pick)
            j = next(j for j, r in enumerate(runs) if r.device.name == pick)
            run = runs[j]
            served.add(j)
            distill.load_state_vector(model, run.weights)
            optimizer = optimizer_for(j)
            optimizer.load_state_dict(state_from_bytes(run.optimizer))
            cutoff = window_end - round(s.t_horizon_s * 1000)
            horizon = [(ts, k) for ts, k in run.horizon if cutoff < ts < window_end]
            started = time.perf_counter()
            distill.distill_phase(
                model, optimizer, [run.device.clip.frames[k] for _, k in horizon],
                [run.device.clip.labels[k] for _, k in horizon], iterations=s.iterations, batch_size=s.batch_size,
                rng=distill.phase_rng(s.seed + j, 1, optimizer.phase_index + 1), normalize=student.normalize, lut=lut)
            phase_seconds.append(time.perf_counter() - started)
            trainer_free_ms += slot_ms
            run.weights = distill.state_vector(model)
            run.optimizer = state_to_bytes(optimizer.state_dict())
            run.versions.append((round(trainer_free_ms), run.weights))
            run.lags_ms.append(round(trainer_free_ms) - run.due_since)
            run.due_since = None
            run.phases += 1

    # The edge: every grid frame scored with the version it held at that video time.
    results = []
    for run in runs:
        scores = []
        times = list(range(0, end_ms, run.device.clip.step_ms))
        for v, (since, weights) in enumerate(run.versions):
            until = run.versions[v + 1][0] if v + 1 < len(run.versions) else end_ms
            ks = [grid(run, t) for t in times if since <= t < until]
            if not ks:
                continue
            distill.load_state_vector(model, weights)
            preds = distill.predict(model, [run.device.clip.frames[k] for k in ks], normalize=student.normalize,
                                    mapping=student.mapping, batch_size=4)
            scores += [frame_miou(run.device.clip.labels[k], p, student.mapping.num_classes) for k, p in zip(ks, preds)]
        results.append({
            "device": run.device.name, "clip": run.device.clip.name, "offset": run.device.offset,
            "miou": float(np.nanmean(scores)), "frames": len(scores), "phases": run.phases,
            "phi_mean": float(np.mean(run.phis)) if run.phis else None,
            "update_lag_s": float(np.mean(run.lags_ms)) / 1000.0 if run.lags_ms else None,
            "update_lag_max_s": max(run.lags_ms) / 1000.0 if run.lags_ms else None,
        })
    return {"devices": results, "cpu_s": round(cpu_seconds() - cpu0, 2), "wall_s": round(time.perf_counter() - wall0, 2),
            "phases": sum(r.phases for r in runs),
            "phase_s_mean": round(float(np.mean(phase_seconds)), 3) if phase_seconds else None}


def run_bench_fleet(videos: Sequence[Path], out: Path, *, counts: Sequence[int] = DEFAULT_COUNTS,
                    settings: Settings = Settings(), threads: int = 1) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from cloudtutor import distill
    from cloudtutor.models.registry import build_student, build_teacher

    if not counts or min(counts) < 1:
        raise ValueError("device counts must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    teacher = build_teacher("cityscapes19")  # one TFLite thread: it shares the process with torch (data README)
    clips = [load_clip(v, teacher, settings.grid_fps, settings.width, cache=out / "teacher-cache") for v in videos]
    del teacher
    student = build_student("cityscapes19", width=settings.width)
    torch.set_flush_denormal(True)
    model = student.model
    lut = distill.target_lut(student.mapping)
    base = distill.state_vector(distill.bootstrap_view_(model))  # version 0, shared by every run

    n_max = max(counts)
    all_devices = make_devices(clips, n_max)
    singles: dict[str, dict[str, Any]] = {}
    single_runs: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    out.mkdir(parents=True, exist_ok=True)
    # Device counts in increasing order, each device's single run when it is first needed, and the
    # report rewritten after every count: a run cut short still leaves the counts it finished.
    with tqdm(total=n_max + sum(c for c in counts if c > 1), unit="device-run", desc="bench fleet") as bar:
        for n in sorted(set(counts)):
            for device in all_devices[:n]:
                if device.name not in single_runs:  # the device alone: its baseline
                    single_runs[device.name] = simulate([device], settings, model, student, lut, base)
                    singles[device.name] = single_runs[device.name]["devices"][0]
                    bar.update(1)
            if n == 1:
                result = single_runs[all_devices[0].name]
            else:
                result = simulate(all_devices[:n], settings, model, student, lut, base)
                bar.update(n)
            for d in result["devices"]:
                d["single_miou"] = singles[d["device"]]["miou"]
                d["loss_points"] = 100.0 * (d["single_miou"] - d["miou"])
            losses = [d["loss_points"] for d in result["devices"]]
            rows.append({
                "devices": n, "miou_mean": float(np.mean([d["miou"] for d in result["devices"]])),
                "single_miou_mean": float(np.mean([d["single_miou"] for d in result["devices"]])),
                "loss_points_mean": float(np.mean(losses)), "loss_points_max": float(np.max(losses)),
                "update_lag_s_mean": _mean([d["update_lag_s"] for d in result["devices"]]),
                "phases_per_device": float(np.mean([d["phases"] for d in result["devices"]])),
                "cpu_s": result["cpu_s"], "wall_s": result["wall_s"], "per_device": result["devices"],
            })
            ok = [r["devices"] for r in rows if r["loss_points_mean"] < 1.0]
            report = {
                "schema": SCHEMA, "videos": [c.name for c in clips], "settings": settings.__dict__, "threads": threads,
                "rows": rows, "largest_within_1_point": max(ok) if ok else None,
                "counts_done": [r["devices"] for r in rows], "counts_asked": sorted(set(counts)),
                "note": "one trainer on the simulated clock; capacity = phases per T_update of video time it can run "
                        "(the 2-core CPU here trains about 2 phases of K=20 at 512 px per 10 s when idle); device i "
                        "plays clip i mod 2, starting a quarter of the clip further for every pair of devices",
                "single": {k: {kk: v[kk] for kk in ("miou", "phases", "update_lag_s")} for k, v in singles.items()},
            }
            (out / "fleet.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            (out / "fleet.md").write_text(markdown(report), encoding="utf-8")
            plot(report, out / "fleet.png")
    return report


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# bench fleet: devices per trainer",
        "",
        f"Videos {', '.join(report['videos'])}; {s['duration_s']:g} s of video per device, scored at {s['grid_fps']:g} fps, "
        f"sampled at {s['sample_fps']:g} fps; T_update {s['t_update_s']:g} s, K {s['iterations']}, batch {s['batch_size']}, "
        f"gamma {s['gamma']:g}, {s['width']} px; trainer capacity {s['capacity']:g} phases per T_update.",
        "",
        "| devices | mIoU | alone | loss (points, mean / max) | update lag s | phases/device | CPU s | wall s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['devices']} | {100 * r['miou_mean']:.1f} | {100 * r['single_miou_mean']:.1f} | "
            f"{r['loss_points_mean']:.2f} / {r['loss_points_max']:.2f} | {_f(r['update_lag_s_mean'], '.1f')} | "
            f"{r['phases_per_device']:.1f} | {_f(r['cpu_s'], '.0f')} | {_f(r['wall_s'], '.0f')} |")
    best = report["largest_within_1_point"]
    if report.get("counts_done") != report.get("counts_asked"):
        lines += ["", f"_Partial: counts {report.get('counts_done')} of {report.get('counts_asked')} finished._"]
    lines += ["", f"Largest device count with under 1 point of mean mIoU loss vs single-device: **{best}**.", "",
              "Per device (largest count):", "", "| device | clip | phi-bar | phases | mIoU | alone | loss | lag s |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for d in report["rows"][-1]["per_device"]:
        lines.append(f"| {d['device']} | {d['clip']} | {_f(d['phi_mean'], '.2f')} | {d['phases']} | {100 * d['miou']:.1f} | "
                     f"{100 * d['single_miou']:.1f} | {d['loss_points']:.2f} | {_f(d['update_lag_s'], '.1f')} |")
    lines += ["", f"_{report['note']}._", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    n = [r["devices"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(n, [100 * r["miou_mean"] for r in rows], "o-", label="with N devices")
    ax1.plot(n, [100 * r["single_miou_mean"] for r in rows], "s--", label="same devices alone")
    ax1.set_xlabel("devices per trainer")
    ax1.set_ylabel("mean per-frame mIoU (%)")
    ax1.set_xscale("log", base=2)
    ax1.legend()
    ax2.plot(n, [r["update_lag_s_mean"] or 0 for r in rows], "o-")
    ax2.set_xlabel("devices per trainer")
    ax2.set_ylabel("mean update lag (video s)")
    ax2.set_xscale("log", base=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bench_fleet(args: argparse.Namespace) -> int:
    from cloudtutor.bench.videos import resolve_videos
    from cloudtutor.config.common import LogSettings
    from cloudtutor.logs import setup_logging

    setup_logging(LogSettings(level="INFO"), "cloudtutor.bench")
    videos = resolve_videos(args.videos)
    if videos is None:
        return 2
    settings = Settings(duration_s=args.seconds, grid_fps=args.grid_fps, sample_fps=args.sample_fps,
                        t_update_s=args.t_update, capacity=args.capacity, iterations=args.iterations,
                        batch_size=args.batch_size, width=args.width)
    try:
        run_bench_fleet(videos, Path(args.out), counts=args.devices, settings=settings, threads=args.threads)
    except ValueError as exc:
        print(f"bench fleet: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "fleet.md").read_text())
    return 0


def add_bench_fleet_parser(bench_sub) -> None:
    d = Settings()
    p = bench_sub.add_parser("fleet", help="1, 2, 4, 8 devices against one trainer: mIoU vs single-device, update lag, CPU")
    p.add_argument("--videos", nargs="+", help="videos (default: every video under the data root)")
    p.add_argument("--out", default="out/bench-fleet", help="output folder (default: out/bench-fleet)")
    p.add_argument("--devices", type=int, nargs="+", default=list(DEFAULT_COUNTS), help="device counts (default: 1 2 4 8)")
    p.add_argument("--seconds", type=float, default=d.duration_s, help=f"video seconds per device (default: {d.duration_s:g})")
    p.add_argument("--grid-fps", dest="grid_fps", type=float, default=d.grid_fps,
                   help=f"frames per video second the edge labels and is scored on (default: {d.grid_fps:g})")
    p.add_argument("--sample-fps", dest="sample_fps", type=float, default=d.sample_fps,
                   help=f"frames per video second sampled for the cloud (default: {d.sample_fps:g})")
    p.add_argument("--t-update", dest="t_update", type=float, default=d.t_update_s, help="T_update, video s (default: 10)")
    p.add_argument("--capacity", type=float, default=d.capacity,
                   help=f"phases the trainer runs per T_update of video time (default: {d.capacity:g})")
    p.add_argument("--iterations", type=int, default=d.iterations, help=f"K per phase (default: {d.iterations})")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=d.batch_size, help="mini-batch (default: 2)")
    p.add_argument("--width", type=int, default=d.width, help=f"student width (default: {d.width})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.set_defaults(func=_bench_fleet)


__all__ = ["Settings", "add_bench_fleet_parser", "make_devices", "markdown", "run_bench_fleet", "simulate"]
