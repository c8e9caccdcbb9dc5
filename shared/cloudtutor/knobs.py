"""The edge's control knobs (brief §6) with their ranges, and the pure merge
of an operator's partial override into the current knobs.

The controller owns every knob (brief §10.6); the edge only reads them from
the retained ``control/state`` topic.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Mode = Literal["ams", "shadowtutor", "split", "remote"]


class Knobs(BaseModel):
    """One device's knobs. Defaults are the papers' settings where they give one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field("ams", description="Operating mode: ams, shadowtutor, split (inference offload) or remote.")
    sample_fps: float = Field(1.0, ge=0.1, le=30.0, description="Frames sampled per second of video (AMS ASR: r_min 0.1, r_max 1).")
    infer_fps: float = Field(0.0, ge=0.0, le=120.0, description="Frames of video time the student labels per second; 0 = every frame (§10.11).")
    t_update_s: float = Field(10.0, ge=1.0, le=600.0, description="AMS model-update period T_update.")
    t_horizon_s: float = Field(240.0, ge=10.0, le=3600.0, description="AMS training horizon T_horizon.")
    coord_fraction: float = Field(0.05, gt=0.0, le=1.0, description="AMS gamma: fraction of coordinates updated per phase.")
    scale: float = Field(1.0, ge=1.0, le=8.0, description="Downscale factor before encoding (CloudSeg); 1 = full resolution.")
    crf: float = Field(23.0, ge=0.0, le=51.0, description="x264 CRF of the chunk (quality outside the ROI offset).")
    roi_qoffset: float = Field(0.0, ge=-1.0, le=0.0, description="x264 ROI qoffset for AccModel regions (negative = better; scaled by 51).")
    roi_alpha: float = Field(0.2, ge=0.0, le=1.0, description="AccModel threshold alpha.")
    roi_dilate: int = Field(0, ge=0, le=16, description="Macroblocks to dilate the ROI mask by (0: one block of dilation takes the AccModel's ROI on highway at 960 px from 47% to 74% of the frame, most of it; bench roi measures 0).")
    roi_every: int = Field(10, ge=1, le=1000, description="Run the AccModel every k frames.")
    key_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Content change above which a frame is a key frame (CloudSeg 2-level selector; 0.5: driving clips sampled at 2 fps change 0.06-0.45, a scene cut 0.93).")
    useful_threshold: float = Field(0.05, ge=0.0, le=1.0, description="Content change above which a frame is useful; below it is skipped.")
    stride: int = Field(8, ge=1, le=10_000, description="ShadowTutor key-frame stride (frames).")
    min_stride: int = Field(8, ge=1, le=10_000, description="ShadowTutor MIN_STRIDE.")
    max_stride: int = Field(64, ge=1, le=10_000, description="ShadowTutor MAX_STRIDE.")
    split_layer: int = Field(1, ge=0, le=64, description="Split mode: number of student stages run on the edge.")
    uplink_budget_kbps: float = Field(1000.0, gt=0.0, le=1_000_000.0, description="Uplink budget the bitrate controller keeps under.")

    @model_validator(mode="after")
    def _ordered(self) -> Knobs:
        if self.useful_threshold > self.key_threshold:
            raise ValueError("useful_threshold must not exceed key_threshold")
        if not self.min_stride <= self.stride <= self.max_stride:
            raise ValueError(f"stride {self.stride} must lie in [min_stride {self.min_stride}, max_stride {self.max_stride}]")
        return self


def merge_knobs(current: Knobs, override: dict[str, Any]) -> tuple[Knobs, list[str]]:
    """Apply a partial override; returns (new knobs, rejection reasons).

    All-or-nothing: if any key is unknown or any value out of range, the
    current knobs are kept and every problem is listed, so the operator sees
    them all at once.
    """
    if not isinstance(override, dict):
        return current, [f"override must be a JSON object, not {type(override).__name__}"]
    unknown = sorted(set(override) - set(Knobs.model_fields))
    if unknown:
        return current, [f"unknown knob {k!r}" for k in unknown]
    try:
        return Knobs.model_validate({**current.model_dump(), **override}), []
    except ValidationError as exc:
        return current, [
            (f"{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "") + e["msg"] for e in exc.errors()
        ]
