"""bench distill / bench coords report code on the tiny synthetic clip of
test_schemes (real encoder and codec, tiny student): rows, gains, tables,
plots, and the Table 3 arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from cloudtutor.bench import coords
from cloudtutor.bench.distill import Bench, add_gains, markdown, plot, run_one, sweep_points
from cloudtutor.models.labels import CITYSCAPES19
from cloudtutor.models.preprocess import espnet_normalize
from cloudtutor.schemes.footage import load_footage
from cloudtutor.schemes.teacher_cache import TeacherLabels
from test_schemes import Teacher, _clip, _model


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    clips = [_clip(folder / "a.mp4"), _clip(folder / "b.mp4", width=64, height=32)]  # two sizes, as the real chain
    footage = load_footage(clips, 22.0, width=32)
    return Bench(footage, TeacherLabels(Teacher(), "t", None), _model(), CITYSCAPES19, espnet_normalize, 1.0, 0)


FAST = {"iterations": 1, "batch_size": 1}


def test_rows_tables_and_plots(bench, tmp_path):
    rows = [run_one(bench, "no_customization"), run_one(bench, "ams", **FAST),
            run_one(bench, "cloudtutor", **FAST)]  # the pipeline's selector meets both clip sizes
    add_gains(rows)
    nc, ams, pipe = rows
    assert nc["uplink_kbps"] == nc["downlink_kbps"] == 0 and nc["scores"]["frames"] == 22
    assert ams["updates"] == 2 and ams["downlink_bytes"] > 0 and ams["uplink_bytes"] > 0
    assert ams["downlink_kbps"] == pytest.approx(ams["downlink_bytes"] * 8 / 1000 / 22.0, abs=0.01)
    clips = sorted(ams["per_clip_kbps"])
    assert clips == ["a.mp4", "b.mp4"]
    assert sum(v["up"] for v in ams["per_clip_kbps"].values()) > 0
    assert nc["gain_over_no_customization"]["mean"] == 0.0 and len(ams["gain_over_no_customization"]["quantiles"]) == 21
    assert pipe["notes"]["phases"] == 2
    sweep = sweep_points(bench, rows, [10.0, 20.0], [], run=lambda b, kind, **kw: run_one(b, kind, **FAST, **kw))
    assert [p["parameter"] for p in sweep] == ["T_update 10 s", "T_update 20 s"]
    assert sweep[1]["downlink_kbps"] < sweep[0]["downlink_kbps"]  # one phase instead of two
    report = {"footage": {"duration_s": 22.0, "clips": clips}, "settings": {"infer_fps": 1.0},
              "results": [{k: v for k, v in r.items() if k != "_frames"} for r in rows], "sweep": sweep,
              "timing": {"wall_s": 1.0, "cpu_s": 1.0, "teacher": {}}, "machine_note": "test", "notes": ["n"]}
    md = markdown(report)
    assert "| all | mIoU |" in md and "| b.mp4 | downlink Kbps |" in md and "T_update 20 s" in md
    plot(report, tmp_path)
    assert {p.name for p in tmp_path.glob("*.png")} == {"miou_time.png", "gain_cdf.png", "miou_vs_downlink.png"}


def test_coords_table_arithmetic():
    full = {"scores": {"all": {"miou": 0.5}}, "downlink_kbps": 1000.0}
    runs = [{"settings": {"strategy": "gradient", "gamma": 0.05}, "scores": {"all": {"miou": 0.49}},
             "downlink_kbps": 80.0, "wall_s": 1, "cpu_s": 1},
            {"settings": {"strategy": "last", "gamma": 0.05}, "scores": {"all": {"miou": None}},
             "downlink_kbps": 70.0, "wall_s": 1, "cpu_s": 1}]
    table = coords.delta_rows(full, runs)
    assert table[0]["delta_miou_points"] == -1.0 and table[0]["downlink_share"] == 0.08
    assert table[1]["delta_miou_points"] is None
    report = {"full": {"miou": 0.5, "downlink_kbps": 1000.0}, "footage": {"duration_s": 60.0},
              "settings": {"gammas": [0.05], "strategies": ["last", "gradient"]}, "table": table,
              "target": {**table[0], "met": True}, "timing": {"wall_s": 1, "cpu_s": 1}}
    md = coords.markdown(report)
    assert "| Gradient-Guided | -1.00 (80) |" in md and "| Last Layers | – |" in md and ": met." in md
    assert np.isfinite(table[0]["downlink_kbps"])


def test_merge_reports_from_parallel_runs(bench, tmp_path):
    import json

    from cloudtutor.bench.distill import merge_reports

    rows = [run_one(bench, "no_customization"), run_one(bench, "ams", **FAST)]
    clean = [{k: v for k, v in r.items() if k != "_frames"} for r in rows]
    (tmp_path / "a.json").write_text(json.dumps({"results": clean[1:], "failed": {"x": "boom"}}))
    (tmp_path / "b.json").write_text(json.dumps({"results": clean[:1] + clean[1:]}))  # AMS twice: first one wins
    report = merge_reports([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "m")
    assert [r["scheme"] for r in report["results"]] == ["no_customization", "ams"]
    assert report["results"][0]["gain_over_no_customization"]["mean"] == 0.0
    assert report["failed"] == {"x": "boom"} and (tmp_path / "m" / "distill.md").is_file()
