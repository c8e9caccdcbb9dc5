"""bench fleet: devices on the simulated clock against one trainer (real
ESPNet, CamVid frames with their human labels standing in for the teacher's)."""

from __future__ import annotations

import math

import pytest

from cloudtutor import distill
from cloudtutor.bench.fleet import Clip, Settings, make_devices, markdown, simulate

pytestmark = pytest.mark.timeout(900)


def clips(data_root) -> list[Clip]:
    from test_distill import camvid

    frames, labels = camvid(data_root, 12, width=128)
    return [Clip("a", frames[:6], labels[:6], 2000), Clip("b", frames[6:], labels[6:], 2000)]


def test_devices_take_clips_in_turn_and_start_further_in():
    a, b = Clip("a", [None] * 8, [None] * 8, 100), Clip("b", [None] * 4, [None] * 4, 100)
    devices = make_devices([a, b], 5)
    assert [(d.clip.name, d.offset) for d in devices] == [("a", 0), ("b", 0), ("a", 2), ("b", 1), ("a", 4)]
    assert devices[2].frame_at(7) == 1  # looped


@pytest.mark.slow
def test_one_trainer_over_capacity_makes_devices_wait(data_root):
    from cloudtutor.models.registry import build_student

    student = build_student("cityscapes19", data_root_path=data_root, width=128, threads=2)
    model = student.model
    base = distill.state_vector(distill.bootstrap_view_(model))
    lut = distill.target_lut(student.mapping)
    s = Settings(duration_s=30, grid_fps=0.5, sample_fps=1, capacity=1, iterations=1, width=128)
    devices = make_devices(clips(data_root), 2)
    alone = simulate(devices[:1], s, model, student, lut, base)
    both = simulate(devices, s, model, student, lut, base)

    # Windows end at 10 and 20 s (the one at 30 s is the end): one device a phase per window alone,
    # and with capacity 1 the two share the two slots.
    assert alone["devices"][0]["phases"] == 2 and alone["devices"][0]["update_lag_s"] == 10.0
    assert both["phases"] == 2 and [d["phases"] for d in both["devices"]] == [1, 1]
    # The second device waited a whole window longer for its first update.
    assert sorted(d["update_lag_s"] for d in both["devices"]) == [10.0, 20.0]
    for d in both["devices"] + alone["devices"]:
        assert 0.0 < d["miou"] < 1.0 and d["frames"] == 15
    # Same device, same start: the version-0 scores match, so a run does not leak into the next.
    again = simulate(devices[:1], s, model, student, lut, base)
    assert math.isclose(again["devices"][0]["miou"], alone["devices"][0]["miou"], rel_tol=1e-9)


def test_markdown_names_the_largest_count_within_a_point():
    row = {"devices": 4, "miou_mean": 0.5, "single_miou_mean": 0.505, "loss_points_mean": 0.5, "loss_points_max": 0.9,
           "update_lag_s_mean": 12.5, "phases_per_device": 2.0, "cpu_s": 10.0, "wall_s": 20.0,
           "per_device": [{"device": "cam-0", "clip": "a", "phi_mean": 0.3, "phases": 2, "miou": 0.5,
                           "single_miou": 0.505, "loss_points": 0.5, "update_lag_s": 12.5}]}
    text = markdown({"settings": Settings().__dict__, "videos": ["a"], "rows": [row], "largest_within_1_point": 4,
                     "note": "n"})
    assert "| 4 | 50.0 | 50.5 | 0.50 / 0.90 | 12.5 | 2.0 | 10 | 20 |" in text
    assert "single-device: **4**" in text
