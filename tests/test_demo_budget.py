"""The demo's budget schedule: parsing, settling time, the report section and plot."""

from __future__ import annotations

import pytest

from cloudtutor.demo.budget import budget_entry, chunk_rates, markdown, parse_schedule, plot, settle, window_kbps


def test_parse_schedule():
    assert parse_schedule("0:200, 30:40") == [(0.0, 200.0), (30.0, 40.0)]
    for bad, why in [("0:200,30", "TIME:KBPS"), ("0:x", "numbers"), ("0:0", "KBPS > 0"), ("30:5,10:4", "increasing"),
                     ("-1:5", ">= 0")]:
        with pytest.raises(ValueError, match=why):
            parse_schedule(bad)


def test_chunk_rates_and_settling():
    # chunks ending every 5 s: 25 KB (40 Kbps) until 40 s, then 2 chunks still at 40 Kbps, then 10 Kbps
    series = [(5.0 * k, 25_000) for k in range(1, 9)] + [(45.0, 25_000), (50.0, 25_000)] + [(55.0 + 5 * k, 6_250) for k in range(5)]
    rates = chunk_rates(series)
    assert rates[0] == {"start_s": 5.0, "end_s": 10.0, "kbps": 40.0}
    assert window_kbps(rates, 55.0, 10.0) == pytest.approx(25.0)  # half at 40, half at 10
    s = settle(rates, 40.0, 80.0, 20.0)  # the 10 s mean is under 20 from the window ending at 60 s
    assert s["settled"] and s["settling_s"] == 20.0 and s["max_kbps_after"] == 10.0 and s["chunks"] == 7
    assert s["max_chunk_kbps"] == 40.0
    # a short burst within the window's budget does not unsettle it...
    rates[-2]["kbps"] = 30.0
    assert settle(rates, 40.0, 80.0, 20.0)["settling_s"] == 20.0
    # ...one that lifts the windowed mean over the budget does
    rates[-2]["kbps"], rates[-3]["kbps"] = 10.0, 40.0
    assert settle(rates, 40.0, 80.0, 20.0)["settling_s"] == 35.0
    rates[-1]["kbps"] = 40.0
    assert settle(rates, 40.0, 80.0, 20.0)["settled"] is False
    assert settle(rates, 100.0, 120.0, 20.0) == {"settled": False, "settling_s": None, "chunks": 0}


def device(timeline_miou: float) -> dict:
    series = [(5.0 * k, 25_000 if k <= 10 else 6_000) for k in range(1, 19)]
    timeline = [(ms, 0, timeline_miou if ms < 50_000 else timeline_miou - 0.1, 0.3) for ms in range(0, 90_000, 1000)]
    return {"device_id": "edge-0", "traffic": {"uplink_series": series}, "evaluation": {"timeline": timeline}}


def test_budget_entry_markdown_and_plot(tmp_path):
    schedule = [(0.0, 200.0), (40.0, 20.0)]
    applied = [{"scheduled_s": 40.0, "applied_s": 41.0, "kbps": 20.0}]
    states = [{"version": 1, "video_s": 5.0, "scale": 1, "crf": 18, "roi_qoffset": 0, "sample_fps": 1.0, "useful_threshold": 0.05,
               "t_update_s": 5, "budget_kbps": 200, "reason": "bitrate upgrade"},
              {"version": 2, "video_s": 41.0, "scale": 2, "crf": 23, "roi_qoffset": 0, "sample_fps": 1.0, "useful_threshold": 0.05,
               "t_update_s": 5, "budget_kbps": 20, "reason": "bitrate downgrade | x"}]
    d = device(0.6)
    d["budget"] = budget_entry(schedule, applied, d, states, 90.0, other=device(0.6))
    steps = d["budget"]["steps"]
    assert [s["kbps"] for s in steps] == [200.0, 20.0]
    assert steps[0]["settled"] and steps[0]["settling_s"] == 15.0  # the first full 10 s window ends at 15 s
    assert steps[1]["settling_s"] == 19.0  # 40 Kbps until 50 s, 9.6 after: the window ending at 60 s is the first under 20
    assert steps[1]["max_kbps_after"] == pytest.approx(9.6) and steps[1]["max_chunk_kbps"] == 40.0
    assert steps[1]["miou_cost_points"] == 0.0 and steps[1]["miou_adapted"] == pytest.approx(0.5)
    report = {"devices": [d], "duration_s": 90.0, "compared_to": {"report": "base/report.json"}}
    text = "\n".join(markdown(report))
    assert "## Uplink budget" in text and "| 20 | 41.0 | 90.0 | 10 | True | 19.0 |" in text and "bitrate downgrade / x" in text
    plot(report, tmp_path / "budget.png")
    assert (tmp_path / "budget.png").stat().st_size > 10_000
    assert markdown({"devices": [{"device_id": "x"}], "duration_s": 1}) == []
