"""Device leases: which replica of a service serves which device.

Per-device order (brief §10.4) and the trainer's one-update-at-a-time per
device need exactly one replica per device. Each replica holds expiring
leases in Redis (``SET NX PX``), renews them with a compare-and-set script
(only the holder can extend or drop its lease) and heartbeats a membership
set, so every replica knows how many live replicas share the devices. A
replica that dies stops renewing; its leases expire after ``ttl_ms`` and a
live replica claims the devices. What a device's replica knows about it
lives in Redis (the trainer's state hash), so the new holder continues
where the old one stopped; :meth:`LeaseStore.fenced` writes only while the
lease is still ours, so a replica that lost a lease mid-phase cannot bump a
version the new holder also bumps.

The planning (:func:`plan_leases`) is a pure function; :class:`LeaseStore`
is the thin Redis adapter and :class:`LeaseKeeper` the loop that renews,
claims and releases on a thread of its own (a training phase can outlast
a lease's TTL).

Redis keys (``{prefix}`` is the frame buffer's key prefix):
``{prefix}:lease:{group}:{device}`` (string: the holder, PX ttl) and
``{prefix}:lease:{group}:replicas`` (sorted set: holder -> expiry, server ms).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("cloudtutor.fleet.leases")

LEASES_HELD = "cloudtutor_leases_held"  # gauge {group}
LEASE_EVENTS = "cloudtutor_lease_events_total"  # {group, event}: claimed | released | lost


# -- pure planning ----------------------------------------------------------------------


def fair_share(n_devices: int, n_replicas: int) -> int:
    """Most devices one replica should hold: ceil(devices / live replicas)."""
    return math.ceil(n_devices / max(1, n_replicas))


def preference(holder: str, device_id: str) -> str:
    """Rendezvous hash: each replica ranks the free devices differently, so
    replicas claiming at once mostly go for different devices."""
    return hashlib.sha256(f"{holder}\0{device_id}".encode()).hexdigest()


@dataclass(frozen=True)
class LeasePlan:
    claim: tuple[str, ...]
    release: tuple[str, ...]


def plan_leases(
    devices: Iterable[str], owners: Mapping[str, str | None], me: str, n_replicas: int,
    *, busy: Iterable[str] = (),
) -> LeasePlan:
    """What ``me`` should claim and release.

    ``owners``: each device's current holder (None: free). A replica tops up
    to its fair share from the free devices (in its rendezvous order) and
    gives back what it holds above the share (never a ``busy`` device, one it
    is working on), so a replica that joins finds devices to claim.
    """
    devices = sorted(set(devices))
    share = fair_share(len(devices), n_replicas)
    mine = [d for d in devices if owners.get(d) == me]
    free = sorted((d for d in devices if owners.get(d) is None), key=lambda d: preference(me, d))
    busy = set(busy)
    surplus = len(mine) - share
    # Give back the devices this replica would rank last (and never a busy one).
    release = [d for d in sorted(mine, key=lambda d: preference(me, d), reverse=True) if d not in busy][:max(0, surplus)]
    claim = free[:max(0, share - len(mine))]
    return LeasePlan(tuple(claim), tuple(sorted(release)))


# -- the Redis adapter ------------------------------------------------------------------

# KEYS[1] lease; ARGV[1] holder, ARGV[2] ttl ms: extend only our own lease.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] lease; ARGV[1] holder: drop only our own lease.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS[1] replicas zset; ARGV[1] holder, ARGV[2] ttl ms. Server time, so the
# replicas' clocks do not matter. Returns the number of live replicas.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
"""
_LEAVE = "return redis.call('ZREM', KEYS[1], ARGV[1])"


class LeaseStore:
    """Leases of one replica (``holder``) of one group (a service) in Redis."""

    def __init__(self, redis: Any, prefix: str, group: str, holder: str, ttl_ms: int) -> None:
        if ttl_ms < 100:
            raise ValueError(f"lease ttl {ttl_ms} ms is too short")
        self.redis = redis
        self.prefix = prefix
        self.group = group
        self.holder = holder
        self.ttl_ms = int(ttl_ms)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._leave = redis.register_script(_LEAVE)

    def key(self, device_id: str) -> str:
        return f"{self.prefix}:lease:{self.group}:{device_id}"

    def replicas_key(self) -> str:
        return f"{self.prefix}:lease:{self.group}:replicas"

    def acquire(self, device_id: str) -> bool:
        return bool(self.redis.set(self.key(device_id), self.holder, nx=True, px=self.ttl_ms))

    def renew(self, device_id: str) -> bool:
        return bool(self._renew(keys=[self.key(device_id)], args=[self.holder, self.ttl_ms]))

    def release(self, device_id: str) -> bool:
        return bool(self._release(keys=[self.key(device_id)], args=[self.holder]))

    def owners(self, devices: Sequence[str]) -> dict[str, str | None]:
        if not devices:
            return {}
        raw = self.redis.mget([self.key(d) for d in devices])
        return {d: (v.decode() if isinstance(v, bytes) else v) for d, v in zip(devices, raw)}

    def holds(self, device_id: str) -> bool:
        return self.owners([device_id])[device_id] == self.holder

    def heartbeat(self) -> int:
        """Say this replica is alive; the number of live replicas (this one included)."""
        return int(self._heartbeat(keys=[self.replicas_key()], args=[self.holder, self.ttl_ms]))

    def leave(self) -> None:
        self._leave(keys=[self.replicas_key()], args=[self.holder])

    def fenced(self, device_id: str, write: Callable[[Any], None], *, attempts: int = 5) -> bool:
        """Run ``write(pipe)`` in a MULTI/EXEC that happens only if this replica
        still holds the device's lease (WATCH on the lease). A renewal touches
        the lease and aborts the transaction too, so it is retried; False when
        the lease is not ours."""
        from redis.exceptions import WatchError

        key = self.key(device_id)
        for _ in range(attempts):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)
                    owner = pipe.get(key)
                    if (owner.decode() if isinstance(owner, bytes) else owner) != self.holder:
                        return False
                    pipe.multi()
                    write(pipe)
                    pipe.execute()
                    return True
                except WatchError:
                    continue
        return False


class LeaseKeeper:
    """Keeps one replica's leases: every ``every_s`` heartbeat, renew, then
    claim and release by :func:`plan_leases`. ``devices`` lists the devices
    to share (e.g. the labeler's device set). ``held()`` is what the service
    serves now; ``busy`` names the device it is working on (never released)."""

    def __init__(
        self, store: LeaseStore, devices: Callable[[], Sequence[str]], *, every_s: float | None = None,
        metrics: Any = None,
    ) -> None:
        self.store = store
        self.devices = devices
        self.every_s = every_s if every_s is not None else store.ttl_ms / 3000.0
        self.metrics = metrics
        self.busy: str | None = None
        self.replicas = 1
        self._held: set[str] = set()
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()  # the keeper's thread and refresh() may both tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def _event(self, event: str, device_id: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(LEASE_EVENTS, group=self.store.group, event=event)
        log.info("%s lease of %s %s by %s", self.store.group, device_id, event, self.store.holder,
                 extra={"fields": {"group": self.store.group, "device_id": device_id, "event": event,
                                   "holder": self.store.holder}})

    def refresh(self) -> list[str]:
        """Tick now if the set of devices changed since the last round (a new
        device need not wait for the next round); the devices held."""
        if set(self.devices()) != self._known:
            return self.tick()
        return self.held()

    def tick(self) -> list[str]:
        """One round; the devices held afterwards."""
        with self._tick_lock:
            return self._tick()

    def _tick(self) -> list[str]:
        store = self.store
        self.replicas = store.heartbeat()
        with self._lock:
            held = set(self._held)
        for device_id in sorted(held):
            if not store.renew(device_id):
                held.discard(device_id)
                self._event("lost", device_id)
        devices = list(self.devices())
        self._known = set(devices)
        owners = store.owners(devices)
        plan = plan_leases(devices, owners, store.holder, self.replicas, busy=[self.busy] if self.busy else [])
        for device_id in plan.release:
            if store.release(device_id):
                self._event("released", device_id)
            held.discard(device_id)
        for device_id in plan.claim:
            if store.acquire(device_id):
                held.add(device_id)
                self._event("claimed", device_id)
        held |= {d for d, o in owners.items() if o == store.holder and d not in plan.release}
        with self._lock:
            self._held = held
        if self.metrics is not None:
            self.metrics.set(LEASES_HELD, len(held), group=store.group)
        return sorted(held)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # Redis away for a moment: leases expire on their own if it lasts
                log.exception("%s lease round failed", self.store.group)
            self._stop.wait(self.every_s)

    def start(self) -> LeaseKeeper:
        self.tick()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"leases-{self.store.group}")
        self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop renewing; with ``release`` hand the leases back at once
        (a graceful shutdown), else they expire after the TTL (a crash)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if release:
            for device_id in self.held():
                try:
                    self.store.release(device_id)
                except Exception:
                    log.warning("could not release the lease of %s", device_id)
            try:
                self.store.leave()
            except Exception:
                pass
        with self._lock:
            self._held.clear()
