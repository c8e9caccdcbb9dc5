"""The edge uplink with ROI on: real AccModel, real libx264 chunks that decode, QPs measured into the header."""

from __future__ import annotations

import av
import numpy as np
import pytest

from cloudtutor import envelope
from cloudtutor.h264 import decode_chunk
from cloudtutor.knobs import Knobs
from cloudtutor_edge.sampler import Batch, ChunkFormat, Sample
from cloudtutor_edge.uplink import Uplink


@pytest.fixture(scope="module")
def planner():
    from cloudtutor.accmpeg.accmodel import from_espnet
    from cloudtutor.accmpeg.roi import RoiPlanner
    from cloudtutor.models.registry import build_model

    return RoiPlanner(from_espnet(build_model("espnet", download=False), head=16).eval())


@pytest.fixture(scope="module")
def batch(data_root):
    with av.open(str(data_root / "video/camvid-0016E5-480x360-15fps.mp4")) as container:
        rgb = [f.to_ndarray(format="rgb24") for _, f in zip(range(12), container.decode(video=0))]
    fmt = ChunkFormat("camvid", (480, 360), (480, 352), 36.0)
    return Batch(fmt, [Sample(i * 200, np.ascontiguousarray(f[:352]), fmt, 0) for i, f in enumerate(rgb[::2])])


def _uplink(planner, knobs):
    # _encode needs neither the bus nor the spool.
    return Uplink(None, "t", None, device_id="edge-0", boot_id="boot0000", roi=planner, knobs=lambda: knobs)


def test_roi_chunks_decode_and_report_measured_qps(planner, batch):
    planner.reset()
    knobs = Knobs(crf=36, roi_qoffset=-10 / 51, roi_alpha=0.0, roi_dilate=0, roi_every=10)  # alpha 0: all ROI
    uplink = _uplink(planner, knobs)
    [(seq, data, n)] = uplink._encode(batch, 15.0)
    env = envelope.decode(data)
    assert seq == 0 and n == len(batch)
    frames = decode_chunk(env.body, expect_frames=len(batch), expect_size=(480, 352))
    assert len(frames) == len(batch)
    h = env.header
    assert h.roi_qoffset == pytest.approx(-10 / 51) and h.roi_coverage == 1.0
    assert h.qp_pair is None  # every block is ROI: no background to compare with
    assert planner.runs == 1  # 6 frames, every 10
    assert uplink.metrics.get("cloudtutor_edge_accmodel_seconds_total") > 0


def test_partial_roi_gives_a_lower_qp_inside(planner, batch):
    planner.reset()
    probs = planner.model.predict(batch.frames[0])
    alpha = float(np.quantile(probs, 0.7))  # about 30% of the blocks
    knobs = Knobs(crf=36, roi_qoffset=-10 / 51, roi_alpha=alpha, roi_dilate=0, roi_every=10)
    [(_, data, _)] = _uplink(planner, knobs)._encode(batch, 15.0)
    h = envelope.decode(data).header
    assert 0.05 < h.roi_coverage < 0.95
    inside, outside = h.qp_pair
    # All frames: P/B blocks without residual report inherited QPs, which narrows the gap (about 3 here).
    assert inside < outside - 1.5


def test_roi_off_without_a_negative_offset_or_a_model(planner, batch):
    for uplink in (_uplink(planner, Knobs(crf=36)), _uplink(None, Knobs(crf=36, roi_qoffset=-0.2))):
        [(_, data, _)] = uplink._encode(batch, 15.0)
        h = envelope.decode(data).header
        assert h.roi_qoffset is None and h.qp_pair is None and h.roi_coverage is None
