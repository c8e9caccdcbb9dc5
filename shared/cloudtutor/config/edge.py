"""Configuration of the edge agent (``cloudtutor edge``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from cloudtutor.config.base import Section, load_config
from cloudtutor.config.common import LogSettings, ModelSettings, MqttSettings
from cloudtutor.knobs import Knobs

EDGE_ENV_PREFIX = "CLOUDTUTOR_EDGE__"


class EdgeMqttSettings(MqttSettings):
    """The broker connection of a device: a persistent session, so QoS 1
    updates and acks wait at the broker while the device is away (brief §10.4)."""

    clean_start: bool = Field(False, description="Keep the session across reconnects (brief §10.4).")
    session_expiry_s: int = Field(3600, ge=3600, description="Session expiry; at least 1 h (brief §10.4).")


class EdgeConfig(Section):
    """Root of the edge agent's configuration."""

    device_id: str = Field("edge-0", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", description="Device id; also the MQTT client id.")
    sources: list[str] = Field(
        default_factory=list,
        description="Video inputs, played one after another on one clock: file paths, rtsp:// URLs or camera devices "
        "(/dev/video0). A single string is taken as a one-item list.",
    )
    loop: bool = Field(False, description="Start the sources over at their end (until duration_s, if set).")
    duration_s: float | None = Field(None, gt=0, description="Stop after this much video time; none: at the end of the sources.")
    speed: float = Field(
        1.0, ge=0,
        description="Pacing of video time against wall time: 1 = real time, 2 = twice as fast, 0 = as fast as the work allows.",
    )
    lockstep_lag_s: float | None = Field(
        None, gt=0,
        description="Demo and benchmarks only: pause video time while the chunks sent reach more than this many seconds "
        "past the newest sample the cloud has trained on, so that the cloud's compute is not charged to video time "
        "(brief §10.1); keep it >= T_update plus one sampling interval. None: free running, as in production.",
    )
    lockstep_timeout_s: float = Field(
        60.0, gt=0, description="Longest wall-time pause for lockstep before going on anyway (logged and counted).",
    )
    sink_path: Path | None = Field(
        None, description="Label sink file (cloudtutor.labelsink): every processed frame's label map; none: not written.",
    )
    mqtt: EdgeMqttSettings = Field(default_factory=EdgeMqttSettings, description="Broker connection (persistent session).")
    models: ModelSettings = Field(default_factory=ModelSettings, description="The student (teacher fields are unused on the edge).")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")
    spool_dir: Path = Field(Path("/var/lib/cloudtutor/spool"), description="On-disk queue of chunks awaiting chunks/ack.")
    spool_max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024, description="Spool bound; the oldest chunks are dropped (and counted) past it.")
    ack_timeout_s: float = Field(
        30.0, gt=0, description="Resend a chunk not acknowledged within this many wall seconds (doubling per resend, up to 8x).",
    )
    drain_timeout_s: float = Field(
        60.0, ge=0, description="At the end: how long to wait for outstanding chunk acks before exiting (the spool keeps the rest).",
    )
    telemetry_every_s: float = Field(5.0, gt=0, description="Wall seconds between telemetry messages and progress log lines.")
    update_public_key: Path | None = Field(None, description="Ed25519 public key (PEM) that verifies model updates; none accepts unsigned (tests only).")
    initial_knobs: Knobs = Field(default_factory=Knobs, description="Knobs used until control/state arrives.")
    split_codec: str = Field(
        "q4-uniform+dct8+zstd+delta",
        description="Split mode: activation codec, q{bits}-{uniform|nonuniform}[+dct{tile}]+{zlib|zstd|lzma|none}[+delta] "
        "(see `cloudtutor bench split`).",
    )
    split_intra_every: int = Field(10, ge=1, le=10_000, description="Split mode: an activation frame without temporal delta every N frames.")
    split_max_pending: int = Field(4, ge=1, le=1000, description="Split mode: frames awaiting their labels before the loop waits.")
    shadowtutor_wait_timeout_s: float = Field(
        300.0, gt=0,
        description="ShadowTutor: wall seconds the edge waits, MIN_STRIDE frames after a key frame, for its update before "
        "going on with the old stride (Algorithm 4 waits without bound; a dead cloud must not freeze the device).",
    )
    roi_accmodel: Path | None = Field(
        None,
        description="AccMPEG ROI encoding: an AccModel checkpoint (`cloudtutor train accmodel`). With it, the uplink runs "
        "the AccModel every `roi_every` sampled frames and encodes its blocks `roi_qoffset` x 51 QP better than the `crf` "
        "background (roi_alpha, roi_dilate); ROI is off while the knob roi_qoffset is 0. None: ROI off.",
    )

    @field_validator("sources", mode="before")
    @classmethod
    def _one_source_is_a_list(cls, value: object) -> object:
        # CLOUDTUTOR_EDGE__SOURCES=/dev/video0 and `sources: a.mp4` read
        # naturally; paths (from code) become strings.
        if isinstance(value, (str, Path)):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [str(v) if isinstance(v, Path) else v for v in value]
        return value

    @field_validator("split_codec")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        from cloudtutor.split.codec import CodecConfig

        CodecConfig.parse(value)  # CodecError (a ValueError) names what is wrong
        return value


def load_edge_config(path: str | Path | None = None, **kwargs) -> EdgeConfig:
    """Defaults, then the YAML file, then ``CLOUDTUTOR_EDGE__*`` variables."""
    return load_config(EdgeConfig, env_prefix=EDGE_ENV_PREFIX, path=path, **kwargs)
