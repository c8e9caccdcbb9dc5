"""``cloudtutor bench throughput``: frames per second through each service
alone and through the whole labelling pipeline, against the teacher alone.

Real parts end to end: its own Mosquitto and Redis, real H.264 chunks of a
real video made as the edge makes them (resized to ``1/scale``, libx264),
and the real ``ingest``, ``superres`` and ``labeler`` services, each in a
thread of this process (as ``cloudtutor.testing.running_service`` runs
them). Stages, each timed from the first input to the last output, with the
service already started (model loading is not counted):

* ``teacher``: the teacher alone on the decoded frames (what the labeler's
  teacher call costs), the rate the pipeline is compared with;
* ``ingest``: chunks published on MQTT -> frames on FRAMES;
* ``superres``: FRAMES (left by the ingest stage) -> UPSCALED;
* ``labeler``: UPSCALED (left by the superres stage) -> horizon samples;
* ``pipeline``: the three together from the published chunks to the last
  horizon sample.

``overhead`` = teacher fps / pipeline fps: 1.0 would mean the pipeline
costs nothing beyond the teacher; ``overhead_cpu`` is the same in process
CPU time per frame, the steadier figure on a machine shared with others. The trainer works per T_update, not per
frame, so it is not a stage here (``bench fleet`` measures it). Wall and
process CPU seconds are both reported; on a shared machine compare ratios
within one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("cloudtutor.bench.throughput")

SCHEMA = "cloudtutor.bench.throughput/v1"
DEVICE = "bench-cam"
BOOT = "benchboot0"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_video(path: Path, frames: int, every: int) -> tuple[list[np.ndarray], float]:
    """Every ``every``-th frame, ``frames`` of them, RGB at source size; and the source fps."""
    from cloudtutor.video import frame_interval_ms, read_frames

    out = [rgb for i, (_, rgb) in enumerate(read_frames(str(path), max_frames=frames * every)) if i % every == 0]
    if len(out) < frames:
        raise ValueError(f"{path} has {len(out)} frames at every {every}, not {frames}")
    return out[:frames], 1000.0 / frame_interval_ms(str(path))


def make_chunks(frames: Sequence[np.ndarray], *, scale: float, per_chunk: int, fps: float, every: int) -> list[bytes]:
    """Envelopes of H.264 chunks as the edge sends them (resize to 1/scale, libx264 at the default CRF)."""
    import cv2

    from cloudtutor.envelope import encode
    from cloudtutor.h264 import encode_chunk, sent_size
    from cloudtutor.headers import ChunkHeader

    height, width = frames[0].shape[:2]
    sent = sent_size((width, height), scale)
    step_ms = round(1000.0 * every / fps)
    out = []
    for seq, start in enumerate(range(0, len(frames), per_chunk)):
        part = [cv2.resize(f, sent, interpolation=cv2.INTER_AREA) for f in frames[start:start + per_chunk]]
        header = ChunkHeader(
            device_id=DEVICE, seq=seq, boot_id=BOOT, frame_pts_ms=[(start + i) * step_ms for i in range(len(part))],
            source_size=(width, height), sent_size=sent, fps=fps, model_version=0,
        )
        out.append(encode(header, encode_chunk(part)))
    return out


def _timed(run: Callable[[], None], done: Callable[[], bool], frames: int, timeout_s: float, what: str) -> dict[str, Any]:
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    run()
    while not done():
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(f"{what}: not done after {timeout_s:.0f} s")
        time.sleep(0.02)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {"frames": frames, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "fps": round(frames / wall, 3),
            "cpu_ms_per_frame": round(1000.0 * cpu / frames, 1)}


def run_bench_throughput(
    video: Path, out: Path, *, frames: int = 24, every: int = 5, scale: float = 2.0, per_chunk: int = 4,
    student_width: int = 512, teacher_threads: int = 1, timeout_s: float = 900.0,
) -> dict[str, Any]:
    from cloudtutor.bus import Bus
    from cloudtutor.config.cloud import CloudConfig
    from cloudtutor.framebuffer import FrameBuffer
    from cloudtutor.models.preprocess import student_size
    from cloudtutor.models.registry import build_teacher
    from cloudtutor.streams import FRAMES, UPSCALED
    from cloudtutor.testing.servers import MosquittoServer, RedisServer
    from cloudtutor.testing.services import running_service
    from cloudtutor.topics import Topics
    from cloudtutor_services.ingest.service import IngestService
    from cloudtutor_services.labeler.service import LabelerService
    from cloudtutor_services.superres.service import SuperresService

    rgb, fps = read_video(video, frames, every)
    chunks = make_chunks(rgb, scale=scale, per_chunk=per_chunk, fps=fps, every=every)
    size = student_size(rgb[0].shape[1], rgb[0].shape[0], student_width)
    stages: dict[str, dict[str, Any]] = {}

    log.info("teacher alone on %d frames", frames)
    teacher = build_teacher("cityscapes19", num_threads=teacher_threads)
    teacher.predict_at(rgb[0], size)  # warm-up: the first call allocates
    stages["teacher"] = _timed(lambda: [teacher.predict_at(f, size) for f in rgb], lambda: True, frames, timeout_s,
                               "teacher")
    del teacher

    with ExitStack() as stack:
        mosquitto = stack.enter_context(MosquittoServer())
        redis_server = stack.enter_context(RedisServer())

        def config() -> CloudConfig:
            tag = f"b{uuid.uuid4().hex[:10]}"
            return CloudConfig(
                mqtt=mosquitto.mqtt_settings(prefix=tag), redis=redis_server.redis_settings(key_prefix=tag),
                models={"student_width": student_width, "teacher_threads": teacher_threads},
                framebuffer={"block_ms": 100}, metrics_port=None,
            )

        def publish(cfg: CloudConfig) -> Callable[[], None]:
            bus = stack.enter_context(_closing(Bus(cfg.mqtt, name="bench-edge").start()))
            if not bus.wait_connected(30):
                raise RuntimeError("no MQTT connection")
            topic = Topics(cfg.mqtt.prefix).chunks(DEVICE)
            return lambda: [bus.publish(topic, c, qos=1) for c in chunks]

        def counted(fb: FrameBuffer, key: str) -> Callable[[], bool]:
            return lambda: fb.redis.xlen(key) >= frames

        # Each service alone, on what the previous stage left in Redis.
        alone = config()
        fb = stack.enter_context(_closing(FrameBuffer(alone.redis, alone.framebuffer)))
        send = publish(alone)
        for name, cls, run, key in (
            ("ingest", IngestService, send, fb.stream_key(FRAMES)),
            ("superres", SuperresService, lambda: None, fb.stream_key(UPSCALED)),
            ("labeler", LabelerService, lambda: None, fb.horizon_key(DEVICE)),
        ):
            log.info("%s alone on %d frames", name, frames)
            with running_service(cls, alone):
                stages[name] = _timed(run, counted(fb, key), frames, timeout_s, name)

        log.info("the pipeline (ingest, superres, labeler together) on %d frames", frames)
        together = config()
        fb2 = stack.enter_context(_closing(FrameBuffer(together.redis, together.framebuffer)))
        send2 = publish(together)
        with running_service(IngestService, together), running_service(SuperresService, together), \
                running_service(LabelerService, together):
            stages["pipeline"] = _timed(send2, counted(fb2, fb2.horizon_key(DEVICE)), frames, timeout_s, "pipeline")

    teacher_fps, pipe_fps = stages["teacher"]["fps"], stages["pipeline"]["fps"]
    report = {
        "schema": SCHEMA, "video": video.name,
        "settings": {"frames": frames, "every": every, "scale": scale, "frames_per_chunk": per_chunk,
                     "student_width": student_width, "teacher_threads": teacher_threads,
                     "source_size": [rgb[0].shape[1], rgb[0].shape[0]], "label_size": list(size)},
        "stages": stages,
        "overhead": round(teacher_fps / pipe_fps, 3),
        "overhead_cpu": round(stages["pipeline"]["cpu_ms_per_frame"] / stages["teacher"]["cpu_ms_per_frame"], 3),
        "bottleneck": min(("ingest", "superres", "labeler"), key=lambda s: stages[s]["fps"]),
        "note": "services run as threads of one process on this machine; wall times include Redis and MQTT round trips",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "throughput.md").write_text(markdown(report), encoding="utf-8")
    return report


class _closing:
    """Context manager closing a Bus or FrameBuffer."""

    def __init__(self, thing: Any) -> None:
        self.thing = thing

    def __enter__(self) -> Any:
        return self.thing

    def __exit__(self, *exc: object) -> None:
        self.thing.close()


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"# bench throughput: {report['video']}",
        "",
        f"{s['frames']} frames (every {s['every']}-th, {s['source_size'][0]}x{s['source_size'][1]}), sent at 1/{s['scale']:g} "
        f"in chunks of {s['frames_per_chunk']}, labels at {s['label_size'][0]}x{s['label_size'][1]}, "
        f"teacher threads {s['teacher_threads']}.",
        "",
        "| stage | frames/s | wall s | CPU ms/frame |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, st in report["stages"].items():
        lines.append(f"| {name} | {st['fps']:.2f} | {st['wall_s']:.2f} | {st['cpu_ms_per_frame']:.0f} |")
    lines += [
        "",
        f"Pipeline overhead over the teacher alone: **{report['overhead']:.2f}x** in wall time "
        f"(teacher fps / pipeline fps), **{report['overhead_cpu']:.2f}x** in CPU time per frame; "
        f"slowest service alone: {report['bottleneck']}.",
        "",
        f"_{report['note']}._",
        "",
    ]
    return "\n".join(lines)


def _bench_throughput(args: argparse.Namespace) -> int:
    from cloudtutor.config.common import LogSettings, default_data_root
    from cloudtutor.logs import setup_logging

    setup_logging(LogSettings(level="INFO"), "cloudtutor.bench")
    video = Path(args.video) if args.video else default_data_root() / "video" / "highway-solidWhiteRight-960x540-25fps.mp4"
    if not video.exists():
        print(f"video not found: {video}", file=sys.stderr)
        return 2
    try:
        run_bench_throughput(video, Path(args.out), frames=args.frames, every=args.every, scale=args.scale,
                             per_chunk=args.per_chunk, student_width=args.student_width,
                             teacher_threads=args.teacher_threads)
    except (ValueError, TimeoutError) as exc:
        print(f"bench throughput: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "throughput.md").read_text())
    return 0


def add_bench_throughput_parser(bench_sub) -> None:
    p = bench_sub.add_parser("throughput", help="frames/s through ingest, superres, labeler alone and together vs the teacher")
    p.add_argument("--video", help="video (default: the highway video under the data root)")
    p.add_argument("--out", default="out/bench-throughput", help="output folder (default: out/bench-throughput)")
    p.add_argument("--frames", type=int, default=24, help="frames through each stage (default: 24)")
    p.add_argument("--every", type=int, default=5, help="every N-th video frame (default: 5)")
    p.add_argument("--scale", type=float, default=2.0, help="the edge's scale knob: frames sent at 1/scale (default: 2)")
    p.add_argument("--per-chunk", dest="per_chunk", type=int, default=4, help="frames per H.264 chunk (default: 4)")
    p.add_argument("--student-width", dest="student_width", type=int, default=512, help="label width (default: 512)")
    p.add_argument("--teacher-threads", dest="teacher_threads", type=int, default=1, help="TFLite threads (default: 1)")
    p.set_defaults(func=_bench_throughput)


__all__ = ["add_bench_throughput_parser", "make_chunks", "markdown", "run_bench_throughput"]
