"""ingest's split-mode path (brief §10.8, `papers/split-brain.md` §3): the
cloud half of split-brain inference.

Why in ingest: it is the service that turns what an edge uploads into
something the cloud can use (chunks into frames; here activations into
labels), it already holds the shared subscription on the devices' uplink,
and it is the only candidate that may load torch: the labeler is kept
torch-free on purpose (the TFLite teacher slows torch 12x in one process,
data README), and superres/trainer/publisher/controller consume Redis, not
the edge. The student is loaded on the first activations message, so an
ingest that never sees split mode stays as light as before.

Per message: decode the envelope (``activations`` kind and its size limit),
check model id and split point, derive the live tensors' shapes from the
frame size, decode the body (the codec checks every length and shape),
resume the student from the split, and publish the labels on the device's
``results`` topic (QoS 0). Temporal delta needs the previous frame's
reconstruction: it is kept in memory per (device, boot), so one device's
activations must reach one replica in order (the device affinity of brief
§10.4, as for the labeler); a replica without the reference rejects the
frame (``missing_reference``) and the edge's next intra frame resyncs.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from cloudtutor.bus import Message
from cloudtutor.envelope import EnvelopeError, decode
from cloudtutor.headers import ActivationsHeader, Kind
from cloudtutor.split.codec import CodecConfig, CodecError
from cloudtutor.split.results import SplitResult, encode_result

ACTIVATIONS = "cloudtutor_ingest_activations_total"  # {result}
ACTIVATION_BYTES = "cloudtutor_ingest_activation_bytes_total"
RESUME_SECONDS = "cloudtutor_ingest_split_resume_seconds_total"


class SplitRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class SplitResumer:
    """Decodes activations and finishes the student's forward pass."""

    def __init__(self, service: Any) -> None:
        self.svc = service
        self._lock = threading.Lock()
        self._student: Any = None
        self.model_id = ""
        self._shapes: dict[tuple[int, tuple[int, int]], dict[str, tuple[int, int, int]]] = {}
        self._refs: dict[tuple[str, str], tuple[int, dict[str, np.ndarray]]] = {}

    def _load(self) -> Any:
        if self._student is None:
            import torch

            from cloudtutor.distill import bootstrap_view_
            from cloudtutor.models.registry import build_student
            from cloudtutor.modelstate import model_id

            models = self.svc.config.models
            student = build_student(models.model_name("student"), models.weights_path("student"),
                                    labels=models.profile, width=models.student_width, threads=models.threads,
                                    data_root_path=models.data_root)
            torch.set_flush_denormal(True)
            bootstrap_view_(student.model)  # the edge's version 0, bit for bit
            self._student, self.model_id = student, model_id(student.model)
        return self._student

    def _expected(self, n: int, frame_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        """Live tensors' shapes at split ``n`` for a frame of that size (one probe per size)."""
        key = (n, frame_size)
        if key not in self._shapes:
            import torch

            from cloudtutor.split.points import edge_front

            student = self._student
            w, h = student.input_size(*frame_size)
            probe = edge_front(student.model, torch.zeros(1, 3, h, w), n)
            self._shapes[key] = {k: tuple(v.shape[1:]) for k, v in probe.items()}
        return self._shapes[key]

    def on_activations(self, message: Message) -> None:
        device_id = None
        try:
            device_id = self.svc.topics.parse_device(message.topic).device_id
            with self._lock:  # one frame at a time: the references and the model are shared
                result = self._resume(device_id, message.payload)
        except SplitRejected as exc:
            self.svc.metrics.inc(ACTIVATIONS, result=exc.reason)
            self.svc.reject("activations", exc.reason, exc.detail, device_id=device_id, topic=message.topic)
            return
        except Exception as exc:  # a bad message must never take the service down
            self.svc.metrics.inc(ACTIVATIONS, result="error")
            self.svc.reject("activations", "error", repr(exc), device_id=device_id, topic=message.topic)
            return
        self.svc.bus.publish(self.svc.topics.results(device_id), encode_result(result), qos=0)
        self.svc.metrics.inc(ACTIVATIONS, result="resumed")
        self.svc.metrics.inc(ACTIVATION_BYTES, len(message.payload))

    def _resume(self, device_id: str, payload: bytes) -> SplitResult:
        import torch

        from cloudtutor.split.codec import decode as decode_body
        from cloudtutor.split.points import cloud_back, resolve_split

        try:
            env = decode(payload, expect=Kind.ACTIVATIONS)
        except EnvelopeError as exc:
            raise SplitRejected(f"malformed_{exc.reason.value}", str(exc)) from None
        header = env.header
        assert isinstance(header, ActivationsHeader)
        if header.device_id != device_id:
            raise SplitRejected("wrong_device", f"activations of {header.device_id!r} on {device_id!r}'s topic")
        student = self._load()
        if header.model_id != self.model_id:
            raise SplitRejected("wrong_model", f"model {header.model_id!r}, the cloud runs {self.model_id!r}")
        try:
            n = resolve_split(student.model, header.split_after)
            cfg = CodecConfig.parse(header.codec)
        except ValueError as exc:
            raise SplitRejected("bad_split", str(exc)) from None
        expected = self._expected(n, tuple(header.frame_size))
        ref_key = (device_id, header.boot_id)
        reference = None
        if header.reference_seq is not None:
            held = self._refs.get(ref_key)
            if held is None or held[0] != header.reference_seq:
                raise SplitRejected("missing_reference",
                                    f"delta against seq {header.reference_seq}, holding {held and held[0]}")
            reference = held[1]
        try:
            got = decode_body(env.body, cfg, expected, reference)
        except CodecError as exc:
            raise SplitRejected("bad_body", str(exc)) from None
        if cfg.temporal:
            self._refs[ref_key] = (header.seq, got.tensors)
        started = time.perf_counter()
        logits = cloud_back(student.model, {k: torch.from_numpy(v)[None] for k, v in got.tensors.items()}, n)
        self.svc.metrics.inc(RESUME_SECONDS, time.perf_counter() - started)
        labels = student.mapping.map_student(logits[0].argmax(0).to(torch.uint8).numpy())
        return SplitResult(header.boot_id, header.seq, header.frame_pts_ms, labels)
