"""Bookkeeping of the schemes benchmark (cloudtutor.schemes) on tiny synthetic
inputs: frame keys and counting, the teacher cache, bytes on the wire
through the real H.264 encoder and delta codec, scores, and each scheme's
counters on a looped synthetic clip with a tiny student."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn

from cloudtutor import distill
from cloudtutor.models.labels import CITYSCAPES19, IGNORE
from cloudtutor.models.preprocess import espnet_normalize
from cloudtutor.schemes.ams import Ams, AmsSettings
from cloudtutor.schemes.baselines import (
    JitSettings,
    JustInTime,
    NoCustomization,
    OneTime,
    OneTimeSettings,
    masked_change,
)
from cloudtutor.schemes.footage import frame_key, load_footage
from cloudtutor.schemes.ledger import DOWN, UP, EveryGate, FrameRecord, Ledger, Scoreboard, gains
from cloudtutor.schemes.runner import Context, Uplink, run_scheme, send_delta
from cloudtutor.schemes.teacher_cache import TeacherLabels, cache_key
from cloudtutor.schemes.tracking import RemoteTracking, warp_labels

FPS = 10
FRAMES = 12


def _clip(path: Path, width: int = 64, height: int = 48, frames: int = FRAMES) -> Path:
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        for i in range(frames):
            rgb = np.zeros((height, width, 3), np.uint8)
            rgb[:, : (i * 5) % width] = 200  # a moving edge
            rgb += rng.integers(0, 20, rgb.shape, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    clip = _clip(tmp_path_factory.mktemp("clip") / "tiny.mp4")
    return load_footage([clip], 25.0, width=32)


class Teacher:
    """Counts its calls; labels: class 0 (road) left of the bright edge, 2 (building) right."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        self.calls += 1
        import cv2

        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        return np.where(small.mean(axis=2) > 100, 0, 2).astype(np.uint8)


class TinyStudent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 20, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def _ctx(footage, folder: Path | None = None) -> Context:
    return Context(footage, TeacherLabels(Teacher(), "test-teacher", folder), CITYSCAPES19, espnet_normalize)


def _model() -> nn.Module:
    return distill.bootstrap_view_(TinyStudent().eval())


# ---------------------------------------------------------------- footage and keys


def test_looped_footage_keeps_each_picture_once(footage):
    assert len(footage.frames) == FRAMES
    assert len(footage.ticks) == 250  # 25 s at 10 fps
    assert [t.uid for t in footage.ticks[:FRAMES]] == list(range(FRAMES))
    assert all(t.first_pass for t in footage.ticks[:FRAMES]) and not any(t.first_pass for t in footage.ticks[FRAMES:])
    assert footage.ticks[FRAMES].uid == 0 and footage.ticks[FRAMES].pts_ms == 1200
    assert footage.small[0].shape == (24, 32, 3)
    assert footage.duration_s == 25.0


def test_frame_key_is_the_pictures_hash():
    a = np.zeros((4, 6, 3), np.uint8)
    assert frame_key(a) == frame_key(a.copy())
    b = a.copy()
    b[0, 0, 0] = 1
    assert frame_key(a) != frame_key(b)
    assert frame_key(a) != frame_key(np.zeros((6, 4, 3), np.uint8))  # same bytes, other shape


def test_teacher_cache_by_hash_size_and_teacher(tmp_path, footage):
    teacher = Teacher()
    labels = TeacherLabels(teacher, "t1", tmp_path)
    f = footage.frames[3]
    first = labels.labels(f, (32, 24))
    assert labels.labels(f.copy(), (32, 24)) is first and teacher.calls == 1
    labels.labels(f, (16, 12))
    assert teacher.calls == 2 and labels.stats()["misses"] == 2 and labels.stats()["hits"] == 1
    again = TeacherLabels(teacher, "t1", tmp_path)  # a new run reads the folder
    np.testing.assert_array_equal(again.labels(f, (32, 24)), first)
    assert teacher.calls == 2 and again.hits == 1
    TeacherLabels(teacher, "t2", tmp_path).labels(f, (32, 24))  # another teacher never reads t1's labels
    assert teacher.calls == 3
    assert cache_key("a/b c", "ff" * 32, (8, 4)) == "a_b_c-8x4-" + "f" * 40


def test_teacher_cache_relabels_a_torn_file(tmp_path, footage):
    teacher = Teacher()
    labels = TeacherLabels(teacher, "t", tmp_path)
    labels.labels(footage.frames[0], (32, 24), "k" * 64)
    path = next(tmp_path.glob("*.npy"))
    path.write_bytes(b"garbage")
    TeacherLabels(teacher, "t", tmp_path).labels(footage.frames[0], (32, 24), "k" * 64)
    assert teacher.calls == 2


# ---------------------------------------------------------------- ledger, gate, scores


def test_ledger_counts_bytes_per_direction_and_clip():
    ledger = Ledger()
    ledger.add(0, UP, 1000, "chunk", "a")
    ledger.add(5000, UP, 500, "chunk", "b")
    ledger.add(5000, DOWN, 250, "delta", "b")
    assert ledger.total(UP) == 1500 and ledger.total(UP, "b") == 500 and ledger.total(DOWN) == 250
    assert ledger.kbps(UP, 10.0) == pytest.approx(1.2)  # 1500 B * 8 / 10 s = 1.2 kbit/s
    assert ledger.count(DOWN, "delta") == 1 and ledger.count(DOWN, "snapshot") == 0
    with pytest.raises(ValueError):
        ledger.add(0, "sideways", 1, "x")
    with pytest.raises(ValueError):
        ledger.add(0, UP, -1, "x")


def test_every_gate_rates():
    ticks = range(0, 10_000, 40)  # 25 fps for 10 s
    gate = EveryGate(5.0)
    assert sum(gate(t) for t in ticks) == 50
    gate = EveryGate(0)
    assert sum(gate(t) for t in ticks) == 250
    gate = EveryGate(1.0)
    passed = [t for t in range(0, 10_000, 67) if gate(t)]  # 15 fps, PTS rounded: one per second
    assert len(passed) == 10


def test_scoreboard_and_gains():
    board = Scoreboard()
    ref = np.array([[0, 0], [2, 2]], np.uint8)
    assert board.add(0, "a", True, ref, ref) == 1.0
    assert board.add(200, "b", False, ref, np.full_like(ref, IGNORE)) == 0.0
    s = board.summary()
    assert s["all"]["miou"] == 0.5 and s["first"]["miou"] == 1.0 and s["src:b"]["miou"] == 0.0
    assert s["frames"] == 2 and s["per_class_iou"][0] == 0.5 and s["per_class_iou"][1] is None
    base = [FrameRecord(0, "a", True, 0.25, 0), FrameRecord(200, "b", False, 0.5, 0)]
    np.testing.assert_allclose(gains(board.frames, base), [0.75, -0.5])


# ---------------------------------------------------------------- the wire


def test_uplink_counts_real_chunk_bytes_and_splits_on_size(footage):
    ctx = _ctx(footage)
    up = Uplink(ctx, scale=2.0, decode=True)
    for tick in footage.ticks[:5]:
        up.add(tick)
    got = up.flush(footage.ticks[5])
    assert len(got) == 5 and got[0][1].shape == (32, 32, 3)  # 64x48 / 2 -> 32x24 -> multiples of 16: 32x32
    assert ctx.ledger.count(UP, "chunk") == 1 and ctx.ledger.total(UP) > 100
    assert up.stats()["frames"] == 5 and up.pending() == 0


def test_send_delta_counts_codec_bytes_and_syncs_the_edge(footage):
    ctx = _ctx(footage)
    cloud, edge = _model(), _model()
    ctx.edge = __import__("cloudtutor.schemes.runner", fromlist=["EdgeModel"]).EdgeModel(edge, ctx)
    with torch.no_grad():
        cloud.head.bias += 0.5
    masks = {"head.bias": torch.ones(20, dtype=torch.bool)}
    n = send_delta(ctx, footage.ticks[0], cloud, masks)
    assert ctx.ledger.total(DOWN) == n and ctx.ledger.count(DOWN, "delta") == 1
    assert ctx.edge.version == 1
    assert distill.state_vector(edge) == distill.state_vector(cloud)
    n_empty = send_delta(ctx, footage.ticks[1], cloud, {})  # metric-only update: no coordinate, still bytes
    assert n_empty < n and ctx.edge.version == 2


def test_jit_masked_change_keeps_gamma_of_the_coordinates():
    model = TinyStudent()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    masks = masked_change(model, base, 0.05)
    total = sum(p.numel() for p in model.parameters())
    changed = sum(int((p.detach() != base[n]).sum()) for n, p in model.named_parameters())
    assert sum(int(m.sum()) for m in masks.values()) == changed == -(-total * 5 // 100)


def test_warp_labels_follows_the_flow():
    labels = np.zeros((4, 6), np.uint8)
    labels[:, 3:] = 2
    flow = np.zeros((4, 6, 2), np.float32)
    np.testing.assert_array_equal(warp_labels(labels, flow), labels)
    flow[..., 0] = 1.0  # each pixel comes from one to its right: the edge moves left
    moved = warp_labels(labels, flow)
    assert (moved[:, 2] == 2).all() and (moved[:, 5] == IGNORE).all()


# ---------------------------------------------------------------- schemes end to end on the tiny clip


def test_no_customization_scores_every_processed_frame(footage):
    ctx = run_scheme(NoCustomization(), _ctx(footage), _model(), infer_fps=2.0)
    assert len(ctx.scores.frames) == 50 and ctx.ledger.transfers == []  # 25 s at 2 fps, nothing on the wire
    assert 0 < ctx.teacher.misses <= FRAMES  # one teacher call per distinct picture at most


def test_ams_phases_chunks_and_deltas(footage):
    settings = AmsSettings(t_update_s=10.0, iterations=2, batch_size=1, asr=False)
    scheme = Ams(_model(), settings)
    ctx = run_scheme(scheme, _ctx(footage), _model(), infer_fps=1.0)
    assert scheme.phases == 2 and ctx.ledger.count(DOWN, "delta") == 2  # at 10 s and 20 s
    assert ctx.ledger.count(UP, "chunk") == 2 and scheme.uplink.frames == 20  # 1 fps, the last 5 s never flushed
    assert ctx.edge.version == 2 and len(ctx.scores.frames) == 25
    assert all(s == -(-scheme.optimizer.n_coords * 5 // 100) for s in scheme.selected)
    assert ctx.teacher.misses <= FRAMES


def test_cloudtutor_pipeline_trains_on_what_the_cloud_decodes(footage):
    settings = AmsSettings(t_update_s=10.0, iterations=1, batch_size=1, asr=True, scale=2.0, selector=True)
    scheme = Ams(_model(), settings, name="cloudtutor")
    ctx = run_scheme(scheme, _ctx(footage), _model(), infer_fps=1.0)
    assert scheme.phases >= 1 and scheme.uplink.frames + scheme.skipped_stale <= 25
    assert scheme.horizon and scheme.horizon[0][1].shape == (24, 32, 3)  # upscaled, then at the student's size
    assert ctx.teacher.misses > FRAMES  # decoded pictures are new pictures to the teacher


def test_one_time_trains_once_and_sends_one_snapshot(footage):
    scheme = OneTime(_model(), OneTimeSettings(window_s=12.0, iterations=2, batch_size=1))
    ctx = run_scheme(scheme, _ctx(footage), _model(), infer_fps=1.0)
    assert ctx.ledger.count(DOWN, "snapshot") == 1 and ctx.ledger.count(DOWN) == 1
    assert len(scheme.samples) == 12 and ctx.ledger.transfers[-1].t_ms == 12_000
    assert ctx.edge.version == 1


def test_just_in_time_sends_one_delta_per_trained_sample(footage):
    scheme = JustInTime(_model(), JitSettings(threshold=0.99, max_steps=1, min_interval_s=1.0, max_interval_s=4.0))
    ctx = run_scheme(scheme, _ctx(footage), _model(), infer_fps=1.0)
    assert scheme.samples == ctx.ledger.count(UP, "chunk") and scheme.samples >= 6  # one-frame chunks, >= every 4 s
    # A delta goes out for a trained sample whose best step beat where it started.
    assert ctx.ledger.count(DOWN, "delta") == scheme.updates <= scheme.trained_samples
    assert scheme.trained_samples >= 6


def test_just_in_time_keeps_its_best_weights_when_steps_diverge(footage):
    # lr 1e30 without clipping sends the weights to inf/NaN on the first step
    # (what lr 0.01 did to the real ESPNet, more slowly, before clipping): the
    # scheme goes back to its best weights, so the model stays finite.
    model = _model()
    scheme = JustInTime(model, JitSettings(threshold=0.99, max_steps=2, lr=1e30, clip_norm=1e38,
                                           min_interval_s=1.0, max_interval_s=4.0))
    ctx = run_scheme(scheme, _ctx(footage), _model(), infer_fps=1.0)
    assert scheme.trained_samples >= 6 and scheme.updates == ctx.ledger.count(DOWN, "delta")
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())
    assert all(np.isfinite(m) for _, m in ctx.scores.series())


def test_remote_tracking_labels_and_flow(footage):
    scheme = RemoteTracking()
    ctx = run_scheme(scheme, _ctx(footage), _model(), infer_fps=5.0)
    assert len(ctx.scores.frames) == 125 and scheme.keys == 25  # 1 fps of the 5 fps processed
    assert scheme.flows == 100 and ctx.ledger.count(DOWN, "labels") == 25 and ctx.ledger.count(UP, "chunk") == 25
