"""ShadowTutor on the edge (Algorithm 4): the scheduler's arithmetic, and the
real agent against a real broker, real H.264 and the real ESPNet, with the
test playing the cloud: key frames leave at once as one-frame chunks, the
edge keeps inferring, waits at MIN_STRIDE frames for the update, and sets
its next stride from the update's metric (NextStride)."""

from __future__ import annotations

import threading

import pytest
import torch

from cloudtutor import envelope
from cloudtutor.delta import encode_delta
from cloudtutor.labelsink import read_labels
from cloudtutor.signing import generate_key, save_public_key
from cloudtutor_edge.agent import EdgeAgent
from cloudtutor_edge.shadowtutor import KeyFrameScheduler
from test_edge_agent import (  # noqa: F401 (fixtures)
    Cloud, cloud, device_id, edge_view_v0, make_config, run_in_thread,
)

pytestmark = [pytest.mark.timeout(240)]  # the agent test runs real ESPNet frames; the join below bounds it


def test_scheduler_follows_algorithm_4() -> None:
    s = KeyFrameScheduler(8, 64)
    metrics = iter([0.9, 0.7, 0.8, 0.8])
    keys, waits = [], []
    for frame in range(1, 41):
        if s.begin_frame():
            keys.append(frame)
        if s.end_frame():
            waits.append(frame)
            s.complete(next(metrics))
    # Key frames at 1, then 8 x 1.5 = 12 frames later, then 12 x 0.875 = 10.5: the 11th frame (the stride stays a float).
    assert keys == [1, 13, 24, 35]
    assert waits == [8, 20, 31]  # MIN_STRIDE frames after each key frame whose update had not come
    assert s.strides == pytest.approx([12.0, 10.5, 10.5]) and s.key_frames == 4 and s.frames == 40
    s.give_up()
    assert s.updated
    with pytest.raises(ValueError, match="min_stride"):
        KeyFrameScheduler(9, 8)


def test_agent_sends_key_frames_waits_and_strides(make_config, cloud, tmp_path, edge_view_v0) -> None:
    key = generate_key()
    save_public_key(key.public_key(), tmp_path / "update.pub")
    config = make_config(speed=0, duration_s=4.0, update_public_key=tmp_path / "update.pub", drain_timeout_s=5.0,
                         initial_knobs={"mode": "shadowtutor", "infer_fps": 5.0})
    view, mid = edge_view_v0
    dev = config.device_id
    state = {"view": view, "version": 0}
    timers: list[threading.Timer] = []

    def respond(header) -> bool:
        # The cloud's answer to a key frame: one version up, trained through
        # the key frame, metric 0.9 (stride x1.5); 4 s late so the edge must wait.
        def send() -> None:
            data, state["view"] = encode_delta(state["view"], state["view"], {}, device_id=dev, seq=state["version"],
                                               model_id=mid, base_version=state["version"],
                                               version=state["version"] + 1, key=key, metric=0.9,
                                               video_ms=header.frame_pts_ms[0])
            state["version"] += 1
            cloud.send("model_delta", data)
        timers.append(threading.Timer(4.0, send))
        timers[-1].start()
        return True

    cloud.should_ack = respond
    agent = EdgeAgent(config)
    thread, rc = run_in_thread(agent)
    thread.join(200)  # 20 frames of real ESPNet plus two 4 s waits; generous for a loaded CPU
    for t in timers:
        t.cancel()
    assert rc == [0]
    assert not cloud.errors
    headers = [h for h, n in cloud.chunks if n == 1]
    assert len(headers) == len(cloud.chunks) >= 2, "every chunk is one key frame"
    assert all(h.key_frames == [True] for h in headers)
    records = list(read_labels(config.sink_path, strict=True))
    pts = [r.pts_ms for r in records]
    first, second = headers[0].frame_pts_ms[0], headers[1].frame_pts_ms[0]
    assert first == pts[0]
    # MIN_STRIDE 8, then NextStride(8, 0.9) = 12 frames to the next key frame.
    assert sum(1 for p in pts if first <= p < second) == 12
    # The update is in use by the 9th frame at the latest: the edge waits at
    # MIN_STRIDE (how many frames ran before it depends on this CPU's load).
    versions = [r.model_version for r in records]
    assert versions[0] == 0 and versions[8] == 1 and versions == sorted(versions)
    stats = agent.summary()
    assert stats["st_key_frames"] == len(headers) and stats["st_timeouts"] == 0
    assert stats["st_updates"] >= len(headers) - 1
    assert stats["st_key_frame_ratio"] == pytest.approx(len(headers) / len(records), abs=1e-3)
