"""Edge sampling decisions in video time: rate gates, T_update windows, chunk formats, frame rates."""

from __future__ import annotations

import numpy as np
import pytest
from cloudtutor_edge.pacing import Pacer
from cloudtutor_edge.sampler import (
    ChunkFormat,
    FrameRateEstimator,
    RateGate,
    Sample,
    SampleBuffer,
)


def frame_times(fps: float, seconds: float) -> list[int]:
    """Integer-ms PTS as a decoder reports them (rounded)."""
    return [int(round(i * 1000 / fps)) for i in range(int(seconds * fps))]


def passed(gate: RateGate, times: list[int]) -> list[int]:
    return [t for t in times if gate(t)]


@pytest.mark.parametrize("video_fps,rate", [(15, 1), (15, 5), (25, 2), (30, 0.1), (29.97, 1), (15, 7)])
def test_gate_keeps_the_rate_on_any_frame_rate(video_fps, rate):
    times = frame_times(video_fps, 60)
    out = passed(RateGate(rate), times)
    assert abs(len(out) - rate * 60) <= 1
    assert out[0] == 0
    # Evenly spread: no two passed frames closer than a period minus one frame.
    gaps = np.diff(out)
    assert gaps.min() >= 1000 / rate - 1000 / video_fps - 1


def test_rate_zero_passes_every_frame_and_rates_above_the_frame_rate_do_too():
    times = frame_times(15, 2)
    assert passed(RateGate(0), times) == times
    assert passed(RateGate(30), times) == times


def test_rate_change_applies_from_the_last_passed_frame():
    gate = RateGate(1)
    times = frame_times(10, 10)
    first = [t for t in times if t < 3000 and gate(t)]
    assert first == [0, 1000, 2000]
    gate.set_rate(2)
    rest = [t for t in times if t >= 3000 and gate(t)]
    assert rest[:3] == [3000, 3500, 4000]
    with pytest.raises(ValueError):
        gate.set_rate(-1)


def test_gate_restarts_after_a_gap_instead_of_bursting():
    gate = RateGate(1)
    assert passed(gate, [0, 100, 1000]) == [0, 1000]
    assert passed(gate, [10_000, 10_100, 10_500, 11_000]) == [10_000, 11_000]


FMT = ChunkFormat("a.mp4", (480, 360), (480, 352), 23.0)


def sample(pts: int, fmt: ChunkFormat = FMT, version: int = 0) -> Sample:
    return Sample(pts, np.zeros((fmt.sent_size[1], fmt.sent_size[0], 3), np.uint8), fmt, version)


def run_buffer(buffer: SampleBuffer, times: list[int], gate: RateGate) -> list[list[int]]:
    chunks = []
    for t in times:
        for batch in buffer.push(t, sample(t) if gate(t) else None):
            chunks.append(batch.pts_ms)
    last = buffer.flush()
    if last is not None:
        chunks.append(last.pts_ms)
    return chunks


def test_buffer_closes_one_chunk_per_t_update_of_video_time():
    chunks = run_buffer(SampleBuffer(2.0), frame_times(10, 7), RateGate(2))
    assert chunks == [[0, 500, 1000, 1500], [2000, 2500, 3000, 3500], [4000, 4500, 5000, 5500], [6000, 6500]]


def test_window_ends_on_any_frame_and_empty_windows_send_nothing():
    buffer = SampleBuffer(1.0)
    assert buffer.push(0, sample(0)) == []
    assert buffer.push(500) == []
    done = buffer.push(1000)  # not sampled, still closes the window
    assert [b.pts_ms for b in done] == [[0]]
    assert buffer.push(2100) == []  # the window [1000, 2000) was empty
    assert buffer.push(5000, sample(5000)) == []  # after a gap: window [5000, 6000)
    assert buffer.window_end_ms == 6000
    assert [b.pts_ms for b in buffer.push(6000)] == [[5000]]


def test_a_format_change_starts_a_new_chunk():
    buffer = SampleBuffer(10.0)
    other = ChunkFormat("a.mp4", (480, 360), (240, 176), 23.0)  # scale knob changed
    assert buffer.push(0, sample(0)) == []
    assert buffer.push(100, sample(100)) == []
    done = buffer.push(200, sample(200, other))
    assert [b.pts_ms for b in done] == [[0, 100]] and done[0].fmt == FMT
    assert buffer.flush().fmt == other


def test_a_full_buffer_is_sent_early_and_version_is_the_latest():
    buffer = SampleBuffer(100.0, max_frames=3)
    out = []
    for i in range(7):
        out += buffer.push(i * 10, sample(i * 10, version=i))
    assert [b.pts_ms for b in out] == [[0, 10, 20], [30, 40, 50]]
    assert out[1].model_version == 5


def test_period_change_applies_from_the_next_window():
    buffer = SampleBuffer(1.0)
    buffer.push(0)
    buffer.set_period(3.0)
    buffer.push(1000)  # closes [0, 1000), opens [1000, 4000)
    assert buffer.window_end_ms == 4000


def test_time_must_move_forward():
    buffer = SampleBuffer(1.0)
    buffer.push(100)
    with pytest.raises(ValueError):
        buffer.push(100)
    with pytest.raises(ValueError):
        buffer.push(200, sample(150))


def test_frame_rate_from_rounded_timestamps():
    est = FrameRateEstimator(default_fps=30)
    assert est.fps("a") == 30
    for t in frame_times(15, 5):
        est.observe("a", t)
    for t in frame_times(25, 5):
        est.observe("b", t)
    assert est.fps("a") == pytest.approx(15, abs=0.05)
    assert est.fps("b") == pytest.approx(25, abs=0.05)


def test_pacer_waits_for_video_time_at_speed():
    wall = [100.0]
    pacer = Pacer(2.0, now=lambda: wall[0])
    assert pacer.delay(0) == 0  # anchors
    assert pacer.delay(1000) == pytest.approx(0.5)
    wall[0] += 2.0  # behind: never negative, never skips
    assert pacer.delay(2000) == 0
    assert Pacer(0).delay(10_000) == 0
    with pytest.raises(ValueError):
        Pacer(-1)
