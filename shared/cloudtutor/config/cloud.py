"""Configuration of the cloud services: one root model, one section per service.

Every service loads the whole :class:`CloudConfig` (as Frigate loads its one
config), so a mistake anywhere in a shared ConfigMap fails every service at
start rather than one of them at an odd moment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cloudtutor.config.base import Section, load_config
from cloudtutor.knobs import Knobs
from cloudtutor.config.common import FrameBufferSettings, LogSettings, ModelSettings, MqttSettings, RedisSettings

CLOUD_ENV_PREFIX = "CLOUDTUTOR_"

SERVICES = ("ingest", "superres", "labeler", "trainer", "publisher", "controller")


class ServiceSection(Section):
    share_group: str | None = Field(
        None, description="MQTT shared-subscription and Redis consumer group; defaults to the service's name.",
    )


class IngestSettings(ServiceSection):
    """ingest: validates and decodes chunks into the frame buffer."""

    max_chunk_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest chunk body accepted (envelope size limit).")
    dedup_ttl_s: int = Field(86_400, ge=60, description="How long (device, boot, seq) of ingested chunks are remembered for deduplication.")
    max_decoded_mb: int = Field(
        512, ge=1,
        description="Largest decoded size of one chunk (frames x width x height x 3 bytes, MiB), checked on the header before decoding.",
    )


class SuperresSettings(ServiceSection):
    """superres: upscales frames back to the teacher's input size."""

    method: Literal["bicubic", "model"] = Field("bicubic", description="bicubic, or a trained SR model (CloudSeg).")
    model_path: Path | None = Field(None, description="SR checkpoint when method is 'model'.")
    batch_size: int = Field(8, ge=1, le=256, description="Frames read from the frames stream per step.")
    claim_every_s: float = Field(
        10.0, gt=0, description="Wall seconds between passes that reclaim frames a dead replica left pending (XAUTOCLAIM).",
    )

    @model_validator(mode="after")
    def _model_needs_path(self) -> SuperresSettings:
        if self.method == "model" and self.model_path is None:
            raise ValueError("method 'model' needs model_path")
        return self


class LabelerSettings(ServiceSection):
    """labeler: runs the teacher, computes phi-scores, feeds the horizon."""

    batch_size: int = Field(1, ge=1, le=64, description="Frames read from the upscaled stream per step (the teacher labels them one by one).")
    t_horizon_s: float = Field(
        240.0, ge=10.0, le=3600.0,
        description="Video seconds of samples kept per device: older ones are trimmed (AMS T_horizon); keep it >= the t_horizon_s knob.",
    )
    claim_every_s: float = Field(
        10.0, gt=0, description="Wall seconds between passes that reclaim frames a dead replica left pending (XAUTOCLAIM).",
    )


class ShadowTutorSettings(Section):
    """trainer in ``mode: shadowtutor``: partial distillation on each key frame (ShadowTutor Algorithm 1)."""

    freeze_through: str = Field(
        "level3.5",
        description="Last frozen stage (ESPNet) or parameter-name prefix (other models); level3.5 leaves 23.5% of ESPNet "
        "trainable, the paper's 21.4% being the nearest.",
    )
    threshold: float = Field(0.8, gt=0, lt=1, description="THRESHOLD: stop once the key frame's mIoU exceeds it (paper: 0.8).")
    max_updates: int = Field(8, ge=0, le=1000, description="MAX_UPDATES: optimisation steps per key frame at most (paper: 8).")
    lr: float = Field(
        3e-4, gt=0, le=1.0,
        description="Adam learning rate. The paper's 0.01 (and 1e-3) wrecked the pretrained ESPNet on the first step here "
        "(key-frame mIoU 0.19 -> 0.03); 3e-4 lifted it (0.19 -> 0.43 highway, 0.30 -> 0.49 CamVid).",
    )


class TrainerSettings(ServiceSection):
    """trainer: AMS Algorithms 1 and 2 per device (brief §5); ShadowTutor's Algorithm 1 for devices in that mode."""

    iterations: int = Field(20, ge=1, le=10_000, description="K: Adam iterations per update phase (AMS: 20).")
    batch_size: int = Field(
        2, ge=1, le=256,
        description="Mini-batch size, sampled uniformly from the horizon. Measured (ESPNet 512x288, 2 CPU threads, K=20): "
        "batch 1/2/4/8 take 2.1/4.9/10.3/21.7 s a phase (512x384: 2.9/5.7/11.9 s for 1/2/4); 2 trains on twice the samples "
        "of 1 and keeps a phase at about half of T_update=10 s.",
    )
    train_width: int | None = Field(
        None, ge=64, le=4096,
        description="Training input width (height keeps the aspect, multiple of 8); none: train at the stored samples' size.",
    )
    model_ttl_s: int = Field(
        7 * 86_400, ge=60,
        description="Safety-net TTL (wall s) of model and mask blobs; the latest edge view is also kept in the trainer's state.",
    )
    poll_s: float = Field(0.5, gt=0, le=60, description="Wall seconds to wait when no device is due for a phase.")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate.")
    strategy: Literal["gradient", "first", "last", "first_last", "random", "full"] = Field(
        "gradient", description="Coordinate selection (AMS Table 3); gradient = largest |Adam update| of the previous phase.",
    )
    seed: int = Field(0, description="Seed of coordinate and mini-batch sampling.")
    shadowtutor: ShadowTutorSettings = Field(default_factory=ShadowTutorSettings, description="ShadowTutor mode.")


class PublisherSettings(ServiceSection):
    """publisher: signs and sends model deltas and snapshots."""

    compression: Literal["zlib", "zstd"] = Field("zlib", description="Compression of update bodies.")
    ack_timeout_s: float = Field(60.0, gt=0, description="Wait this long for model/reported before sending a snapshot instead.")
    signing_key: Path | None = Field(None, description="Ed25519 private key (PEM) of the fleet; none means unsigned (tests only).")
    poll_ms: int = Field(
        100, ge=0, le=5_000,
        description="How long one loop step waits for new updates; bounds the delay of acks, resyncs and timeouts.",
    )


class ControllerSettings(ServiceSection):
    """controller: owns the knobs (brief §6, §10.6)."""

    delta_t_s: float = Field(10.0, gt=0, description="ASR period delta-t in video seconds (AMS eq. 1).")
    asr_eta: float = Field(
        1.0, gt=0, description="ASR step eta, fps per unit of phi error (measured: see docs/controller.md).",
    )
    asr_phi_target: float = Field(
        0.5, ge=0, le=1,
        description="ASR target phi; the real driving videos give mean phi 0.65-0.76 at 1 fps, so they keep the top rate.",
    )
    asr_min_fps: float = Field(0.1, gt=0, description="ASR r_min.")
    asr_max_fps: float = Field(1.0, gt=0, description="ASR r_max.")
    default_knobs: Knobs = Field(default_factory=Knobs, description="Knobs of a device the controller has not seen before.")
    fleet_status_every_s: float = Field(5.0, gt=0, description="Wall seconds between fleet/status summaries.")


class CloudConfig(Section):
    """Root of the cloud services' configuration."""

    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis connection.")
    framebuffer: FrameBufferSettings = Field(default_factory=FrameBufferSettings, description="Frame buffer bounds.")
    models: ModelSettings = Field(default_factory=ModelSettings, description="Teacher and student.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")
    metrics_port: int | None = Field(9100, ge=1, le=65535, description="Port of the Prometheus /metrics endpoint; none disables it.")
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="ingest service.")
    superres: SuperresSettings = Field(default_factory=SuperresSettings, description="superres service.")
    labeler: LabelerSettings = Field(default_factory=LabelerSettings, description="labeler service.")
    trainer: TrainerSettings = Field(default_factory=TrainerSettings, description="trainer service.")
    publisher: PublisherSettings = Field(default_factory=PublisherSettings, description="publisher service.")
    controller: ControllerSettings = Field(default_factory=ControllerSettings, description="controller service.")


def load_cloud_config(path: str | Path | None = None, **kwargs) -> CloudConfig:
    """Defaults, then the YAML file, then ``CLOUDTUTOR_*`` variables (``CLOUDTUTOR_EDGE__*`` is the edge's)."""
    return load_config(CloudConfig, env_prefix=CLOUD_ENV_PREFIX, path=path, reserved=("edge",), **kwargs)
