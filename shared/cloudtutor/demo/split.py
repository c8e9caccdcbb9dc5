"""The demo's split-mode figures (brief §10.8): activation bytes per frame
up and label bytes down as counted on the broker, and the edge's own
front-stage and encoding times per frame (its final summary)."""

from __future__ import annotations

import json
from typing import Any


def split_entry(plan, device_id: str, traffic) -> dict[str, Any]:
    from cloudtutor.config.edge import EdgeConfig
    from cloudtutor.demo.edgeplan import sink_path

    sink = sink_path(plan, device_id)
    path = sink.with_name(sink.name + ".summary.json")  # cloudtutor_edge.agent.summary_path
    edge = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    n = traffic.activation_messages
    return {
        "split_layer": plan.knobs.split_layer,
        "codec": plan.split_codec or EdgeConfig.model_fields["split_codec"].default,  # the edges ran the default
        "frames_sent": edge.get("split_sent"), "labels_received": edge.get("split_received"),
        "labels_lost": edge.get("split_lost"),
        "up_bytes_per_frame": round(traffic.activation_bytes / n, 1) if n else None,
        "down_bytes_per_frame": round(traffic.result_bytes / n, 1) if n else None,
        "edge_front_ms": edge.get("split_front_ms"), "edge_encode_ms": edge.get("split_encode_ms"),
    }


def markdown(report: dict[str, Any]) -> list[str]:
    rows = [d for d in report["devices"] if d.get("split")]
    if not rows:
        return []
    lines = ["", "## Split mode", "",
             "| device | split layer | codec | frames sent / labelled / lost | up bytes / frame | down bytes / frame "
             "| edge ms (front + encode) |", "|---|---|---|---|---|---|---|"]
    for d in rows:
        s = d["split"]
        lines.append(f"| {d['device_id']} | {s['split_layer']} | {s['codec']} | {s['frames_sent']} / {s['labels_received']} / "
                     f"{s['labels_lost']} | {s['up_bytes_per_frame']} | {s['down_bytes_per_frame']} | "
                     f"{s['edge_front_ms']} + {s['edge_encode_ms']} |")
    return lines
