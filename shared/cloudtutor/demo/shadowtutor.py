"""The demo's ShadowTutor figures (`papers/shadowtutor.md` §4.4, §6.2; issue 6):
key-frame ratio, bytes per key frame up and down, partial vs full update
size, and the throughput and traffic bounds (equations 8, 12, 14, 15) from
the latencies measured in this run, beside the measured values.

Where each latency comes from:

* ``t_si``: the edge's wall time per inferred frame (student and label sink);
* ``t_sd``: the trainer's wall time per Algorithm 1 step (its /metrics);
* ``t_ti``: the labeler's teacher time per frame (its /metrics);
* ``t_net``: the edge's round trip from sending a key frame to using its
  update, less ``t_ti`` and the mean distillation time per key frame: on
  this one machine it is queueing, encoding, ingest, superres and MQTT, not
  a radio link;
* ``s_net``: uplink plus downlink bytes per key frame, counted on the broker.

Throughput and traffic are measured over the edge's wall time from its
first to its last frame (frames per second, bytes per second), as the paper
measures frames processed per second.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cloudtutor.shadowtutor.bounds import Latencies, bounds_report

#: A delta at most this big carries only the metric (no weights): header, signature, empty masks.
METRIC_ONLY_BYTES = 4096


def prom_sum(text: str, name: str) -> float:
    """Sum of every series of metric ``name`` in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+([-+0-9.eE]+|NaN)$", line)
        if m and m[1] != "NaN":
            total += float(m[1])
    return total


def update_sizes(models, freeze_through: str) -> dict[str, int]:
    """Envelope bytes of a dense update of the trainable part and of every
    parameter (the same format as the deltas sent), on the pretrained student."""
    import torch

    from cloudtutor.delta import encode_delta
    from cloudtutor.models.registry import build_model
    from cloudtutor.modelstate import model_id, round_to_fp16_
    from cloudtutor.shadowtutor.partial import trainable_names

    model = round_to_fp16_(build_model(models.model_name("student"), models.weights_path("student"), download=False))
    state = model.state_dict()
    params = dict(model.named_parameters())
    out = {}
    for what, names in (("partial", trainable_names(model, freeze_through)), ("full", list(params))):
        masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}
        data, _ = encode_delta(state, state, masks, device_id="size", seq=0, model_id=model_id(model), base_version=0,
                               version=1, key=None, metric=0.5)
        out[f"{what}_update_bytes"] = len(data)
        out[f"{what}_parameters"] = sum(params[n].numel() for n in names)
    return out


def shadowtutor_entry(plan, fleet, device_id: str, traffic, sizes: dict[str, int]) -> dict[str, Any]:
    from cloudtutor.demo.edgeplan import sink_path

    sink = sink_path(plan, device_id)
    path = sink.with_name(sink.name + ".summary.json")  # cloudtutor_edge.agent.summary_path (no edge import here)
    edge = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    metrics = plan.out / "metrics"
    trainer = (metrics / "trainer.prom").read_text(encoding="utf-8") if (metrics / "trainer.prom").exists() else ""
    labeler = (metrics / "labeler.prom").read_text(encoding="utf-8") if (metrics / "labeler.prom").exists() else ""
    keys = int(edge.get("st_key_frames") or 0)
    frames = int(edge.get("st_frames") or 0)
    deltas = [b for _, kind, b, _ in traffic.updates if kind == "model/delta"]
    weights = [b for b in deltas if b > METRIC_ONLY_BYTES]
    up, down = traffic.uplink_bytes, traffic.downlink_bytes
    steps = prom_sum(trainer, "cloudtutor_trainer_st_steps_total")
    served = prom_sum(trainer, "cloudtutor_trainer_st_key_frames_total")
    t_sd = prom_sum(trainer, "cloudtutor_trainer_st_step_seconds_total") / steps if steps else 0.0
    labelled = prom_sum(labeler, "cloudtutor_labeler_frames_total")
    t_ti = prom_sum(labeler, "cloudtutor_labeler_teacher_seconds_total") / labelled if labelled else 0.0
    t_si = float(edge.get("st_infer_s") or 0.0) / frames if frames else 0.0
    rtt = float(edge.get("st_round_trip_s") or 0.0)
    steps_per_key = steps / served if served else 0.0
    t_net = max(rtt - t_ti - steps_per_key * t_sd, 0.0)
    wall = float(edge.get("st_wall_s") or 0.0)
    entry: dict[str, Any] = {
        "frames": frames, "key_frames": keys, "key_frame_ratio": edge.get("st_key_frame_ratio"),
        "mean_stride": edge.get("st_mean_stride"), "mean_metric": edge.get("st_mean_metric"),
        "waits": edge.get("st_waits"), "wait_s": edge.get("st_wait_s"), "timeouts": edge.get("st_timeouts"),
        "up_bytes_per_key_frame": round(up / keys, 1) if keys else None,
        "down_bytes_per_key_frame": round(down / keys, 1) if keys else None,
        "deltas": len(deltas), "deltas_with_weights": len(weights), "deltas_metric_only": len(deltas) - len(weights),
        "mean_partial_delta_bytes": round(sum(weights) / len(weights), 1) if weights else None,
        **sizes,
        "distillation_steps": int(steps), "steps_per_key_frame": round(steps_per_key, 2),
        "paper": {"partial_update_MB": 0.395, "full_update_MB": 1.846, "key_frame_ratio_pct": 5.38},
    }
    if keys and frames and wall > 0:
        lat = Latencies(t_si=t_si, t_sd=t_sd, t_ti=t_ti, t_net=t_net, s_net=(up + down) / keys)
        entry["bounds"] = bounds_report(
            lat, min_stride=plan.knobs.min_stride, max_stride=plan.knobs.max_stride,
            max_updates=fleet.cloud.trainer.shadowtutor.max_updates,
            measured_fps=frames / wall, measured_bytes_per_s=(up + down) / wall)
        entry["bounds"]["round_trip_s"] = rtt
    return entry


def markdown(report: dict[str, Any]) -> list[str]:
    """Report lines for the devices that ran ShadowTutor (none: no lines)."""
    rows = [d for d in report["devices"] if d.get("shadowtutor")]
    if not rows:
        return []
    lines = ["", "## ShadowTutor", "",
             "| device | key frames / frames | key-frame ratio | mean stride | up bytes / key frame | down bytes / key frame "
             "| partial update (measured mean / dense, computed) | full update (dense, computed) | metric-only updates |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in rows:
        s = d["shadowtutor"]
        ratio = s.get("key_frame_ratio")
        lines.append(
            f"| {d['device_id']} | {s['key_frames']} / {s['frames']} | {'n/a' if ratio is None else f'{100 * ratio:.1f}%'} "
            f"| {s.get('mean_stride')} | {s.get('up_bytes_per_key_frame')} | {s.get('down_bytes_per_key_frame')} "
            f"| {s.get('mean_partial_delta_bytes')} / {s['partial_update_bytes']} ({s['partial_parameters']} params) "
            f"| {s['full_update_bytes']} ({s['full_parameters']} params) | {s['deltas_metric_only']} of {s['deltas']} |")
    lines += ["", "Paper (Table 4, 5): partial 0.395 MB vs full 1.846 MB per key frame; key-frame ratio 5.38% on average.", ""]
    for d in rows:
        b = d["shadowtutor"].get("bounds")
        if not b:
            continue
        lat = b["latencies"]
        lines += [
            f"{d['device_id']}, §4.4 bounds from this run's latencies (t_si {1000 * lat['t_si']:.0f} ms, t_sd "
            f"{1000 * lat['t_sd']:.0f} ms, t_ti {1000 * lat['t_ti']:.0f} ms, t_net {1000 * lat['t_net']:.0f} ms, "
            f"s_net {lat['s_net'] / 1000:.1f} kB; key-frame round trip {b['round_trip_s']:.2f} s):", "",
            "| | lower bound | measured | upper bound | within |", "|---|---|---|---|---|",
            f"| throughput (fps), eq. 14 / 15 | {b['throughput_lower_fps_eq14']:.2f} | {b['measured_fps']:.2f} "
            f"| {b['throughput_upper_fps_eq15']:.2f} | {b['throughput_within']} |",
            f"| traffic (kbit/s), eq. 8 / 12 | {8 * b['traffic_lower_Bps_eq8'] / 1000:.1f} | "
            f"{8 * b['measured_traffic_Bps'] / 1000:.1f} | {8 * b['traffic_upper_Bps_eq12'] / 1000:.1f} | {b['traffic_within']} |",
            "",
        ]
    return lines
