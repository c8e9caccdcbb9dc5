"""bench throughput: real chunks through real ingest, superres and labeler
(alone and together) against the teacher alone."""

from __future__ import annotations

import json

import pytest

from cloudtutor.bench.throughput import make_chunks, markdown, read_video, run_bench_throughput
from cloudtutor.envelope import decode
from cloudtutor.h264 import decode_chunk

pytestmark = pytest.mark.timeout(600)

VIDEO = "video/camvid-0016E5-480x360-15fps.mp4"


def test_chunks_are_what_the_edge_sends(data_root):
    frames, fps = read_video(data_root / VIDEO, 5, 3)
    assert len(frames) == 5 and fps == pytest.approx(15.0)
    chunks = make_chunks(frames, scale=2.0, per_chunk=2, fps=fps, every=3)
    assert len(chunks) == 3
    envelope = decode(chunks[1])
    header, body = envelope.header, envelope.body
    assert header.seq == 1 and header.frame_pts_ms == [400, 600]  # every 3rd frame at 15 fps: 200 ms apart
    assert tuple(header.sent_size) == (240, 176) and tuple(header.source_size) == (480, 360)
    decoded = decode_chunk(body, expect_frames=2, expect_size=(240, 176))
    assert decoded[0].shape == (176, 240, 3)


@pytest.mark.slow
def test_every_stage_passes_every_frame(data_root, tmp_path):
    report = run_bench_throughput(data_root / VIDEO, tmp_path, frames=4, every=3, per_chunk=2, student_width=256)
    assert set(report["stages"]) == {"teacher", "ingest", "superres", "labeler", "pipeline"}
    for stage in report["stages"].values():
        assert stage["frames"] == 4 and stage["fps"] > 0 and stage["wall_s"] > 0
    assert report["overhead"] == pytest.approx(report["stages"]["teacher"]["fps"] / report["stages"]["pipeline"]["fps"],
                                               rel=1e-2)
    assert json.loads((tmp_path / "throughput.json").read_text())["schema"] == report["schema"]
    assert "Pipeline overhead over the teacher alone" in (tmp_path / "throughput.md").read_text()
    assert markdown(report) == (tmp_path / "throughput.md").read_text()
