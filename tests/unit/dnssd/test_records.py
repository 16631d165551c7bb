"""DNS-SD hub records: what a hub publishes parses back; anything malformed is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.dnssd.records import (
    HubRecord,
    host_name,
    instance_name,
    parse_record,
    txt_properties,
)
from roost.errors import RemoteProtocolError
from roost.reasons import Reason

HUB = "hcsp:" + "A" * 22
RECORD = HubRecord(HUB, "attic", "10.0.0.5", 17320, ("hcsp", "webs"), 8, 8080, 17320)


def _wire(record: HubRecord) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in txt_properties(record).items()}


def test_a_published_record_parses_back() -> None:
    assert parse_record(_wire(RECORD), ["10.0.0.5"], 17320) == RECORD
    assert RECORD.to_json()["api"] == "10.0.0.5:8080"


def test_optional_ports_may_be_left_out() -> None:
    bare = HubRecord(HUB, "", "10.0.0.5", 1, (), 0)
    assert parse_record(_wire(bare), ["10.0.0.5"], 1) == bare


def test_names_are_unique_per_identifier_and_within_dns_label_limits() -> None:
    other = HubRecord("hcsp:" + "B" * 22, "attic", "10.0.0.6", 1, (), 1)
    assert instance_name(RECORD) != instance_name(other)
    long = HubRecord(HUB, "x." * 200, "10.0.0.5", 1, (), 1)
    assert len(instance_name(long).split("._roost")[0].encode()) <= 63
    assert host_name(RECORD).startswith("roost-") and host_name(RECORD).endswith(".local.")


@pytest.mark.parametrize(
    ("change", "addresses", "port"),
    [
        ({b"v": b"2"}, ["10.0.0.5"], 1),
        ({b"id": b"ab:" + b"A" * 22}, ["10.0.0.5"], 1),  # a device's identifier
        ({b"id": None}, ["10.0.0.5"], 1),
        ({b"max": b"-1"}, ["10.0.0.5"], 1),
        ({b"max": b"99999999"}, ["10.0.0.5"], 1),
        ({b"features": b"Bad Feature"}, ["10.0.0.5"], 1),
        ({b"features": b",".join([b"f"] * 17)}, ["10.0.0.5"], 1),
        ({b"api": b"0"}, ["10.0.0.5"], 1),
        ({b"name": b"\xff"}, ["10.0.0.5"], 1),
        ({b"name": b"n" * 201}, ["10.0.0.5"], 1),
        ({}, [], 1),
        ({}, ["0.0.0.0", "224.0.0.251", "fe80::1"], 1),
        ({}, ["10.0.0.5"], 0),
    ],
)
def test_malformed_records_are_refused(
    change: dict[bytes, bytes | None], addresses: list[str], port: int
) -> None:
    properties = {**_wire(RECORD), **change}
    with pytest.raises(RemoteProtocolError) as caught:
        parse_record(properties, addresses, port)
    assert caught.value.reason == Reason.BAD_SERVICE_RECORD


@settings(max_examples=200)
@given(
    st.dictionaries(st.binary(max_size=10), st.none() | st.binary(max_size=300), max_size=8),
    st.lists(st.text(max_size=20), max_size=3),
    st.integers(-5, 70000),
)
def test_any_input_parses_or_raises_the_typed_error(
    properties: dict[bytes, bytes | None], addresses: list[str], port: int
) -> None:
    try:
        record = parse_record(properties, addresses, port)
    except RemoteProtocolError as exc:
        assert exc.reason == Reason.BAD_SERVICE_RECORD
    else:
        assert record.identifier.startswith("hcsp:")
