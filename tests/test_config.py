"""Configuration: YAML + environment merge, unknown keys named, docs current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloudtutor.config.base import ConfigError
from cloudtutor.config.cloud import CloudConfig, load_cloud_config
from cloudtutor.config.edge import load_edge_config
from cloudtutor.config.reference import _rows, render

REPO = Path(__file__).resolve().parents[1]


def test_defaults_load_without_file_or_env():
    cfg = load_cloud_config(env={})
    assert cfg.mqtt.port == 1883 and cfg.trainer.iterations == 20 and cfg.mqtt.clean_start


def test_env_beats_yaml_beats_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  host: broker.yaml\n  port: 1999\ntrainer:\n  lr: 0.01\n")
    cfg = load_cloud_config(path, env={"CLOUDTUTOR_MQTT__PORT": "2000"})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.trainer.lr) == ("broker.yaml", 2000, 0.01)


def test_config_file_from_environment_variable(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("redis:\n  key_prefix: fleet7\n")
    cfg = load_cloud_config(env={"CLOUDTUTOR_CONFIG": str(path)})
    assert cfg.redis.key_prefix == "fleet7"


@pytest.mark.parametrize(
    ("yaml_text", "env", "needle"),
    [
        ("mqtt:\n  hots: x\n", {}, "unknown setting 'mqtt.hots' (from file"),
        ("", {"CLOUDTUTOR_MQTT__HOTS": "x"}, "unknown setting 'mqtt.hots' (from env CLOUDTUTOR_MQTT__HOTS)"),
        ("", {"CLOUDTUTOR_TRAINR__LR": "1"}, "unknown setting 'CLOUDTUTOR_TRAINR__LR'"),
        ("trainr:\n  lr: 1\n", {}, "unknown setting 'trainr'"),
        ("trainer:\n  lr: -1\n", {}, "invalid setting 'trainer.lr'"),
        ("", {"CLOUDTUTOR_MQTT__PORT": "http"}, "invalid setting 'mqtt.port' (from env CLOUDTUTOR_MQTT__PORT)"),
        ("superres:\n  method: model\n", {}, "needs model_path"),
        ("- a\n- b\n", {}, "must hold a mapping"),
        ("mqtt: [\n", {}, "not valid YAML"),
    ],
)
def test_bad_settings_are_named(tmp_path, yaml_text, env, needle):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_cloud_config(path, env=env)
    assert needle in str(err.value)


def test_edge_and_cloud_prefixes_do_not_collide():
    env = {"CLOUDTUTOR_EDGE__DEVICE_ID": "cam-7", "CLOUDTUTOR_MQTT__HOST": "cloud-broker"}
    assert load_cloud_config(env=env).mqtt.host == "cloud-broker"
    edge = load_edge_config(env=env)
    assert edge.device_id == "cam-7" and edge.mqtt.host == "localhost"


def test_the_data_root_variable_is_not_an_unknown_setting(tmp_path, monkeypatch):
    # CLOUDTUTOR_DATA shares the settings' prefix; the demo's services got it
    # from the user's shell and refused to start.
    monkeypatch.setenv("CLOUDTUTOR_DATA", str(tmp_path))
    assert load_cloud_config().models.data_root == tmp_path
    assert load_edge_config().models.data_root == tmp_path
    with pytest.raises(ConfigError, match="CLOUDTUTOR_EDGE__DATA"):
        load_edge_config(env={"CLOUDTUTOR_EDGE__DATA": "x"})


def test_edge_keeps_persistent_session_when_mqtt_section_given(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("mqtt:\n  host: b\n")
    edge = load_edge_config(path, env={})
    assert edge.mqtt.clean_start is False and edge.mqtt.session_expiry_s >= 3600
    with pytest.raises(ConfigError, match="session_expiry_s"):
        load_edge_config(env={"CLOUDTUTOR_EDGE__MQTT__SESSION_EXPIRY_S": "60"})


def test_nested_knobs_and_json_values_from_env():
    edge = load_edge_config(env={"CLOUDTUTOR_EDGE__INITIAL_KNOBS": '{"sample_fps": 0.5, "mode": "shadowtutor"}'})
    assert edge.initial_knobs.sample_fps == 0.5 and edge.initial_knobs.mode == "shadowtutor"


def test_secrets_are_masked_when_shown():
    cfg = load_cloud_config(env={"CLOUDTUTOR_REDIS__PASSWORD": "hunter2", "CLOUDTUTOR_MQTT__PASSWORD": "hunter3"})
    shown = cfg.model_dump_json()
    assert "hunter2" not in shown and "hunter3" not in shown
    assert "hunter2" not in repr(cfg)
    assert cfg.redis.password.get_secret_value() == "hunter2"


def test_model_paths_resolve_from_data_root(tmp_path):
    cfg = load_cloud_config(env={"CLOUDTUTOR_MODELS__DATA_ROOT": str(tmp_path)})
    assert cfg.models.weights_path("student") == tmp_path / "models/student-espnet-p2-q8-cityscapes.pth"
    cfg = load_cloud_config(env={"CLOUDTUTOR_MODELS__PROFILE": "voc21"})
    assert cfg.models.model_name("teacher") == "deeplabv3-resnet101"
    assert cfg.models.weights_path("teacher") is None  # torchvision's enum weights


def test_every_setting_is_documented():
    for key, _env, _typ, _default, desc in _rows(CloudConfig, "CLOUDTUTOR_", ""):
        assert desc, f"{key} has no description"


def test_committed_reference_is_current():
    assert (REPO / "docs/config.md").read_text(encoding="utf-8") == render(), "run `make docs`"


def test_cli_reports_config_errors_with_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "cloudtutor.cli", "config", "show"],
        env={"CLOUDTUTOR_LOG__LEVL": "DEBUG", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "unknown setting 'log.levl'" in proc.stderr


def test_unknown_model_names_are_refused():
    with pytest.raises(ConfigError, match=r"from env CLOUDTUTOR_MODELS__STUDENT\): .*unknown model 'resnet9000'"):
        load_cloud_config(env={"CLOUDTUTOR_MODELS__STUDENT": "resnet9000"})
