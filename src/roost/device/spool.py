"""The device's durable outbox of unacknowledged frames (PROTOCOL.md section 4).

Section 4 requires that frame sequence numbers are per device and never reused, and that a
device keeps every unacknowledged frame in a bounded buffer, dropping the oldest only when
full (and counting it), to resend them on the next channel. ``FrameSpool`` is that buffer.

With a path it lives in an SQLite database (WAL, ``synchronous=FULL``) so a restart restores
the frames, the last acknowledged seq, the counters and the sequence high-water mark; with
``path=None`` the same code runs on an in-memory database, for tests and diskless devices.

Sequence numbers start at 1, so ``last_acked == 0`` means nothing was acknowledged yet.
They are reserved in blocks: the end of the current block is committed before any number
from it is handed out, and a reopened spool starts after that mark, so a crash may skip
numbers but never reuses one.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from roost.errors import RemoteProtocolError, StateError

__all__ = ["FrameSpool", "SpooledFrame"]

_SCHEMA_VERSION = 1
_DEFAULT_SEQ_BLOCK = 256
# The wire carries u64 sequence numbers, but the device allocates its own and stops below
# 2**63, so every value fits an SQLite (signed 64-bit) integer unchanged.
_SEQ_LIMIT = 1 << 63

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    seq INTEGER PRIMARY KEY,
    captured_at_ms INTEGER NOT NULL,
    mime TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""
_META_DEFAULTS = {
    "schema": _SCHEMA_VERSION,
    "seq_reserved_through": 0,
    "last_acked": 0,
    "added": 0,
    "acked": 0,
    "dropped": 0,
}


@dataclass(frozen=True, slots=True)
class SpooledFrame:
    """A frame waiting for the hub's ACK."""

    seq: int
    captured_at_ms: int
    mime: str
    payload: bytes


_PAGE_CACHE_KIB = 256


class FrameSpool:
    """Bounded, persistent outbox of frames not yet acknowledged by a hub.

    Allocate a number with ``next_seq``, ``add`` the frame, send it, and call ``ack`` when the
    hub's ACK arrives; after a reconnect, resend ``unacked()``. Thread-safe (one lock).
    """

    def __init__(
        self,
        path: Path | None,
        max_frames: int,
        max_bytes: int,
        *,
        seq_block: int = _DEFAULT_SEQ_BLOCK,
    ) -> None:
        if max_frames < 1 or max_bytes < 1 or seq_block < 1:
            raise ValueError("max_frames, max_bytes and seq_block must be positive")
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._seq_block = seq_block
        self._lock = threading.Lock()
        target = ":memory:" if path is None else str(path)
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        # The outbox is written once and read back only after a reconnect, so SQLite's page
        # cache (2 MiB by default) would mostly hold frames already sent; 256 KiB keeps the
        # index and the meta row hot and the camera agent's footprint small (issue 13).
        self._db.execute(f"PRAGMA cache_size=-{_PAGE_CACHE_KIB}")
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL makes every commit survive power loss, which the sequence high-water mark
            # needs: a rolled-back reservation would let a reboot reuse numbers.
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._meta = self._load_meta()
        # Numbers below ``_next_seq`` have been handed out; up to the reserved mark they are
        # ours to hand out without another commit.
        self._next_seq = self._meta["seq_reserved_through"] + 1
        (count, total) = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM frames"
        ).fetchone()
        self._buffered: int = count
        self._buffered_bytes: int = total

    # Counters and state.

    @property
    def last_acked(self) -> int:
        """Highest seq the hub acknowledged (0 before the first ACK)."""
        with self._lock:
            return self._meta["last_acked"]

    @property
    def added(self) -> int:
        with self._lock:
            return self._meta["added"]

    @property
    def acked(self) -> int:
        with self._lock:
            return self._meta["acked"]

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._meta["dropped"]

    @property
    def buffered(self) -> int:
        """Frames waiting for an ACK."""
        with self._lock:
            return self._buffered

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes waiting for an ACK."""
        with self._lock:
            return self._buffered_bytes

    # Operations.

    def next_seq(self) -> int:
        """Allocate the next sequence number; it is never handed out again, even after restart."""
        with self._lock:
            seq = self._next_seq
            if seq >= _SEQ_LIMIT:
                raise StateError("sequence numbers are exhausted", reason="seq-exhausted")
            if seq > self._meta["seq_reserved_through"]:
                reserved = min(seq + self._seq_block - 1, _SEQ_LIMIT - 1)
                self._commit_meta({"seq_reserved_through": reserved})
            self._next_seq = seq + 1
            return seq

    def add(self, seq: int, captured_at_ms: int, mime: str, payload: bytes) -> bool:
        """Keep a frame until acknowledged; False if it alone exceeds the byte bound (dropped).

        When the spool is full the oldest frames are dropped and counted (section 4).
        """
        with self._lock:
            if not 1 <= seq < self._next_seq:
                raise StateError(f"seq {seq} was not allocated by next_seq", reason="unknown-seq")
            if seq <= self._meta["last_acked"]:
                raise StateError(f"seq {seq} is already acknowledged", reason="already-acked")
            if not 0 <= captured_at_ms < _SEQ_LIMIT:
                raise ValueError("captured_at_ms must be within 0..2**63-1")
            size = len(payload)
            if size > self._max_bytes:
                self._commit_meta({"dropped": self._meta["dropped"] + 1})
                return False
            self._db.execute("BEGIN IMMEDIATE")
            try:
                try:
                    self._db.execute(
                        "INSERT INTO frames (seq, captured_at_ms, mime, payload) "
                        "VALUES (?, ?, ?, ?)",
                        (seq, captured_at_ms, mime, payload),
                    )
                except sqlite3.IntegrityError:
                    raise StateError(
                        f"seq {seq} is already spooled", reason="duplicate-seq"
                    ) from None
                buffered = self._buffered + 1
                buffered_bytes = self._buffered_bytes + size
                dropped_now = 0
                while buffered > self._max_frames or buffered_bytes > self._max_bytes:
                    (oldest, oldest_size) = self._db.execute(
                        "SELECT seq, LENGTH(payload) FROM frames ORDER BY seq LIMIT 1"
                    ).fetchone()
                    self._db.execute("DELETE FROM frames WHERE seq = ?", (oldest,))
                    buffered -= 1
                    buffered_bytes -= oldest_size
                    dropped_now += 1
                meta = {
                    "added": self._meta["added"] + 1,
                    "dropped": self._meta["dropped"] + dropped_now,
                }
                self._write_meta(meta)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._meta.update(meta)
            self._buffered = buffered
            self._buffered_bytes = buffered_bytes
            return True

    def ack(self, seq: int) -> int:
        """Apply the hub's ACK: forget every frame with seq ≤ ``seq``; return how many.

        An ACK below ``last_acked`` (a stale one from an earlier hub) changes nothing. An ACK
        above every allocated number is refused: it would claim frames stored that were never
        sent, and later frames with those numbers could then never be spooled.
        """
        with self._lock:
            if seq >= self._next_seq:
                raise RemoteProtocolError(
                    f"ACK {seq} is beyond the highest sequence number sent", reason="ack-ahead"
                )
            if seq <= self._meta["last_acked"]:
                return 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (removed, removed_bytes) = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM frames WHERE seq <= ?",
                    (seq,),
                ).fetchone()
                self._db.execute("DELETE FROM frames WHERE seq <= ?", (seq,))
                meta = {"last_acked": seq, "acked": self._meta["acked"] + removed}
                self._write_meta(meta)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._meta.update(meta)
            self._buffered -= removed
            self._buffered_bytes -= removed_bytes
            result: int = removed
            return result

    def unacked(self, after: int = 0, limit: int | None = None) -> list[SpooledFrame]:
        """Frames awaiting an ACK with seq > ``after``, in seq order (resend them in order)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, captured_at_ms, mime, payload FROM frames WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (min(after, _SEQ_LIMIT - 1), -1 if limit is None else limit),
            ).fetchall()
        return [
            SpooledFrame(
                seq=seq,
                captured_at_ms=captured_at_ms,
                mime=mime,
                payload=bytes(payload),
            )
            for seq, captured_at_ms, mime, payload in rows
        ]

    def close(self) -> None:
        """Close the database; the spool must not be used afterwards."""
        with self._lock:
            self._db.close()

    # Internals; callers hold the lock.

    def _load_meta(self) -> dict[str, int]:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if meta and meta.get("schema") != _SCHEMA_VERSION:
            raise StateError(
                f"spool has schema {meta.get('schema')}, expected {_SCHEMA_VERSION}",
                reason="schema-version",
            )
        missing = {key: value for key, value in _META_DEFAULTS.items() if key not in meta}
        if missing:
            self._db.execute("BEGIN IMMEDIATE")
            self._write_meta(missing)
            self._db.execute("COMMIT")
            meta.update(missing)
        return meta

    def _write_meta(self, values: dict[str, int]) -> None:
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            list(values.items()),
        )

    def _commit_meta(self, values: dict[str, int]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._write_meta(values)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._meta.update(values)
