"""``cloudtutor bench load``: N devices through the whole closed loop, watching
memory and backlog (issue 10).

Runs :class:`cloudtutor.testing.liveloop.LiveLoop` (Mosquitto, Redis with
AOF, the six services and N edge agents, each a real process) on the
simulated clock of brief §10.1, samples every ``--every`` wall seconds the
resident memory of every process and the backlog (consumer-group lag plus
pending entries) of every work stream, then stops the edges and checks
delivery and weights (:mod:`cloudtutor.testing.loopcheck`).

Verdicts, from the samples taken once every device is past 25% of the run
(start-up and the first model load are not "growth"):

* memory: every service's peak RSS under ``--memory-bound-mb``, and its
  RSS at the end no more than ``--growth-mb`` above its RSS at 25%; Redis
  the same (bound doubled) once every training horizon is full;
* backlog: no stream's backlog over the last third of the run above its
  peak over the middle third plus ``--backlog-slack`` entries.

Writes ``load.json``, ``load.md`` and ``load.png`` (RSS and backlog vs video time).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from cloudtutor.config.cloud import SERVICES

log = logging.getLogger("cloudtutor.bench.load")


def run_bench_load(*, videos: list[Path], out: Path, devices: int, minutes: float, sample_fps: float = 1.0,
                   every_s: float = 5.0, memory_bound_mb: float = 1500.0, growth_mb: float = 100.0,
                   backlog_slack: int = 50, lockstep_lag_s: float | None = 20.0,
                   t_update_s: float = 10.0) -> dict[str, Any]:
    from cloudtutor.testing.liveloop import LiveLoop, loop_plan
    from cloudtutor.testing.loopcheck import stream_backlog

    out.mkdir(parents=True, exist_ok=True)
    duration = minutes * 60.0
    plan = loop_plan(videos, out, devices=devices, duration_s=duration, sample_fps=sample_fps,
                     lockstep_lag_s=lockstep_lag_s, t_update_s=t_update_s)
    live = LiveLoop(plan)
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        live.start()
        log.info("loop running with %d devices; sampling every %.0f s", devices, every_s)
        def sample() -> dict[str, Any]:
            samples.append({"wall_s": round(time.monotonic() - started, 1), "video_s": _video_s(live),
                            "rss_mb": {k: None if v is None else round(v / 1024, 1) for k, v in live.memory_kb().items()},
                            "backlog": stream_backlog(live.fb)})
            return samples[-1]

        while any(p.running() for p in live.fleet.edges.values()):
            last = sample()
            log.info("video %.0f/%.0f s; backlog %s", last["video_s"], duration,
                     {s: b["backlog"] for s, b in last["backlog"].items()})
            # Partial figures survive an interrupted run.
            (out / "load.samples.json").write_text(json.dumps(samples) + "\n", encoding="utf-8")
            dead = live.fleet.dead_services()
            if dead:
                raise RuntimeError(f"service(s) died: {dead}")
            time.sleep(every_s)
        # One more once the edges are done: a short run on an idle machine can
        # end between two samples, and the end of the run is the figure that matters.
        sample()
        codes = live.stop_edges()
        checked = live.check()
    finally:
        live.close()
    result = {
        "devices": devices, "minutes": minutes, "sample_fps": sample_fps, "t_update_s": t_update_s,
        "lockstep_lag_s": lockstep_lag_s,
        "wall_s": round(time.monotonic() - started, 1), "edge_exit_codes": codes,
        "bounds": {"memory_bound_mb": memory_bound_mb, "growth_mb": growth_mb, "backlog_slack": backlog_slack},
        "memory": memory_verdict(samples, duration, memory_bound_mb, growth_mb),
        "backlog": backlog_verdict(samples, duration, backlog_slack),
        "delivery": [d["delivery"] for d in checked["devices"]],
        "weights_match": [d["weights_match"] for d in checked["devices"]],
        "frame_blobs_left": checked["frame_blobs_left"], "frames_ingested": checked["frames_ingested"],
        "samples": samples,
    }
    result["ok"] = (all(m["ok"] for m in result["memory"].values()) and all(b["ok"] for b in result["backlog"].values())
                    and all(d["lost"] == 0 and d["duplicated"] == 0 for d in result["delivery"]))
    write_outputs(result, out)
    return result


def _video_s(live) -> float:
    traffic = [live.observer.devices.get(d) for d in live.devices]
    times = [t.telemetry.video_ms or 0 for t in traffic if t is not None and t.telemetry is not None]
    return round(min(times) / 1000.0, 1) if len(times) == len(live.devices) else 0.0


def memory_verdict(samples: list[dict], duration_s: float, bound_mb: float, growth_mb: float,
                   horizon_s: float = 240.0) -> dict[str, dict]:
    """Per service: RSS at 25% of the run, at the end, peak; ok if under the bound and not growing.

    Redis is judged the same way from the moment every training horizon is
    full (``horizon_s`` of video plus 10 s): until then its samples and
    labels grow by design. Its bound is twice the services' (it holds the data).
    """
    out = {}
    for name in (*SERVICES, "redis"):
        settle = max(0.25 * duration_s, horizon_s + 10.0) if name == "redis" else 0.25 * duration_s
        series = [s["rss_mb"].get(name) for s in samples
                  if s["video_s"] >= settle and s["rss_mb"].get(name) is not None]
        if not series:
            if name == "redis":
                out[name] = {"ok": True, "reason": f"run shorter than the horizon ({horizon_s:.0f} s): not judged"}
            else:
                out[name] = {"ok": False, "reason": "no samples after 25% of the run"}
            continue
        bound = 2 * bound_mb if name == "redis" else bound_mb
        peak = max(series)
        growth = series[-1] - series[0]
        out[name] = {"from_video_s": round(settle, 1), "start_mb": series[0], "end_mb": series[-1], "peak_mb": peak,
                     "growth_mb": round(growth, 1), "ok": peak <= bound and growth <= growth_mb}
    return out


def backlog_verdict(samples: list[dict], duration_s: float, slack: int) -> dict[str, dict]:
    """Per stream: peak backlog over the middle and the last third of the run (video time)."""
    out = {}
    streams = samples[-1]["backlog"].keys() if samples else []
    for stream in streams:
        middle = [s["backlog"][stream]["backlog"] for s in samples if duration_s / 3 <= s["video_s"] < 2 * duration_s / 3]
        last = [s["backlog"][stream]["backlog"] for s in samples if s["video_s"] >= 2 * duration_s / 3]
        peak_middle, peak_last = max(middle, default=0), max(last, default=0)
        out[stream] = {"peak_middle": peak_middle, "peak_last": peak_last,
                       "peak": max((s["backlog"][stream]["backlog"] for s in samples), default=0),
                       "ok": peak_last <= peak_middle + slack}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Load: {result['devices']} devices, {result['minutes']} min of video at {result['sample_fps']} fps sampled",
             "", f"wall {result['wall_s']} s; lockstep lag {result['lockstep_lag_s']} s of video; verdict: "
             f"{'ok' if result['ok'] else 'NOT ok'}", "",
             f"| process | judged from video s | RSS then (MB) | end | peak | growth | ok (peak <= "
             f"{result['bounds']['memory_bound_mb']}, Redis 2x; growth <= {result['bounds']['growth_mb']}) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in result["memory"].items():
        lines.append(f"| {name} | {m.get('from_video_s', '-')} | {m.get('start_mb', '-')} | {m.get('end_mb', '-')} | "
                     f"{m.get('peak_mb', '-')} | {m.get('growth_mb', '-')} | {m['ok']} {m.get('reason', '')} |")
    lines += ["", "| stream | peak backlog | peak, middle third | peak, last third | ok |", "| --- | --- | --- | --- | --- |"]
    for stream, b in result["backlog"].items():
        lines.append(f"| {stream} | {b['peak']} | {b['peak_middle']} | {b['peak_last']} | {b['ok']} |")
    lines += ["", "| device | chunks made | ingested | lost | ingested twice |", "| --- | --- | --- | --- | --- |"]
    for d in result["delivery"]:
        lines.append(f"| {d['device_id']} | {d['made']} | {d['ingested']} | {d['lost']} | {d['duplicated']} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    video = [s["video_s"] for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for i, name in enumerate(samples[-1]["rss_mb"] if samples else []):
        # Past ten lines the colours repeat: dashes tell them apart.
        top.plot(video, [s["rss_mb"].get(name) for s in samples], label=name, linestyle="-" if i < 10 else "--")
    top.set_ylabel("RSS (MB)")
    top.legend(fontsize=7, ncol=3)
    for stream in samples[-1]["backlog"] if samples else []:
        bottom.plot(video, [s["backlog"][stream]["backlog"] for s in samples], label=stream)
    bottom.set_ylabel("backlog (entries)")
    bottom.set_xlabel("video time of the slowest device (s)")
    bottom.legend(fontsize=7)
    fig.suptitle(f"{result['devices']} devices, {result['minutes']} min of video")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: dict[str, Any], out: Path) -> None:
    (out / "load.json").write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    (out / "load.md").write_text(markdown(result), encoding="utf-8")
    plot(result, out / "load.png")


def _bench_load(args) -> int:
    from cloudtutor.config.common import LogSettings, default_data_root
    from cloudtutor.demo.run import default_videos
    from cloudtutor.logs import setup_logging

    setup_logging(LogSettings(level="INFO"), "cloudtutor.bench.load")
    videos = [Path(v) for v in args.videos] if args.videos else default_videos(default_data_root())
    result = run_bench_load(
        videos=videos, out=Path(args.out).resolve(), devices=args.devices, minutes=args.minutes,
        sample_fps=args.sample_fps, every_s=args.every, memory_bound_mb=args.memory_bound_mb,
        growth_mb=args.growth_mb, backlog_slack=args.backlog_slack,
        lockstep_lag_s=(2 * args.t_update if args.lockstep_lag is None else args.lockstep_lag) or None,
        t_update_s=args.t_update,
    )
    print(markdown(result))
    return 0 if result["ok"] else 1


def add_bench_load_parser(bench_sub) -> None:
    p = bench_sub.add_parser("load", help="N devices through the whole loop: memory and stream backlog over time, delivery")
    p.add_argument("--devices", type=int, default=8, help="edge agents (default: 8)")
    p.add_argument("--minutes", type=float, default=10.0, help="minutes of video per device (default: 10)")
    p.add_argument("--sample-fps", dest="sample_fps", type=float, default=1.0, help="frames sampled per video second (default: 1)")
    p.add_argument("--t-update", dest="t_update", type=float, default=10.0, help="AMS T_update, video seconds (default: 10)")
    p.add_argument("--videos", nargs="+", help="videos to chain (default: the real videos under the data root)")
    p.add_argument("--every", type=float, default=5.0, help="wall seconds between samples (default: 5)")
    p.add_argument("--memory-bound-mb", dest="memory_bound_mb", type=float, default=1500.0,
                   help="peak RSS allowed per service (default: 1500)")
    p.add_argument("--growth-mb", dest="growth_mb", type=float, default=100.0,
                   help="RSS growth allowed per service from 25%% of the run to its end (default: 100)")
    p.add_argument("--backlog-slack", dest="backlog_slack", type=int, default=50,
                   help="entries a stream's backlog may exceed its middle-third peak by in the last third (default: 50)")
    p.add_argument("--lockstep-lag", dest="lockstep_lag", type=float,
                   help="video seconds an edge may run ahead of training (0: free running; default: 2 x T_update, "
                        "as the demo: less than T_update plus a sampling interval stalls the edges)")
    p.add_argument("--out", default="out/load", help="output folder (default: out/load)")
    p.set_defaults(func=_bench_load)


__all__ = ["add_bench_load_parser", "backlog_verdict", "markdown", "memory_verdict", "run_bench_load"]
