"""The events timeline on disk: filters, order, and the retention bounds."""

from __future__ import annotations

from pathlib import Path

from roost.hub.eventlog import EventLog, EventQuery, EventRetention
from roost.hub.events import EventKind, HomeEvent

HUB = "hcsp:AAAAAAAAAAAAAAAAAAAAAA"


def _event(at_ms: int, kind: EventKind = EventKind.HANDOVER, subject: str = "") -> HomeEvent:
    return HomeEvent(at_ms, kind, HUB, subject, "", f"{kind} at {at_ms}")


def test_events_come_back_newest_first_and_filtered(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.sqlite3")
    ids = log.append(
        [
            _event(10),
            _event(20, EventKind.CAMERA_ONLINE, "ab:x"),
            _event(30, EventKind.REDIRECT),
            _event(40, EventKind.CAMERA_ONLINE, "ab:y"),
        ]
    )
    assert ids == sorted(ids) and len(set(ids)) == 4
    every = log.query(EventQuery())
    assert [event.at_ms for _, event in every] == [40, 30, 20, 10]
    cameras = log.query(EventQuery(kinds=("camera-online",)))
    assert [event.subject for _, event in cameras] == ["ab:y", "ab:x"]
    assert [e.at_ms for _, e in log.query(EventQuery(since_ms=20, until_ms=30))] == [30, 20]
    assert [e.at_ms for _, e in log.query(EventQuery(after_id=ids[2]))] == [40]
    assert [e.subject for _, e in log.query(EventQuery(subject="ab:x"))] == ["ab:x"]
    assert len(log.query(EventQuery(limit=2))) == 2
    log.close()
    reopened = EventLog(tmp_path / "events.sqlite3")
    assert reopened.count() == 4
    reopened.close()


def test_retention_bounds_rows_and_age(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite3", EventRetention(max_rows=100, max_age_ms=1000))
    for start in range(0, 600, 50):
        log.append([_event(at) for at in range(start, start + 50)])
    # Appends prune every few hundred events; an explicit prune applies both bounds now.
    log.prune(now_ms=650)
    kept = [event.at_ms for _, event in log.query(EventQuery(limit=1000))]
    assert len(kept) == 100 and kept[0] == 599 and kept[-1] == 500
    log.prune(now_ms=1550)
    assert [e.at_ms for _, e in log.query(EventQuery(limit=1000))][-1] >= 550
    log.prune(now_ms=10_000)
    assert log.count() == 0
    log.close()
