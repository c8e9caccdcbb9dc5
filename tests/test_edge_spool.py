"""The edge's chunk spool: kept until acked, resent on timeout or reconnect, bounded, survives restarts."""

from __future__ import annotations

import threading

import pytest
from cloudtutor_edge.spool import MAX_BACKOFF, Spool, chunk_filename, parse_filename

MiB = 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def keys(entries) -> list[tuple[str, int]]:
    return [e.key for e in entries]


def test_filenames_round_trip():
    assert parse_filename(chunk_filename("abcdef12", 7)) == ("abcdef12", 7)
    assert parse_filename("abcdef12.0000000007.chunk.tmp") is None
    assert parse_filename("notes.txt") is None


def test_chunk_stays_until_acked(tmp_path, clock):
    spool = Spool(tmp_path, MiB, ack_timeout_s=5, now=clock)
    spool.add("boot0001", 0, b"a" * 100)
    spool.add("boot0001", 1, b"b" * 50)
    assert len(spool) == 2 and spool.bytes == 150
    assert keys(spool.due()) == [("boot0001", 0), ("boot0001", 1)]  # new: due at once
    for entry in spool.due():
        assert spool.read(entry) in (b"a" * 100, b"b" * 50)
        spool.mark_sent(entry)
    assert spool.due() == []
    assert spool.ack("boot0001", 0) and not spool.ack("boot0001", 0)  # a repeated ack is harmless
    assert keys(spool.due()) == [] and len(spool) == 1 and spool.bytes == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == [chunk_filename("boot0001", 1)]
    assert spool.acked == 1


def test_unacked_chunk_is_due_again_after_the_timeout_with_backoff(tmp_path, clock):
    spool = Spool(tmp_path, MiB, ack_timeout_s=5, now=clock)
    spool.add("boot0001", 0, b"x")
    entry = spool.due()[0]
    spool.mark_sent(entry)
    clock.t += 4.9
    assert spool.due() == [] and spool.next_due_in() == pytest.approx(0.1)
    clock.t += 0.1
    assert keys(spool.due()) == [("boot0001", 0)]
    spool.mark_sent(entry)  # second send: the timeout doubles
    clock.t += 5
    assert spool.due() == []
    clock.t += 5
    assert len(spool.due()) == 1
    for _ in range(10):
        spool.mark_sent(entry)
    clock.t += 5 * MAX_BACKOFF
    assert len(spool.due()) == 1  # capped


def test_reconnect_makes_everything_due(tmp_path, clock):
    spool = Spool(tmp_path, MiB, ack_timeout_s=60, now=clock)
    for seq in range(3):
        spool.add("boot0001", seq, b"x")
    for entry in spool.due():
        spool.mark_sent(entry)
    assert spool.due() == []
    spool.mark_all_due()
    assert keys(spool.due(limit=2)) == [("boot0001", 0), ("boot0001", 1)]


def test_bound_drops_the_oldest_first(tmp_path, clock):
    spool = Spool(tmp_path, 1000, ack_timeout_s=5, now=clock)
    for seq in range(3):
        assert spool.add("boot0001", seq, b"x" * 300) == []
    dropped = spool.add("boot0001", 3, b"y" * 500)  # 1400 > 1000: drop 0 and 1
    assert keys(dropped) == [("boot0001", 0), ("boot0001", 1)]
    assert keys(spool.due()) == [("boot0001", 2), ("boot0001", 3)]
    assert spool.bytes == 800 and spool.dropped == 2
    assert len(list(tmp_path.iterdir())) == 2
    too_big = spool.add("boot0001", 4, b"z" * 2000)  # larger than the whole bound: not kept
    assert keys(too_big) == [("boot0001", 4)] and ("boot0001", 4) not in spool and spool.dropped == 3
    assert len(spool) == 2


def test_a_new_agent_takes_over_what_an_earlier_one_left(tmp_path, clock):
    first = Spool(tmp_path, MiB, now=clock)
    first.add("bootAAAA", 0, b"old0")
    first.add("bootAAAA", 1, b"old1")
    first.ack("bootAAAA", 0)
    (tmp_path / "bootAAAA.0000000002.chunk.tmp").write_bytes(b"half")  # a crash mid-write
    second = Spool(tmp_path, MiB, now=clock)
    assert second.recovered == 1 and keys(second.due()) == [("bootAAAA", 1)]
    assert second.read(second.due()[0]) == b"old1"
    assert not (tmp_path / "bootAAAA.0000000002.chunk.tmp").exists()
    second.add("bootBBBB", 0, b"new")
    assert keys(second.due()) == [("bootAAAA", 1), ("bootBBBB", 0)]


def test_wait_empty_returns_when_the_last_ack_arrives(tmp_path, clock):
    spool = Spool(tmp_path, MiB, now=clock)
    spool.add("boot0001", 0, b"x")
    assert not spool.wait_empty(0.05)
    timer = threading.Timer(0.1, spool.ack, args=("boot0001", 0))
    timer.start()
    assert spool.wait_empty(5.0)
    timer.join()
