"""Device outbox: never-reused seqs, ACK semantics, bounds and restart (PROTOCOL.md section 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost.device.spool import FrameSpool, SpooledFrame
from roost.errors import RemoteProtocolError, StateError

MIME = "image/jpeg"


def _fill(spool: FrameSpool, count: int, size: int = 10) -> list[int]:
    seqs = []
    for _ in range(count):
        seq = spool.next_seq()
        assert spool.add(seq, 1_000 + seq, MIME, bytes([seq % 256]) * size)
        seqs.append(seq)
    return seqs


@pytest.fixture(params=["memory", "file"])
def spool(request: pytest.FixtureRequest, tmp_path: Path) -> FrameSpool:
    path = None if request.param == "memory" else tmp_path / "spool.sqlite3"
    return FrameSpool(path, max_frames=100, max_bytes=100_000)


def test_seqs_start_at_one_and_increase(spool: FrameSpool) -> None:
    assert [spool.next_seq() for _ in range(5)] == [1, 2, 3, 4, 5]
    assert spool.last_acked == 0


def test_unacked_in_seq_order_with_contents(spool: FrameSpool) -> None:
    seqs = _fill(spool, 3)
    assert spool.unacked() == [
        SpooledFrame(seq, 1_000 + seq, MIME, bytes([seq]) * 10) for seq in seqs
    ]
    assert [frame.seq for frame in spool.unacked(after=1, limit=1)] == [2]
    assert (spool.buffered, spool.buffered_bytes, spool.added) == (3, 30, 3)


def test_ack_removes_everything_up_to_seq(spool: FrameSpool) -> None:
    _fill(spool, 5)
    assert spool.ack(3) == 3
    assert [frame.seq for frame in spool.unacked()] == [4, 5]
    assert (spool.last_acked, spool.acked, spool.buffered, spool.buffered_bytes) == (3, 3, 2, 20)
    # A stale ACK from an earlier hub changes nothing.
    assert spool.ack(2) == 0
    assert spool.last_acked == 3
    assert spool.ack(5) == 2
    assert spool.unacked() == []
    assert (spool.acked, spool.buffered, spool.buffered_bytes) == (5, 0, 0)


def test_ack_beyond_what_was_sent_is_refused(spool: FrameSpool) -> None:
    _fill(spool, 2)
    with pytest.raises(RemoteProtocolError) as caught:
        spool.ack(3)
    assert caught.value.reason == "ack-ahead"
    with pytest.raises(RemoteProtocolError):
        spool.ack(2**64 - 1)
    assert spool.last_acked == 0


def test_add_refuses_unallocated_acked_and_repeated_seqs(spool: FrameSpool) -> None:
    seq = spool.next_seq()
    spool.add(seq, 0, MIME, b"x")
    with pytest.raises(StateError) as repeated:
        spool.add(seq, 0, MIME, b"x")
    assert repeated.value.reason == "duplicate-seq"
    with pytest.raises(StateError) as unallocated:
        spool.add(seq + 1, 0, MIME, b"x")
    assert unallocated.value.reason == "unknown-seq"
    spool.ack(seq)
    with pytest.raises(StateError) as acked:
        spool.add(seq, 0, MIME, b"x")
    assert acked.value.reason == "already-acked"
    assert (spool.added, spool.buffered) == (1, 0)


def test_full_by_count_drops_oldest_and_counts() -> None:
    spool = FrameSpool(None, max_frames=3, max_bytes=1_000_000)
    _fill(spool, 5)
    assert [frame.seq for frame in spool.unacked()] == [3, 4, 5]
    assert (spool.dropped, spool.added, spool.buffered) == (2, 5, 3)


def test_full_by_bytes_drops_oldest_and_counts() -> None:
    spool = FrameSpool(None, max_frames=100, max_bytes=250)
    _fill(spool, 2, size=100)
    seq = spool.next_seq()
    assert spool.add(seq, 0, MIME, b"z" * 150)
    assert [frame.seq for frame in spool.unacked()] == [2, 3]
    assert (spool.dropped, spool.buffered_bytes) == (1, 250)


def test_frame_larger_than_the_whole_spool_is_dropped_alone() -> None:
    spool = FrameSpool(None, max_frames=100, max_bytes=250)
    _fill(spool, 2, size=100)
    assert not spool.add(spool.next_seq(), 0, MIME, b"z" * 251)
    assert [frame.seq for frame in spool.unacked()] == [1, 2]
    assert spool.dropped == 1


def test_seq_never_reused_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    handed_out: list[int] = []
    for _ in range(4):
        spool = FrameSpool(path, max_frames=10, max_bytes=10_000, seq_block=4)
        handed_out.extend(spool.next_seq() for _ in range(3))
        # Closing is not required: a crash after next_seq must not cause reuse either.
        del spool
    assert handed_out == sorted(set(handed_out))


def test_restart_restores_frames_acks_and_counters(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = FrameSpool(path, max_frames=4, max_bytes=10_000)
    _fill(spool, 6)
    spool.ack(4)
    before = (spool.unacked(), spool.last_acked, spool.added, spool.acked, spool.dropped)
    highest = spool.next_seq()
    spool.close()
    reopened = FrameSpool(path, max_frames=4, max_bytes=10_000)
    after = (
        reopened.unacked(),
        reopened.last_acked,
        reopened.added,
        reopened.acked,
        reopened.dropped,
    )
    assert after == before
    assert [frame.seq for frame in reopened.unacked()] == [5, 6]
    assert (reopened.last_acked, reopened.added, reopened.acked, reopened.dropped) == (4, 6, 2, 2)
    assert (reopened.buffered, reopened.buffered_bytes) == (2, 20)
    assert reopened.next_seq() > highest
    # Frames restored from disk can still be acknowledged.
    assert reopened.ack(6) == 2


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        FrameSpool(None, max_frames=0, max_bytes=1)
