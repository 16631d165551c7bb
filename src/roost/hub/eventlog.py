"""The events timeline on disk: ``STATE/events.sqlite3``, bounded in rows and in age.

Events are rare (a handover, a refusal counted once per snapshot), so each is one small
insert on the event loop; retention runs every few hundred inserts and deletes by age and
then by count, so the file stays bounded however long a hub runs.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from roost.errors import StateError
from roost.hub.events import EventKind, HomeEvent

__all__ = ["EventLog", "EventQuery", "EventRetention"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    hub TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    text TEXT NOT NULL,
    count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at_ms);
"""
_PRUNE_EVERY = 256


@dataclass(frozen=True, slots=True)
class EventRetention:
    """How much of the timeline is kept."""

    max_rows: int = 100_000
    max_age_ms: int = 30 * 86_400_000


@dataclass(frozen=True, slots=True)
class EventQuery:
    """A filter over the timeline; empty fields match everything."""

    kinds: tuple[str, ...] = ()
    subject: str = ""
    since_ms: int = 0
    until_ms: int = 0
    after_id: int = 0
    limit: int = 200


class EventLog:
    """Append and query home events; thread-safe (one connection, one lock)."""

    FILENAME = "events.sqlite3"

    def __init__(self, path: Path | str, retention: EventRetention | None = None) -> None:
        self.retention = retention or EventRetention()
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the event log {path}: {exc}") from exc
        self._since_prune = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, events: Iterable[HomeEvent]) -> list[int]:
        """Store events; returns their ids (ascending)."""
        ids: list[int] = []
        batch = list(events)
        with self._lock:
            for event in batch:
                cursor = self._db.execute(
                    "INSERT INTO events (at_ms, kind, hub, subject, reason, text, count)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        event.at_ms,
                        event.kind.value,
                        event.hub,
                        event.subject,
                        event.reason,
                        event.text,
                        event.count,
                    ),
                )
                ids.append(int(cursor.lastrowid or 0))
            self._since_prune += len(ids)
            if batch and self._since_prune >= _PRUNE_EVERY:
                self._prune(max(event.at_ms for event in batch))
        return ids

    def prune(self, now_ms: int) -> None:
        """Apply the retention bounds now."""
        with self._lock:
            self._prune(now_ms)

    def _prune(self, now_ms: int) -> None:
        self._since_prune = 0
        self._db.execute(
            "DELETE FROM events WHERE at_ms < ?", (now_ms - self.retention.max_age_ms,)
        )
        self._db.execute(
            "DELETE FROM events WHERE id <= (SELECT COALESCE(MAX(id), 0) FROM events) - ?",
            (self.retention.max_rows,),
        )

    def query(self, query: EventQuery) -> list[tuple[int, HomeEvent]]:
        """Matching events, newest first, with their ids."""
        clauses: list[str] = []
        args: list[object] = []
        if query.kinds:
            clauses.append(f"kind IN ({','.join('?' * len(query.kinds))})")
            args.extend(query.kinds)
        # Each filter applies when it is set (a value of 0 or "" means "any").
        filters: tuple[tuple[str, object], ...] = (
            ("subject = ?", query.subject),
            ("at_ms >= ?", query.since_ms),
            ("at_ms <= ?", query.until_ms),
            ("id > ?", query.after_id),
        )
        for clause, value in filters:
            if value:
                clauses.append(clause)
                args.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            "SELECT id, at_ms, kind, hub, subject, reason, text, count FROM events"
            f"{where} ORDER BY id DESC LIMIT ?"
        )
        args.append(max(1, min(query.limit, 1000)))
        with self._lock:
            return self._select(sql, args)

    def count(self) -> int:
        with self._lock:
            (total,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(total)

    def _select(self, sql: str, args: Iterable[object]) -> list[tuple[int, HomeEvent]]:
        rows = self._db.execute(sql, tuple(args)).fetchall()
        result = []
        for row_id, at_ms, kind, hub, subject, reason, text, count in rows:
            try:
                event_kind = EventKind(kind)
            except ValueError:
                continue  # a kind from a newer version: not shown rather than misnamed
            result.append((row_id, HomeEvent(at_ms, event_kind, hub, subject, reason, text, count)))
        return result
