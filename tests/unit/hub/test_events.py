"""The events timeline from two status snapshots (pure): one event per difference."""

from __future__ import annotations

import dataclasses

from hypothesis import given

from roost.hub.events import EventKind, HomeEvent, TrustFetchView, status_events
from roost.hub.status import HubCountersView, HubEntry, HubStatus, RemoteStatus
from roost.status import TrustSummary
from tests.helpers.statuses import hub_statuses

ME = "hcsp:AAAAAAAAAAAAAAAAAAAAAA"
PEER = "hcsp:BBBBBBBBBBBBBBBBBBBBBB"
CAM_A = "ab:AAAAAAAAAAAAAAAAAAAAAA"
CAM_B = "ab:BBBBBBBBBBBBBBBBBBBBBB"


def _entry(identifier: str, rank: int) -> HubEntry:
    return HubEntry(identifier, "127.0.0.1:1", ("hcsp",), 0, 8, rank, identifier == ME, 0.0)


def _counters(**changes: object) -> HubCountersView:
    base = HubCountersView(0, {}, 0, 0, 0, 0, 0, {}, {}, {})
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _status(**changes: object) -> HubStatus:
    base = HubStatus(
        identifier=ME,
        name="hub-1",
        endpoint="127.0.0.1:1",
        features=("hcsp",),
        max_devices=8,
        connected=(CAM_A,),
        winner=ME,
        hubs=(_entry(ME, 1),),
        trust=TrustSummary(1, None, "2026-01-01T00:00:00+00:00"),
        counters=_counters(),
        remote=RemoteStatus(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, {}),
        uptime_s=1.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _kinds(events: list[HomeEvent]) -> list[EventKind]:
    return [event.kind for event in events]


def test_nothing_changed_is_no_event() -> None:
    assert status_events(_status(), _status(), 1) == []


def test_a_better_hub_appearing_is_a_handover_with_redirects() -> None:
    before = _status()
    after = _status(
        winner=PEER,
        hubs=(_entry(PEER, 1), _entry(ME, 2)),
        connected=(),
        counters=_counters(redirects_sent=1),
    )
    events = status_events(before, after, 5)
    assert _kinds(events) == [
        EventKind.HUB_UP,
        EventKind.HANDOVER,
        EventKind.CAMERA_OFFLINE,
        EventKind.REDIRECT,
    ]
    handover = events[1]
    assert handover.subject == PEER and PEER in handover.text and ME in handover.text
    assert handover.at_ms == 5 and handover.hub == ME
    assert events[2].subject == CAM_A and events[3].count == 1


def test_the_elected_hub_going_silent_is_a_failover() -> None:
    before = _status(winner=PEER, hubs=(_entry(PEER, 1), _entry(ME, 2)))
    after = _status(winner=ME, connected=(CAM_A, CAM_B))
    events = status_events(before, after, 1)
    assert _kinds(events) == [EventKind.FAILOVER, EventKind.HANDOVER, EventKind.CAMERA_ONLINE]
    assert events[0].subject == PEER and events[2].subject == CAM_B


def test_a_silent_hub_that_was_not_elected_is_only_down() -> None:
    before = _status(hubs=(_entry(ME, 1), _entry(PEER, 2)))
    assert _kinds(status_events(before, _status(), 1)) == [EventKind.HUB_DOWN]


def test_refusals_are_events_with_their_reason_and_count() -> None:
    before = _status(counters=_counters(announcements_rejected={"bad-signature": 2}))
    after = _status(
        counters=_counters(
            announcements_rejected={"bad-signature": 5, "stale": 1},
            connections_rejected={"full": 2},
            trust_rejected={"rollback": 1},
        )
    )
    events = status_events(before, after, 1)
    seen = {(e.kind, e.reason, e.count) for e in events}
    assert seen == {
        (EventKind.ANNOUNCEMENT_REFUSED, "bad-signature", 3),
        (EventKind.ANNOUNCEMENT_REFUSED, "stale", 1),
        (EventKind.CONNECTION_REFUSED, "full", 2),
        (EventKind.TRUST_REJECTED, "rollback", 1),
    }


def test_trust_generations_and_fetches_are_events() -> None:
    prepared = _status(trust=TrustSummary(1, 2, "2026-01-01T00:00:00+00:00"))
    promoted = _status(trust=TrustSummary(2, None, "2026-02-01T00:00:00+00:00"))
    assert _kinds(status_events(_status(), prepared, 1)) == [EventKind.TRUST_PREPARED]
    assert _kinds(status_events(prepared, promoted, 1)) == [EventKind.TRUST_PROMOTED]
    fetched = status_events(
        _status(),
        _status(),
        1,
        TrustFetchView(3, "stored", True),
        TrustFetchView(4, "fetch", False),
    )
    assert _kinds(fetched) == [EventKind.TRUST_FETCH]
    assert "unreachable" in fetched[0].text and fetched[0].reason == "fetch"


def test_remote_logins_are_events() -> None:
    after = _status(remote=RemoteStatus(0, 2, 0, 0, 1, 0, 1, 0, 0, 0, {"bad-proof": 1}))
    events = status_events(_status(), after, 1)
    assert _kinds(events) == [EventKind.REMOTE_LOGIN, EventKind.REMOTE_LOGIN_FAILED]
    assert events[1].reason == "bad-proof"


@given(hub_statuses(), hub_statuses())
def test_any_two_snapshots_give_events_that_serialise(before: HubStatus, after: HubStatus) -> None:
    for event in status_events(before, after, 7):
        doc = event.to_json()
        assert doc["kind"] in {kind.value for kind in EventKind}
        assert isinstance(doc["text"], str) and doc["count"] >= 1
    assert status_events(after, after, 7) == []


def test_camera_events_name_the_camera_next_to_its_identifier() -> None:
    # PROTOCOL.md section 4: the hello's name labels the timeline; the subject stays the id.
    named = _status(connected=(CAM_A,), connected_names={CAM_A: "porch"})
    (online,) = status_events(_status(connected=()), named, 1)
    assert online.kind is EventKind.CAMERA_ONLINE and online.subject == CAM_A
    assert f"camera porch ({CAM_A}) connected to hub-1" == online.text
    # The camera that left is named from the snapshot that still had it.
    (offline,) = status_events(named, _status(connected=()), 2)
    assert offline.kind is EventKind.CAMERA_OFFLINE and f"porch ({CAM_A})" in offline.text
    # An older device without a name is shown by its identifier alone.
    (bare,) = status_events(_status(connected=()), _status(), 3)
    assert bare.text == f"camera {CAM_A} connected to hub-1"
