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


class FleetSettings(Section):
    """trainer replicas and devices: leases (brief §10.4) and weighted round-robin (§10.10)."""

    lease_ttl_s: float = Field(
        15.0, ge=0.3, le=600,
        description="Wall seconds a replica's device lease lasts unless renewed (every third of it): how long a dead "
        "replica's devices wait for another replica.",
    )
    phi_window: int = Field(
        10, ge=1, le=1000, description="Newest horizon samples whose phi are averaged into the device's weight (phi-bar).",
    )
    weight_floor: float = Field(0.05, gt=0, le=1, description="Smallest weight, so that a static scene is still trained.")
    drop_gain: float = Field(
        0.0, ge=0, le=100,
        description="Weight added per point (0-1) of the device's last accuracy drop between phases; 0 weighs by phi-bar "
        "alone, as the brief's §10.10 and the AMS code do.",
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
    fleet: FleetSettings = Field(default_factory=FleetSettings, description="Device leases and scheduling across devices.")


class PublisherSettings(ServiceSection):
    """publisher: signs and sends model deltas and snapshots."""

    compression: Literal["zlib", "zstd"] = Field("zlib", description="Compression of update bodies.")
    ack_timeout_s: float = Field(60.0, gt=0, description="Wait this long for model/reported before sending a snapshot instead.")
    signing_key: Path | None = Field(None, description="Ed25519 private key (PEM) of the fleet; none means unsigned (tests only).")
    poll_ms: int = Field(
        100, ge=0, le=5_000,
        description="How long one loop step waits for new updates; bounds the delay of acks, resyncs and timeouts.",
    )


class ProfilePoint(Section):
    """One quality of the bitrate policy's prior profile."""

    scale: float = Field(ge=1.0, le=8.0, description="Downscale factor (the scale knob).")
    crf: float = Field(ge=0.0, le=51.0, description="x264 CRF (the crf knob).")
    roi_qoffset: float = Field(0.0, ge=-1.0, le=0.0, description="AccMPEG ROI offset (the roi_qoffset knob; needs an AccModel on the edge).")
    relative_bytes: float = Field(gt=0, description="Bytes per frame relative to the reference quality (the one with 1.0).")
    accuracy: float = Field(ge=0.0, le=1.0, description="Teacher mIoU on frames sent at this quality against the originals.")


# `cloudtutor bench bitrate` on the two real videos (12 frames each, one a second,
# chunks of 10, bicubic up): the mean of both; the reference is x1 CRF 18.
MEASURED_PROFILE = [
    {"scale": s, "crf": c, "relative_bytes": b, "accuracy": a}
    for s, c, b, a in [
        (1, 18, 1.0, 0.4973), (1, 23, 0.5449, 0.394), (1, 28, 0.283, 0.312), (1, 33, 0.1465, 0.2129),
        (1.5, 18, 0.4424, 0.3627), (1.5, 23, 0.2446, 0.2822), (1.5, 28, 0.1351, 0.213), (1.5, 33, 0.0745, 0.1408),
        (2, 18, 0.2661, 0.3115), (2, 23, 0.1485, 0.245), (2, 28, 0.0845, 0.1492), (2, 33, 0.0475, 0.0777),
        (3, 18, 0.1404, 0.1951), (3, 23, 0.0796, 0.1116), (3, 28, 0.0458, 0.0795), (3, 33, 0.0276, 0.0542),
        (4, 18, 0.0932, 0.1374), (4, 23, 0.0552, 0.0718), (4, 28, 0.0328, 0.0447), (4, 33, 0.0209, 0.026),
    ]
]


class BitrateSettings(Section):
    """controller.bitrate: pick scale, CRF (and ROI offset) under the uplink budget, lower the rate last (brief §10.6)."""

    enabled: bool = Field(True, description="Run the policy; a device's quality knobs move once its first chunk is seen.")
    prior: list[ProfilePoint] = Field(
        default_factory=lambda: [ProfilePoint(**p) for p in MEASURED_PROFILE],
        description="Offline profile the policy starts from (`cloudtutor bench bitrate` on the real videos: at 960x540, "
        "x1 CRF 18 is about 11 KB a frame and keeps teacher mIoU 0.50 against the originals; x2 CRF 23 0.15 of the "
        "bytes, 0.25).",
    )
    reference_bytes: float = Field(
        12000.0, gt=0, description="Bytes per frame of the reference quality assumed before a device's first chunk.",
    )
    headroom: float = Field(0.9, gt=0, le=1, description="Share of the budget the expected uplink may use.")
    upgrade_margin: float = Field(
        0.75, gt=0, le=1,
        description="Hysteresis: a costlier quality is taken only if it expects at most this share of the budget.",
    )
    min_gain: float = Field(0.01, ge=0, le=1, description="Hysteresis: smallest expected accuracy gain worth a change.")
    min_dwell_s: float = Field(
        20.0, ge=0, description="Hysteresis: video seconds after a change before a costlier quality is taken (downgrades are immediate).",
    )
    rate_step: float = Field(0.05, gt=0, le=1, description="fps step the rate is lowered in when no quality fits.")
    starved_useful_threshold: float = Field(
        0.2, ge=0, le=1,
        description="Frame selector's useful threshold while over budget even at r_min with the cheapest quality "
        "(more stale frames dropped); the default knob's value otherwise.",
    )
    halflife_s: float = Field(10.0, gt=0, description="Half-life in video seconds of the sent-rate estimate.")
    bytes_weight: float = Field(0.3, gt=0, le=1, description="EWMA weight of each chunk in the profile's bytes level.")
    accuracy_weight: float = Field(0.2, gt=0, le=1, description="EWMA weight of each accuracy signal per quality.")
    accuracy_n0: float = Field(
        5.0, ge=0, description="Accuracy signals at which a quality's online accuracy weighs as much as its prior.",
    )
    link_fraction: float | None = Field(
        None, gt=0, le=1,
        description="Cap the budget at this share of the measured link rate (chunk bytes over transit time); none: "
        "only reported, since small chunks make that rate a latency-bound underestimate.",
    )


class AtrSettings(Section):
    """controller.atr: hibernate a device's training at low sampling rates (brief §10.10, the AMS authors' code)."""

    enabled: bool = Field(True, description="Adapt each device's t_update_s knob.")
    hibernate_below_fps: float = Field(0.25, gt=0, description="Hibernate when the mean sampling rate over a period is below this.")
    wake_above_fps: float = Field(0.35, gt=0, description="Wake when it is above this.")
    growth_s: float = Field(2.0, ge=0, description="Seconds added to the update period per period spent hibernating.")
    max_factor: float = Field(6.0, ge=1, description="Longest update period as a multiple of the base T_update.")

    @model_validator(mode="after")
    def _ordered(self) -> AtrSettings:
        if self.wake_above_fps < self.hibernate_below_fps:
            raise ValueError("wake_above_fps must not be below hibernate_below_fps")
        return self


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
    bitrate: BitrateSettings = Field(default_factory=BitrateSettings, description="The bitrate knob policy (issue 8).")
    atr: AtrSettings = Field(default_factory=AtrSettings, description="Adaptive training rate: T_update per device (brief §10.10).")


class ScalerSettings(Section):
    """``cloudtutor scaler``: replicas of the labeler and trainer Deployments from the online devices (brief §10.6)."""

    namespace: str = Field("cloudtutor", description="Namespace of the Deployments (in a pod: its own namespace file wins).")
    labeler_deployment: str = Field("cloudtutor-labeler", description="Name of the labeler's Deployment.")
    trainer_deployment: str = Field("cloudtutor-trainer", description="Name of the trainer's Deployment.")
    devices_per_labeler: int = Field(
        4, ge=1, le=1000,
        description="Devices one labeler replica serves: at 1 fps sampled per device the teacher's ~0.25 s a frame on 2 CPU "
        "cores leaves room for about 4.",
    )
    devices_per_trainer: int = Field(
        9, ge=1, le=1000, description="Devices one trainer replica serves (AMS §4: 9 per V100 within 1 point of mIoU).",
    )
    min_replicas: int = Field(1, ge=0, le=1000, description="Fewest replicas of each of the two.")
    max_replicas: int = Field(16, ge=1, le=1000, description="Most replicas of each of the two.")
    interval_s: float = Field(30.0, gt=0, description="Wall seconds between scaling decisions.")
    scale_down_delay_s: float = Field(
        300.0, ge=0,
        description="A lower count must hold this long before replicas are removed (devices that blink offline "
        "do not cost a lease move); scaling up is immediate.",
    )


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
    scaler: ScalerSettings = Field(default_factory=ScalerSettings, description="cloudtutor scaler (labeler and trainer replicas).")


def load_cloud_config(path: str | Path | None = None, **kwargs) -> CloudConfig:
    """Defaults, then the YAML file, then ``CLOUDTUTOR_*`` variables (``CLOUDTUTOR_EDGE__*`` is the edge's)."""
    return load_config(CloudConfig, env_prefix=CLOUD_ENV_PREFIX, path=path, reserved=("edge",), **kwargs)
