"""The demo's uplink budget schedule (issue 8): ``--budget-schedule
"0:200,30:20"`` sets each device's ``uplink_budget_kbps`` to 200 from the
start and, once the devices' video reaches 30 s, to 20 through
``control/set`` (as an operator would). The report then shows the
controller's knob changes, the uplink per chunk against the budget, the
settling time after each change and the accuracy around it.

Uplink per chunk: its wire bytes (counted on the broker) over the video
time since the previous chunk's last frame. The uplink a budget bounds is
that spread over a window (T_update, 10 s by default; a chunk cut short by
a knob or source change carries a whole IDR frame in a second or two).
Settling time of a change at video time t_c to budget B: from t_c to the
first chunk end from which every windowed uplink until the next change
stays at or under B.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("cloudtutor.demo")

Schedule = list[tuple[float, float]]


def parse_schedule(text: str) -> Schedule:
    """``"T:KBPS,T:KBPS,..."`` (video seconds, Kbps) -> sorted steps; ValueError with the reason."""
    steps: Schedule = []
    for part in text.split(","):
        t, sep, kbps = part.strip().partition(":")
        if not sep:
            raise ValueError(f"budget step {part!r} is not TIME:KBPS")
        try:
            step = (float(t), float(kbps))
        except ValueError:
            raise ValueError(f"budget step {part!r}: TIME and KBPS must be numbers") from None
        if step[0] < 0 or not step[1] > 0:
            raise ValueError(f"budget step {part!r}: TIME must be >= 0 and KBPS > 0")
        steps.append(step)
    times = [t for t, _ in steps]
    if times != sorted(times) or len(set(times)) != len(times):
        raise ValueError(f"budget steps must have increasing times: {times}")
    return steps


class BudgetDriver:
    """Publishes the schedule's later steps on ``control/set`` when every
    device's video time (telemetry, newest chunk) has reached them."""

    def __init__(self, bus, topics, devices: Sequence[str], schedule: Schedule, video_time) -> None:
        self.bus, self.topics, self.devices = bus, topics, list(devices)
        self.pending = [s for s in schedule if s[0] > 0]
        self.video_time = video_time  # device id -> its video time in s (None: unknown yet)
        self.applied: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="budget-driver", daemon=True)

    def start(self) -> BudgetDriver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while self.pending and not self._stop.wait(0.2):
            times = [self.video_time(d) for d in self.devices]
            if None in times or min(times) < self.pending[0][0]:
                continue
            at, kbps = self.pending.pop(0)
            for device in self.devices:
                self.bus.publish(self.topics.control_set(device), json.dumps({"uplink_budget_kbps": kbps}), qos=1)
            self.applied.append({"scheduled_s": at, "applied_s": round(min(times), 3), "kbps": kbps})
            log.info("budget -> %g Kbps at %.1f s of video (scheduled %.1f s)", kbps, min(times), at)


def chunk_rates(series: Sequence[tuple[float, int]]) -> list[dict[str, float]]:
    """Per chunk: start and end (video s) and Kbps, from (end s, bytes) sorted by end."""
    out = []
    for (t0, _), (t1, nbytes) in zip(series, series[1:]):
        if t1 > t0:
            out.append({"start_s": t0, "end_s": t1, "kbps": nbytes * 8 / 1000 / (t1 - t0)})
    return out


def _mean_miou(timeline, start_s: float, end_s: float) -> float | None:
    vals = [a for pts, _, a, _ in timeline if a is not None and start_s * 1000 <= pts < end_s * 1000]
    return round(float(np.mean(vals)), 4) if vals else None


def window_kbps(rates: Sequence[dict[str, float]], end_s: float, window_s: float) -> float:
    """Mean Kbps over ``[end_s - window_s, end_s]``, each chunk's bytes spread evenly over its span."""
    start = end_s - window_s
    kbits = sum(r["kbps"] * max(0.0, min(end_s, r["end_s"]) - max(start, r["start_s"])) for r in rates)
    return kbits / window_s


def settle(rates: Sequence[dict[str, float]], t_change: float, t_next: float, budget: float,
           window_s: float = 10.0) -> dict[str, Any]:
    """Settling after a change at ``t_change`` to ``budget``: the uplink averaged over
    ``window_s`` (a budget is a rate, and a chunk cut short by a knob or video change
    carries a whole IDR frame), sampled at each chunk's end before ``t_next``."""
    first_start = rates[0]["start_s"] if rates else 0.0
    ends = [r["end_s"] for r in rates if t_change < r["end_s"] <= t_next and r["end_s"] - window_s >= first_start]
    window = [(t, window_kbps(rates, t, window_s)) for t in ends]
    chunks = [r["kbps"] for r in rates if t_change < r["end_s"] <= t_next]
    if not window:
        return {"settled": False, "settling_s": None, "chunks": len(chunks)}
    first = len(window)
    for i in range(len(window) - 1, -1, -1):
        if window[i][1] > budget:
            break
        first = i
    settled = first < len(window)
    after = [k for _, k in window[first:]]
    return {
        "settled": settled, "chunks": len(chunks), "window_s": window_s,
        "settling_s": round(max(0.0, window[first][0] - t_change), 2) if settled else None,
        "mean_kbps_after": round(float(np.mean(after)), 2) if after else None,
        "max_kbps_after": round(max(after), 2) if after else None,
        "max_chunk_kbps": round(max(chunks), 2) if chunks else None,
    }


def budget_entry(schedule: Schedule, applied: Sequence[dict], device: dict[str, Any], states: Sequence[dict],
                 duration_s: float, other: dict[str, Any] | None = None, window_s: float = 10.0) -> dict[str, Any]:
    """The budget section of one device: steps as applied, knob changes,
    settling per step, and mIoU per step (beside another run's, if given)."""
    rates = chunk_rates(device["traffic"]["uplink_series"])
    steps = [{"applied_s": 0.0, "kbps": schedule[0][1], "scheduled_s": schedule[0][0]}] + list(applied)
    timeline = device["evaluation"]["timeline"]
    other_tl = other["evaluation"]["timeline"] if other else None
    out_steps = []
    for i, step in enumerate(steps):
        t0 = step["applied_s"]
        t1 = steps[i + 1]["applied_s"] if i + 1 < len(steps) else duration_s
        s = settle(rates, t0, t1, step["kbps"], window_s)
        t_settled = t0 + (s["settling_s"] or 0.0)
        entry = {**step, "until_s": t1, **s, "miou_adapted": _mean_miou(timeline, t_settled, t1)}
        if other_tl is not None:
            entry["miou_other_run"] = _mean_miou(other_tl, t_settled, t1)
            if entry["miou_adapted"] is not None and entry["miou_other_run"] is not None:
                entry["miou_cost_points"] = round(100 * (entry["miou_other_run"] - entry["miou_adapted"]), 2)
        out_steps.append(entry)
    return {"schedule": schedule, "steps": out_steps, "knob_changes": list(states),
            "chunk_kbps": [[round(r["end_s"], 3), round(r["kbps"], 3)] for r in rates]}


def state_record(state) -> dict[str, Any]:
    """A control/state as the report keeps it."""
    k = state.knobs
    return {"version": state.version, "video_s": None if state.video_ms is None else state.video_ms / 1000,
            "scale": k.scale, "crf": k.crf, "roi_qoffset": k.roi_qoffset, "sample_fps": k.sample_fps,
            "useful_threshold": k.useful_threshold, "t_update_s": k.t_update_s, "budget_kbps": k.uplink_budget_kbps,
            "reason": state.reason}


def markdown(report: dict[str, Any]) -> list[str]:
    from cloudtutor.demo.report import _pct

    rows = [d for d in report["devices"] if d.get("budget")]
    if not rows:
        return []
    other = (report.get("compared_to") or {}).get("report")
    lines = ["", "## Uplink budget", "",
             "Budget schedule (video s: Kbps): " + ", ".join(f"{t:g}: {k:g}" for t, k in rows[0]["budget"]["schedule"])
             + ". Uplink = chunk bytes on the broker spread over the chunks' video time, averaged over the last "
             f"{rows[0]['budget']['steps'][0].get('window_s', 10):g} s at each chunk end; settling = from the change to "
             "the first chunk end after which that average stays under the budget (max per chunk: unaveraged); "
             "mIoU = adapted edge vs teacher over the frames after settling"
             + (f", beside the same frames of {other}" if other else "") + ".", ""]
    for d in rows:
        b = d["budget"]
        lines += [f"### {d['device_id']}", "",
                  "| budget Kbps | applied at s | until s | chunks | settled | settling s | mean / max Kbps after "
                  "| max per chunk | mIoU after" + (" | other run | cost (points)" if other else "") + " |",
                  "|---|---|---|---|---|---|---|---|---" + ("|---|---" if other else "") + "|"]
        for s in b["steps"]:
            row = (f"| {s['kbps']:g} | {s['applied_s']:.1f} | {s['until_s']:.1f} | {s['chunks']} | {s['settled']} "
                   f"| {s['settling_s']} | {s.get('mean_kbps_after')} / {s.get('max_kbps_after')} "
                   f"| {s.get('max_chunk_kbps')} | {_pct(s['miou_adapted'])}")
            if other:
                row += f" | {_pct(s.get('miou_other_run'))} | {s.get('miou_cost_points')}"
            lines.append(row + " |")
        lines += ["", "Knob changes (control/state):", "",
                  "| version | video s | scale | CRF | fps | useful thr. | T_update | budget | reason |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in b["knob_changes"]:
            vs = "" if c["video_s"] is None else f"{c['video_s']:.1f}"
            reason = (c["reason"] or "").replace("|", "/")[:220]
            lines.append(f"| {c['version']} | {vs} | {c['scale']:g} | {c['crf']:g} | {c['sample_fps']:g} "
                         f"| {c['useful_threshold']:g} | {c['t_update_s']:g} | {c['budget_kbps']:g} | {reason} |")
    lines += ["", "![uplink vs budget](budget.png)"]
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    rows = [d for d in report["devices"] if d.get("budget")]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cloudtutor.demo.report import _smooth

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    end = report["duration_s"]
    for d in rows:
        b = d["budget"]
        rates = chunk_rates(d["traffic"]["uplink_series"])
        if rates:
            axes[0].step([r["start_s"] for r in rates] + [rates[-1]["end_s"]], [r["kbps"] for r in rates] + [rates[-1]["kbps"]],
                         where="post", alpha=0.5, label=f"{d['device_id']} uplink per chunk")
            window = b["steps"][0].get("window_s", 10.0)
            ends = [r["end_s"] for r in rates if r["end_s"] - window >= rates[0]["start_s"]]
            axes[0].plot(ends, [window_kbps(rates, t, window) for t in ends], "o-", ms=3,
                         label=f"{d['device_id']} uplink, {window:g} s mean")
        steps = b["steps"]
        axes[0].step([s["applied_s"] for s in steps] + [end], [s["kbps"] for s in steps] + [steps[-1]["kbps"]],
                     "k--", where="post", label="budget")
        changes = [c for c in b["knob_changes"] if c["video_s"] is not None]
        if changes:
            t = [c["video_s"] for c in changes] + [end]
            axes[1].step(t, [c["scale"] for c in changes] + [changes[-1]["scale"]], where="post", label="scale")
            axes[1].step(t, [c["crf"] / 10 for c in changes] + [changes[-1]["crf"] / 10], where="post", label="CRF / 10")
            axes[1].step(t, [c["sample_fps"] for c in changes] + [changes[-1]["sample_fps"]], where="post", label="sample fps")
        tl = d["evaluation"]["timeline"]
        if tl:
            ts = np.array([p for p, _, _, _ in tl]) / 1000
            a = np.array([np.nan if v is None else v for _, _, v, _ in tl], dtype=float)
            w = max(1, min(25, len(a) // 10))
            axes[2].plot(ts[w - 1:] if len(a) >= w else ts, _smooth(a, w), label=f"{d['device_id']} adapted (moving mean)")
    for s in rows[0]["budget"]["steps"][1:]:
        for ax in axes:
            ax.axvline(s["applied_s"], color="grey", alpha=0.5, lw=0.8)
    axes[0].set_ylabel("Kbps")
    axes[0].set_title("uplink vs budget (video time)", fontsize=10)
    axes[1].set_ylabel("knobs")
    axes[1].set_title("knobs at the controller's video time (its newest signal; the edge is up to the lockstep lag ahead)",
                      fontsize=9)
    axes[2].set_ylabel("mIoU vs teacher")
    axes[2].set_xlabel("video time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def start_driver(plan, fleet, observer) -> BudgetDriver | None:
    """The driver of the plan's later budget steps, started (None without a schedule)."""
    if not plan.budget_schedule:
        return None

    def video_time(device: str) -> float | None:
        traffic = observer.devices.get(device)
        if traffic is None:
            return None
        times = [traffic.telemetry.video_ms or 0] if traffic.telemetry is not None else []
        times += list(traffic.chunk_last_pts.values())
        return max(times) / 1000 if times else None

    return BudgetDriver(observer.bus, observer.topics, sorted(fleet.edges), plan.budget_schedule, video_time).start()


def add_budget(report: dict[str, Any], plan, observer, driver: BudgetDriver, other: dict[str, Any] | None) -> None:
    """Each device's budget section, beside the same device of ``other`` (an earlier report) if given."""
    theirs = {d["device_id"]: d for d in (other or {}).get("devices", [])}
    for device in report["devices"]:
        traffic = observer.devices.get(device["device_id"])
        seen: dict[int, dict] = {}
        for state in traffic.states if traffic is not None else []:
            seen.setdefault(state.version, state_record(state))  # retained republishes repeat a version
        device["budget"] = budget_entry(plan.budget_schedule, driver.applied, device, sorted(seen.values(), key=lambda s: s["version"]),
                                        plan.duration_s, theirs.get(device["device_id"]))


def recompare(report_path: Path, other_path: Path) -> dict[str, Any]:
    """Redo a finished run's budget section beside another run's report (e.g. the same
    run without the drop, made at the same time), and rewrite its report files."""
    from cloudtutor.demo.report import compare_reports, write_report

    report = json.loads(report_path.read_text(encoding="utf-8"))
    other = json.loads(other_path.read_text(encoding="utf-8"))
    report["compared_to"] = compare_reports(report, other, str(other_path))
    theirs = {d["device_id"]: d for d in other.get("devices", [])}
    for device in report["devices"]:
        b = device.get("budget")
        if b:
            applied = [{k: s[k] for k in ("scheduled_s", "applied_s", "kbps")} for s in b["steps"][1:]]
            device["budget"] = budget_entry([tuple(s) for s in b["schedule"]], applied, device, b["knob_changes"],
                                            report["duration_s"], theirs.get(device["device_id"]))
    write_report(report, report_path.parent)
    return report


__all__ = ["BudgetDriver", "add_budget", "budget_entry", "chunk_rates", "markdown", "parse_schedule", "plot", "recompare", "settle",
           "start_driver", "state_record", "window_kbps"]
