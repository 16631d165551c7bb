"""The device's typed status document: the shape of status.json, and its round trip."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given

from roost.device.daemon import DeviceCounters
from roost.device.status import DeviceCountersView, DeviceStatus
from roost.errors import RemoteProtocolError
from tests.helpers.statuses import device_statuses

# The keys of state_dir/status.json, in order; `roost device status` and
# tests/helpers/home.py read them (docs/hub-and-device.md).
STATUS_KEYS = [
    "id",
    "name",
    "state",
    "hub",
    "hub_endpoint",
    "last_acked_seq",
    "buffered",
    "buffered_bytes",
    "dropped",
    "captured",
    "frames_total",
    "trust",
    "counters",
    "written_at",
    # Optional (null when absent): documents written before they existed still read.
    "camera",
    "dns_sd",
]
OPTIONAL_KEYS = {"camera", "dns_sd"}
COUNTER_KEYS = [
    "connects",
    "connect_failures",
    "redirects_followed",
    "redirects_refused",
    "failovers",
    "frames_sent",
    "frames_resent",
    "announcements_accepted",
    "announcements_rejected",
]


def _wire(status: DeviceStatus) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(status.to_json()))
    return doc


@given(device_statuses)
def test_round_trip_through_json(status: DeviceStatus) -> None:
    assert DeviceStatus.from_json(_wire(status)) == status


@given(device_statuses)
def test_keys_and_value_shapes_are_the_documented_ones(status: DeviceStatus) -> None:
    doc = _wire(status)
    assert list(doc) == STATUS_KEYS
    assert list(doc["counters"]) == COUNTER_KEYS
    assert list(doc["trust"]) == ["current", "prepared", "time_floor"]
    assert (doc["id"], doc["hub"], doc["last_acked_seq"]) == (
        status.identifier,
        status.hub,
        status.last_acked_seq,
    )
    assert doc["counters"]["connect_failures"] == dict(status.counters.connect_failures)


@given(device_statuses)
def test_each_missing_key_is_malformed(status: DeviceStatus) -> None:
    for key in STATUS_KEYS:
        if key in OPTIONAL_KEYS:
            continue
        doc = _wire(status)
        del doc[key]
        with pytest.raises(RemoteProtocolError):
            DeviceStatus.from_json(doc)
    for key in COUNTER_KEYS:
        doc = _wire(status)
        del doc["counters"][key]
        with pytest.raises(RemoteProtocolError):
            DeviceStatus.from_json(doc)


def test_every_daemon_counter_has_a_field() -> None:
    # `captured` is reported at the top level, next to the spool's totals.
    fields = {f.name for f in dataclasses.fields(DeviceCountersView)}
    fields |= {f.name for f in dataclasses.fields(DeviceStatus)}
    assert {f.name for f in dataclasses.fields(DeviceCounters)} <= fields


@given(device_statuses)
def test_a_document_without_the_optional_keys_still_reads(status: DeviceStatus) -> None:
    doc = _wire(status)
    for key in OPTIONAL_KEYS:
        del doc[key]
    assert DeviceStatus.from_json(doc) == dataclasses.replace(status, camera=None, dns_sd=None)


@given(device_statuses)
def test_a_malformed_camera_object_is_malformed(status: DeviceStatus) -> None:
    doc = _wire(status)
    doc["camera"] = {"state": "ok"}
    with pytest.raises(RemoteProtocolError):
        DeviceStatus.from_json(doc)
