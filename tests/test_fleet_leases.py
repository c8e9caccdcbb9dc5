"""Device leases across replicas: the pure plan, the Redis adapter against a
real Redis (a lease moves when its holder stops renewing; only the holder
renews, releases or writes), and two real trainer replicas handing a device
over with its version continuing."""

from __future__ import annotations

import time

import pytest

from cloudtutor.fleet.leases import LeaseKeeper, LeaseStore, fair_share, plan_leases

pytestmark = pytest.mark.timeout(120)

DEVICES = [f"cam-{i}" for i in range(8)]


# -- the plan ------------------------------------------------------------------------


def test_fair_share():
    assert [fair_share(8, r) for r in (0, 1, 2, 3, 8, 9)] == [8, 8, 4, 3, 1, 1]
    assert fair_share(0, 3) == 0


def test_a_lone_replica_claims_every_free_device():
    plan = plan_leases(DEVICES, {}, "a", 1)
    assert sorted(plan.claim) == DEVICES and plan.release == ()


def test_two_replicas_split_the_devices_and_prefer_different_ones():
    owners: dict[str, str | None] = {}
    for me in ("a", "b"):
        plan = plan_leases(DEVICES, owners, me, 2)
        assert len(plan.claim) == 4
        owners.update({d: me for d in plan.claim})
    assert sorted(owners) == DEVICES and sorted(owners.values()) == ["a"] * 4 + ["b"] * 4
    # Both would start from different devices (rendezvous order), so they rarely collide.
    assert plan_leases(DEVICES, {}, "a", 2).claim != plan_leases(DEVICES, {}, "b", 2).claim


def test_a_replica_over_its_share_releases_the_surplus_but_not_a_busy_device():
    owners = {d: "a" for d in DEVICES}
    plan = plan_leases(DEVICES, owners, "a", 2)
    assert len(plan.release) == 4 and plan.claim == ()
    busy = plan.release[0]
    again = plan_leases(DEVICES, owners, "a", 2, busy=[busy])
    assert busy not in again.release and len(again.release) == 4
    # The newcomer finds nothing free until the release; then it takes the released ones.
    assert plan_leases(DEVICES, owners, "b", 2).claim == ()
    owners.update({d: None for d in plan.release})
    assert sorted(plan_leases(DEVICES, owners, "b", 2).claim) == sorted(plan.release)


# -- Redis ---------------------------------------------------------------------------


def store(redis_client, holder: str, ttl_ms: int = 400) -> LeaseStore:
    return LeaseStore(redis_client, "t", "trainer", holder, ttl_ms)


def test_only_the_holder_renews_releases_or_writes(redis_client):
    a, b = store(redis_client, "a"), store(redis_client, "b")
    assert a.acquire("cam-0") and not b.acquire("cam-0")
    assert not b.renew("cam-0") and not b.release("cam-0")
    assert a.owners(["cam-0", "cam-1"]) == {"cam-0": "a", "cam-1": None}
    assert not b.fenced("cam-0", lambda pipe: pipe.set("t:written", "b"))
    assert a.fenced("cam-0", lambda pipe: pipe.set("t:written", "a"))
    assert redis_client.get("t:written") == b"a"
    assert a.renew("cam-0") and redis_client.pttl(a.key("cam-0")) > 300
    assert a.release("cam-0") and b.acquire("cam-0")


def test_a_lease_expires_when_its_holder_stops_renewing(redis_client):
    a, b = store(redis_client, "a"), store(redis_client, "b")
    assert a.acquire("cam-0")
    for _ in range(4):  # renewed past its TTL (400 ms): still a's
        time.sleep(0.2)
        assert a.renew("cam-0") and not b.acquire("cam-0")
    time.sleep(0.5)  # a stopped renewing
    assert a.owners(["cam-0"]) == {"cam-0": None}
    assert b.acquire("cam-0") and not a.renew("cam-0")


def test_heartbeats_count_live_replicas(redis_client):
    a, b = store(redis_client, "a"), store(redis_client, "b")
    assert a.heartbeat() == 1 and b.heartbeat() == 2
    time.sleep(0.5)
    assert a.heartbeat() == 1, "b's heartbeat expired"
    a.leave()
    assert b.heartbeat() == 1


def test_keepers_share_devices_and_a_dead_replicas_devices_move(redis_client):
    devices = DEVICES[:4]
    a = LeaseKeeper(store(redis_client, "a"), lambda: devices, every_s=0.1).start()
    b = None
    try:
        assert a.held() == devices
        b = LeaseKeeper(store(redis_client, "b"), lambda: devices, every_s=0.1).start()
        deadline = time.monotonic() + 5
        while not (len(a.held()) == len(b.held()) == 2):
            assert time.monotonic() < deadline, (a.held(), b.held())
            time.sleep(0.05)
        assert sorted(a.held() + b.held()) == devices
        a.stop(release=False)  # a crash: nothing handed back, the leases run out
        moved = time.monotonic()
        while b.held() != devices:
            assert time.monotonic() - moved < 5, b.held()
            time.sleep(0.05)
        assert time.monotonic() - moved >= 0.2, "moved before the leases expired"
    finally:
        a.stop()
        if b is not None:
            b.stop()


# -- two real trainer replicas -------------------------------------------------------------


def wait_updates(fb, count: int, wait_s: float = 240.0):
    """Two ESPNet trainers in one process on a busy machine: more patience than one trainer's tests."""
    from test_service_trainer import updates

    deadline = time.monotonic() + wait_s
    while len(found := updates(fb)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} updates after {wait_s} s"
        time.sleep(0.1)
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_dead_trainers_device_moves_and_its_version_continues(mqtt_settings, redis_settings, data_root):
    from test_distill import camvid
    from test_service_trainer import DEVICE, feed, framebuffer, make_config, running

    from cloudtutor_services.trainer.service import FENCED

    samples = camvid(data_root, 21)
    config = make_config(mqtt_settings, redis_settings, data_root, fleet={"lease_ttl_s": 1.0})
    with framebuffer(config) as fb, running(config) as one, running(config) as two:
        feed(fb, samples, range(0, 11))
        [first] = wait_updates(fb, 1)  # the holder's phase
        holder, other = (one, two) if one.devices() == [DEVICE] else (two, one)
        assert holder.devices() == [DEVICE] and other.devices() == []
        assert holder.metrics.total("cloudtutor_trainer_phases_total") == 1
        holder.leases.stop(release=False)  # stops renewing, as a dead replica does; nothing handed back
        feed(fb, samples, range(11, 21))
        refs = wait_updates(fb, 2)
        assert other.devices() == [DEVICE]
        assert other.metrics.total("cloudtutor_trainer_phases_total") == 1
        assert holder.metrics.total("cloudtutor_trainer_phases_total") == 1
        assert holder.metrics.total(FENCED) == 0
    # The new holder went on from the state in Redis: no version skipped or repeated.
    assert [(r.base_version, r.version, r.video_ms) for r in refs] == [(0, 1, 10_000), (1, 2, 20_000)]
    assert first.params_sha256 == refs[0].params_sha256
