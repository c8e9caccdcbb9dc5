"""The demo report's comparison with an earlier run (pure: two reports in)."""

from __future__ import annotations

import pytest

from cloudtutor.demo.report import compare_reports, markdown


def _report(scale: float, devices: dict[str, tuple[float, float]]) -> dict:
    return {
        "videos": ["/data/video/highway.mp4"], "duration_s": 60.0, "frames": 10, "wall_s": 1.0, "speed": 0.0,
        "lockstep_lag_s": None, "knobs": {"scale": scale, "crf": 23.0, "roi_qoffset": 0.0},
        "superres": {"method": "model", "model_path": "/x/carn-m-x4.pt"} if scale > 1 else {"method": "bicubic"},
        "devices": [
            {"device_id": d, "uplink_kbps": up, "downlink_kbps": 20.0,
             "miou_vs_teacher": {"adapted": miou, "no_customization": 0.2}}
            for d, (up, miou) in devices.items()
        ],
    }


def test_compare_matches_devices_by_id_and_gives_ratios() -> None:
    now = _report(4.0, {"edge-0": (50.0, 0.30), "edge-1": (60.0, 0.25)})
    then = _report(1.0, {"edge-0": (400.0, 0.32), "edge-9": (1.0, 0.1)})
    c = compare_reports(now, then, "scale1/report.json")
    (d,) = c["devices"]  # edge-1 has no counterpart, edge-9 no run here
    assert d["device_id"] == "edge-0"
    assert d["uplink_ratio"] == pytest.approx(0.125)
    assert d["miou_points"] == pytest.approx(-2.0)
    assert c["same_videos"] is True and c["setting"].startswith("scale 1,") and "none (full resolution)" in c["setting"]


def test_compare_survives_a_zero_uplink_and_renders() -> None:
    now = _report(2.0, {"edge-0": (50.0, 0.30)})
    then = _report(1.0, {"edge-0": (0.0, 0.30)})
    then["videos"] = ["/elsewhere/camvid.mp4"]
    now["compared_to"] = compare_reports(now, then, "old.json")
    assert now["compared_to"]["devices"][0]["uplink_ratio"] is None
    now["devices"][0].update(evaluation={"adapted": {"first": {"miou": 0.3}, "all": {"pooled_miou": 0.3}},
                                         "no_customization": {"first": {"miou": 0.2}, "all": {"pooled_miou": 0.2}},
                                         "gain_points": 10.0},
                             model_updates_applied=1, weights_sha256_match=True,
                             chunks={"published": 1, "ingested": 1, "lost": 0},
                             updates={"deltas": 1, "snapshots": 0, "mean_delta_bytes": 10.0, "full_model_bytes": 100})
    text = markdown(now)
    assert "## Against old.json" in text and "other videos" in text and "| n/a |" in text
    assert "upscaling: SR model carn-m-x4.pt" in text and "ROI off" in text


def test_the_setting_names_roi_only_when_it_is_on() -> None:
    from cloudtutor.demo.report import _setting

    report = _report(1.0, {})
    report["roi_accmodel"] = "/m/accmodel.pt"
    assert "ROI off" in _setting(report)  # a model but qoffset 0: x264 gets no ROI
    report["knobs"]["roi_qoffset"] = -10 / 51
    assert "ROI AccModel accmodel.pt, qoffset -0.196 (x51 = -10 QP)" in _setting(report)
