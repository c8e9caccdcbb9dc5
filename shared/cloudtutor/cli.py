"""The ``cloudtutor`` console script (brief §7).

Subcommands are added as the parts behind them land; each one is a thin
wrapper that loads configuration and calls library code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cloudtutor import __version__
from cloudtutor.config.base import ConfigError


def _config_docs(args: argparse.Namespace) -> int:
    from cloudtutor.config import reference

    path = Path(args.out)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != reference.render():
            print(f"{path} is out of date: run `cloudtutor config docs`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    reference.write(path)
    print(f"wrote {path}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from cloudtutor.config.cloud import load_cloud_config
    from cloudtutor.config.edge import load_edge_config

    cfg = load_edge_config(args.config) if args.edge else load_cloud_config(args.config)
    # mode="json" renders SecretStr as '**********': secrets never reach a terminal or log.
    print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def _models_check(args: argparse.Namespace) -> int:
    from cloudtutor.config.common import default_data_root
    from cloudtutor.models.measure import check_report

    root = Path(args.data) if args.data else default_data_root()
    print(f"measuring teacher and student on {root}/sanity (one process per measurement)...", file=sys.stderr)
    report = check_report(root, runs=args.repeats)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0 if report["passed"] else 1


def _train_sr(args: argparse.Namespace) -> int:
    import yaml

    from cloudtutor.config.common import LogSettings, default_data_root
    from cloudtutor.logs import setup_logging
    from cloudtutor.srrun import run_train_sr
    from cloudtutor.srtrain import SrTrainConfig

    setup_logging(LogSettings(level="INFO"), "cloudtutor.train.sr")
    settings = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    for key in ("scale", "base_steps", "aware_steps", "batch_size", "seed", "crf", "aware_weight"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    config = SrTrainConfig.model_validate(settings or {})
    videos = [Path(v) for v in args.videos] if args.videos else [
        default_data_root() / "video" / "highway-solidWhiteRight-960x540-25fps.mp4"]
    missing = [str(v) for v in videos if not v.exists()]
    if missing:
        print(f"videos not found: {missing}", file=sys.stderr)
        return 2
    try:
        out = run_train_sr(config, videos, Path(args.out), every=args.every, held_out=args.held_out,
                           resume=not args.no_resume)
    except ValueError as exc:
        print(f"train sr: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _bench_superres(args: argparse.Namespace) -> int:
    from cloudtutor.bench.superres import run_bench_superres
    from cloudtutor.config.common import LogSettings, default_data_root
    from cloudtutor.logs import setup_logging

    setup_logging(LogSettings(level="INFO"), "cloudtutor.bench")
    checkpoints = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).exists():
            print(f"--model wants NAME=CHECKPOINT of an existing file, got {item!r}", file=sys.stderr)
            return 2
        checkpoints[name] = Path(path)
    video = default_data_root() / "video"
    videos = [Path(v) for v in args.videos] if args.videos else sorted(video.glob("*.mp4"))
    report = run_bench_superres(videos, checkpoints, Path(args.out), crfs=args.crf, every=args.every,
                                held_out=args.held_out)
    print((Path(args.out) / "superres.md").read_text())
    return 0 if report["results"] else 1


def _serve(args: argparse.Namespace) -> int:
    from cloudtutor.config.cloud import load_cloud_config
    from cloudtutor.service import serve

    serve(args.service, load_cloud_config(args.config))
    return 0


def _edge(args: argparse.Namespace) -> int:
    from cloudtutor_edge.l4t import L4tError, check_environment

    try:
        check_environment()  # a Jetson image on another L4T line stops here, before any CUDA use
    except L4tError as exc:
        print(f"cloudtutor edge: {exc}", file=sys.stderr)
        return 3
    from cloudtutor.config.edge import load_edge_config
    from cloudtutor.logs import setup_logging
    from cloudtutor_edge.agent import run_edge

    config = load_edge_config(args.config)
    setup_logging(config.log, "cloudtutor.edge")
    return run_edge(config)


def _demo(args: argparse.Namespace) -> int:
    from cloudtutor.config.common import LogSettings, default_data_root
    from cloudtutor.demo.orchestrate import DemoPlan
    from cloudtutor.demo.run import DemoError, default_videos, run_demo
    from cloudtutor.knobs import Knobs
    from cloudtutor.logs import setup_logging

    setup_logging(LogSettings(level="INFO"), "cloudtutor.demo")
    videos = [Path(v) for v in args.videos] if args.videos else default_videos(default_data_root())
    if not videos or not all(v.exists() for v in videos):
        print(f"videos not found: {[str(v) for v in videos]} (give --videos or set CLOUDTUTOR_DATA)", file=sys.stderr)
        return 2
    compare_to = None
    if args.compare_to:
        try:
            compare_to = json.loads(Path(args.compare_to).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"--compare-to: cannot read {args.compare_to}: {exc}", file=sys.stderr)
            return 2
    if args.sr_model and not Path(args.sr_model).exists():
        print(f"--sr-model: {args.sr_model} not found (train one with `cloudtutor train sr`)", file=sys.stderr)
        return 2
    knobs = {"infer_fps": args.infer_fps, "t_update_s": args.t_update, "scale": args.scale, "mode": args.mode,
             "split_layer": args.split_layer}
    if args.crf is not None:
        knobs["crf"] = args.crf
    if args.roi_accmodel:
        if not Path(args.roi_accmodel).exists():
            print(f"--roi-accmodel: {args.roi_accmodel} not found (train one with `cloudtutor train accmodel`)",
                  file=sys.stderr)
            return 2
        knobs["roi_qoffset"] = args.roi_qoffset
    budget: list[tuple[float, float]] = []
    if args.budget_schedule:
        from cloudtutor.demo.budget import parse_schedule

        try:
            budget = parse_schedule(args.budget_schedule)
        except ValueError as exc:
            print(f"--budget-schedule: {exc}", file=sys.stderr)
            return 2
        if budget[0][0] != 0:
            print("--budget-schedule: the first step must be at time 0 (the starting budget)", file=sys.stderr)
            return 2
        knobs["uplink_budget_kbps"] = budget[0][1]
    plan = DemoPlan(
        videos=videos, out=Path(args.out).resolve(), devices=args.devices, duration_s=args.minutes * 60.0, speed=args.speed,
        knobs=Knobs(**knobs), mqtt_url=args.mqtt_url,
        redis_url=args.redis_url,
        lockstep_lag_s=(2 * args.t_update if args.lockstep_lag is None else args.lockstep_lag) or None,
        superres={"method": "model", "model_path": str(Path(args.sr_model).resolve())} if args.sr_model else {},
        roi_accmodel=Path(args.roi_accmodel).resolve() if args.roi_accmodel else None,
        split_codec=args.split_codec, budget_schedule=budget, secure=args.secure,
    )
    if args.secure and (args.mqtt_url or args.redis_url):
        print("--secure starts its own broker and Redis; it does not combine with --mqtt-url/--redis-url", file=sys.stderr)
        return 2
    try:
        report = run_demo(plan, compare_to=compare_to, compare_path=args.compare_to)
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    for device in report["devices"]:
        m = device["miou_vs_teacher"]
        print(
            f"{device['device_id']}: mIoU vs teacher {m['adapted']} adapted, {m['no_customization']} without customization; "
            f"{device['model_updates_applied']} updates applied; weights match {device['weights_sha256_match']}; "
            f"up {device['uplink_kbps']} Kbps, down {device['downlink_kbps']} Kbps; chunks lost {device['chunks']['lost']}"
        )
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudtutor", description="Edge-cloud online distillation for video segmentation.")
    parser.add_argument("--version", action="version", version=f"cloudtutor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="configuration: show the merged settings or regenerate docs/config.md")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    docs = config_sub.add_parser("docs", help="write the configuration reference")
    docs.add_argument("--out", default="docs/config.md", help="output path (default: docs/config.md)")
    docs.add_argument("--check", action="store_true", help="fail if the file is not what the models generate")
    docs.set_defaults(func=_config_docs)
    show = config_sub.add_parser("show", help="print the merged configuration as JSON (secrets masked)")
    show.add_argument("--config", help="YAML file (default: $CLOUDTUTOR_CONFIG)")
    show.add_argument("--edge", action="store_true", help="the edge agent's configuration instead of the cloud's")
    show.set_defaults(func=_config_show)

    from cloudtutor.config.cloud import SERVICES

    serve = sub.add_parser("serve", help="run one cloud service (what a container runs)")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--config", help="YAML file (default: $CLOUDTUTOR_CONFIG)")
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="the closed loop on real video: servers, six services, edge agents, report")
    demo.add_argument("--devices", type=int, default=1, help="edge agents (default: 1)")
    demo.add_argument("--minutes", type=float, default=3.0, help="minutes of video per device, looped (default: 3)")
    demo.add_argument("--videos", nargs="+", help="videos to chain (default: the real videos under the data root)")
    demo.add_argument("--out", default="out/demo", help="report folder (default: out/demo)")
    demo.add_argument(
        "--speed", type=float, default=0.0,
        help="video seconds per wall second; 0 = as fast as the work allows (default: 0, the simulated clock of brief §10.1)",
    )
    demo.add_argument(
        "--lockstep-lag", type=float, default=None,
        help="video seconds an edge may run ahead of what the cloud trained on (default: 2 x --t-update); "
        "0 turns lockstep off (free running: the cloud's compute is charged to video time)",
    )
    demo.add_argument("--infer-fps", type=float, default=5.0, help="frames per video second the student labels (default: 5)")
    demo.add_argument("--t-update", type=float, default=10.0, help="AMS T_update in video seconds (default: 10)")
    demo.add_argument("--scale", type=float, default=1.0,
                      help="downscale factor of the frames the edge sends (CloudSeg; default: 1 = full resolution)")
    demo.add_argument("--mode", choices=("ams", "shadowtutor", "split"), default="ams",
                      help="ams (AMS phases every T_update), shadowtutor (key frames by stride, partial distillation) "
                      "or split (the edge runs --split-layer stages, the cloud the rest)")
    demo.add_argument("--split-layer", dest="split_layer", type=int, default=17,
                      help="split mode: student stages run on the edge (default: 17, after up_l2)")
    demo.add_argument("--split-codec", dest="split_codec",
                      help="split mode: activation codec (default: the edge's, see `cloudtutor bench split`)")
    demo.add_argument("--crf", type=float, help="x264 CRF of the chunks (default: the knob's, 23)")
    demo.add_argument("--sr-model", dest="sr_model",
                      help="SR checkpoint (`cloudtutor train sr`) for superres; default: bicubic upscaling")
    demo.add_argument("--roi-accmodel", dest="roi_accmodel",
                      help="AccModel checkpoint (`cloudtutor train accmodel`): the edges encode with AccMPEG ROI quality")
    demo.add_argument("--roi-qoffset", dest="roi_qoffset", type=float, default=-6 / 51,
                      help="x264 qoffset of the ROI blocks with --roi-accmodel (x51 = QP; default: -6/51, 6 QP better, as bench roi measures)")
    demo.add_argument("--compare-to", dest="compare_to", metavar="REPORT_JSON",
                      help="an earlier demo's report.json (e.g. the scale-1 run): the report sets uplink and mIoU beside it")
    demo.add_argument("--budget-schedule", dest="budget_schedule", metavar="T:KBPS,...",
                      help="uplink budget steps in video seconds, e.g. 0:200,30:20 (runs the bitrate policy; the report "
                           "shows the knobs, uplink vs budget and the settling time)")
    demo.add_argument("--secure", action="store_true",
                      help="broker passwords and per-device ACLs, devices over TLS (a CA made for the run), Redis password")
    demo.add_argument("--mqtt-url", help="use this broker (mqtt://host:port) instead of starting one")
    demo.add_argument("--redis-url", help="use this Redis (redis://...) instead of starting one")
    demo.set_defaults(func=_demo)

    edge = sub.add_parser("edge", help="run the edge agent")
    edge.add_argument("--config", help="YAML file (default: $CLOUDTUTOR_CONFIG)")
    edge.set_defaults(func=_edge)

    from cloudtutor.provision import add_parser as add_device_parser

    add_device_parser(sub)  # cloudtutor device provision NAME
    from cloudtutor.fleet.scaler import add_scaler_parser

    add_scaler_parser(sub)  # cloudtutor scaler

    train = sub.add_parser("train", help="offline training")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    sr = train_sub.add_parser("sr", help="CloudSeg super-resolution: base (L1) then analytics-aware stage")
    sr.add_argument("--videos", nargs="+", help="videos to cut training frames from (default: the highway video)")
    sr.add_argument("--out", default="out/sr/carn-m-x4.pt", help="checkpoint (resumed if present; default: out/sr/carn-m-x4.pt)")
    sr.add_argument("--config", help="YAML file of SrTrainConfig settings (unknown keys are refused)")
    sr.add_argument("--scale", type=int, choices=(2, 4), help="upscaling factor (default: 4)")
    sr.add_argument("--base-steps", dest="base_steps", type=int, help="steps of the base stage")
    sr.add_argument("--aware-steps", dest="aware_steps", type=int, help="steps of the analytics-aware stage")
    sr.add_argument("--batch-size", dest="batch_size", type=int, help="patches per step")
    sr.add_argument("--seed", type=int, help="seed")
    sr.add_argument("--crf", type=float, help="H.264 CRF the LR training frames go through (default: 23)")
    sr.add_argument("--aware-weight", dest="aware_weight", type=float,
                    help="weight of the analytics loss against L1 (default: 0.1)")
    sr.add_argument("--every", type=int, default=10, help="use every N-th frame of the videos (default: 10)")
    sr.add_argument("--held-out", dest="held_out", type=float, default=0.25,
                    help="fraction of each video's frames, at its end, kept out of training (default: 0.25)")
    sr.add_argument("--no-resume", action="store_true", help="start over even if --out exists")
    sr.set_defaults(func=_train_sr)
    from cloudtutor.accmpeg.run import add_train_accmodel_parser

    add_train_accmodel_parser(train_sub)

    bench = sub.add_parser("bench", help="benchmarks (JSON and a markdown table each)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    bsr = bench_sub.add_parser("superres", help="CloudSeg Table 1: teacher mIoU, PSNR, SSIM and bytes after LR + upscaling")
    bsr.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT",
                     help="an SR checkpoint to compare (repeat; e.g. base=out/sr/base-x4.pt aware=out/sr/aware-x4.pt)")
    bsr.add_argument("--videos", nargs="+", help="videos (default: every video under the data root)")
    bsr.add_argument("--out", default="out/bench", help="output folder (default: out/bench)")
    bsr.add_argument("--crf", type=float, nargs="+", default=[23.0],
                     help="H.264 CRF(s) of both streams, one row set per CRF (default: 23)")
    bsr.add_argument("--every", type=int, default=10, help="every N-th frame (default: 10)")
    bsr.add_argument("--held-out", dest="held_out", type=float, default=0.25,
                     help="tail fraction of each video that is evaluated (must match training; default: 0.25)")
    bsr.set_defaults(func=_bench_superres)
    from cloudtutor.bench.roi import add_bench_roi_parser

    add_bench_roi_parser(bench_sub)
    from cloudtutor.bench.split import add_bench_split_parser

    add_bench_split_parser(bench_sub)
    from cloudtutor.bench.distill import add_bench_distill_parser
    from cloudtutor.bench.coords import add_bench_coords_parser

    add_bench_distill_parser(bench_sub)
    add_bench_coords_parser(bench_sub)
    from cloudtutor.bench.throughput import add_bench_throughput_parser

    add_bench_throughput_parser(bench_sub)
    from cloudtutor.bench.fleet import add_bench_fleet_parser

    add_bench_fleet_parser(bench_sub)
    from cloudtutor.bench.bitrate import add_bench_bitrate_parser

    add_bench_bitrate_parser(bench_sub)
    from cloudtutor.bench.load import add_bench_load_parser

    add_bench_load_parser(bench_sub)

    models = sub.add_parser("models", help="model utilities")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    check = models_sub.add_parser("check", help="run teacher and student on the sanity frames; agreement and CPU time")
    check.add_argument("--data", help="data root (default: $CLOUDTUTOR_DATA or ../shared/data)")
    check.add_argument("--repeats", type=int, default=5, help="timed runs per model (default: 5)")
    check.add_argument("--out", help="also write the JSON report to this file")
    check.set_defaults(func=_models_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
