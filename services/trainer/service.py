"""trainer: AMS Algorithms 1 and 2 per device (brief §5, `papers/ams.md` §3).

A thin loop around :mod:`cloudtutor.distill`. Per device, whenever the
newest horizon sample is T_update seconds of VIDEO time past the last phase
(brief §10.1: the samples' timestamps decide, never the wall clock):

a. the deployed student (the edge view, the latest version) labels the new
   samples since the last phase; its per-frame mIoU against the teacher,
   ``nanmean``-ed, goes to the controller as ``Signal(kind="accuracy")``
   (Algorithm 1 lines 5-9: inference on the new frames comes first);
b. K masked-Adam iterations on mini-batches drawn uniformly from the last
   T_horizon of samples (Algorithm 1 lines 10-15, Algorithm 2), continuing
   from the latest weights and optimizer state;
c. the weights are rounded to float16, the version bumped, the new edge
   view and the phase's masks stored as blobs, and an ``UpdateRef`` added to
   UPDATES (Algorithm 1 lines 16-17); its ``metric`` is the mIoU of (a);
d. version, model id, last phase time, weights and optimizer state are
   persisted in Redis in the same transaction as the UpdateRef, so a
   restarted trainer resumes exactly.

Several devices share one model instance: each phase loads the device's
state from Redis and stores it back (nothing device-specific stays in
memory). Devices are sharded across trainer replicas by leases
(:mod:`cloudtutor.fleet.leases`, ``trainer.fleet``): a replica serves only
the devices it leases, a dead replica's devices move to a live one when its
leases expire, and the new holder continues from the state in Redis (the
version goes on from where it was; the state and UpdateRef are written only
while the lease is held). Within a replica, due devices take turns by
smooth weighted round-robin with weight = recent φ̄, read from the horizon
samples' ``phi`` (:mod:`cloudtutor.algorithms.fleet_schedule`, AMS §4,
brief §10.10): faster-changing scenes get more phases when the replica
cannot keep up with all of its devices.

Redis (all under the frame buffer's key prefix ``P``):

* reads ``P:devices`` (set of device ids, kept by the labeler) and
  ``P:horizon:{device}`` (samples: ``sample`` and ``label`` array blobs);
* writes ``P:trainer:{device}`` (hash: ``version``, ``model_id``,
  ``last_phase_ms`` (empty before the first phase), ``weights`` (float16
  parameter vector), ``optimizer`` (MaskedAdam.state_to_bytes), ``sha256``),
  blobs ``model_blob(device, v)`` (float16 parameter vector, the edge view)
  and ``masks_blob(device, v)`` (distill.pack_masks: packbits per floating
  state-dict tensor, state-dict order), and entries of UPDATES and SIGNALS.

MQTT: reads every device's retained ``control/state`` for the knobs
``t_update_s``, ``t_horizon_s`` and ``coord_fraction`` (Knobs defaults until
the controller has spoken).
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cloudtutor import distill
from cloudtutor.algorithms import fleet_schedule
from cloudtutor.algorithms.masked_adam import MaskedAdam, state_from_bytes, state_to_bytes
from cloudtutor.bus import Message
from cloudtutor.fleet.leases import LeaseKeeper, LeaseStore
from cloudtutor.framebuffer import HorizonSample
from cloudtutor.knobs import Knobs
from cloudtutor.messages import ControlState
from cloudtutor.models.registry import build_student
from cloudtutor.modelstate import model_id
from cloudtutor.service import Service
from cloudtutor.streams import SIGNALS, UPDATES, Signal, UpdateRef, masks_blob, model_blob
from cloudtutor.topics import Leaf, TopicError

PHASES = "cloudtutor_trainer_phases_total"
PHASE_SECONDS = "cloudtutor_trainer_phase_seconds"
ACCURACY = "cloudtutor_trainer_edge_miou"
BOOTSTRAPS = "cloudtutor_trainer_bootstraps_total"
SKIPPED = "cloudtutor_trainer_phases_skipped_total"
FENCED = "cloudtutor_trainer_phases_fenced_total"  # a phase whose lease moved before it was stored
WEIGHT = "cloudtutor_trainer_device_weight"  # gauge {device_id}: the round-robin weight
PHASES_ABANDONED = "cloudtutor_trainer_phases_abandoned_total"  # a phase cut short by a stop, never stored


class PhaseAbandoned(Exception):
    """The service is stopping mid-phase; nothing of the phase was stored."""


def state_key(prefix: str, device_id: str) -> str:
    """The trainer's persisted state of one device (a hash)."""
    return f"{prefix}:trainer:{device_id}"


def device_seed(seed: int, device_id: str) -> int:
    """A non-negative 32-bit seed per (configured seed, device): devices get
    different first-phase selections and mini-batches, reproducibly."""
    return zlib.crc32(f"{seed}:{device_id}".encode())


@dataclass
class DeviceState:
    """What the trainer keeps per device (Algorithm 2's w, m, v, u and i live
    in ``weights`` and ``optimizer``)."""

    version: int
    model_id: str
    last_phase_ms: int | None
    weights: bytes
    optimizer: bytes

    def to_fields(self) -> dict[str, bytes | str | int]:
        return {
            "version": self.version,
            "model_id": self.model_id,
            "last_phase_ms": "" if self.last_phase_ms is None else self.last_phase_ms,
            "weights": self.weights,
            "optimizer": self.optimizer,
            "sha256": distill.vector_sha256(self.weights),
        }

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> DeviceState:
        last = raw[b"last_phase_ms"]
        return cls(
            version=int(raw[b"version"]),
            model_id=raw[b"model_id"].decode(),
            last_phase_ms=int(last) if last else None,
            weights=raw[b"weights"],
            optimizer=raw[b"optimizer"],
        )


def phase_due(newest_ms: int, anchor_ms: int, t_update_s: float) -> bool:
    """Algorithm 1 line 18 in video time: T_update has passed since the anchor."""
    return newest_ms - anchor_ms >= round(t_update_s * 1000.0)


class TrainerService(Service):
    name = "trainer"

    # -- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        models = self.config.models
        self.settings = self.config.trainer
        torch.set_num_threads(models.threads)
        torch.set_flush_denormal(True)  # the ESPNet checkpoint's denormals cost 13x (data README)
        student = build_student(
            models.model_name("student"), models.weights_path("student"), labels=models.profile,
            width=models.student_width, threads=models.threads, data_root_path=models.data_root,
        )
        self.mapping = student.mapping
        self.normalize = student.normalize
        self.model = student.model.to(models.device)
        distill.bootstrap_view_(self.model)  # version 0: the float16-rounded pretrained student (brief §10.5)
        self.model_id = model_id(self.model)
        self.pretrained = distill.state_vector(self.model)
        self.lut = distill.target_lut(self.mapping)
        self._knobs: dict[str, Knobs] = {}
        self._knobs_lock = threading.Lock()
        self._credit: dict[str, float] = {}  # smooth weighted round-robin credits (fleet_schedule)
        self._last_miou: dict[str, float] = {}
        self._drop: dict[str, float] = {}
        fleet = self.settings.fleet
        store = LeaseStore(self.fb.redis, self.fb.prefix, self.group, self.consumer, round(fleet.lease_ttl_s * 1000))
        self.leases = LeaseKeeper(store, self.all_devices, metrics=self.metrics).start()
        # Retained state every replica needs: a plain (not shared) subscription,
        # since shared subscriptions do not deliver retained messages (MQTT v5).
        self.bus.subscribe(self.topics.all_devices(Leaf.CONTROL_STATE), self._on_control_state, qos=1, wait=True)

    def _on_control_state(self, message: Message) -> None:
        if not message.payload:
            return  # a cleared retained message
        try:
            device_id = self.topics.parse_device(message.topic).device_id
            state = ControlState.model_validate_json(message.payload)
        except (TopicError, ValueError) as exc:
            self.reject("control_state", "invalid", str(exc), topic=message.topic)
            return
        with self._knobs_lock:
            self._knobs[device_id] = state.knobs

    def knobs_of(self, device_id: str) -> Knobs:
        """The device's current knobs (from control/state; defaults before the controller spoke)."""
        with self._knobs_lock:
            return self._knobs.get(device_id) or Knobs()

    # -- the loop ---------------------------------------------------------------------

    def teardown(self) -> None:
        self.leases.stop(release=True)  # a graceful stop hands the devices over at once

    def step(self) -> bool:
        """One bootstrap or one phase, for the due device first in weighted round-robin order."""
        self.leases.refresh()
        weights = self.weights(self.devices())
        skipped: list[str] = []
        for device_id in fleet_schedule.wrr_order(self._credit, weights):
            self.leases.busy = device_id  # never released by the lease keeper mid-phase
            try:
                served = self.serve_device(device_id)
            finally:
                self.leases.busy = None
            if served:
                self._credit = fleet_schedule.wrr_charge(self._credit, weights, device_id, skipped)
                return True
            skipped.append(device_id)
        self.stop_event.wait(self.settings.poll_s)
        return False

    def all_devices(self) -> list[str]:
        """Every device the labeler has seen (what the replicas share)."""
        return sorted(d.decode() for d in self.fb.redis.smembers(self.fb.devices_key()))

    def devices(self) -> list[str]:
        """The devices this replica serves: those it leases."""
        return self.leases.held()

    def weights(self, devices: Sequence[str]) -> dict[str, float]:
        """Round-robin weight per device: recent φ̄ from the horizon (brief §10.10)."""
        fleet = self.settings.fleet
        out = {}
        for device_id in devices:
            out[device_id] = fleet_schedule.device_weight(
                self.phi_mean(device_id), self._drop.get(device_id), floor=fleet.weight_floor, drop_gain=fleet.drop_gain)
            self.metrics.set(WEIGHT, out[device_id], device_id=device_id)
        return out

    def phi_mean(self, device_id: str) -> float | None:
        """Mean φ of the newest ``phi_window`` horizon samples that carry one; None if none does."""
        raw = self.fb.redis.xrevrange(self.fb.horizon_key(device_id), count=self.settings.fleet.phi_window)
        phis = [float(fields[b"phi"]) for _, fields in raw if b"phi" in fields]
        return sum(phis) / len(phis) if phis else None

    def serve_device(self, device_id: str) -> bool:
        """Bootstrap the device, or run its phase if one is due; True if it did either."""
        key = state_key(self.fb.prefix, device_id)
        version, last = self.fb.redis.hmget(key, ["version", "last_phase_ms"])
        if version is None:
            self.bootstrap(device_id)
            return True
        newest = self._sample_ms(device_id, newest=True)
        if newest is None:
            return False
        if last and newest < int(last):
            # The horizon went back in video time (cleared and restarted): start over.
            self.log.warning("%s: newest sample %d ms precedes the last phase %s ms; phase clock reset",
                             device_id, newest, last.decode())
            self.fb.redis.hset(key, "last_phase_ms", "")
            last = None
        if self.knobs_of(device_id).mode == "shadowtutor":  # Algorithm 1 per key frame, not AMS phases
            from cloudtutor_services.trainer.shadowtutor import serve_key_frame

            return serve_key_frame(self, device_id, int(last) if last else None, newest)
        anchor = int(last) if last else self._sample_ms(device_id, newest=False)
        if anchor is None or not phase_due(newest, anchor, self.knobs_of(device_id).t_update_s):
            return False
        self.run_phase(device_id, newest)
        return True

    def _sample_ms(self, device_id: str, *, newest: bool) -> int | None:
        """Video time of the newest (or oldest) horizon sample; None when empty."""
        key = self.fb.horizon_key(device_id)
        raw = self.fb.redis.xrevrange(key, count=1) if newest else self.fb.redis.xrange(key, count=1)
        if not raw:
            return None
        entry_id = raw[0][0].decode() if isinstance(raw[0][0], bytes) else raw[0][0]
        return int(entry_id.partition("-")[0])

    # -- Algorithm 1 lines 1-2 --------------------------------------------------------

    def bootstrap(self, device_id: str) -> None:
        """Version 0 of a new device: the pretrained student, float16-rounded,
        with a fresh optimizer (Algorithm 1 lines 1-2)."""
        optimizer = self._optimizer(device_id, self.knobs_of(device_id))
        state = DeviceState(0, self.model_id, None, self.pretrained, state_to_bytes(optimizer.state_dict()))
        self.fb.put_blob(model_blob(device_id, 0), self.pretrained, ttl_s=self.settings.model_ttl_s)
        self.fb.redis.hset(state_key(self.fb.prefix, device_id), mapping=state.to_fields())
        self.metrics.inc(BOOTSTRAPS)
        self.log.info("bootstrapped %s at version 0", device_id,
                      extra={"fields": {"device_id": device_id, "model_id": self.model_id}})

    def _optimizer(self, device_id: str, knobs: Knobs) -> MaskedAdam:
        s = self.settings
        return MaskedAdam(self.model, gamma=knobs.coord_fraction, strategy=s.strategy,
                          seed=device_seed(s.seed, device_id), lr=s.lr)

    # -- one phase --------------------------------------------------------------------

    def load_state(self, device_id: str) -> DeviceState:
        raw = self.fb.redis.hgetall(state_key(self.fb.prefix, device_id))
        return DeviceState.from_fields(raw)

    def run_phase(self, device_id: str, newest_ms: int) -> None:
        """Algorithm 1 lines 5-17 for one device, at video time ``newest_ms``."""
        knobs = self.knobs_of(device_id)
        state = self.load_state(device_id)
        distill.load_state_vector(self.model, state.weights)
        optimizer = self._optimizer(device_id, knobs)
        optimizer.load_state_dict(state_from_bytes(state.optimizer))
        # Knobs and settings may have changed since the state was saved.
        optimizer.gamma, optimizer.lr, optimizer.strategy = knobs.coord_fraction, self.settings.lr, self.settings.strategy

        miou = self.measure_edge(device_id, state.last_phase_ms, newest_ms)
        horizon = self._available(self.fb.horizon_last(device_id, knobs.t_horizon_s, newest_ms))
        if not horizon:
            self._skip(device_id, newest_ms, "no samples left in the horizon")
            return
        try:
            report = self._train(device_id, optimizer, horizon)
        except PhaseAbandoned:
            # Nothing was written: the device's state in Redis is the last
            # published version, and the next holder trains this phase again.
            self.metrics.inc(PHASES_ABANDONED)
            self.log.info("%s: phase at %d ms abandoned, the trainer is stopping", device_id, newest_ms,
                          extra={"fields": {"device_id": device_id, "video_ms": newest_ms}})
            return
        self._publish(device_id, state, optimizer, report, newest_ms, miou)

    def measure_edge(self, device_id: str, last_phase_ms: int | None, newest_ms: int) -> float:
        """(a) The edge view's mIoU vs the teacher on the samples since the last
        phase; sent as the controller's accuracy signal when there is one."""
        start = 0 if last_phase_ms is None else last_phase_ms + 1
        pairs = list(self._load_pairs(self._available(self.fb.horizon_range(device_id, start, newest_ms))).values())
        frames, labels = [f for f, _ in pairs], [lab for _, lab in pairs]
        s = self.settings
        miou = distill.evaluate(self.model, frames, labels, normalize=self.normalize, mapping=self.mapping,
                                batch_size=s.batch_size, width=s.train_width)
        if math.isfinite(miou):
            self.fb.add(SIGNALS, Signal(device_id=device_id, kind="accuracy", value=miou, video_ms=newest_ms).to_fields())
            self.metrics.set(ACCURACY, miou, device_id=device_id)
        return miou

    def _train(self, device_id: str, optimizer: MaskedAdam, horizon: Sequence[HorizonSample]) -> distill.PhaseReport:
        """(b) K iterations on mini-batches drawn uniformly from the horizon
        (Algorithm 2); only the drawn samples are read from Redis."""
        s = self.settings
        rng = distill.phase_rng(device_seed(s.seed, device_id), 1, optimizer.phase_index + 1)
        picks = distill.sample_minibatches(len(horizon), s.iterations, s.batch_size, rng)
        loaded = self._load_pairs([horizon[i] for i in sorted({int(i) for idx in picks for i in idx})])
        device = next(self.model.parameters()).device

        def batches() -> Iterator[distill.Batch]:
            for idx in picks:
                if self.stop_event.is_set():  # a phase can outlast a pod's grace period on a busy CPU
                    raise PhaseAbandoned(device_id)
                pairs = [loaded[horizon[int(i)].id] for i in idx if horizon[int(i)].id in loaded]
                if pairs:  # empty only if blobs expired between the check and the read
                    yield distill.to_batch([f for f, _ in pairs], [lab for _, lab in pairs], normalize=self.normalize,
                                           lut=self.lut, width=s.train_width, device=device)

        return distill.train_phase(self.model, optimizer, batches(), round_fp16=True)

    def _publish(
        self, device_id: str, state: DeviceState, optimizer: MaskedAdam, report: distill.PhaseReport,
        newest_ms: int, miou: float,
    ) -> None:
        """(c) and (d): store the new edge view and masks, then persist the
        device's state and announce the update in one transaction."""
        version = state.version + 1
        weights = distill.state_vector(self.model)
        masks = distill.pack_masks(report.masks, self.model.state_dict())
        ttl = self.settings.model_ttl_s
        self.fb.put_blobs({model_blob(device_id, version): weights, masks_blob(device_id, version): masks}, ttl_s=ttl)
        new_state = DeviceState(version, state.model_id, newest_ms, weights, state_to_bytes(optimizer.state_dict()))
        ref = UpdateRef(
            device_id=device_id, model_id=state.model_id, base_version=state.version, version=version,
            state=model_blob(device_id, version), masks=masks_blob(device_id, version),
            params_sha256=distill.vector_sha256(weights), metric=miou if math.isfinite(miou) else None,
            video_ms=newest_ms,
        )

        def commit(pipe) -> None:
            pipe.hset(state_key(self.fb.prefix, device_id), mapping=new_state.to_fields())
            pipe.xadd(self.fb.stream_key(UPDATES), ref.to_fields(), maxlen=self.fb.settings.stream_maxlen, approximate=True)

        if not self.leases.store.fenced(device_id, commit):
            # The lease moved during the phase: the new holder trains from the stored state.
            self.metrics.inc(FENCED, device_id=device_id)
            self.log.warning("%s: lease lost during the phase; version %d not stored", device_id, version)
            return
        if math.isfinite(miou):
            if device_id in self._last_miou:
                self._drop[device_id] = self._last_miou[device_id] - miou
            self._last_miou[device_id] = miou
        self.metrics.inc(PHASES, device_id=device_id)
        self.metrics.set(PHASE_SECONDS, report.seconds, device_id=device_id)
        self.log.info(
            "%s: version %d (%d coordinates, %.2f s)", device_id, version, report.selected, report.seconds,
            extra={"fields": {
                "device_id": device_id, "version": version, "video_ms": newest_ms, "edge_miou": miou,
                "loss_first": report.losses[0] if report.losses else None,
                "loss_last": report.losses[-1] if report.losses else None,
                "selected": report.selected, "phase_s": round(report.seconds, 3),
            }},
        )

    def _skip(self, device_id: str, newest_ms: int, why: str) -> None:
        """Move the phase clock on without an update (nothing to train on)."""
        self.fb.redis.hset(state_key(self.fb.prefix, device_id), "last_phase_ms", newest_ms)
        self.metrics.inc(SKIPPED, device_id=device_id)
        self.log.warning("%s: phase at %d ms skipped: %s", device_id, newest_ms, why)

    # -- horizon samples ----------------------------------------------------------------

    def _available(self, samples: Sequence[HorizonSample]) -> list[HorizonSample]:
        """Samples whose frame and label blobs still exist (TTL is a safety net)."""
        usable = [s for s in samples if "sample" in s.fields and "label" in s.fields]
        if not usable:
            return []
        pipe = self.fb.redis.pipeline(transaction=False)
        for s in usable:
            pipe.exists(self.fb.array_key(s.text("sample")), self.fb.array_key(s.text("label")))
        return [s for s, n in zip(usable, pipe.execute()) if int(n) == 2]

    def _load_pairs(self, samples: Sequence[HorizonSample]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(frame, labels) by sample id; samples whose blobs are gone are left out."""
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for s in samples:
            frame = self.fb.get_array(s.text("sample"), dtype=np.uint8)
            label = self.fb.get_array(s.text("label"), dtype=np.uint8)
            if frame is not None and label is not None:
                out[s.id] = (frame, label)
        return out


SERVICE = TrainerService
