"""report.json (schema cloudtutor.report/v1, brief §7), report.md and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "cloudtutor.report/v1"


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    plot_miou(report, out / "miou.png")
    plot_bandwidth(report, out / "bandwidth.png")
    from cloudtutor.demo.budget import plot as plot_budget

    plot_budget(report, out / "budget.png")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}"


def _clock(report: dict[str, Any]) -> str:
    speed, lag = report.get("speed", 0), report.get("lockstep_lag_s")
    pace = "as fast as the work allows" if not speed else f"{speed:g}x real time"
    held = f", each edge at most {lag:g} s of video ahead of what the cloud trained on" if lag else ", free running"
    return f"Clock: video time, {pace}{held} (brief §10.1)."


def _match(device: dict[str, Any]) -> str:
    """A device that never got a model from the cloud (split mode runs its pretrained front) has nothing to match."""
    if not device["weights_sha256_match"] and not device["model_version"] and not device["model_updates_applied"]:
        return "n/a (no model sent)"
    return str(device["weights_sha256_match"])


def _setting(report: dict[str, Any]) -> str:
    """The knobs that make runs differ in bytes: scale, CRF, ROI, how the cloud upscales, and the mode."""
    k = report.get("knobs", {})
    sr = report.get("superres") or {}
    method = sr.get("method", "bicubic")
    upscale = f"SR model {Path(sr['model_path']).name}" if method == "model" and sr.get("model_path") else "bicubic"
    if k.get("scale", 1) == 1:
        upscale = "none (full resolution)"
    roi = "off"
    if report.get("roi_accmodel") and k.get("roi_qoffset", 0):
        roi = f"AccModel {Path(report['roi_accmodel']).name}, qoffset {k['roi_qoffset']:.3f} (x51 = {51 * k['roi_qoffset']:.0f} QP)"
    return f"scale {k.get('scale', 1):g}, CRF {k.get('crf', 23):g}, ROI {roi}, upscaling: {upscale}; mode {k.get('mode', 'ams')}"


def compare_reports(report: dict[str, Any], other: dict[str, Any], other_path: str) -> dict[str, Any]:
    """This run beside an earlier one, device by device (matched by id): uplink,
    downlink and mIoU, with ratios and differences. Pure: two reports in."""
    theirs = {d["device_id"]: d for d in other.get("devices", [])}
    devices = []
    for d in report["devices"]:
        o = theirs.get(d["device_id"])
        if o is None:
            continue
        up, up_o = d["uplink_kbps"], o["uplink_kbps"]
        devices.append({
            "device_id": d["device_id"],
            "uplink_kbps": up, "other_uplink_kbps": up_o,
            "uplink_ratio": round(up / up_o, 4) if up_o else None,
            "downlink_kbps": d["downlink_kbps"], "other_downlink_kbps": o["downlink_kbps"],
            "miou_adapted": d["miou_vs_teacher"]["adapted"], "other_miou_adapted": o["miou_vs_teacher"]["adapted"],
            "miou_points": round(100 * (d["miou_vs_teacher"]["adapted"] - o["miou_vs_teacher"]["adapted"]), 2),
        })
    return {"report": other_path, "setting": _setting(other), "duration_s": other.get("duration_s"),
            "same_videos": [Path(v).name for v in other.get("videos", [])] == [Path(v).name for v in report["videos"]],
            "devices": devices}


def _comparison(report: dict[str, Any]) -> list[str]:
    c = report.get("compared_to")
    if not c:
        return []
    lines = ["", f"## Against {c['report']}", "",
             f"This run: {_setting(report)}. That run: {c['setting']} ({c['duration_s']:.0f} s of video"
             + ("" if c["same_videos"] else "; other videos") + ").", "",
             "| device | uplink Kbps here / there | ratio | downlink Kbps here / there | mIoU adapted here / there | difference (points) |",
             "|---|---|---|---|---|---|"]
    for d in c["devices"]:
        ratio = "n/a" if d["uplink_ratio"] is None else f"{d['uplink_ratio']:.3f}"
        lines.append(f"| {d['device_id']} | {d['uplink_kbps']:.1f} / {d['other_uplink_kbps']:.1f} | {ratio} "
                     f"| {d['downlink_kbps']:.1f} / {d['other_downlink_kbps']:.1f} "
                     f"| {_pct(d['miou_adapted'])} / {_pct(d['other_miou_adapted'])} | {_points(d['miou_points'])} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# cloudtutor demo",
        "",
        f"Videos: {', '.join(Path(v).name for v in report['videos'])}; {report['duration_s']:.0f} s of video, "
        f"{report['frames']} frames processed; wall time {report['wall_s']:.0f} s.",
        "",
        _clock(report),
        "",
        f"Setting: {_setting(report)}.",
        "",
        "mIoU is against the teacher's labels on every frame the edge processed (per-frame mean over the classes "
        "present; pooled = one confusion matrix; first pass = frames before the looped video repeats).",
        "",
        "| device | mIoU adapted | mIoU no customization | gain (points) | first pass adapted / none | pooled adapted / none "
        "| updates applied | weights match | uplink Kbps | downlink Kbps | chunks published / ingested / lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in report["devices"]:
        ev = d["evaluation"]
        first_a, first_b = ev["adapted"]["first"]["miou"], ev["no_customization"]["first"]["miou"]
        pool_a, pool_b = ev["adapted"]["all"]["pooled_miou"], ev["no_customization"]["all"]["pooled_miou"]
        c = d["chunks"]
        lines.append(
            f"| {d['device_id']} | {_pct(d['miou_vs_teacher']['adapted'])} | {_pct(d['miou_vs_teacher']['no_customization'])} "
            f"| {_points(ev['gain_points'])} | {_pct(first_a)} / {_pct(first_b)} | {_pct(pool_a)} / {_pct(pool_b)} "
            f"| {d['model_updates_applied']} | {_match(d)} | {d['uplink_kbps']:.1f} | {d['downlink_kbps']:.1f} "
            f"| {c['published']} / {c['ingested']} / {c['lost']} |"
        )
    lines += ["", "## Model updates", ""]
    for d in report["devices"]:
        u = d["updates"]
        lines.append(
            f"- {d['device_id']}: {u['deltas']} deltas (mean {u['mean_delta_bytes']:.0f} bytes), {u['snapshots']} snapshots; "
            f"full model {u['full_model_bytes']} bytes (float16, compressed)"
            + (f", i.e. a delta is {u['full_model_bytes'] / max(u['mean_delta_bytes'], 1):.1f}x smaller." if u["deltas"] else ".")
        )
    from cloudtutor.demo.shadowtutor import markdown as shadowtutor_markdown

    from cloudtutor.demo.split import markdown as split_markdown

    lines += shadowtutor_markdown(report)
    lines += split_markdown(report)
    from cloudtutor.demo.budget import markdown as budget_markdown

    lines += budget_markdown(report)
    lines += _comparison(report)
    lines += ["", "![mIoU over time](miou.png)", "", "![bandwidth](bandwidth.png)", ""]
    return "\n".join(lines)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window <= 1:
        return values
    kernel = np.ones(window) / window
    return np.convolve(np.nan_to_num(values, nan=np.nanmean(values)), kernel, mode="valid")


def plot_miou(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for d in report["devices"]:
        tl = d["evaluation"]["timeline"]
        if not tl:
            continue
        t = np.array([p for p, _, _, _ in tl]) / 1000.0
        adapted = np.array([np.nan if a is None else a for _, _, a, _ in tl], dtype=float)
        base = np.array([np.nan if b is None else b for _, _, _, b in tl], dtype=float)
        window = max(1, min(25, len(t) // 10))
        ts = t[window - 1:] if window > 1 and len(t) >= window else t
        ax.plot(ts, _smooth(adapted, window), label=f"{d['device_id']} adapted")
        ax.plot(ts, _smooth(base, window), "--", label=f"{d['device_id']} no customization")
    ax.set_xlabel("video time (s)")
    ax.set_ylabel("mIoU vs teacher (moving mean)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bandwidth(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for d in report["devices"]:
        up = d["traffic"]["uplink_series"]
        down = d["traffic"]["downlink_series"]
        if up:
            ax.step([t for t, _ in up], np.cumsum([b for _, b in up]) / 1024, where="post", label=f"{d['device_id']} uplink")
        if down:
            ax.step([t for t, _ in down], np.cumsum([b for _, b in down]) / 1024, where="post", label=f"{d['device_id']} downlink")
    ax.set_xlabel("video time (s): of a chunk's last frame (uplink), of the newest sample an update was trained on (downlink)")
    ax.set_ylabel("cumulative KiB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
