"""``cloudtutor train sr``: frames from real video, CARN-M, both CloudSeg stages, a resumable checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from cloudtutor.srframes import edge_low_res, video_frames, with_targets
from cloudtutor.srtrain import ProgressLog, SrTrainConfig, train_steps

log = logging.getLogger("cloudtutor.train.sr")


# Settings a resumed run may change: more steps, other logging, and the
# batch (the aware stage's patches are 4x larger than the base stage's).
_MAY_CHANGE = frozenset({"base_steps", "aware_steps", "batch_size", "log_every", "save_every"})


def frozen_proxy(name: str) -> torch.nn.Module:
    """The differentiable stand-in for the teacher (brief §10.7), frozen, in eval mode."""
    from cloudtutor.models.espnet import flush_denormals_
    from cloudtutor.models.registry import build_model

    model = build_model(name, download=False)
    flush_denormals_(model)
    return model.eval().requires_grad_(False)


def run_train_sr(
    config: SrTrainConfig, videos: Sequence[Path], out: Path, *, every: int = 10, held_out: float = 0.25,
    resume: bool = True,
) -> Path:
    """Train (or resume) and write ``out``; returns it. Trains on the first
    ``1 - held_out`` of each video's sampled frames; the tail is for evaluation."""
    from cloudtutor.models.carn import carn_m
    from cloudtutor.models.sr_checkpoint import load_sr_checkpoint, save_sr_checkpoint

    torch.manual_seed(config.seed)
    torch.set_flush_denormal(True)  # the ESPNet checkpoint's denormals cost 13x (data README)
    model = carn_m(config.scale, channels=config.channels, groups=config.groups, skip=config.skip)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    # What the checkpoint records: the settings and the data (for the bench's "trained on").
    record = {**config.model_dump(), "videos": [Path(v).name for v in videos], "every": every, "held_out": held_out}
    start = 0
    if resume and out.exists():
        ckpt = load_sr_checkpoint(out)
        differ = sorted(k for k in set(ckpt.config) | set(record)
                        if k not in _MAY_CHANGE and ckpt.config.get(k) != record.get(k))
        if differ:
            raise ValueError(f"{out} was trained with other settings ({', '.join(differ)}); "
                             "pass --no-resume or another --out")
        model.load_state_dict(ckpt.model.state_dict())
        if ckpt.optimizer_state:
            optimizer.load_state_dict(ckpt.optimizer_state)
        start = ckpt.step
        log.info("resuming %s at step %d", out, start)
    total = config.base_steps + config.aware_steps
    if start >= total:
        log.info("%s is already trained (%d steps)", out, start)
        return out

    multiple = 16 * config.scale  # the LR frame is encoded: multiples of 16
    hr, low = [], []
    for video in videos:
        split = video_frames(video, every=every, multiple=multiple, held_out=held_out)
        log.info("%s: %d training frames, %d held out", Path(video).name, len(split.train), len(split.held_out))
        hr.extend(split.train)
        low.extend(edge_low_res(split.train, config.scale, config.crf)[0])
    log.info("LR training frames: resized by %d and through H.264 at CRF %s", config.scale, config.crf)
    teacher, proxy, lut = None, None, None
    if config.aware_steps > 0 and start < total:
        from cloudtutor.distill import target_lut
        from cloudtutor.models.labels import get_label_mapping
        from cloudtutor.models.registry import build_teacher

        teacher = build_teacher("cityscapes19")
        lut = target_lut(get_label_mapping("cityscapes19"))
        proxy = frozen_proxy(config.proxy)
        log.info("teacher labels for %d frames (targets of the analytics-aware stage)", len(hr))
    frames = with_targets(hr, teacher, lut, low)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(step: int) -> None:
        save_sr_checkpoint(out, model, config=record, step=step, optimizer_state=optimizer.state_dict())

    train_steps(model, optimizer, frames, config, start=start, proxy=proxy,
                on_step=ProgressLog(total, config.log_every), on_save=save)
    log.info("wrote %s (%d steps)", out, total)
    return out


__all__ = ["frozen_proxy", "run_train_sr"]
