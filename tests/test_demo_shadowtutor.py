"""The demo's ShadowTutor figures: Prometheus sums, update sizes of the real
student (partial vs full, same format as the deltas sent), report lines."""

from __future__ import annotations

import pytest

from cloudtutor.config.common import ModelSettings
from cloudtutor.demo.shadowtutor import markdown, prom_sum, update_sizes
from cloudtutor.shadowtutor.bounds import Latencies, bounds_report


def test_prom_sum_adds_every_series_of_one_name() -> None:
    text = "\n".join([
        "# HELP x_total things", "# TYPE x_total counter",
        'x_total{improved="true"} 3.0', 'x_total{improved="false"} 2', "x_total_other 7", "y_total 1e3",
    ])
    assert prom_sum(text, "x_total") == 5.0
    assert prom_sum(text, "y_total") == 1000.0
    assert prom_sum(text, "z_total") == 0.0


def test_partial_update_is_the_trainable_share_of_the_full_one(data_root) -> None:
    sizes = update_sizes(ModelSettings(data_root=data_root), "level3.5")
    assert sizes["full_parameters"] == 364_569
    assert sizes["partial_parameters"] / sizes["full_parameters"] == pytest.approx(0.235, abs=0.005)
    # float16 values dominate both: the byte ratio follows the parameter ratio.
    assert 0.2 < sizes["partial_update_bytes"] / sizes["full_update_bytes"] < 0.3
    assert sizes["full_update_bytes"] > 2 * 364_569 * 0.8


def test_markdown_sets_bounds_beside_the_measured_values() -> None:
    lat = Latencies(t_si=0.1, t_sd=0.5, t_ti=0.2, t_net=1.0, s_net=200_000)
    bounds = {**bounds_report(lat, measured_fps=5.0, measured_bytes_per_s=20_000), "round_trip_s": 4.0}
    st = {"key_frames": 10, "frames": 150, "key_frame_ratio": 10 / 150, "mean_stride": 12.5,
          "up_bytes_per_key_frame": 60_000.0, "down_bytes_per_key_frame": 140_000.0, "mean_partial_delta_bytes": 160_000.0,
          "partial_update_bytes": 160_500, "partial_parameters": 85_776, "full_update_bytes": 680_000,
          "full_parameters": 364_569, "deltas_metric_only": 1, "deltas": 10, "bounds": bounds}
    lines = markdown({"devices": [{"device_id": "edge-0", "shadowtutor": st}, {"device_id": "edge-1"}]})
    text = "\n".join(lines)
    assert "## ShadowTutor" in text and "| edge-0 | 10 / 150 | 6.7% |" in text and "edge-1" not in text
    assert "eq. 14 / 15" in text and "| 5.00 |" in text
    assert markdown({"devices": [{"device_id": "edge-0"}]}) == []


def test_split_mode_lines_only_for_split_devices() -> None:
    from cloudtutor.demo.split import markdown as split_markdown

    s = {"split_layer": 17, "codec": "q2-uniform+dct8+zstd+delta", "frames_sent": 150, "labels_received": 150,
         "labels_lost": 0, "up_bytes_per_frame": 64_000.0, "down_bytes_per_frame": 9_000.0, "edge_front_ms": 120.0,
         "edge_encode_ms": 40.0}
    text = "\n".join(split_markdown({"devices": [{"device_id": "edge-0", "split": s}, {"device_id": "edge-1"}]}))
    assert "## Split mode" in text and "| edge-0 | 17 | q2-uniform+dct8+zstd+delta | 150 / 150 / 0 | 64000.0 |" in text
    assert "edge-1" not in text
    assert split_markdown({"devices": [{"device_id": "edge-0"}]}) == []
