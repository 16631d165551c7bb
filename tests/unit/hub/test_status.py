"""The hub's typed status document: the JSON shape readers depend on, and its round trip."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given

from roost.errors import RemoteProtocolError
from roost.guard.aio import GuardServerCounters
from roost.hub.daemon import HubCounters
from roost.hub.status import HubCountersView, HubEntry, HubStatus, RemoteStatus
from roost.status import TrustSummary
from tests.helpers.statuses import hub_statuses

# The keys of GET /api/status, in order: the dashboard, `roost hub status --json`, the
# benchmarks and tests/helpers/home.py read them (docs/dashboard.md, "Status document").
STATUS_KEYS = [
    "id",
    "name",
    "endpoint",
    "features",
    "max",
    "connected",
    "connected_names",
    "winner",
    "hubs",
    "trust",
    "counters",
    "remote",
    "uptime_s",
    "broker",
    "dns_sd",
]
HUB_KEYS = ["id", "endpoint", "features", "connected", "max", "rank", "self", "last_seen_s_ago"]
COUNTER_KEYS = [
    "announcements_accepted",
    "announcements_rejected",
    "announcements_sent",
    "own_echoes",
    "redirects_sent",
    "frames_stored",
    "frames_duplicate",
    "connections_rejected",
    "channel_errors",
    "trust_rejected",
]
REMOTE_KEYS = [
    "active",
    "connections",
    "refused_busy",
    "refused_rate",
    "logins_ok",
    "logins_granted",
    "logins_failed",
    "calls",
    "sessions_expired",
    "stream_errors",
    "rejected",
]


def _wire(status: HubStatus) -> dict[str, Any]:
    """What a client receives: the document through JSON text."""
    doc: dict[str, Any] = json.loads(json.dumps(status.to_json()))
    return doc


@given(hub_statuses())
def test_round_trip_through_json(status: HubStatus) -> None:
    assert HubStatus.from_json(_wire(status)) == status


@given(hub_statuses())
def test_keys_and_value_shapes_are_the_documented_ones(status: HubStatus) -> None:
    doc = _wire(status)
    assert list(doc) == STATUS_KEYS
    assert doc["id"] == status.identifier and doc["max"] == status.max_devices
    assert doc["features"] == list(status.features)
    assert doc["connected"] == list(status.connected)
    assert doc["connected_names"] == dict(status.connected_names)
    assert set(doc["connected_names"]) <= set(doc["connected"])
    assert list(doc["trust"]) == ["current", "prepared", "time_floor"]
    assert list(doc["counters"]) == COUNTER_KEYS
    for key in COUNTER_KEYS:
        assert doc["counters"][key] == _plain(getattr(status.counters, key))
    assert len(doc["hubs"]) == len(status.hubs)
    for entry, hub in zip(doc["hubs"], status.hubs, strict=True):
        assert list(entry) == HUB_KEYS
        assert (entry["id"], entry["max"], entry["self"]) == (
            hub.identifier,
            hub.max_clients,
            hub.is_self,
        )
    if status.remote is None:
        assert doc["remote"] is None
    else:
        assert list(doc["remote"]) == REMOTE_KEYS
        assert doc["remote"]["active"] == status.remote.active
        assert doc["remote"]["rejected"] == dict(status.remote.rejected)


def _plain(value: object) -> object:
    return dict(value) if isinstance(value, dict) else value


@given(hub_statuses())
def test_extra_keys_are_ignored_and_a_missing_remote_reads_as_none(status: HubStatus) -> None:
    doc = _wire(status)
    doc["devices"] = [{"id": "ab:x", "frames_stored": 1, "last_seq": 1, "connected_s": 0.5}]
    assert HubStatus.from_json(doc) == status
    del doc["remote"]
    assert HubStatus.from_json(doc) == dataclasses.replace(status, remote=None)
    # A hub from before device names sends no ``connected_names``: no names, not an error.
    del doc["connected_names"]
    assert HubStatus.from_json(doc) == dataclasses.replace(status, remote=None, connected_names={})


def _example() -> dict[str, Any]:
    status = HubStatus(
        identifier="hcsp:Qm9vc3RIdWJPbmVfX19fXw",
        name="attic",
        endpoint="192.0.2.10:7400",
        features=("jpeg",),
        max_devices=8,
        connected=("ab:Qm9vc3REZXZpY2VPbmVfXw",),
        winner=None,
        connected_names={"ab:Qm9vc3REZXZpY2VPbmVfXw": "porch"},
        hubs=(
            HubEntry("hcsp:Qm9vc3RIdWJPbmVfX19fXw", "192.0.2.10:7400", ("jpeg",), 0, 8, 1, True, 0),
        ),
        trust=TrustSummary(1, None, "2025-01-01T00:00:00+00:00"),
        counters=HubCountersView(0, {}, 0, 0, 0, 0, 0, {}, {}, {}),
        remote=RemoteStatus(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, {}),
        uptime_s=1.5,
    )
    return _wire(status)


# ``remote`` and ``broker`` are optional: a missing one reads as None (a hub without it).
@pytest.mark.parametrize(
    "key",
    [key for key in STATUS_KEYS if key not in ("remote", "broker", "dns_sd", "connected_names")],
)
def test_a_missing_key_is_malformed(key: str) -> None:
    doc = _example()
    del doc[key]
    with pytest.raises(RemoteProtocolError) as caught:
        HubStatus.from_json(doc)
    assert caught.value.reason == "malformed"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("max",), True),
        (("max",), "8"),
        (("uptime_s",), None),
        (("features",), "jpeg"),
        (("features",), [1]),
        (("connected",), None),
        (("winner",), 3),
        (("hubs",), {}),
        (("hubs",), ["hcsp:x"]),
        (("hubs", 0, "self"), 1),
        (("hubs", 0, "rank"), 1.0),
        (("trust",), 1),
        (("trust", "prepared"), "2"),
        (("counters", "frames_stored"), -0.5),
        (("counters", "channel_errors"), []),
        (("counters", "channel_errors"), {"full": "1"}),
        (("remote",), []),
        (("remote", "calls"), False),
        (("connected_names",), ["porch"]),
        (("connected_names", "ab:Qm9vc3REZXZpY2VPbmVfXw"), 7),
    ],
)
def test_a_value_of_the_wrong_type_is_malformed(path: tuple[str | int, ...], value: object) -> None:
    doc = _example()
    parent: Any = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    with pytest.raises(RemoteProtocolError) as caught:
        HubStatus.from_json(doc)
    assert caught.value.reason == "malformed"


def test_a_document_that_is_not_an_object_is_malformed() -> None:
    with pytest.raises(RemoteProtocolError):
        HubStatus.from_json([])  # type: ignore[arg-type]


def test_every_daemon_counter_has_a_field() -> None:
    # A counter added to the daemon or the guard server but not to the status document
    # would be counted and never shown; the status views name each one.
    view = {f.name for f in dataclasses.fields(HubCountersView)}
    assert {f.name for f in dataclasses.fields(HubCounters)} <= view
    remote = {f.name for f in dataclasses.fields(RemoteStatus)}
    assert remote == {f.name for f in dataclasses.fields(GuardServerCounters)} | {
        "active",
        "rejected",
    }


def test_snapshots_are_frozen() -> None:
    status = HubStatus.from_json(_example())
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.uptime_s = 2.0  # type: ignore[misc]
    assert not hasattr(status, "__dict__")
