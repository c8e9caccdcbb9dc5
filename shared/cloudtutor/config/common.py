"""Configuration sections shared by the cloud services and the edge agent."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from cloudtutor.config.base import DATA_ENV, Section


def default_data_root(env: Mapping[str, str] | None = None) -> Path:
    """``$CLOUDTUTOR_DATA``, else ``../shared/data`` beside the checkout."""
    env = os.environ if env is None else env
    if env.get(DATA_ENV):
        return Path(env[DATA_ENV])
    # shared/cloudtutor/config/common.py -> the checkout's parent folder.
    return Path(__file__).resolve().parents[4] / "shared" / "data"


class TlsSettings(Section):
    """TLS towards the broker. Off unless ``ca_file`` is set."""

    ca_file: Path | None = Field(None, description="CA certificate (PEM) that signed the broker's certificate; setting it turns TLS on.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    insecure: bool = Field(False, description="Skip the broker hostname check (test setups only).")


class MqttSettings(Section):
    """Connection to the MQTT v5 broker (Mosquitto)."""

    host: str = Field("localhost", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    prefix: str = Field("cloudtutor", pattern=r"^[A-Za-z0-9_\-/]+$", description="First level of every topic (brief §2).")
    username: str | None = Field(None, description="MQTT user name; none means anonymous.")
    password: SecretStr | None = Field(None, description="MQTT password (never logged).")
    client_id: str | None = Field(None, description="Client id; the edge uses its device id, services a generated one when unset.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive interval.")
    session_expiry_s: int = Field(3600, ge=0, description="Session expiry for persistent sessions (edge: at least 1 h, brief §10.4).")
    clean_start: bool = Field(True, description="Start a clean session; the edge sets it false so QoS 1 messages survive its absence.")
    max_inflight: int = Field(
        32, ge=1, le=1000,
        description="Bounded window of QoS>0 publishes awaiting PUBACK; publish blocks (backpressure) when it is full.",
    )
    publish_timeout_s: float = Field(30.0, gt=0, description="How long a publish may wait for a free in-flight slot before it fails.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay; doubles per failure.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Upper bound of the reconnect delay.")
    connect_timeout_s: float = Field(30.0, gt=0, description="How long start-up waits for the first connection.")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS settings.")

    @model_validator(mode="after")
    def _delays_ordered(self) -> MqttSettings:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


class RedisSettings(Section):
    """Connection to Redis, the cloud's frame buffer (brief §1)."""

    url: str = Field("redis://localhost:6379/0", description="redis:// or rediss:// URL (password may be given separately).")
    password: SecretStr | None = Field(None, description="Redis password (never logged).")
    key_prefix: str = Field("ct", pattern=r"^[A-Za-z0-9_\-]+$", description="First part of every Redis key, so fleets can share a server.")
    socket_timeout_s: float = Field(10.0, gt=0, description="Socket timeout of Redis calls (blocking reads add their own block time).")


class FrameBufferSettings(Section):
    """Bounds of the Redis frame buffer (blobs with TTL, streams of references)."""

    blob_ttl_s: int = Field(
        3600, ge=10,
        description="Safety-net TTL of frame and label blobs in wall seconds; correctness comes from explicit trimming (brief §10.1).",
    )
    stream_maxlen: int = Field(10_000, ge=10, description="Approximate MAXLEN of each work stream; older entries are trimmed and counted.")
    horizon_maxlen: int = Field(5_000, ge=10, description="Hard cap on samples in one device's horizon stream, on top of trimming by time.")
    claim_idle_ms: int = Field(30_000, ge=100, description="A pending entry idle this long is reclaimed by another consumer (XAUTOCLAIM).")
    block_ms: int = Field(1_000, ge=0, description="How long a consumer blocks in XREADGROUP waiting for work.")


class LogSettings(Section):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_lines: bool = Field(False, description="Log one JSON object per line (for log collectors) instead of text.")


class ModelSettings(Section):
    """Which models run, from where (brief §8, §10.13)."""

    profile: Literal["cityscapes19", "voc21"] = Field(
        "cityscapes19", description="Label-set profile: cityscapes19 (TFLite DeepLab teacher + ESPNet student) or voc21 (torchvision).",
    )
    student: str | None = Field(None, description="Student name in the model registry; none: the profile's student.")
    data_root: Path = Field(
        default_factory=default_data_root,
        description="Folder of evaluation models and videos (never part of the product).",
    )
    student_weights: Path | None = Field(
        None, description="Student checkpoint; none: the profile's file under data_root (cityscapes19) or torchvision's weights (voc21).",
    )
    teacher: str | None = Field(None, description="Teacher name in the model registry; none: the profile's teacher.")
    teacher_weights: Path | None = Field(
        None, description="Teacher model file; none: the profile's file under data_root (cityscapes19) or torchvision's weights (voc21).",
    )
    student_width: int = Field(512, ge=64, le=4096, description="Student input width; height keeps the aspect, rounded to a multiple of 8 (brief §10.2).")
    threads: int = Field(2, ge=1, le=256, description="CPU threads for torch.")
    teacher_threads: int = Field(
        1, ge=1, le=256,
        description="TFLite threads; keep 1 where torch shares the process (a 2-thread XNNPACK pool slowed torch 12x here).",
    )
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="torch device: cpu, cuda or cuda:N.")

    def weights_path(self, role: Literal["student", "teacher"]) -> Path | None:
        """The explicit file, else the registry's default file under data_root,
        else None (the model's production weights, e.g. a torchvision enum)."""
        from cloudtutor.models.registry import get_model_spec  # no torch at import

        explicit = self.student_weights if role == "student" else self.teacher_weights
        if explicit is not None:
            return explicit
        default = get_model_spec(self.model_name(role)).default_file
        return self.data_root / default if default else None

    def model_name(self, role: Literal["student", "teacher"]) -> str:
        """The registry name of the student or teacher: explicit, else the profile's."""
        from cloudtutor.models.registry import get_profile

        explicit = self.student if role == "student" else self.teacher
        return explicit or getattr(get_profile(self.profile), role)

    @model_validator(mode="after")
    def _known_models(self) -> ModelSettings:
        from cloudtutor.models.registry import get_model_spec

        for role in ("student", "teacher"):
            get_model_spec(self.model_name(role))  # ValueError listing the known names
        return self
