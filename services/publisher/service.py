"""publisher: sends the trainer's updates to the edge, one unacknowledged
update per device at a time (brief §4, §10.5; AMS Algorithm 1 line 17).

For each device (state: :class:`~cloudtutor_services.publisher.link.Link`):

* an ``UpdateRef`` from UPDATES queues behind any update in flight; with
  nothing in flight the waiting updates go out as ONE ``model/delta`` from
  the version the edge has applied to the newest waiting version, whose mask
  is the union of their masks and whose values are the newest state's
  (valid because updates carry new values; ``delta.encode_delta(new, new,
  masks)``). Several waiting updates sent as one are counted as coalesced;
* the edge's retained ``model/reported`` acknowledges it (``applied``, that
  version, that sha256); then the next waiting updates go;
* ``rejected``, a sha256 that is not the edge view's at that version, a
  ``model/resync`` request or no acknowledgement within ``ack_timeout_s``
  (wall time) send a ``model/snapshot`` of the newest edge view instead,
  awaited the same way.

Deltas and snapshots are signed with the fleet's Ed25519 key when
``signing_key`` is set. Every update sent adds ``Signal(kind="update",
bytes=envelope size, value=version)`` for the controller.

Redis (under the key prefix ``P``): reads UPDATES (consumer group), blobs
``model_blob(device, v)`` (float16 parameter vector) and ``masks_blob(device,
v)`` (distill.pack_masks); writes ``P:publisher:{device}`` (the Link as
JSON, after every change and before the message it describes is sent) and
SIGNALS. MQTT: subscribes to every device's ``model/reported`` (plain: it is
retained state, and shared subscriptions get no retained messages) and
``model/resync`` (shared); publishes ``model/delta`` and ``model/snapshot``.
One replica per device set: the in-memory copy of the links assumes it (the
fleet issue's device affinity).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable

import torch

from cloudtutor import distill
from cloudtutor.bus import Message
from cloudtutor.delta import encode_delta, encode_snapshot
from cloudtutor.framebuffer import GroupReader, StreamEntry
from cloudtutor.messages import MessageError, ModelReported, ResyncRequest, decode_json
from cloudtutor.models.registry import build_model
from cloudtutor.modelstate import model_id
from cloudtutor.service import Service
from cloudtutor.signing import load_private_key
from cloudtutor.streams import SIGNALS, UPDATES, Signal, StreamEntryError, UpdateRef, model_blob
from cloudtutor.topics import Leaf, TopicError, shared

from cloudtutor_services.publisher.link import Link, is_chain, judge_report

DELTAS = "cloudtutor_publisher_deltas_total"
SNAPSHOTS = "cloudtutor_publisher_snapshots_total"  # {reason}
COALESCED = "cloudtutor_publisher_coalesced_total"
ACKED = "cloudtutor_publisher_acked_total"
UNSENDABLE = "cloudtutor_publisher_unsendable_total"  # {reason}: an update that could not be built
UPDATE_BYTES = "cloudtutor_publisher_bytes_total"  # {kind}

CLAIM_EVERY_S = 10.0


def link_key(prefix: str, device_id: str) -> str:
    """The publisher's persisted state of one device (JSON string)."""
    return f"{prefix}:publisher:{device_id}"


class PublisherService(Service):
    name = "publisher"

    # -- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        self.settings = self.config.publisher
        models = self.config.models
        torch.set_num_threads(models.threads)
        model = build_model(models.model_name("student"), models.weights_path("student"), data_root_path=models.data_root)
        # The state-dict structure (names, shapes) the float16 vectors and masks are cut along.
        self.template = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.model_id = model_id(model)
        self.key = load_private_key(self.settings.signing_key) if self.settings.signing_key else None
        self.metrics.describe(COALESCED, "Updates sent inside a delta that also carried a newer one.")
        self.events: queue.Queue[tuple[Callable[[Message], None], Message]] = queue.Queue()
        self.links: dict[str, Link] = self._load_links()
        self.reader = GroupReader(self.fb, UPDATES, self.group, self.consumer, count=50,
                                  claim_every_s=CLAIM_EVERY_S, claim_count=100, claim_first=True)
        # wait=True: once setup returns, no report or resync request is missed.
        self.bus.subscribe(self.topics.all_devices(Leaf.MODEL_REPORTED),
                           lambda m: self.events.put((self._on_reported, m)), qos=1, wait=True)
        self.bus.subscribe(shared(self.group, self.topics.all_devices(Leaf.MODEL_RESYNC)),
                           lambda m: self.events.put((self._on_resync, m)), qos=1, wait=True)

    def _load_links(self) -> dict[str, Link]:
        links: dict[str, Link] = {}
        head = link_key(self.fb.prefix, "")
        for key in self.fb.redis.scan_iter(match=f"{head}*", count=500):
            device_id = key.decode()[len(head):]
            try:
                links[device_id] = Link.model_validate_json(self.fb.redis.get(key) or b"{}")
            except ValueError as exc:
                self.log.error("state of %s unreadable (%s); starting it afresh", device_id, exc)
        return links

    def link(self, device_id: str) -> Link:
        if device_id not in self.links:
            self.links[device_id] = Link()
        return self.links[device_id]

    def _save(self, device_id: str, link: Link) -> None:
        self.fb.redis.set(link_key(self.fb.prefix, device_id), link.model_dump_json())

    # -- the loop (all state changes happen on this thread) ------------------------------

    def step(self) -> bool:
        did = self._drain_events()
        entries = self.reader.read(block_ms=0 if did else self.settings.poll_ms)
        stale = self.reader.reclaimed()  # what a dead replica read and never acknowledged
        did = bool(stale) or did
        for entry in stale + entries:
            self._on_update_entry(entry)
        self.reader.ack([e.id for e in stale + entries])
        did = self._drain_events() or did
        return self._check_timeouts() or did or bool(entries)

    def _drain_events(self) -> bool:
        did = False
        while True:
            try:
                handler, message = self.events.get_nowait()
            except queue.Empty:
                return did
            handler(message)
            did = True

    def _check_timeouts(self) -> bool:
        now = time.time()
        late = [d for d, link in self.links.items() if link.timed_out(now, self.settings.ack_timeout_s)]
        for device_id in late:
            self.send_snapshot(device_id, self.links[device_id], "timeout")
        return bool(late)

    # -- inputs -----------------------------------------------------------------------

    def _on_update_entry(self, entry: StreamEntry) -> None:
        try:
            ref = UpdateRef.from_fields(entry.fields)
        except StreamEntryError as exc:
            self.reject("update_ref", "invalid", str(exc), entry=entry.id)
            return
        link = self.link(ref.device_id)
        if link.add(ref):
            self._save(ref.device_id, link)
            self.send_next(ref.device_id, link)

    def _device_of(self, message: Message, what: str) -> str | None:
        try:
            return self.topics.parse_device(message.topic).device_id
        except TopicError as exc:
            self.reject(what, "bad_topic", str(exc))
            return None

    def _on_reported(self, message: Message) -> None:
        device_id = self._device_of(message, "model_reported")
        if device_id is None or not message.payload:
            return  # an empty payload clears a retained message: nothing to judge
        try:
            report = decode_json(ModelReported, message.payload)
        except MessageError as exc:
            self.reject("model_reported", exc.reason, exc.detail, device_id=device_id)
            return
        link = self.link(device_id)
        verdict = judge_report(link, report, lambda v: self._sha_of(device_id, v))
        if verdict.action == "applied":
            link.mark_applied(report.version, report.sha256)
            self._save(device_id, link)
            self.metrics.inc(ACKED)
            self.send_next(device_id, link)
        elif verdict.action == "snapshot":
            self.send_snapshot(device_id, link, verdict.reason)
        else:
            self.log.debug("%s: report of version %d ignored: %s", device_id, report.version, verdict.reason)

    def _on_resync(self, message: Message) -> None:
        device_id = self._device_of(message, "model_resync")
        if device_id is None:
            return
        try:
            request = decode_json(ResyncRequest, message.payload)
        except MessageError as exc:
            self.reject("model_resync", exc.reason, exc.detail, device_id=device_id)
            return
        link = self.link(device_id)
        sent = link.awaiting
        if sent is not None and sent.kind == "snapshot" and sent.version == link.newest_version:
            # The snapshot it needs is on its way (its timeout covers a loss).
            self.log.info("%s: resync (have %d) answered by the snapshot in flight", device_id, request.have_version)
            return
        self.send_snapshot(device_id, link, "resync")

    def _sha_of(self, device_id: str, version: int) -> str | None:
        """sha256 of the edge view at ``version`` (None when its blob is gone)."""
        data = self.fb.get_blob(model_blob(device_id, version))
        return None if data is None else distill.vector_sha256(data)

    # -- outputs ----------------------------------------------------------------------

    def send_next(self, device_id: str, link: Link) -> None:
        """With nothing in flight, send every waiting update as one delta
        from the applied version (coalesced when there are several)."""
        refs = link.ready()
        if not refs:
            return
        if not is_chain(link.applied_version, refs):
            self.send_snapshot(device_id, link, "version_gap")
            return
        newest = refs[-1]
        vector = self.fb.get_blob(newest.state)
        mask_blobs = [self.fb.get_blob(r.masks) for r in refs]
        if vector is None or any(m is None for m in mask_blobs):
            self.send_snapshot(device_id, link, "blob_missing")
            return
        if distill.vector_sha256(vector) != newest.params_sha256:
            self.reject("update_ref", "sha_mismatch", f"{newest.state} does not hash to its UpdateRef's sha256",
                        device_id=device_id, version=newest.version)
            link.waiting = [r for r in link.waiting if r.version > newest.version]
            self._save(device_id, link)
            return
        state = distill.state_from_vector(vector, self.template)
        masks = distill.union_masks(distill.unpack_masks(m, self.template) for m in mask_blobs if m is not None)
        envelope, _ = encode_delta(
            state, state, masks, device_id=device_id, seq=link.seq, model_id=newest.model_id,
            base_version=link.applied_version, version=newest.version, key=self.key,
            compression=self.settings.compression, metric=newest.metric, video_ms=newest.video_ms,
        )
        link.mark_sent("delta", newest.version, newest.params_sha256, time.time())
        self._save(device_id, link)  # before sending: a crash now ends in a timeout and a snapshot
        self._send(device_id, "delta", envelope, newest.version, newest.video_ms)
        self.metrics.inc(DELTAS)
        if len(refs) > 1:
            self.metrics.inc(COALESCED, len(refs) - 1)
        self.log.info("%s: delta %d -> %d (%d update(s), %d bytes)", device_id, refs[0].base_version,
                      newest.version, len(refs), len(envelope),
                      extra={"fields": {"device_id": device_id, "version": newest.version, "coalesced": len(refs)}})

    def send_snapshot(self, device_id: str, link: Link, reason: str) -> None:
        """Send the newest edge view whole and await its acknowledgement."""
        version = link.newest_version
        vector = self.fb.get_blob(model_blob(device_id, version))
        if vector is None:
            self.metrics.inc(UNSENDABLE, reason="snapshot_blob_missing")
            self.log.warning("%s: no edge view of version %d to snapshot (%s)", device_id, version, reason)
            return
        state = distill.state_from_vector(vector, self.template)
        envelope = encode_snapshot(
            state, device_id=device_id, seq=link.seq, model_id=link.newest_model_id or self.model_id,
            version=version, key=self.key, compression=self.settings.compression, video_ms=link.newest_video_ms,
        )
        link.mark_sent("snapshot", version, distill.vector_sha256(vector), time.time(), reason)
        self._save(device_id, link)
        self._send(device_id, "snapshot", envelope, version, link.newest_video_ms)
        self.metrics.inc(SNAPSHOTS, reason=reason)
        self.log.info("%s: snapshot of version %d (%s, %d bytes)", device_id, version, reason, len(envelope),
                      extra={"fields": {"device_id": device_id, "version": version, "reason": reason}})

    def _send(self, device_id: str, kind: str, envelope: bytes, version: int, video_ms: int) -> None:
        topic = self.topics.model_snapshot(device_id) if kind == "snapshot" else self.topics.model_delta(device_id)
        self.bus.publish(topic, envelope, qos=self.topics.qos_of(topic))
        self.metrics.inc(UPDATE_BYTES, len(envelope), kind=kind)
        signal = Signal(device_id=device_id, kind="update", value=float(version), video_ms=max(0, video_ms),
                        bytes=len(envelope))
        self.fb.add(SIGNALS, signal.to_fields())


SERVICE = PublisherService
