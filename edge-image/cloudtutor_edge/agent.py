"""The edge agent, ``cloudtutor edge`` (AMS §3 "Edge device", brief §2, §4, §10).

A thin loop around the pure parts in this package:

* frames come from ``cloudtutor.video.chained`` (files, RTSP, cameras) with
  video-time timestamps, paced against wall time by ``speed``;
* the active student labels every frame the ``infer_fps`` gate passes, and
  each label map goes to the label sink;
* the ``sample_fps`` gate proposes frames for the cloud and CloudSeg's
  2-level frame selector (brief §10.6) tags each KEY or USEFUL, or drops it
  as stale (thresholds ``key_threshold`` / ``useful_threshold`` from
  ``control/state``); sent frames are downscaled by ``scale`` and buffered
  per ``t_update_s`` window
  (:class:`~cloudtutor_edge.sampler.SampleBuffer`); each closed window goes
  to the :class:`~cloudtutor_edge.uplink.Uplink` (encode, spool, publish,
  resend until ``chunks/ack``);
* model updates are verified and loaded into the inactive copy on the bus's
  handler thread (:class:`~cloudtutor_edge.updates.ModelUpdater`); the
  loop swaps models between frames (:class:`~cloudtutor_edge.model_slot.ModelSlot`);
* knobs come from the retained ``control/state``; status (online, offline
  by last will, stopped) is the Bus's; telemetry and one progress log line
  go out every ``telemetry_every_s`` wall seconds.

At the end of the video the last partial window is sent as a final chunk,
the agent waits up to ``drain_timeout_s`` for outstanding acks, publishes a
final telemetry and closes (status ``stopped``).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudtutor import __version__
from cloudtutor.algorithms.frameselect import FrameClass, FrameSelector
from cloudtutor.bus import Bus, BusError, Message
from cloudtutor.clock import VideoClock
from cloudtutor.config.edge import EdgeConfig
from cloudtutor.h264 import sent_size
from cloudtutor.headers import Kind
from cloudtutor.knobs import Knobs
from cloudtutor.labelsink import LabelSinkWriter
from cloudtutor.messages import (
    ChunkAck,
    ControlState,
    MessageError,
    Telemetry,
    decode_json,
)
from cloudtutor.metrics import Metrics
from cloudtutor.models.preprocess import resize_rgb
from cloudtutor.topics import Topics
from cloudtutor.video import Frame, chained

from cloudtutor_edge.model_slot import ModelSlot
from cloudtutor_edge.pacing import Pacer
from cloudtutor_edge.shadowtutor import ShadowTutorEdge
from cloudtutor_edge.split import SplitEdge
from cloudtutor_edge.sampler import (
    ChunkFormat,
    FrameRateEstimator,
    RateGate,
    Sample,
    SampleBuffer,
)
from cloudtutor_edge.spool import Spool
from cloudtutor_edge.updates import ModelUpdater, UpdateOutcome
from cloudtutor_edge.uplink import Uplink

log = logging.getLogger("cloudtutor.edge")

AGENT_VERSION = __version__
#: How long start-up waits for the retained control/state, so that the first
#: chunk already follows the controller's knobs (a new device may have none).
CONTROL_WAIT_S = 1.0


class _M:
    FRAMES = "cloudtutor_edge_frames_total"  # decoded
    INFERENCES = "cloudtutor_edge_inferences_total"  # labelled by the student
    INFER_SECONDS = "cloudtutor_edge_inference_seconds_total"
    SAMPLES = "cloudtutor_edge_samples_total"  # proposed by the sample_fps gate
    SELECTED = "cloudtutor_edge_frames_selected_total"  # {cls}: key, useful, skip (2-level selector)
    SWAPS = "cloudtutor_edge_model_swaps_total"
    MODEL_VERSION = "cloudtutor_edge_model_version"
    REJECTED = "cloudtutor_edge_rejected_total"  # {what, reason}: malformed control/ack messages
    LOCKSTEP_SECONDS = "cloudtutor_edge_lockstep_wait_seconds_total"  # wall time held for the cloud (demo, bench)
    LOCKSTEP_TIMEOUTS = "cloudtutor_edge_lockstep_timeouts_total"


def load_student(config: EdgeConfig) -> tuple[Any, str]:
    """The student (a ``Student``) at version 0, and its model id.

    Version 0 is the cloud's bootstrap edge view (brief §10.5):
    ``distill.bootstrap_view_`` rounds every floating tensor to float16 and
    makes every zero +0.0, whatever this thread's flush-denormal mode was at
    load time, so the sha256 in ``model/reported`` matches the cloud's. The
    model id is ``modelstate.model_id(model)`` as the trainer computes it.
    """
    from cloudtutor.distill import bootstrap_view_
    from cloudtutor.models.registry import build_student
    from cloudtutor.models.student import Student
    from cloudtutor.modelstate import model_id

    settings = config.models
    student = build_student(
        settings.model_name("student"), settings.weights_path("student"), width=settings.student_width,
        threads=settings.threads, data_root_path=settings.data_root,
    )
    if settings.device != "cpu":
        student = Student(student.model, mapping=student.mapping, normalize=student.normalize,
                          width=student.width, multiple=student.multiple, device=settings.device)
    bootstrap_view_(student.model)
    return student, model_id(student.model)


@dataclass
class _Period:
    """Counters at the last progress report, to report rates over the period."""

    wall: float
    video_ms: int = 0
    inferences: float = 0.0
    infer_seconds: float = 0.0
    uplink_bytes: float = 0.0


class EdgeAgent:
    """One device's agent. ``run()`` blocks until the video ends or ``stop()``.

    ``student`` and ``model_id``: a ready ``Student`` at version 0 (as
    :func:`load_student` makes it) to use instead of loading one.
    """

    def __init__(self, config: EdgeConfig, *, metrics: Metrics | None = None, student: Any = None,
                 model_id: str | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.topics = Topics(config.mqtt.prefix)
        self.device_id = config.device_id
        self.boot_id = uuid.uuid4().hex
        self.stop_event = threading.Event()
        self.ready = threading.Event()  # set once connected (or given up waiting) and running
        self._control_seen = threading.Event()
        # Orders model/reported publications: the start-up report must not
        # overtake the report of an update the handler applied meanwhile.
        self._report_lock = threading.Lock()
        self.clock = VideoClock()
        self._knobs: Knobs = config.initial_knobs
        self._given_student = (student, model_id)
        self.slot: ModelSlot | None = None
        self.updater: ModelUpdater | None = None
        self.spool: Spool | None = None
        self.uplink: Uplink | None = None
        self.sink: LabelSinkWriter | None = None
        self.bus: Bus | None = None
        self.model_id = ""
        self._rates = FrameRateEstimator()
        knobs = self._knobs
        self.selector = FrameSelector(knobs.key_threshold, knobs.useful_threshold)
        self._selector_source: str | None = None
        self._last_pts = 0
        self._sent_through_ms = 0  # video time up to which chunks have been handed to the uplink
        self._warned_mode = False
        self._buffer: SampleBuffer | None = None
        self._period = _Period(time.monotonic())
        self._loop_ended: float | None = None  # rates in the final report exclude the drain
        self.shadowtutor: ShadowTutorEdge | None = None  # mode shadowtutor (Algorithm 4)
        self.split: SplitEdge | None = None  # mode split: the cloud finishes the student (brief §10.8)

    # ---- lifecycle ----------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end (it still sends the last chunk and drains)."""
        self.stop_event.set()

    def run(self) -> int:
        """0 when the video ended (or stop() was called) cleanly, 1 on a failure, 2 on bad settings."""
        if not self.config.sources:
            log.error("no video sources configured (set `sources`)")
            return 2
        try:
            self._start()
        except Exception:
            log.exception("edge agent could not start")
            self._close()
            return 1
        rc = 0
        try:
            self._loop()
        except Exception:
            log.exception("frame loop failed")
            rc = 1
        finally:
            self._finish()
        return rc

    def _start(self) -> None:
        config, topics, dev = self.config, self.topics, self.device_id
        student, mid = self._given_student
        if student is None:
            student, mid = load_student(config)
        self.model_id = mid or ""
        self.slot = ModelSlot.from_runner(student)
        key = None
        if config.update_public_key is not None:
            from cloudtutor.signing import load_public_key

            key = load_public_key(config.update_public_key)
        else:
            log.warning("no update_public_key: unsigned model updates are accepted")
        self.updater = ModelUpdater(self.slot, device_id=dev, model_id=self.model_id, public_key=key, metrics=self.metrics)
        self.spool = Spool(config.spool_dir, config.spool_max_bytes, ack_timeout_s=config.ack_timeout_s)
        if self.spool.recovered:
            log.info("spool holds %d chunk(s) from an earlier run: resending them", self.spool.recovered)
        if config.sink_path is not None:
            self.sink = LabelSinkWriter(config.sink_path)
        self.bus = Bus(
            config.mqtt, client_id=dev, name=f"edge-{dev}", metrics=self.metrics,
            status_topic=topics.status(dev), status_fields={"agent_version": AGENT_VERSION, "model_version": 0},
        )
        self.bus.subscribe(topics.control_state(dev), self._on_control, qos=1)
        self.bus.subscribe(topics.model_delta(dev), self._on_delta, qos=1)
        self.bus.subscribe(topics.model_snapshot(dev), self._on_snapshot, qos=1)
        self.bus.subscribe(topics.chunks_ack(dev), self._on_ack, qos=1)
        self.split = SplitEdge(
            publish=lambda data: self.bus.publish(topics.activations(dev), data, qos=1), device_id=dev,
            boot_id=self.boot_id, model_id=self.model_id, codec=config.split_codec, intra_every=config.split_intra_every,
            max_pending=config.split_max_pending)
        self.bus.subscribe(topics.results(dev), lambda message: self.split.on_result(message.payload), qos=0)
        self.uplink = Uplink(self.bus, topics.chunks(dev), self.spool, device_id=dev, boot_id=self.boot_id,
                             metrics=self.metrics, roi=_roi_planner(config), knobs=lambda: self._knobs)
        self.bus.start()
        if self.bus.wait_ready(config.mqtt.connect_timeout_s):
            self._control_seen.wait(CONTROL_WAIT_S)
        else:
            # Offline first: label frames and spool chunks; the bus keeps reconnecting.
            log.warning("no broker at %s:%s yet: running offline, chunks are spooled", config.mqtt.host, config.mqtt.port)
        with self._report_lock:
            self.bus.set_retained(topics.model_reported(dev), self.updater.current().to_bytes())
        self.metrics.set(_M.MODEL_VERSION, 0)
        self.uplink.start()
        self.shadowtutor = ShadowTutorEdge(
            submit=self.uplink.submit, trained_through=lambda: self.updater.trained_through_ms,
            last_metric=lambda: self.updater.last_metric, swap=self._swap, model_version=lambda: self.slot.active_version,
            stop_event=self.stop_event, wait_timeout_s=config.shadowtutor_wait_timeout_s)
        log.info("edge agent started", extra={"fields": {
            "device_id": dev, "boot_id": self.boot_id, "model_id": self.model_id, "sources": config.sources,
            "speed": config.speed, "duration_s": config.duration_s, "knobs": self._knobs.model_dump()}})
        self.ready.set()

    # ---- the frame loop -----------------------------------------------------------

    def _loop(self) -> None:
        config = self.config
        assert self.slot is not None and self.uplink is not None
        knobs = self._knobs
        infer_gate, sample_gate = RateGate(knobs.infer_fps), RateGate(knobs.sample_fps)
        buffer = SampleBuffer(knobs.t_update_s)
        self._buffer = buffer
        self.selector.set_thresholds(knobs.key_threshold, knobs.useful_threshold)
        pacer = Pacer(config.speed)
        self._period = _Period(time.monotonic())
        next_report = time.monotonic() + config.telemetry_every_s
        frames = chained(config.sources, duration_s=config.duration_s, loop=config.loop)
        try:
            for frame in frames:
                if not self._wait_for_cloud():
                    break
                if not pacer.wait(frame.pts_ms, self.stop_event):
                    break
                if self._knobs is not knobs:  # set by the handler thread; applied between frames
                    knobs = self._knobs
                    infer_gate.set_rate(knobs.infer_fps)
                    sample_gate.set_rate(knobs.sample_fps)
                    buffer.set_period(knobs.t_update_s)
                    self.selector.set_thresholds(knobs.key_threshold, knobs.useful_threshold)
                self._swap()
                self._step(frame, knobs, infer_gate(frame.pts_ms), sample_gate(frame.pts_ms), buffer)
                if time.monotonic() >= next_report:
                    self._report()
                    next_report = time.monotonic() + config.telemetry_every_s
        finally:
            self._loop_ended = time.monotonic()
            frames.close()  # releases the container

    def _swap(self) -> bool:
        """Swap in a verified update between frames; True if one was."""
        if not self.slot.swap_if_ready():
            return False
        self.metrics.inc(_M.SWAPS)
        self.metrics.set(_M.MODEL_VERSION, self.slot.active_version)
        log.info("now running model version %d", self.slot.active_version)
        return True

    def _wait_for_cloud(self) -> bool:
        """Lockstep (demo, benchmarks): hold the next frame while the chunks
        sent so far reach more than ``lockstep_lag_s`` past what the cloud
        has trained on. False if stop() was called meanwhile.

        Measured from what was sent, not from the next frame: the cloud can
        only catch up on samples it has, and a sample leaves in a chunk only
        when a later frame closes its period. With a lag of at least
        T_update plus one sampling interval the trainer can always catch up
        (its next phase is due T_update after the newest sample it trained
        on); a hibernating trainer (brief §10.10) is what the timeout is for.
        """
        lag_s = self.config.lockstep_lag_s
        if lag_s is None:
            return True

        def behind() -> bool:
            return self._sent_through_ms - (self.updater.trained_through_ms or 0) > lag_s * 1000.0

        if not behind():
            return True
        started = time.monotonic()
        while behind():
            if self.stop_event.wait(0.1):
                return False
            if time.monotonic() - started > self.config.lockstep_timeout_s:
                self.metrics.inc(_M.LOCKSTEP_TIMEOUTS)
                log.warning("lockstep: no update trained past %.1f s of video in %.0f s; going on",
                            self._sent_through_ms / 1000.0 - lag_s, self.config.lockstep_timeout_s)
                break
        self.metrics.inc(_M.LOCKSTEP_SECONDS, time.monotonic() - started)
        return True

    def _step(self, frame: Frame, knobs: Knobs, infer: bool, sample: bool, buffer: SampleBuffer) -> None:
        pts = frame.pts_ms
        self.clock.advance_to(pts)
        self._last_pts = pts
        self._rates.observe(frame.source, pts)
        self.metrics.inc(_M.FRAMES)
        # ShadowTutor sends its own key frames (Algorithm 4); no AMS sampling then.
        st = self.shadowtutor if knobs.mode == "shadowtutor" else None
        # Split mode offloads inference; it sends no chunks either.
        split = self.split if knobs.mode == "split" else None
        sample = sample and st is None and split is None
        if infer and st is not None:
            st.configure(knobs)
            st.before_inference(frame, knobs, round(self._rates.fps(frame.source), 3))
        if infer:
            student, version = self.slot.active, self.slot.active_version
            started = time.perf_counter()
            if split is not None:
                self._write_results(split.wait_room(self.stop_event))
            remote = split is not None and split.send(frame, student, version, knobs.split_layer)
            labels = None if remote else student(frame.rgb)
            self.metrics.inc(_M.INFER_SECONDS, time.perf_counter() - started)
            self.metrics.inc(_M.INFERENCES)
            if self.sink is not None and labels is not None:
                self.sink.write(pts, version, labels)
            if st is not None:
                st.after_inference()
        taken = None
        if sample:
            self.metrics.inc(_M.SAMPLES)
            cls = self._select(frame)
            if cls.sent:
                height, width = frame.rgb.shape[:2]
                size = sent_size((width, height), knobs.scale)
                fmt = ChunkFormat(frame.source, (width, height), size, knobs.crf)
                taken = Sample(pts, resize_rgb(frame.rgb, size), fmt, self.slot.active_version,
                               key=cls is FrameClass.KEY)
        for batch in buffer.push(pts, taken):
            self.uplink.submit(batch, round(self._rates.fps(batch.fmt.source), 3))
            self._sent_through_ms = pts

    def _write_results(self, results) -> None:
        """Split mode: the cloud's labels into the sink, as if inferred here."""
        if self.sink is not None:
            for result, version in results:
                self.sink.write(result.pts_ms, version, result.labels)

    def _select(self, frame: Frame) -> FrameClass:
        """The 2-level selector's class of a proposed frame. A new source
        (the next chained video) starts a new reference: its first frame is KEY."""
        if frame.source != self._selector_source:
            self.selector.reset()
            self._selector_source = frame.source
        cls = self.selector.select(frame.rgb).cls
        self.metrics.inc(_M.SELECTED, cls=cls.value)
        return cls

    # ---- the end --------------------------------------------------------------------

    def _finish(self) -> None:
        buffer = self._buffer
        if buffer is not None and self.uplink is not None:
            last = buffer.flush()
            if last is not None:
                self.uplink.submit(last, round(self._rates.fps(last.fmt.source), 3))
        if self.split is not None and self.split.sent:  # the last frames' labels
            deadline = time.monotonic() + self.config.drain_timeout_s
            while self.split.pending and time.monotonic() < deadline and not self.stop_event.wait(0.05):
                self._write_results(self.split.drain())
            self._write_results(self.split.drain())
        if self.uplink is not None:
            if self.uplink.drain(self.config.drain_timeout_s):
                log.info("every chunk acknowledged")
            else:
                log.warning("%d chunk(s) still unacknowledged after %.0f s; they stay in the spool for the next run",
                            len(self.spool), self.config.drain_timeout_s)
        if self.slot is not None and self.slot.swap_if_ready():
            self.metrics.inc(_M.SWAPS)
        if self.bus is not None:
            self._report(final=True)
        if self.config.sink_path is not None:  # final counters beside the labels (the demo reads ShadowTutor's here)
            summary_path(self.config.sink_path).write_text(json.dumps(self.summary(), indent=1) + "\n", encoding="utf-8")
        self._close()

    def _close(self) -> None:
        if self.uplink is not None:
            self.uplink.stop()
        if self.bus is not None:
            self.bus.close()
        if self.sink is not None:
            self.sink.close()
        self.ready.set()

    # ---- bus handlers (the bus's worker thread) --------------------------------------

    def _on_control(self, message: Message) -> None:
        if not message.payload:
            return  # retained state cleared
        try:
            state = decode_json(ControlState, message.payload)
        except MessageError as exc:
            self._reject("control_state", exc.reason, str(exc))
            return
        if state.knobs != self._knobs:
            log.info("knobs changed (control/state version %d)", state.version,
                     extra={"fields": {"changed": _changed(self._knobs, state.knobs), "reason": state.reason}})
        if state.knobs.mode not in ("ams", "shadowtutor", "split") and not self._warned_mode:
            self._warned_mode = True
            log.warning("mode %r is not implemented by this agent yet: it samples and streams as in ams", state.knobs.mode)
        self._knobs = state.knobs
        self._control_seen.set()

    def _on_delta(self, message: Message) -> None:
        with self._report_lock:
            self._publish_outcome(self.updater.handle(message.payload, Kind.DELTA))

    def _on_snapshot(self, message: Message) -> None:
        with self._report_lock:
            self._publish_outcome(self.updater.handle(message.payload, Kind.SNAPSHOT))

    def _publish_outcome(self, outcome: UpdateOutcome) -> None:
        """model/reported (retained), the status' model_version, model/resync."""
        dev = self.device_id
        if outcome.reported is not None:
            self.bus.set_retained(self.topics.model_reported(dev), outcome.reported.to_bytes())
            if outcome.applied:
                self.bus.set_status_fields(model_version=outcome.reported.version)
        if outcome.resync is not None:
            self.bus.publish(self.topics.model_resync(dev), outcome.resync.to_bytes(), qos=1)

    def _on_ack(self, message: Message) -> None:
        try:
            ack = decode_json(ChunkAck, message.payload)
        except MessageError as exc:
            self._reject("chunk_ack", exc.reason, str(exc))
            return
        if not self.uplink.ack(ack.boot_id, ack.seq):
            log.debug("ack for chunk %s/%d that is not spooled (repeated ack)", ack.boot_id, ack.seq)

    def _reject(self, what: str, reason: str, detail: str) -> None:
        self.metrics.inc(_M.REJECTED, what=what, reason=reason)
        log.warning("rejected %s: %s", what, detail, extra={"fields": {"what": what, "reason": reason}})

    # ---- reporting ------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Counters so far: for the progress line, the final log line and the demo."""
        m = self.metrics
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "boot_id": self.boot_id,
            "video_s": round(self._last_pts / 1000.0, 3),
            "frames": int(m.get(_M.FRAMES)),
            "inferences": int(m.get(_M.INFERENCES)),
            "samples": int(m.get(_M.SAMPLES)),
            "key_frames": int(m.get(_M.SELECTED, cls="key")),
            "skipped_frames": int(m.get(_M.SELECTED, cls="skip")),
            "model_version": self.slot.active_version if self.slot is not None else 0,
            "model_swaps": int(m.get(_M.SWAPS)),
            "updates_applied": self.updater.applied if self.updater is not None else 0,
            "updates_rejected": self.updater.rejected if self.updater is not None else 0,
        }
        if self.uplink is not None:
            out.update({k: int(v) for k, v in self.uplink.stats().items()})
        if self.shadowtutor is not None and self.shadowtutor.scheduler.frames:
            out.update(self.shadowtutor.stats())
        if self.split is not None and self.split.sent:
            out.update(self.split.stats())
        return out

    def _report(self, final: bool = False) -> None:
        """One telemetry message (QoS 0) and one progress log line."""
        m, period = self.metrics, self._period
        now = time.monotonic() if self._loop_ended is None else self._loop_ended
        inferences, infer_s = m.get(_M.INFERENCES), m.get(_M.INFER_SECONDS)
        stats = self.summary()
        sent = float(stats.get("uplink_bytes", 0))
        n = inferences - period.inferences
        video_s = (self._last_pts - period.video_ms) / 1000.0
        telemetry = Telemetry(
            fps=round(n / max(now - period.wall, 1e-6), 3),
            inference_ms=round(1000.0 * (infer_s - period.infer_seconds) / n, 3) if n else 0.0,
            uplink_bytes=int(sent),
            # Kbps over video time: the one clock of brief §10.1.
            bandwidth_kbps=round((sent - period.uplink_bytes) * 8 / 1000.0 / video_s, 3) if video_s > 0 else None,
            queue_depth=len(self.spool) if self.spool is not None else 0,
            model_version=self.slot.active_version if self.slot is not None else 0,
            spool_bytes=self.spool.bytes if self.spool is not None else 0,
            video_ms=self._last_pts,
        )
        self._period = _Period(now, self._last_pts, inferences, infer_s, sent)
        try:
            self.bus.publish(self.topics.telemetry(self.device_id), telemetry.to_bytes(), qos=0)
        except BusError as exc:
            log.debug("telemetry not sent: %s", exc)
        fields = {**stats, "fps": telemetry.fps, "inference_ms": telemetry.inference_ms,
                  "uplink_kbps": telemetry.bandwidth_kbps}
        log.info("finished" if final else "progress", extra={"fields": fields})


def summary_path(sink_path: Path) -> Path:
    """Where the agent leaves its final :meth:`EdgeAgent.summary` (JSON) beside its label sink."""
    return sink_path.with_name(sink_path.name + ".summary.json")


def _changed(old: Knobs, new: Knobs) -> dict[str, Any]:
    before, after = old.model_dump(), new.model_dump()
    return {k: after[k] for k in after if after[k] != before[k]}


def run_edge(config: EdgeConfig) -> int:
    """``cloudtutor edge``: run the agent until the video ends or SIGTERM/SIGINT."""
    agent = EdgeAgent(config)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: agent.stop())
    return agent.run()


__all__ = ["AGENT_VERSION", "EdgeAgent", "load_student", "run_edge", "summary_path"]


def _roi_planner(config: EdgeConfig):
    """AccMPEG's ROI planner when ``roi_accmodel`` is set (ROI still needs the knob ``roi_qoffset`` < 0)."""
    if config.roi_accmodel is None:
        return None
    from cloudtutor.accmpeg.accmodel import load_accmodel
    from cloudtutor.accmpeg.roi import RoiPlanner

    ckpt = load_accmodel(config.roi_accmodel)
    log.info("ROI encoding: AccModel %s, run on frames at most %s px wide", config.roi_accmodel, ckpt.width)
    return RoiPlanner(ckpt.model, width=ckpt.width)  # the scale it learned (AccModel.predict)
