"""``cloudtutor demo``: run the loop, watch it, score it, write the report."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cloudtutor.config.cloud import SERVICES
from cloudtutor.demo.budget import add_budget, start_driver
from cloudtutor.demo.evaluate import evaluate_device
from cloudtutor.demo.observer import DeviceTraffic, FleetObserver
from cloudtutor.demo.orchestrate import DemoPlan, Fleet, wait_until
from cloudtutor.demo.report import SCHEMA, compare_reports, write_report

log = logging.getLogger("cloudtutor.demo")


class DemoError(RuntimeError):
    pass


def run_demo(plan: DemoPlan, *, compare_to: dict[str, Any] | None = None,
             compare_path: str | None = None) -> dict[str, Any]:
    """Run the loop and write the report; ``compare_to``: an earlier run's
    report.json, set beside this one's figures (e.g. scale 1 vs scale 4)."""
    started = time.time()
    fleet = Fleet(plan)
    observer = FleetObserver(fleet.mqtt).start()
    cloud_sha: dict[str, dict[int, str]] = {}
    driver = None
    try:
        fleet.start_services()
        if not observer.wait_for(lambda o: o.services_online(SERVICES), timeout=180):
            missing = [s for s in SERVICES if observer.services.get(s, {}).get("state") != "online"]
            raise DemoError(f"services not online: {missing}\n" + "\n".join(f"--- {m}\n{fleet.tail(m)}" for m in missing))
        if not wait_until(lambda: not fleet.unhealthy_services(), timeout=60):
            raise DemoError(f"services not healthy: {fleet.unhealthy_services()}")
        log.info("services online and healthy; starting %d edge agent(s)", plan.devices)
        fleet.start_edges()
        driver = start_driver(plan, fleet, observer)  # --budget-schedule (issue 8)
        _follow(plan, fleet, observer)
        cloud_sha = _cloud_view_hashes(fleet, observer)
        fleet.save_metrics()
    finally:
        if driver is not None:
            driver.stop()
        observer.close()
        fleet.stop()
    wall_s = time.time() - started
    report = _report(plan, fleet, observer, cloud_sha, wall_s)
    if compare_to is not None:
        report["compared_to"] = compare_reports(report, compare_to, compare_path or "(given)")
    if driver is not None:
        add_budget(report, plan, observer, driver, compare_to)
    write_report(report, plan.out)
    return report


def _follow(plan: DemoPlan, fleet: Fleet, observer: FleetObserver) -> None:
    """Progress bar over video time until every edge has exited."""
    bar = tqdm(total=round(plan.duration_s), unit="s video", desc="demo", mininterval=2.0)
    while fleet.edges_running():
        dead = fleet.dead_services()
        if dead:
            raise DemoError(f"service(s) died: {dead}\n" + "\n".join(f"--- {d}\n{fleet.tail(d)}" for d in dead))
        times = [d.telemetry.video_ms or 0 for d in observer.devices.values() if d.telemetry is not None]
        if times:
            bar.n = min(round(min(times) / 1000), bar.total)
            versions = [d.reported.version for d in observer.devices.values() if d.reported is not None]
            bar.set_postfix(model_version=max(versions, default=0), refresh=False)
            bar.refresh()
        time.sleep(1.0)
    bar.n = bar.total
    bar.close()
    failed = {name: p.popen.returncode for name, p in fleet.edges.items() if p.popen.returncode}
    if failed:
        raise DemoError(f"edge agent(s) failed: {failed}\n" + "\n".join(f"--- {n}\n{fleet.tail(n)}" for n in failed))


def _cloud_view_hashes(fleet: Fleet, observer: FleetObserver) -> dict[str, dict[int, str]]:
    """sha256 of the cloud's edge view at each device's reported version (before Redis stops)."""
    from cloudtutor.framebuffer import FrameBuffer
    from cloudtutor.streams import model_blob

    out: dict[str, dict[int, str]] = {}
    fb = FrameBuffer(fleet.redis)
    try:
        for device_id, traffic in observer.devices.items():
            if traffic.reported is None:
                continue
            blob = fb.get_blob(model_blob(device_id, traffic.reported.version))
            if blob is not None:
                out[device_id] = {traffic.reported.version: hashlib.sha256(blob).hexdigest()}
    finally:
        fb.close()
    return out


def _full_model_bytes(fleet: Fleet) -> int:
    from cloudtutor.delta import encode_snapshot
    from cloudtutor.models.registry import build_model
    from cloudtutor.modelstate import model_id, round_to_fp16_

    models = fleet.cloud.models
    student = round_to_fp16_(build_model(models.model_name("student"), models.weights_path("student"), download=False))
    return len(encode_snapshot(student.state_dict(), device_id="size", seq=0, model_id=model_id(student), version=0, key=None))


def _report(plan: DemoPlan, fleet: Fleet, observer: FleetObserver, cloud_sha: dict, wall_s: float) -> dict[str, Any]:
    from cloudtutor.demo.edgeplan import read_sink
    from cloudtutor.models.registry import build_student, build_teacher

    models = fleet.cloud.models
    log.info("scoring every processed frame against the teacher (and the original student)")
    teacher = build_teacher(models.model_name("teacher"), models.weights_path("teacher"), num_threads=1)
    baseline = build_student(models.model_name("student"), models.weights_path("student"), width=models.student_width)
    full_bytes = _full_model_bytes(fleet)
    devices = []
    frames = 0
    for device_id in sorted(fleet.edges):
        traffic = observer.devices.get(device_id, DeviceTraffic())
        evaluation = evaluate_device(read_sink(plan, device_id), plan.videos, plan.duration_s, teacher, baseline)
        frames += evaluation["frames_scored"]
        devices.append(_device_entry(plan, device_id, traffic, evaluation, cloud_sha.get(device_id, {}), full_bytes))
    if plan.knobs.mode == "shadowtutor":  # key frames, update sizes and the §4.4 bounds (issue 6)
        from cloudtutor.demo.shadowtutor import shadowtutor_entry, update_sizes

        sizes = update_sizes(models, fleet.cloud.trainer.shadowtutor.freeze_through)
        for entry in devices:
            traffic = observer.devices.get(entry["device_id"], DeviceTraffic())
            entry["shadowtutor"] = shadowtutor_entry(plan, fleet, entry["device_id"], traffic, sizes)
    if plan.knobs.mode == "split":  # activations up, labels down (brief §10.8)
        from cloudtutor.demo.split import split_entry

        for entry in devices:
            traffic = observer.devices.get(entry["device_id"], DeviceTraffic())
            entry["split"] = split_entry(plan, entry["device_id"], traffic)
    return {
        "schema": SCHEMA,
        "videos": [str(v) for v in plan.videos],
        "frames": frames,
        "duration_s": plan.duration_s,
        "wall_s": round(wall_s, 1),
        "speed": plan.speed,
        "lockstep_lag_s": plan.lockstep_lag_s,
        "knobs": plan.knobs.model_dump(),
        "trainer": fleet.cloud.trainer.model_dump(),
        "superres": fleet.cloud.superres.model_dump(mode="json", include={"method", "model_path"}),
        "roi_accmodel": str(plan.roi_accmodel) if plan.roi_accmodel else None,
        "devices": devices,
    }


def _device_entry(plan, device_id, traffic: DeviceTraffic, evaluation, cloud_sha: dict[int, str], full_bytes: int) -> dict:
    applied = sorted({r.version for r in traffic.reported_history if r.status == "applied" and r.version > 0})
    reported = traffic.reported
    match = bool(reported and reported.status == "applied" and cloud_sha.get(reported.version) == reported.sha256)
    published = set(traffic.chunks)
    ingested = published & traffic.acked
    deltas = [b for _, kind, b, _ in traffic.updates if kind == "model/delta"]
    return {
        "device_id": device_id,
        "miou_vs_teacher": {
            "adapted": evaluation["adapted"]["all"]["miou"],
            "no_customization": evaluation["no_customization"]["all"]["miou"],
        },
        "model_updates_applied": len(applied),
        "model_version": reported.version if reported else 0,
        "weights_sha256_match": match,
        "uplink_kbps": round(traffic.uplink_bytes * 8 / 1000 / plan.duration_s, 2),
        "downlink_kbps": round(traffic.downlink_bytes * 8 / 1000 / plan.duration_s, 2),
        "chunks": {"published": len(published), "ingested": len(ingested), "lost": len(published - ingested),
                   "messages_including_resends": traffic.chunk_messages},
        "updates": {
            "deltas": len(deltas),
            "snapshots": sum(1 for _, kind, _, _ in traffic.updates if kind == "model/snapshot"),
            "mean_delta_bytes": round(sum(deltas) / len(deltas), 1) if deltas else 0.0,
            "full_model_bytes": full_bytes,
        },
        "traffic": {
            "uplink_series": sorted((traffic.chunk_last_pts[k] / 1000, b) for k, b in traffic.chunks.items()),
            "downlink_series": [(ms / 1000, b) for _, _, b, ms in traffic.updates],
        },
        "evaluation": evaluation,
    }


def default_videos(data_root: Path) -> list[Path]:
    """The chained real videos: highway first, then the city street (a real scene change)."""
    video = data_root / "video"
    order = ["highway-solidWhiteRight-960x540-25fps.mp4", "camvid-0016E5-480x360-15fps.mp4"]
    found = [video / name for name in order if (video / name).exists()]
    return found or sorted(video.glob("*.mp4"))
