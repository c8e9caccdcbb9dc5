"""``cloudtutor train accmodel``: real video in, AccModel checkpoint out (I/O and the CLI glue)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from cloudtutor.accmpeg.train import AccModelTrainConfig, block_scores, label_frames, sent_frames, train_steps

log = logging.getLogger("cloudtutor.train.accmodel")

# Settings a resumed run may change.
_MAY_CHANGE = frozenset({"steps", "log_every", "save_every"})

# CamVid trains and highway (at its own 960 px) is the unseen video `bench roi` scores: the reverse
# direction has nothing to learn, since even the exact AccGrad saves no bytes on CamVid at 480 px.
DEFAULT_VIDEO = "camvid-0016E5-480x360-15fps.mp4"


def label_progress(what: str):
    def report(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            log.info("AccGrad %s: %d/%d frames", what, done, total)
    return report


def run_train_accmodel(
    config: AccModelTrainConfig, video: Path, out: Path, *, every: int = 1, held_out: float = 0.25, resume: bool = True,
) -> Path:
    from cloudtutor.accmpeg.accmodel import from_espnet, load_accmodel, save_accmodel
    from cloudtutor.models.registry import build_model
    from cloudtutor.srrun import frozen_proxy

    torch.manual_seed(config.seed)
    torch.set_flush_denormal(True)  # ESPNet's denormal weights cost 13x (data README)
    record = {**config.model_dump(), "video": Path(video).name, "every": every, "held_out": held_out,
              "gradients_from": f"{config.proxy} (frozen, differentiable proxy of the TFLite teacher; brief §10.7)"}
    model = from_espnet(build_model("espnet", download=False), head=config.head)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    start = 0
    if resume and out.exists():
        ckpt = load_accmodel(out)
        differ = sorted(k for k in set(ckpt.config) | set(record)
                        if k not in _MAY_CHANGE and k != "validation" and ckpt.config.get(k) != record.get(k))
        if differ:
            raise ValueError(f"{out} was trained with other settings ({', '.join(differ)}); pass --no-resume or another --out")
        model.load_state_dict(ckpt.model.state_dict())
        if ckpt.optimizer_state:
            optimizer.load_state_dict(ckpt.optimizer_state)
        start = ckpt.step
        log.info("resuming %s at step %d", out, start)
        if start >= config.steps:
            log.info("%s is already trained (%d steps)", out, start)
            return out
    train, tail = sent_frames(video, every=every, width=config.width, held_out=held_out)
    log.info("%s: %d training frames, %d held out, %dx%d", Path(video).name, len(train), len(tail),
             train[0].shape[1], train[0].shape[0])
    proxy = frozen_proxy(config.proxy)
    log.info("AccGrad labels: H at CRF %g, L at CRF %g, Acc = %s, gradients through the frozen %r proxy",
             config.crf_high, config.crf_low, config.agreement, config.proxy)
    labeled = label_frames(train, proxy, config, label_progress("train"))
    held = label_frames(tail, proxy, config, label_progress("held-out")) if tail else []
    log.info("labels: %.1f%% of training blocks are high quality",
             100 * sum(f.labels.sum() for f in labeled) / sum(f.labels.size for f in labeled))

    def save(step: int) -> None:
        save_accmodel(out, model, config=record, step=step, optimizer_state=optimizer.state_dict())

    train_steps(model, optimizer, labeled, config, start=start, on_save=save)
    if held:
        record["validation"] = block_scores(model, held)
        log.info("held-out blocks at p>=0.5: %s", record["validation"])
        save(config.steps)
    log.info("wrote %s (%d steps)", out, config.steps)
    return out


def _train_accmodel(args: argparse.Namespace) -> int:
    import yaml

    from cloudtutor.config.common import LogSettings, default_data_root
    from cloudtutor.logs import setup_logging

    setup_logging(LogSettings(level="INFO"), "cloudtutor.train.accmodel")
    torch.set_num_threads(args.threads)
    settings = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    for key in ("steps", "batch_size", "seed", "width", "crf_high", "crf_low", "label_alpha", "proxy", "agreement"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    try:
        config = AccModelTrainConfig.model_validate(settings or {})
    except ValueError as exc:
        print(f"train accmodel: {exc}", file=sys.stderr)
        return 2
    video = Path(args.video) if args.video else default_data_root() / "video" / DEFAULT_VIDEO
    if not video.exists():
        print(f"video not found: {video}", file=sys.stderr)
        return 2
    try:
        out = run_train_accmodel(config, video, Path(args.out), every=args.every, held_out=args.held_out,
                                 resume=not args.no_resume)
    except ValueError as exc:
        print(f"train accmodel: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def add_train_accmodel_parser(train_sub) -> None:
    p = train_sub.add_parser("accmodel", help="AccMPEG: AccGrad labels through the ESPNet proxy, then the cheap AccModel")
    p.add_argument("--video", help=f"training video (default: {DEFAULT_VIDEO} under the data root)")
    p.add_argument("--out", default="out/accmpeg/accmodel.pt", help="checkpoint (resumed if present; default: out/accmpeg/accmodel.pt)")
    p.add_argument("--config", help="YAML file of AccModelTrainConfig settings (unknown keys are refused)")
    p.add_argument("--steps", type=int, help="Adam steps (default: 1500)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="crops per step (default: 8)")
    p.add_argument("--seed", type=int, help="seed")
    p.add_argument("--width", type=int, help="frame width the edge sends (default: 480)")
    p.add_argument("--crf-high", dest="crf_high", type=float, help="CRF of the high-quality decode H (default: 12)")
    p.add_argument("--crf-low", dest="crf_low", type=float, help="CRF of the low-quality decode L (default: 28)")
    p.add_argument("--agreement", choices=["cross_entropy", "soft_miou"],
                   help="AccGrad's Acc(D(X), D(H)) (default: cross_entropy, the paper's)")
    p.add_argument("--label-alpha", dest="label_alpha", type=float, help="label threshold on the frame-normalised AccGrad (default: 0.2)")
    p.add_argument("--proxy", help="differentiable proxy model of the teacher (registry name; default: espnet)")
    p.add_argument("--every", type=int, default=1, help="every N-th frame of the video (default: 1: CamVid is 101 frames)")
    p.add_argument("--held-out", dest="held_out", type=float, default=0.25,
                   help="fraction of the frames, at the video's end, kept out of training (default: 0.25)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, to share the machine)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out exists")
    p.set_defaults(func=_train_accmodel)


__all__ = ["add_train_accmodel_parser", "run_train_accmodel"]
