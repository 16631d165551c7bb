"""The table-driven Prometheus collector: every counter of the hub's status is exported
once, under its documented name, with the value the status holds."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from roost.hub.api import build_app
from roost.hub.recorder import StoredFrame
from roost.hub.status import (
    BrokerAgentStatus,
    HubCountersView,
    HubEntry,
    HubStatus,
    RemoteStatus,
)
from roost.metrics import HUB_METRICS, MetricRow, StatusCollector, counter
from roost.status import TrustSummary
from tests.helpers.statuses import hub_statuses

OWN_HUB = "hcsp:Qm9vc3RIdWJPbmVfX19fXw"
PEER_HUB = "hcsp:UGVlckh1YlR3b19fX19fXw"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, key
            samples[key] = sample.value
    return samples


def _render(status: HubStatus) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: status, HUB_METRICS))
    return generate_latest(registry).decode("utf-8")


def _counters(
    prefix: str,
    view: HubCountersView | RemoteStatus | BrokerAgentStatus,
    skip: frozenset[str] = frozenset(),
) -> Samples:
    """The documented naming rule (docs/dashboard.md): a total is ``<prefix><field>_total``,
    a count by reason adds a ``reason`` label; derived from the fields, not from the table."""
    expected: Samples = {}
    for f in dataclasses.fields(view):
        if f.name in skip:
            continue
        value = getattr(view, f.name)
        name = f"{prefix}{f.name}_total"
        if isinstance(value, Mapping):
            for reason, count in value.items():
                expected[(name, (("reason", reason),))] = float(count)
        else:
            expected[(name, ())] = float(value)
    return expected


def _expected(status: HubStatus) -> Samples:
    info = {
        "id": status.identifier,
        "name": status.name,
        "endpoint": status.endpoint,
        "features": ",".join(status.features),
    }
    expected: Samples = {
        ("roost_hub_info", tuple(sorted(info.items()))): 1.0,
        ("roost_hub_connected_devices", ()): float(len(status.connected)),
        ("roost_hub_max_devices", ()): float(status.max_devices),
        **{
            (
                "roost_hub_device_info",
                (("device", device), ("name", status.connected_names.get(device, ""))),
            ): 1.0
            for device in status.connected
        },
        ("roost_hub_live_hubs", ()): float(len(status.hubs)),
        ("roost_hub_is_winner", ()): 1.0 if status.winner == status.identifier else 0.0,
        ("roost_hub_uptime_seconds", ()): status.uptime_s,
    }
    expected |= _counters("roost_hub_", status.counters)
    if status.remote is not None:
        expected[("roost_hub_remote_sessions", ())] = float(status.remote.active)
        expected |= _counters("roost_hub_remote_", status.remote, skip=frozenset({"active"}))
    if status.broker is not None:
        broker = status.broker
        expected[("roost_hub_broker_enrolled", ())] = 1.0 if broker.enrolled else 0.0
        expected[("roost_hub_broker_sessions", ())] = float(broker.sessions)
        expected[("roost_hub_broker_holding", ())] = 1.0 if broker.holding else 0.0
        skip = frozenset({"state", "enrolled", "reflexive", "sessions", "broker", "holding"})
        expected |= _counters("roost_hub_broker_", broker, skip=skip)
    if status.dns_sd is not None:
        expected[("roost_hub_dns_sd_hubs", ())] = float(len(status.dns_sd))
    return expected


@given(hub_statuses())
def test_the_scrape_holds_exactly_the_status_values(status: HubStatus) -> None:
    assert _scrape(_render(status)) == _expected(status)


def _example() -> HubStatus:
    # Distinct values everywhere, so a row reading the wrong field cannot pass by accident.
    return HubStatus(
        identifier=OWN_HUB,
        name='attic "north"',
        endpoint="192.0.2.10:7400",
        features=("jpeg", "night"),
        max_devices=8,
        connected=("ab:EIW6Qe0ARnWrsJZTsHWadA", "ab:gC3YWhxMRQGZVBboYIEgxw"),
        connected_names={"ab:EIW6Qe0ARnWrsJZTsHWadA": "porch"},
        winner=PEER_HUB,
        hubs=(
            HubEntry(PEER_HUB, "192.0.2.11:7400", ("jpeg",), 3, 16, 1, False, 0.42),
            HubEntry(OWN_HUB, "192.0.2.10:7400", ("jpeg", "night"), 2, 8, 2, True, 0.0),
        ),
        trust=TrustSummary(3, 4, "2025-01-01T00:00:00+00:00"),
        counters=HubCountersView(
            announcements_accepted=41,
            announcements_rejected={"bad-signature": 3, "stale": 2},
            announcements_sent=17,
            own_echoes=16,
            redirects_sent=5,
            frames_stored=1234,
            frames_duplicate=7,
            connections_rejected={"full": 1},
            channel_errors={"disconnected": 9},
            trust_rejected={"chain": 4},
        ),
        remote=RemoteStatus(
            active=1,
            connections=6,
            refused_busy=10,
            refused_rate=11,
            logins_ok=4,
            logins_granted=3,
            logins_failed=2,
            calls=19,
            sessions_expired=12,
            stream_errors=13,
            rejected={"bad-proof": 14},
        ),
        uptime_s=93.5,
        broker=BrokerAgentStatus(
            state="registering",
            enrolled=True,
            reflexive="198.51.100.7:40000",
            registrations=20,
            acks=19,
            enrollments=1,
            fallbacks=2,
            wakes=3,
            accepted=2,
            rejected={"bad-password": 1},
            direct=1,
            relayed=1,
            switched=1,
            learned=1,
            sessions=1,
            ignored={"bad-tag": 5},
            broker="127.0.0.1:7443",
            rehomed=1,
            holding=True,
            held_requests=4,
            keepalive_timeouts=1,
            hold_refused={"held-limit": 1},
        ),
        dns_sd=({"id": "hcsp:dnssdHintAAAAAAAAAAAAAA", "endpoint": "192.0.2.11:7400"},),
    )


# ------------------------------------------------------- every field, every row, once


def _leaves(status: HubStatus) -> Iterator[tuple[str, HubStatus]]:
    """Each leaf field of the status, with a copy of `status` where only it changed."""
    for f in dataclasses.fields(HubStatus):
        if f.name in ("counters", "remote", "broker"):
            continue
        yield f.name, dataclasses.replace(status, **{f.name: _changed(status, f.name)})
    for f in dataclasses.fields(HubCountersView):
        view = dataclasses.replace(status.counters, **{f.name: _changed(status.counters, f.name)})
        yield f"counters.{f.name}", dataclasses.replace(status, counters=view)
    assert status.remote is not None
    for f in dataclasses.fields(RemoteStatus):
        remote = dataclasses.replace(status.remote, **{f.name: _changed(status.remote, f.name)})
        yield f"remote.{f.name}", dataclasses.replace(status, remote=remote)
    assert status.broker is not None
    for f in dataclasses.fields(BrokerAgentStatus):
        broker = dataclasses.replace(status.broker, **{f.name: _changed(status.broker, f.name)})
        yield f"broker.{f.name}", dataclasses.replace(status, broker=broker)


def _changed(owner: Any, name: str) -> Any:
    value = getattr(owner, name)
    if name == "winner":
        return owner.identifier
    if name == "hubs":
        return (*value, value[0])
    if name == "connected_names":
        # Only a connected device's name is exported, so rename those.
        return {device: "renamed" for device in owner.connected}
    if isinstance(value, TrustSummary):
        return TrustSummary(value.current + 1, None, value.time_floor + "x")
    if isinstance(value, Mapping):
        return {**value, "perturbed": 1}
    if isinstance(value, tuple):
        return (*value, "x")
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, bool):
        return not value
    assert isinstance(value, int | float), name
    return value + 1


def _rows_reading(base: HubStatus, changed: HubStatus) -> set[str]:
    return {row.name for row in HUB_METRICS if row.samples(base) != row.samples(changed)}


# The trust generations are in the status document for the dashboard but not exported, nor
# are the broker link's state and reflexive address (text, for the page).
NOT_EXPORTED = {"trust", "broker.state", "broker.reflexive", "broker.broker"}


def test_every_status_field_is_exported_by_a_row_and_every_row_reads_a_field() -> None:
    base = _example()
    read = {field: _rows_reading(base, changed) for field, changed in _leaves(base)}
    for field, rows in read.items():
        if field in NOT_EXPORTED:
            assert rows == set(), field
        elif "." in field:
            # A counter belongs to exactly one family; two would count it twice.
            assert len(rows) == 1, (field, rows)
        else:
            assert rows, field
    exported = set().union(*read.values())
    assert exported == {row.name for row in HUB_METRICS}


def test_without_a_remote_entrance_no_remote_family_is_exported() -> None:
    status = dataclasses.replace(_example(), remote=None)
    names = {family.name for family in text_string_to_metric_families(_render(status))}
    assert names
    assert not [name for name in names if name.startswith("roost_hub_remote_")]
    assert "roost_hub_frames_stored" in names


def test_a_count_by_reason_is_exported_before_the_first_refusal() -> None:
    status = _example()
    quiet = dataclasses.replace(
        status, counters=dataclasses.replace(status.counters, channel_errors={})
    )
    families = {f.name: f for f in text_string_to_metric_families(_render(quiet))}
    assert families["roost_hub_channel_errors"].type == "counter"
    assert families["roost_hub_channel_errors"].samples == []


def test_a_table_naming_a_family_twice_is_refused() -> None:
    twice: list[MetricRow[HubStatus]] = [
        counter("roost_hub_frames_stored", "Frames.", lambda s: s.counters.frames_stored),
        counter("roost_hub_frames_stored", "Again.", lambda s: s.counters.frames_duplicate),
    ]
    with pytest.raises(ValueError):
        StatusCollector(_example, twice)


def test_a_registry_refuses_a_second_collector_of_the_same_families() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(_example, HUB_METRICS))
    with pytest.raises(ValueError):
        registry.register(StatusCollector(_example, HUB_METRICS))


# ------------------------------------------------------------------- through the API


class _NoFrames:
    def latest(self, device_id: str) -> StoredFrame | None:
        return None


class _Hub:
    def __init__(self, status: HubStatus) -> None:
        self.snapshot = status
        self.recorder = _NoFrames()
        self.sessions: dict[str, Any] = {}

    def status(self) -> HubStatus:
        return self.snapshot


async def test_the_metrics_page_equals_the_status_page() -> None:
    hub = _Hub(_example())
    async with TestClient(TestServer(build_app(hub))) as client:
        metrics = await client.get("/metrics")
        assert metrics.status == 200
        scraped = _scrape(await metrics.text())
        status = HubStatus.from_json(await (await client.get("/api/status")).json())
    assert status == hub.snapshot
    assert scraped == _expected(status)
    assert scraped[("roost_hub_remote_refused_rate_total", ())] == 11
    assert scraped[("roost_hub_channel_errors_total", (("reason", "disconnected"),))] == 9


async def test_the_page_follows_the_status_between_scrapes() -> None:
    hub = _Hub(_example())
    async with TestClient(TestServer(build_app(hub))) as client:
        before = _scrape(await (await client.get("/metrics")).text())
        counters = dataclasses.replace(hub.snapshot.counters, frames_stored=2000)
        hub.snapshot = dataclasses.replace(hub.snapshot, counters=counters, winner=OWN_HUB)
        after = _scrape(await (await client.get("/metrics")).text())
    assert before[("roost_hub_frames_stored_total", ())] == 1234
    assert after[("roost_hub_frames_stored_total", ())] == 2000
    assert (before[("roost_hub_is_winner", ())], after[("roost_hub_is_winner", ())]) == (0, 1)
    assert after == _expected(hub.snapshot)
