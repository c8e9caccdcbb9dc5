"""The real models: ESPNet checkpoint, TFLite teacher, torchvision builders, registry.

No mocks. The data root is ``$CLOUDTUTOR_DATA``, else ``<repo>/../shared/data``;
the module is skipped only when that folder does not exist. The teacher keeps
one thread here: this pytest process also runs torch (data README, first
pitfall).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cloudtutor.config.common import default_data_root
from cloudtutor.accuracy import frame_miou
from cloudtutor.models import (
    CAMVID_TO_CITYSCAPES,
    CITYSCAPES19,
    CITYSCAPES_CLASSES,
    CITYSCAPES_THING_IDS,
    IGNORE,
    MODELS,
    PROFILES,
    VOC21,
    VOC_CLASSES,
    build_student,
    build_teacher,
    camvid_to_cityscapes,
    get_label_mapping,
    get_profile,
)
from cloudtutor.models.espnet import ESPNet, flush_denormals_, load_espnet
from cloudtutor.models.preprocess import (
    crop_letterbox,
    espnet_normalize,
    letterbox,
    resize_labels,
    student_size,
)
from cloudtutor.models.student import Student
from cloudtutor.models.teacher import TfliteTeacher, TorchTeacher
from cloudtutor.models.torchvision_models import TORCHVISION_MODELS, build_torchvision, resolve_weights

REPO = Path(__file__).resolve().parents[1]
DATA = default_data_root()
ESPNET_PTH = DATA / "models" / "student-espnet-p2-q8-cityscapes.pth"
TEACHER_TFLITE = DATA / "models" / "teacher-deeplab-edgetpu-slim-cityscapes-int8.tflite"
SANITY = DATA / "sanity"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"no evaluation data at {DATA} (set CLOUDTUTOR_DATA)"),
]

ROAD, BUILDING, VEGETATION, CAR = 0, 2, 8, 13


def _rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(SANITY / name).convert("RGB"))


@pytest.fixture(scope="module")
def espnet() -> ESPNet:
    return load_espnet(ESPNET_PTH)


@pytest.fixture(scope="module")
def student(espnet: ESPNet) -> Student:
    # threads left alone: torch.set_num_threads is process-wide.
    return Student(espnet)


@pytest.fixture(scope="module")
def teacher() -> TfliteTeacher:
    return TfliteTeacher(TEACHER_TFLITE, num_threads=1)


@pytest.fixture(scope="module")
def soft_teacher() -> TfliteTeacher:
    return TfliteTeacher(TEACHER_TFLITE, num_threads=1, soft_scores=True)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return _rgb("cityscapes-frame.bmp")


@pytest.fixture(scope="module")
def reference_mask() -> np.ndarray:
    # An 8-bit grayscale BMP whose pixel values are the train ids themselves
    # (0 road, 1 sidewalk, 2 building, ... 13 car), not a colour palette.
    img = Image.open(SANITY / "cityscapes-frame-teacher-mask.bmp")
    assert img.mode == "L"
    mask = np.asarray(img)
    assert mask.max() < 19
    return mask


# -- ESPNet --------------------------------------------------------------------------


def test_espnet_strict_loads_the_checkpoint(espnet: ESPNet) -> None:
    state = torch.load(ESPNET_PTH, map_location="cpu", weights_only=True)
    assert len(state) == 189
    # Same keys in the same order (the parameter hash follows state-dict order);
    # the checkpoint predates BatchNorm's num_batches_tracked buffer.
    ours = [k for k in espnet.state_dict() if not k.endswith("num_batches_tracked")]
    assert ours == list(state)
    assert sum(p.numel() for p in espnet.parameters()) == 364_569
    assert not espnet.training
    # Denormals were flushed at load (data README, second pitfall).
    tiny = torch.finfo(torch.float32).tiny
    assert sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in espnet.state_dict().values()) == 0


def test_espnet_rejects_missing_and_extra_keys(tmp_path: Path) -> None:
    state = torch.load(ESPNET_PTH, map_location="cpu", weights_only=True)
    missing = dict(state)
    del missing["encoder.level3.7.d16.conv.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_espnet(tmp_path / "missing.pth")
    extra = dict(state)
    extra["decoder.extra.weight"] = torch.zeros(1)
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_espnet(tmp_path / "extra.pth")


def test_espnet_split_anywhere_equals_the_whole(espnet: ESPNet) -> None:
    x = torch.randn(1, 3, 64, 128)
    with torch.inference_mode():
        whole = espnet(x)
        assert whole.shape == (1, 20, 64, 128)
        for n in range(len(espnet.stages) + 1):
            front = espnet.run_stages({"input": x}, 0, n)
            payload = {k: front[k] for k in espnet.live_after(n)}
            back = espnet.run_stages(payload, n)
            torch.testing.assert_close(back["logits"], whole, rtol=0, atol=0)
    assert espnet.live_after(0) == ("input",)
    assert espnet.live_after(len(espnet.stages)) == ("logits",)
    assert espnet.stage_names[:3] == ("level1", "level2_0", "level2.0")
    with pytest.raises(ValueError, match="divisible by 8"):
        espnet(torch.zeros(1, 3, 60, 128))


def test_espnet_stages_own_every_parameter_once(espnet: ESPNet) -> None:
    owned = [name for name, _ in espnet.stage_parameters()]
    assert len(owned) == len(set(owned))
    assert set(owned) == {name for name, _ in espnet.named_parameters()}


def test_espnet_freeze_front_on_a_copy(espnet: ESPNet) -> None:
    model = copy.deepcopy(espnet)
    n = model.stage_index("level3_0")
    model.freeze_front(n)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in model.stage_parameters(0, n)}
    assert "encoder.level1.conv.weight" in frozen and "classifier.weight" not in frozen
    # A deep copy runs its own modules, not the original's.
    with torch.no_grad():
        model.classifier.weight.zero_()
        x = torch.randn(1, 3, 32, 32)
        assert model(x).abs().max() == 0
        assert espnet(x).abs().max() > 0


# -- geometry ------------------------------------------------------------------------


def test_student_geometry() -> None:
    assert student_size(2048, 1024) == (512, 256)
    assert student_size(960, 540) == (512, 288)
    assert student_size(480, 360) == (512, 384)
    assert student_size(513, 513) == (512, 512)
    assert student_size(2048, 1024, target_width=1024) == (1024, 512)
    with pytest.raises(ValueError, match="multiple of 8"):
        student_size(2048, 1024, target_width=500)


def test_espnet_normalisation_divides_by_255_after_std() -> None:
    pixel = np.array([[[10, 20, 30]]], np.uint8)  # RGB
    out = espnet_normalize(pixel)
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    # BGR order: channel 0 is blue (30)
    expected = (np.array([30, 20, 10]) - np.array([72.39, 82.91, 73.16])) / np.array([45.32, 46.15, 44.91]) / 255
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-3)


def test_letterbox_and_crop() -> None:
    frame = np.full((1024, 2048, 3), 200, np.uint8)
    canvas, box = letterbox(frame)
    assert canvas.shape == (513, 513, 3)
    assert box.content == (513, 256) and box.source == (2048, 1024)
    assert canvas[:256].min() == 200 and canvas[256:].max() == 0  # padded at the bottom
    assert crop_letterbox(np.zeros((513, 513), np.uint8), box).shape == (256, 513)
    tall_canvas, tall = letterbox(np.zeros((300, 100, 3), np.uint8))
    assert tall.content == (171, 513)


def test_resize_labels_is_nearest() -> None:
    labels = np.array([[1, 2], [3, 4]], np.uint8)
    np.testing.assert_array_equal(resize_labels(labels, (4, 4)), np.kron(labels, np.ones((2, 2), np.uint8)))
    big = np.kron(labels, np.ones((3, 3), np.int64))
    np.testing.assert_array_equal(resize_labels(big, (2, 2)), labels)


# -- label sets ----------------------------------------------------------------------


def test_label_mappings() -> None:
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[13] == "car"
    assert [CITYSCAPES_CLASSES[i] for i in CITYSCAPES_THING_IDS][:3] == ["pole", "traffic light", "traffic sign"]
    np.testing.assert_array_equal(CITYSCAPES19.map_student(np.array([0, 18, 19], np.uint8)), [0, 18, IGNORE])
    np.testing.assert_array_equal(CITYSCAPES19.map_teacher(np.array([0, 18], np.int64)), [0, 18])
    np.testing.assert_array_equal(VOC21.map_student(np.arange(21)), np.arange(21))
    assert get_label_mapping("voc21") is VOC21
    with pytest.raises(KeyError, match="cityscapes19"):
        get_label_mapping("ade20k")
    camvid = np.arange(12, dtype=np.uint8)
    np.testing.assert_array_equal(camvid_to_cityscapes(camvid), CAMVID_TO_CITYSCAPES)
    assert camvid_to_cityscapes(camvid)[11] == IGNORE  # unlabelled
    assert [CITYSCAPES_CLASSES[i] for i in camvid_to_cityscapes(camvid)[[0, 3, 8, 9]]] == [
        "sky", "road", "car", "person",
    ]


# -- the student on real frames --------------------------------------------------------


def test_student_on_frankfurt(student: Student) -> None:
    labels = student(_rgb("frankfurt.png"))
    assert labels.shape == (256, 512) and labels.dtype == np.uint8
    present = set(np.unique(labels).tolist())
    assert {ROAD, BUILDING, VEGETATION, CAR} <= present
    assert np.mean(labels == IGNORE) < 0.2  # void: mostly the ego vehicle's bonnet


def test_student_on_cityscapes_frame(student: Student, frame: np.ndarray) -> None:
    labels, logits = student.predict(frame, return_logits=True)
    assert labels.shape == (512, 512)
    assert logits.shape == (20, 512, 512) and logits.dtype == np.float32
    assert {ROAD, CAR} <= set(np.unique(labels).tolist())
    assert np.mean(labels == IGNORE) < 0.1
    np.testing.assert_array_equal(CITYSCAPES19.map_student(logits.argmax(0).astype(np.uint8)), labels)


# -- the TFLite teacher ----------------------------------------------------------------


def test_teacher_agrees_with_its_reference_mask(
    teacher: TfliteTeacher, frame: np.ndarray, reference_mask: np.ndarray
) -> None:
    labels = teacher(frame)
    assert labels.shape == reference_mask.shape == (513, 513)
    assert np.mean(labels == reference_mask) >= 0.90


def test_student_agrees_with_teacher(student: Student, teacher: TfliteTeacher, frame: np.ndarray) -> None:
    student_labels = student(frame)
    size = (student_labels.shape[1], student_labels.shape[0])
    teacher_labels = teacher.predict_at(frame, size)
    assert teacher_labels.shape == student_labels.shape
    assert np.mean(student_labels == teacher_labels) >= 0.80
    # Many small classes present in only one map pull the per-frame mIoU down (0.35 measured).
    assert frame_miou(teacher_labels, student_labels, 19) > 0.3


def test_teacher_letterboxes_any_frame(teacher: TfliteTeacher) -> None:
    labels = teacher(_rgb("frankfurt.png"))
    assert labels.shape == (256, 513)  # 2:1 frame, 513 on the long side, padding cropped
    assert {ROAD, BUILDING, CAR} <= set(np.unique(labels).tolist())
    assert teacher.predict_at(_rgb("frankfurt.png"), (512, 256)).shape == (256, 512)


def test_teacher_soft_scores(soft_teacher: TfliteTeacher, frame: np.ndarray) -> None:
    assert soft_teacher.scores_scale == pytest.approx(0.2015, abs=1e-3)
    assert soft_teacher.scores_zero_point == 82
    labels, scores = soft_teacher.predict_with_scores(frame)
    assert scores.shape == (19, 513, 513) and scores.dtype == np.float32
    assert np.mean(scores.argmax(0) == labels) >= 0.999
    small_labels, small_scores = soft_teacher.predict_with_scores_at(frame, (512, 512))
    assert small_scores.shape == (19, 512, 512)
    assert np.mean(small_scores.argmax(0) == small_labels) >= 0.98


def test_teacher_without_soft_scores_says_how(teacher: TfliteTeacher, frame: np.ndarray) -> None:
    with pytest.raises(RuntimeError, match="soft_scores=True"):
        teacher.predict_with_scores(frame)


# -- torchvision ---------------------------------------------------------------------


@pytest.fixture()
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything tries to fetch weights."""
    import torchvision.models._api as api

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to download weights")

    monkeypatch.setattr(api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.mark.parametrize("name", sorted(TORCHVISION_MODELS))
def test_torchvision_weights_resolve_offline(name: str, no_download: None) -> None:
    resolved = resolve_weights(name)
    assert resolved.weights.name == "COCO_WITH_VOC_LABELS_V1"
    assert resolved.categories == VOC_CLASSES and resolved.num_classes == 21
    assert resolved.url.endswith(".pth")
    assert resolved.resize_size == 520
    preset = resolved.transforms()
    assert list(preset.mean) == [0.485, 0.456, 0.406]
    # Other spellings of the same enum.
    assert resolve_weights(name, "DEFAULT").weights is resolved.weights
    full = f"{type(resolved.weights).__name__}.COCO_WITH_VOC_LABELS_V1"
    assert resolve_weights(name, full).weights is resolved.weights


def test_torchvision_bad_weight_names() -> None:
    with pytest.raises(ValueError, match="known"):
        resolve_weights("lraspp-mobilenet-v3", "IMAGENET1K_V9")
    with pytest.raises(ValueError, match="not a weight of"):
        resolve_weights("lraspp-mobilenet-v3", "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1")
    with pytest.raises(KeyError, match="lraspp-mobilenet-v3"):
        resolve_weights("segformer")


@pytest.mark.parametrize("name", ["lraspp-mobilenet-v3", "deeplabv3-mobilenet-v3"])
def test_torchvision_builds_without_download(name: str, no_download: None) -> None:
    model = build_torchvision(name, download=False)
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 64, 64))["out"]
    assert out.shape == (1, 21, 64, 64)


def test_deeplabv3_resnet101_builds_without_download(no_download: None) -> None:
    model = build_torchvision("deeplabv3-resnet101", download=False)
    assert model.classifier[-1].out_channels == 21


def test_torchvision_loads_a_local_state_dict(tmp_path: Path, no_download: None) -> None:
    model = build_torchvision("lraspp-mobilenet-v3", download=False)
    torch.save(model.state_dict(), tmp_path / "lraspp.pth")
    again = build_torchvision("lraspp-mobilenet-v3", tmp_path / "lraspp.pth")
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


# -- registry ------------------------------------------------------------------------


def test_registry_names_and_profiles() -> None:
    assert {"espnet", "tflite-deeplab-edgetpu", "lraspp-mobilenet-v3", "deeplabv3-resnet101",
            "deeplabv3-mobilenet-v3", "torchscript"} <= set(MODELS)
    for profile in PROFILES.values():
        assert profile.teacher in MODELS and profile.student in MODELS
        assert MODELS[profile.teacher].labels == MODELS[profile.student].labels == profile.labels
    assert get_profile("voc21").mapping is VOC21


def test_registry_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(KeyError) as err:
        build_student("mobilevit")
    assert "espnet" in str(err.value) and "cityscapes19" in str(err.value)
    with pytest.raises(KeyError, match="tflite-deeplab-edgetpu"):
        build_teacher("nope")
    with pytest.raises(KeyError, match="voc21"):
        get_profile("ade20k")
    with pytest.raises(ValueError, match="not registered as a teacher"):
        build_teacher("espnet")
    with pytest.raises(ValueError, match="weights=PATH"):
        build_student("torchscript", labels="cityscapes19")
    with pytest.raises(ValueError, match="labels="):
        build_student("torchscript", "model.pt")


def test_registry_builds_the_cityscapes19_profile(frame: np.ndarray) -> None:
    student = build_student("cityscapes19", data_root_path=DATA)
    teacher = build_teacher("cityscapes19", data_root_path=DATA)
    assert isinstance(student.model, ESPNet) and student.mapping is CITYSCAPES19
    assert isinstance(teacher, TfliteTeacher) and teacher.num_threads == 1
    assert student(frame).shape == (512, 512)


def test_registry_builds_voc21_without_download(no_download: None) -> None:
    student = build_student("voc21", download=False)
    assert student.mapping is VOC21
    labels = student(np.zeros((64, 128, 3), np.uint8))
    assert labels.shape == (256, 512) and labels.max() < 21  # 512 wide, like every student
    teacher = build_teacher("voc21", download=False)
    assert isinstance(teacher, TorchTeacher) and teacher.short_side == 520


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_registry_torchscript_student(espnet: ESPNet, frame: np.ndarray, tmp_path: Path) -> None:
    traced = torch.jit.trace(copy.deepcopy(espnet), torch.zeros(1, 3, 64, 64))
    traced.save(str(tmp_path / "espnet.pt"))
    scripted = build_student("torchscript", tmp_path / "espnet.pt", labels="cityscapes19", channels_last=False)
    eager = Student(espnet, channels_last=False)
    small = np.asarray(Image.fromarray(frame).resize((256, 256)))
    np.testing.assert_array_equal(scripted(small), eager(small))


def test_light_modules_do_not_import_torch_or_litert() -> None:
    # The edge and light-weight processes import these; torch must stay out.
    code = (
        "import sys\n"
        "import cloudtutor.accuracy, cloudtutor.models, cloudtutor.models.labels\n"
        "import cloudtutor.models.preprocess, cloudtutor.models.registry, cloudtutor.models.teacher\n"
        "heavy = [m for m in ('torch', 'torchvision', 'ai_edge_litert') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("flush", [False, True])
def test_flush_denormals_reads_bits_not_values(flush: bool) -> None:
    # Under denormals-are-zero a subnormal compares equal to 0; the flush must
    # not depend on that mode, or the weights' sha256 would.
    tiny = torch.finfo(torch.float32).tiny
    layer = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[tiny / 4, -tiny / 8, 0.0, 1.5]]))
    torch.set_flush_denormal(flush)
    try:
        assert flush_denormals_(layer) == 2
    finally:
        torch.set_flush_denormal(False)
    bits = layer.weight.detach().view(torch.int32).tolist()[0]
    assert bits[:3] == [0, 0, 0]  # +0, not -0
    assert layer.weight[0, 3].item() == 1.5
