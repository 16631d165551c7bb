"""The hub's frame store: one file per frame plus an SQLite index (PROTOCOL.md section 4).

Section 4 asks that a hub store each (device, seq) at most once and acknowledge a frame
only once it is durably stored. The recorder gives both: ``store`` returns only after the
frame's file is fsynced and its index row committed, and the index is UNIQUE on
(device, seq), so a resent frame is recognised and counted as a duplicate.

Layout under ``storage_dir``::

    index.sqlite3                    the index (WAL, synchronous=FULL)
    frames/<device-dir>/<seq>.<ext>  one payload per file

Crash safety rests on one ordering: a frame's file is written and fsynced before its row is
committed, and a row is deleted (committed) before its file is unlinked. So every row
always has its file; the opposite leftover, a file without a row, is removed when the
recorder opens.

The recorder reads no clock: the caller passes ``received_at_ms``. Retention removes the
frames that arrived first (index order), not the ones with the oldest device timestamps,
because device clocks may be wrong or absent.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from roost.errors import StateError

__all__ = [
    "CameraRecording",
    "FrameEntry",
    "IncomingFrame",
    "Recorder",
    "StoredFrame",
    "device_dir_name",
]

_SCHEMA_VERSION = 1
_INDEX_NAME = "index.sqlite3"
_FRAMES_DIR = "frames"

# Node identifiers are ``role:`` plus 22 base64url characters (PROTOCOL.md section 1), which
# are already safe in file names; anything else is hashed so no id can escape the directory.
_SAFE_DEVICE_ID = re.compile(r"([a-z]{1,16}):([A-Za-z0-9_-]{1,64})")
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "video/mp4": "mp4"}

# SQLite integers are signed 64-bit while sequence numbers and device timestamps are u64 on
# the wire, so they are stored shifted by 2**63, which keeps their order.
_U64_OFFSET = 1 << 63


def _to_sql(value: int) -> int:
    return value - _U64_OFFSET


def _time_to_sql(value: int) -> int:
    # A query bound outside u64 is clamped, so "from 0" and "to far future" just work.
    return _to_sql(min(max(value, 0), (1 << 64) - 1))


def _from_sql(value: int) -> int:
    return value + _U64_OFFSET


def device_dir_name(device_id: str) -> str:
    """The directory name frames of ``device_id`` are stored under."""
    match = _SAFE_DEVICE_ID.fullmatch(device_id)
    if match is not None:
        return f"{match.group(1)}-{match.group(2)}"
    # The leading underscore cannot start a name of the form above, so the two never collide.
    return "_id-" + hashlib.sha256(device_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class IncomingFrame:
    """A frame received from a device, as ``Recorder.store_many`` takes it."""

    device_id: str
    seq: int
    captured_at_ms: int
    mime: str
    payload: bytes
    received_at_ms: int


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """A recorded frame read back from disk."""

    device_id: str
    seq: int
    captured_at_ms: int
    received_at_ms: int
    mime: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class CameraRecording:
    """What is stored of one camera: frame count, bytes and the capture-time span."""

    device_id: str
    frames: int
    bytes: int
    first_ms: int
    last_ms: int
    last_received_ms: int


@dataclass(frozen=True, slots=True)
class FrameEntry:
    """One indexed frame, without its payload."""

    seq: int
    captured_at_ms: int
    mime: str
    size: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    captured_at_ms INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    mime TEXT NOT NULL,
    size INTEGER NOT NULL,
    dir TEXT NOT NULL,
    name TEXT NOT NULL,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS frames_by_dir ON frames (dir);
CREATE INDEX IF NOT EXISTS frames_by_time ON frames (device, captured_at_ms);
CREATE TABLE IF NOT EXISTS evicted (
    device TEXT PRIMARY KEY,
    through_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS device_names (
    device TEXT PRIMARY KEY,
    name TEXT NOT NULL
);
"""


class Recorder:
    """Durable, deduplicating, size-bounded frame store for the hub.

    Thread-safe: one SQLite connection guarded by one lock, so the asyncio daemon may call
    it directly or through ``asyncio.to_thread``.

    Durability: ``store`` fsyncs the frame file and its directory, then commits the row with
    ``synchronous=FULL``, so a True return survives power loss and the hub may ACK.
    ``store_many`` keeps the same guarantee for the whole batch at lower cost: all files are
    written first and then each is synced (fdatasync), each touched directory is fsynced once,
    and the rows are committed in one transaction; the hub should ACK a batch only after
    ``store_many`` returns. Measured on the development disk with 20 KB frames: about 800 to
    1,300 frames/s one by one and about 1,500 frames/s in batches of 100; per-file syncs
    dominate, so a hub past that rate needs faster storage rather than larger batches.

    Counters (``stored``, ``duplicates``, ``expired``, ``evicted``, ``orphans_removed``)
    count since this object was opened, as metrics do; ``count`` and ``bytes_stored``
    describe what is on disk.
    """

    def __init__(self, storage_dir: Path, retention_bytes: int) -> None:
        if retention_bytes < 0:
            raise ValueError("retention_bytes must not be negative")
        self._root = Path(storage_dir)
        self._frames_root = self._root / _FRAMES_DIR
        self._retention_bytes = retention_bytes
        self._lock = threading.Lock()
        self._frames_root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self._root / _INDEX_NAME, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._check_schema()
        self._known_dirs: set[str] = set()
        self._names: dict[str, str] = dict(
            self._db.execute("SELECT device, name FROM device_names").fetchall()
        )
        self._listeners: list[Callable[[list[IncomingFrame]], None]] = []
        self.stored = 0
        self.duplicates = 0
        self.expired = 0
        self.evicted = 0
        self.evicted_bytes = 0
        self.orphans_removed = 0
        (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM frames").fetchone()
        self._bytes_stored: int = total
        self._remove_orphans()
        # A smaller retention than at the last run takes effect immediately.
        with self._lock:
            self._enforce_retention()

    # Writing.

    def store(
        self,
        device_id: str,
        seq: int,
        captured_at_ms: int,
        mime: str,
        payload: bytes,
        received_at_ms: int,
    ) -> bool:
        """Store one frame durably; False if (device, seq) was already stored (then just ACK)."""
        frame = IncomingFrame(device_id, seq, captured_at_ms, mime, payload, received_at_ms)
        return self.store_many([frame])[0]

    def store_many(self, frames: Iterable[IncomingFrame]) -> list[bool]:
        """Store a batch with one commit; element i is False if frame i was a duplicate."""
        batch = list(frames)
        results: list[bool] = []
        with self._lock:
            accepted: list[tuple[IncomingFrame, str, str]] = []
            seen_in_batch: set[tuple[str, int]] = set()
            for frame in batch:
                key = (frame.device_id, frame.seq)
                if key in seen_in_batch or self._has_row(frame.device_id, frame.seq):
                    self.duplicates += 1
                    results.append(False)
                    continue
                if self._is_expired(frame.device_id, frame.seq):
                    self.expired += 1
                    results.append(False)
                    continue
                seen_in_batch.add(key)
                directory = device_dir_name(frame.device_id)
                name = f"{frame.seq:020d}.{_EXTENSIONS.get(frame.mime, 'bin')}"
                accepted.append((frame, directory, name))
                results.append(True)
            if accepted:
                self._write_files(accepted)
                self._insert_rows(accepted)
                self.stored += len(accepted)
                self._bytes_stored += sum(len(frame.payload) for frame, _, _ in accepted)
                self._enforce_retention()
            listeners = list(self._listeners)
        if accepted:
            stored = [frame for frame, _, _ in accepted]
            for listener in listeners:
                listener(stored)
        return results

    def add_listener(self, listener: Callable[[list[IncomingFrame]], None]) -> None:
        """Call ``listener`` with the frames of every batch once they are durable (on the
        storing thread, outside the lock); it must be quick and must not raise."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[list[IncomingFrame]], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def close(self) -> None:
        """Close the index; the recorder must not be used afterwards."""
        with self._lock:
            self._db.close()

    # Queries.

    @property
    def bytes_stored(self) -> int:
        """Total payload bytes currently on disk."""
        with self._lock:
            return self._bytes_stored

    def count(self, device_id: str | None = None) -> int:
        """Frames currently stored, for one device or for all."""
        with self._lock:
            if device_id is None:
                row = self._db.execute("SELECT COUNT(*) FROM frames").fetchone()
            else:
                row = self._db.execute(
                    "SELECT COUNT(*) FROM frames WHERE device = ?", (device_id,)
                ).fetchone()
        result: int = row[0]
        return result

    def latest(self, device_id: str) -> StoredFrame | None:
        """The stored frame with the highest sequence number of ``device_id``, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, captured_at_ms, received_at_ms, mime, dir, name FROM frames "
                "WHERE device = ? ORDER BY seq DESC LIMIT 1",
                (device_id,),
            ).fetchone()
            if row is None:
                return None
            seq, captured_at_ms, received_at_ms, mime, directory, name = row
            path = self._frames_root / directory / name
            try:
                # The lock is held so retention cannot unlink the file while it is read.
                payload = path.read_bytes()
            except FileNotFoundError:
                raise StateError(
                    f"frame file {path} is missing although indexed", reason="missing-frame"
                ) from None
        return StoredFrame(
            device_id=device_id,
            seq=_from_sql(seq),
            captured_at_ms=_from_sql(captured_at_ms),
            received_at_ms=received_at_ms,
            mime=mime,
            payload=payload,
        )

    def highest_seq(self, device_id: str) -> int | None:
        """Highest sequence number ever recorded for the device, even if since evicted."""
        with self._lock:
            (stored,) = self._db.execute(
                "SELECT MAX(seq) FROM frames WHERE device = ?", (device_id,)
            ).fetchone()
            evicted_row = self._db.execute(
                "SELECT through_seq FROM evicted WHERE device = ?", (device_id,)
            ).fetchone()
        candidates = [
            value for value in (stored, evicted_row and evicted_row[0]) if value is not None
        ]
        return _from_sql(max(candidates)) if candidates else None

    def evicted_through(self, device_id: str) -> int | None:
        """Highest sequence number retention dropped for the device (None: none dropped)."""
        with self._lock:
            row = self._db.execute(
                "SELECT through_seq FROM evicted WHERE device = ?", (device_id,)
            ).fetchone()
        return None if row is None else _from_sql(row[0])

    def seqs(self, device_id: str) -> list[int]:
        """Sequence numbers currently stored for the device, ascending."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq FROM frames WHERE device = ? ORDER BY seq", (device_id,)
            ).fetchall()
        return [_from_sql(seq) for (seq,) in rows]

    def cameras(self) -> list[CameraRecording]:
        """Every camera with stored frames (recordings are browsed by capture time)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT device, COUNT(*), SUM(size), MIN(captured_at_ms), MAX(captured_at_ms),"
                " MAX(received_at_ms) FROM frames GROUP BY device ORDER BY device"
            ).fetchall()
        return [
            CameraRecording(device, count, size, _from_sql(first), _from_sql(last), received)
            for device, count, size, first, last, received in rows
        ]

    def remember_name(self, device_id: str, name: str) -> None:
        """Keep the name a device's hello gave (PROTOCOL.md section 4), so its recordings
        and its offline tile are still labelled after a restart; writes only a change."""
        with self._lock:
            if self._names.get(device_id) == name:
                return
            self._db.execute(
                "INSERT OR REPLACE INTO device_names (device, name) VALUES (?, ?)",
                (device_id, name),
            )
            self._names[device_id] = name

    def names(self) -> dict[str, str]:
        """Device identifier → the last name its hello gave, for every device that gave one."""
        with self._lock:
            return dict(self._names)

    def index(
        self, device_id: str, from_ms: int, to_ms: int, limit: int = 100_000
    ) -> list[FrameEntry]:
        """Frames of ``device_id`` captured in [from_ms, to_ms], in capture order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, captured_at_ms, mime, size FROM frames WHERE device = ?"
                " AND captured_at_ms BETWEEN ? AND ? ORDER BY captured_at_ms, seq LIMIT ?",
                (device_id, _time_to_sql(from_ms), _time_to_sql(to_ms), limit),
            ).fetchall()
        return [
            FrameEntry(_from_sql(seq), _from_sql(at), mime, size) for seq, at, mime, size in rows
        ]

    def read(self, device_id: str, seq: int) -> StoredFrame | None:
        """One stored frame with its payload; None when it is not (or no longer) stored."""
        with self._lock:
            row = self._db.execute(
                "SELECT captured_at_ms, received_at_ms, mime, dir, name FROM frames"
                " WHERE device = ? AND seq = ?",
                (device_id, _to_sql(seq)),
            ).fetchone()
            if row is None:
                return None
            captured_at_ms, received_at_ms, mime, directory, name = row
            try:
                payload = (self._frames_root / directory / name).read_bytes()
            except FileNotFoundError:
                return None
        return StoredFrame(device_id, seq, _from_sql(captured_at_ms), received_at_ms, mime, payload)

    def delete_range(self, device_id: str, from_ms: int, to_ms: int) -> int:
        """Delete the frames of ``device_id`` captured in [from_ms, to_ms]; returns how many.

        Rows go first (committed), files second, as retention does, so a crash between
        leaves orphan files that start-up removes.
        """
        with self._lock:
            victims = self._db.execute(
                "SELECT id, size, dir, name FROM frames WHERE device = ?"
                " AND captured_at_ms BETWEEN ? AND ?",
                (device_id, _time_to_sql(from_ms), _time_to_sql(to_ms)),
            ).fetchall()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM frames WHERE id = ?", [(v[0],) for v in victims])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            for _, _, directory, name in victims:
                (self._frames_root / directory / name).unlink(missing_ok=True)
            self._bytes_stored -= sum(v[1] for v in victims)
        return len(victims)

    @property
    def retention_bytes(self) -> int:
        """The size bound the oldest frames are removed to keep under."""
        return self._retention_bytes

    # Internals; callers hold the lock.

    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)", (_SCHEMA_VERSION,)
            )
        elif row[0] != _SCHEMA_VERSION:
            raise StateError(
                f"recorder index has schema {row[0]}, expected {_SCHEMA_VERSION}",
                reason="schema-version",
            )

    def _has_row(self, device_id: str, seq: int) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM frames WHERE device = ? AND seq = ?", (device_id, _to_sql(seq))
        ).fetchone()
        return row is not None

    def _is_expired(self, device_id: str, seq: int) -> bool:
        # A frame at or below the highest evicted seq of its device was either stored before
        # and evicted, or is older than what retention already discarded; storing it again
        # would break "stored at most once" (PROTOCOL.md section 4), so it is refused.
        row = self._db.execute(
            "SELECT through_seq FROM evicted WHERE device = ?", (device_id,)
        ).fetchone()
        return row is not None and _to_sql(seq) <= row[0]

    def _write_files(self, accepted: list[tuple[IncomingFrame, str, str]]) -> None:
        written: list[Path] = []
        descriptors: list[int] = []
        touched_dirs: set[str] = set()
        try:
            # All files are written before any is synced, so the file system can flush the
            # batch together; each is still synced before its row is committed.
            for frame, directory, name in accepted:
                if directory not in self._known_dirs:
                    self._make_device_dir(directory)
                path = self._frames_root / directory / name
                written.append(path)
                descriptors.append(_write_file(path, frame.payload))
                touched_dirs.add(directory)
            while descriptors:
                descriptor = descriptors.pop()
                try:
                    _sync_data(descriptor)
                finally:
                    os.close(descriptor)
            # A new directory entry is durable only once its directory is fsynced.
            for directory in touched_dirs:
                _fsync_directory(self._frames_root / directory)
        except BaseException:
            for descriptor in descriptors:
                os.close(descriptor)
            for path in written:
                path.unlink(missing_ok=True)
            raise

    def _make_device_dir(self, directory: str) -> None:
        path = self._frames_root / directory
        if not path.is_dir():
            path.mkdir()
            _fsync_directory(self._frames_root)
        self._known_dirs.add(directory)

    def _insert_rows(self, accepted: list[tuple[IncomingFrame, str, str]]) -> None:
        rows = [
            (
                frame.device_id,
                _to_sql(frame.seq),
                _to_sql(frame.captured_at_ms),
                frame.received_at_ms,
                frame.mime,
                len(frame.payload),
                directory,
                name,
            )
            for frame, directory, name in accepted
        ]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO frames (device, seq, captured_at_ms, received_at_ms, mime, size, "
                "dir, name) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            # Without their rows the files are orphans; remove them now rather than at restart.
            for _, directory, name in accepted:
                (self._frames_root / directory / name).unlink(missing_ok=True)
            raise

    def _enforce_retention(self) -> None:
        if self._bytes_stored <= self._retention_bytes:
            return
        excess = self._bytes_stored - self._retention_bytes
        victims: list[tuple[int, str, int, int, str, str]] = []
        freed = 0
        cursor = self._db.execute("SELECT id, device, seq, size, dir, name FROM frames ORDER BY id")
        for row in cursor:
            victims.append(row)
            freed += row[3]
            if freed >= excess:
                break
        cursor.close()
        highest_evicted: dict[str, int] = {}
        for _, device, seq, _, _, _ in victims:
            highest_evicted[device] = max(seq, highest_evicted.get(device, seq))
        # Rows go first (committed), files second: a crash in between leaves orphan files,
        # which start-up removes, never a row without its file.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("DELETE FROM frames WHERE id = ?", [(v[0],) for v in victims])
            self._db.executemany(
                "INSERT INTO evicted (device, through_seq) VALUES (?, ?) ON CONFLICT (device) "
                "DO UPDATE SET through_seq = MAX(through_seq, excluded.through_seq)",
                list(highest_evicted.items()),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        for _, _, _, _, directory, name in victims:
            (self._frames_root / directory / name).unlink(missing_ok=True)
        self._bytes_stored -= freed
        self.evicted += len(victims)
        self.evicted_bytes += freed

    def _remove_orphans(self) -> None:
        # A crash after a file was written but before its row was committed (or after a row
        # was deleted but before its file was) leaves a file the index does not know.
        for device_dir in self._frames_root.iterdir():
            if not device_dir.is_dir():
                continue
            indexed = {
                name
                for (name,) in self._db.execute(
                    "SELECT name FROM frames WHERE dir = ?", (device_dir.name,)
                )
            }
            for entry in device_dir.iterdir():
                if entry.name not in indexed and entry.is_file():
                    entry.unlink()
                    self.orphans_removed += 1
            self._known_dirs.add(device_dir.name)


def _write_file(path: Path, payload: bytes) -> int:
    """Create ``path`` holding ``payload``; return the still-open descriptor for syncing."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(payload)
        while view:
            written = os.write(descriptor, view)
            view = view[written:]
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


# fdatasync also flushes the file size, which is all a newly written file needs; platforms
# without it fall back to fsync.
_sync_data = getattr(os, "fdatasync", os.fsync)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
