"""The demo's edge agents: their configuration, and reading back what they labelled.

Kept apart from the orchestration so that the edge's own field names are
spelled in one place the demo depends on.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cloudtutor.config.common import MqttSettings
from cloudtutor.config.edge import EdgeConfig, EdgeMqttSettings
from cloudtutor.labelsink import read_labels


def device_id(index: int) -> str:
    return f"edge-{index}"


def sink_path(plan, device: str) -> Path:
    return plan.out / "sinks" / f"{device}.sink"


def edge_config(plan, index: int, mqtt: MqttSettings, public_key: Path | None = None) -> EdgeConfig:
    """One simulated device: plays the plan's videos (looped up to the
    duration) at the plan's speed, starting from the plan's knobs."""
    device = device_id(index)
    spool = plan.out / "spool" / device
    # A fresh spool per run: chunks left by an earlier demo would be resent
    # under sequence numbers this run's ingest has never seen.
    shutil.rmtree(spool, ignore_errors=True)
    sink = sink_path(plan, device)
    sink.unlink(missing_ok=True)
    extra = {"split_codec": plan.split_codec} if getattr(plan, "split_codec", None) else {}
    return EdgeConfig(
        **extra,
        device_id=device,
        sources=[str(v) for v in plan.videos],
        loop=True,
        duration_s=plan.duration_s,
        speed=plan.speed,
        lockstep_lag_s=plan.lockstep_lag_s,
        sink_path=sink,
        spool_dir=spool,
        mqtt=EdgeMqttSettings(**mqtt.model_dump(exclude={"client_id"})),
        initial_knobs=plan.knobs,
        update_public_key=public_key,
        roi_accmodel=plan.roi_accmodel,
    )


def read_sink(plan, device: str) -> Iterator[tuple[int, int, np.ndarray]]:
    """(pts_ms, model_version, labels) for every frame the device labelled."""
    path = sink_path(plan, device)
    if not path.exists():
        return
    for record in read_labels(path):
        yield record.pts_ms, record.model_version, record.labels
