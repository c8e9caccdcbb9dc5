"""bench split: the baselines on real frames (JPEG q75, an H.264 chunk at
sizes that are not multiples of 16) and the choice of the best point."""

from __future__ import annotations

import numpy as np

from cloudtutor.bench.split import best_points, h264_frames, jpeg_bytes, markdown
from cloudtutor.video import read_frames


def test_baselines_on_real_frames(data_root) -> None:
    video = data_root / "video" / "camvid-0016E5-480x360-15fps.mp4"
    frames = [f[:350, :470] for _, f in read_frames(str(video), max_frames=3)]  # odd sizes: padded for H.264
    per_frame, decoded = h264_frames(frames)
    assert 500 < per_frame < 100_000 and len(decoded) == 3 and decoded[0].shape == frames[0].shape
    assert np.abs(decoded[0].astype(int) - frames[0]).mean() < 10
    size, back = jpeg_bytes(frames[0])
    assert 5_000 < size < 100_000 and back.shape == frames[0].shape


def _row(split, codec, kb, delta, agree):
    return {"split": split, "stages_on_edge": 5, "codec": codec, "bytes_per_frame": kb * 1000, "raw_fp32_bytes": 9e6,
            "x_smaller_than_raw": 9e6 / (kb * 1000), "teacher_miou": 0.2 + delta, "miou_delta": delta,
            "agreement_with_unsplit": agree, "edge_ms": 100.0, "front_ms": 50.0, "encode_ms": 50.0,
            "decode_ms": 10.0, "resume_ms": 10.0}


def test_best_point_is_the_smallest_within_one_point_and_is_judged_against_h264() -> None:
    base = {"size": [512, 288], "h264_bytes_per_frame": 20_000.0, "h264_miou_delta": -0.05, "h264_crf": 23,
            "h264_sweep": [{"crf": 23, "bytes_per_frame": 20_000.0, "miou_delta": -0.05},
                           {"crf": 13, "bytes_per_frame": 60_000.0, "miou_delta": -0.005}],
            "h264_within_1pt": {"crf": 13, "bytes_per_frame": 60_000.0, "miou_delta": -0.005},
            "jpeg_bytes_per_frame": 30_000.0, "jpeg_miou_delta": -0.01}
    report = {"results": [{
        "video": "v.mp4", "frames": 6, "every": 5, "student_size": [512, 288], "jpeg_encode_ms": 5.0,
        "unsplit": {"teacher_miou": 0.2, "edge_ms": 150.0},
        "baselines": {"student_size": base, "source_size": {**base, "h264_bytes_per_frame": 50_000.0}},
        "rows": [_row("b3", "q1", 10, -0.02, 0.5), _row("b3", "q2", 15, -0.005, 0.6), _row("b3", "q8", 400, 0.0, 0.99)],
    }]}
    [best] = best_points(report)
    assert best["best"]["codec"] == "q2" and best["beats_h264_student_size"] and best["beats_h264_source_size"]
    assert best["beats_h264_equal_accuracy"] and best["faithful"]["codec"] == "q8"
    report["best"] = [best]
    text = markdown(report)
    assert "smaller than the H.264 frame at the student's size" in text and "q8" in text
