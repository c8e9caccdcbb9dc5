"""The AccModel (AccMPEG §4-5) on the pretrained ESPNet encoder: shapes, checkpoint, training, the online planner."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from cloudtutor.accmpeg.accmodel import AccModel, from_espnet, high_quality_loss, load_accmodel, save_accmodel
from cloudtutor.accmpeg.roi import RoiPlanner, coverage
from cloudtutor.accmpeg.train import AccModelTrainConfig, LabeledFrame, block_scores, train_steps


@pytest.fixture(scope="module")
def espnet():
    from cloudtutor.models.registry import build_model

    return build_model("espnet", download=False)


@pytest.fixture(scope="module")
def frames(data_root):
    with av.open(str(data_root / "video/camvid-0016E5-480x360-15fps.mp4")) as container:
        out = [f.to_ndarray(format="rgb24") for _, f in zip(range(12), container.decode(video=0))]
    return [np.ascontiguousarray(f[:192, :256]) for f in out]  # 16x12 macroblocks


def test_one_binary_output_per_macroblock(espnet, frames):
    model = from_espnet(espnet).eval()
    x = torch.zeros(2, 3, 192, 256)
    assert model(x).shape == (2, 2, 12, 16)
    probs = model.predict(frames[0])
    assert probs.shape == (12, 16) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    # The feature extractor starts as ESPNet's encoder, not as random weights.
    assert torch.equal(model.level3_0.c1.conv.weight, espnet.encoder.level3_0.c1.conv.weight)
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.zeros(1, 3, 200, 256))


def test_a_model_width_runs_on_the_shrunk_frame_and_answers_on_the_frames_grid(espnet, frames):
    import torch.nn.functional as F

    from cloudtutor.models.preprocess import resize_rgb

    model = from_espnet(espnet).eval()
    frame = frames[0]  # 256x192: 16x12 macroblocks
    assert np.array_equal(model.predict(frame, width=256), model.predict(frame))  # not wider: untouched
    assert np.array_equal(model.predict(frame, width=480), model.predict(frame))  # never enlarged
    half = model.predict(frame, width=128)
    assert half.shape == (12, 16) and np.all((half >= 0) & (half <= 1))
    small = model.predict(resize_rgb(frame, (128, 96)))  # what the model saw: 8x6 blocks
    stretched = F.interpolate(torch.from_numpy(small)[None, None], size=(12, 16), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(half, stretched[0, 0].numpy(), atol=1e-6)
    assert not np.allclose(half, model.predict(frame), atol=1e-3)  # a different view of the frame
    with pytest.raises(ValueError, match="width"):
        model.predict(frame, width=0)
    planner = RoiPlanner(model, width=128)
    assert np.array_equal(planner.plan([frame], every=1, alpha=0.5, dilation=0)[0], half >= 0.5)


def test_checkpoint_round_trip(tmp_path, espnet, frames):
    model = from_espnet(espnet, head=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    path = tmp_path / "acc.pt"
    save_accmodel(path, model, config={"video": "x.mp4", "label_alpha": 0.4}, step=7, optimizer_state=opt.state_dict())
    ckpt = load_accmodel(path)
    assert ckpt.step == 7 and ckpt.config["video"] == "x.mp4" and ckpt.arch_args == {"head": 16, "p": 2}
    assert np.array_equal(ckpt.model.predict(frames[0]), model.eval().predict(frames[0]))
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_accmodel(tmp_path / "other.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not an AccModel checkpoint"):
        load_accmodel(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        load_accmodel(tmp_path / "missing.pt")


def test_high_quality_blocks_weigh_four_times():
    logits = torch.zeros(1, 2, 1, 2)  # p = 0.5 everywhere: CE = log 2 per block
    labels = torch.tensor([[[1, 0]]])
    # Weighted mean: (4 log2 + 1 log2) / (4 + 1) = log 2 whatever the weights, so skew the logits.
    logits[0, 1, 0, 0] = 2.0
    plain = high_quality_loss(logits, labels, 1.0)
    heavy = high_quality_loss(logits, labels, 4.0)
    assert heavy < plain  # the well-predicted high block counts more


def test_training_learns_the_labels(espnet, frames):
    labels = np.zeros((12, 16), bool)
    labels[:, :5] = True  # a fixed, learnable pattern
    data = [LabeledFrame(f, labels.astype(float), labels) for f in frames[:4]]
    torch.manual_seed(0)  # the head's initialisation (the crops follow config.seed)
    model = from_espnet(espnet, head=16)
    config = AccModelTrainConfig(steps=40, batch_size=2, crop=192, lr=3e-3, log_every=40, save_every=40)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    saved = []
    losses = train_steps(model, opt, data, config, on_save=saved.append)
    assert saved == [40]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert block_scores(model, data)["recall"] > 0.5


def test_config_rejects_unknown_keys_and_bad_pairs():
    with pytest.raises(ValueError):
        AccModelTrainConfig(stepz=3)
    with pytest.raises(ValueError, match="crf_high"):
        AccModelTrainConfig(crf_high=40, crf_low=30)
    with pytest.raises(ValueError, match="multiple of 16"):
        AccModelTrainConfig(crop=100)


def test_planner_runs_the_model_every_k_frames(espnet, frames):
    planner = RoiPlanner(from_espnet(espnet, head=16).eval())
    masks = planner.plan(frames[:7], every=3, alpha=0.0, dilation=1)  # alpha 0: every block
    assert planner.runs == 3 and len(masks) == 7
    assert coverage(masks) == 1.0
    planner.plan(frames[7:9], every=3, alpha=0.0, dilation=1)
    assert planner.runs == 3
    planner.plan(frames[9:10], every=3, alpha=0.0, dilation=1)
    assert planner.runs == 4
    planner.plan([np.zeros((96, 128, 3), np.uint8)], every=3, alpha=1.0, dilation=0)  # new size: a new run
    assert planner.runs == 5
    with pytest.raises(ValueError, match="ROI knobs"):
        planner.plan(frames[:1], every=0, alpha=0.2, dilation=1)


def test_registry_builds_the_accmodel_from_a_checkpoint(tmp_path, espnet, frames):
    from cloudtutor.models.registry import MODELS, build_model

    assert "roi" in MODELS["accmodel"].roles
    path = tmp_path / "acc.pt"
    model = from_espnet(espnet, head=16)
    save_accmodel(path, model, config={}, step=0)
    built = build_model("accmodel", path)
    assert isinstance(built, AccModel)
    assert np.array_equal(built.predict(frames[0]), model.eval().predict(frames[0]))
    with pytest.raises(ValueError, match="no default weights"):
        build_model("accmodel")
