"""Control-channel bodies (PROTOCOL.md section 5): strict typing per op, relay records."""

from __future__ import annotations

import dataclasses
import json

import pytest

from roost.errors import LocalProtocolError, RemoteProtocolError
from roost.reasons import Reason
from roost.rendezvous import control
from roost.rendezvous.control import (
    MAX_CHANNEL_BODY,
    MAX_CONTROL_BODY,
    MAX_RELAY_PAYLOAD,
    Error,
    Lookup,
    RelayOpen,
    RelayRecord,
    Start,
    decode_channel_body,
    decode_control,
    decode_relay,
    encode_control,
    encode_control_message,
    encode_relay,
    is_control,
)
from roost.rendezvous.messages import Candidate
from roost.rendezvous.seal import MIN_SEALED

HUB = "hcsp:PtPvXYJSQsqwTJpPGjw0gA"


def _reason(error: pytest.ExceptionInfo[Exception]) -> str:
    return str(getattr(error.value, "reason", ""))


def _body(document: object) -> bytes:
    return json.dumps(document).encode()


def test_every_op_schema_matches_its_dataclass_fields() -> None:
    for cls in control._OPS.values():
        declared = tuple(field.name for field in dataclasses.fields(cls))  # type: ignore[arg-type]
        assert declared == tuple(name for name, _, _ in cls._schema), cls.op
        assert cls.op in control.__doc__  # type: ignore[operator]


def test_encode_control_by_op_name() -> None:
    body = encode_control("lookup", target=HUB)
    assert body == b'{"op":"lookup","target":"%s"}' % HUB.encode()
    assert decode_control(body) == Lookup(HUB)
    assert decode_control(encode_control("relay-open", session=5)) == RelayOpen(5)
    assert decode_control(encode_control("error", reason="bad-tag", session=1)) == Error(
        Reason.BAD_TAG, 1
    )
    for op, fields, reason in (
        ("nope", {}, "unknown-op"),
        ("lookup", {}, "missing-field"),
        ("lookup", {"target": HUB, "extra": 1}, "unknown-field"),
        ("lookup", {"target": "hub"}, "bad-identifier"),
        ("connecting", {"session": -1}, "bad-field"),
        ("connecting", {"session": 2**32}, "bad-field"),
        ("connecting", {"session": True}, "bad-field"),
        ("present", {"token": b"short"}, "bad-field"),
        ("error", {"reason": "no-such-reason"}, "bad-field"),
        ("accept", {"session": 1, "candidates": ("1.2.3.4:5",)}, "bad-candidate"),
        ("accept", {"session": 1, "candidates": [Candidate.parse("1.2.3.4:5")]}, "bad-field"),
    ):
        with pytest.raises(LocalProtocolError) as caught:
            encode_control(op, **fields)
        assert _reason(caught) == reason, (op, fields)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "bad-control"),
        (b"[]", "bad-control"),
        (b"{", "bad-control"),
        (b"{}", "bad-control"),
        (b'{"op":1}', "bad-control"),
        (b'{"op":"lookup","op":"lookup","target":"x"}', "bad-control"),
        (b'{"op":"nope"}', "unknown-op"),
        (b'{"op":"keepalive","x":1}', "unknown-field"),
        (b'{"op":"lookup"}', "missing-field"),
        (b'{"op":"connecting","session":1.0}', "bad-field"),
        (b'{"op":"connecting","session":"1"}', "bad-field"),
        (b'{"op":"connecting","session":true}', "bad-field"),
        (b'{"op":"connecting","session":NaN}', "bad-control"),
        (b'{"op":"connecting","session":1' + b"0" * 30 + b"}", "bad-field"),
        (b'{"op":"connecting","session":4294967296}', "bad-field"),
        (b'{"op":"connecting","session":null}', "bad-field"),
        (b'{"op":"present","token":"AAECAwQFBgcICQoLDA0ODw=="}', "bad-field"),
        (b'{"op":"present","token":"AAECAwQFBgcICQoLDA0ODx"}', "bad-field"),
        (b'{"op":"present","token":"AAECAwQFBgcICQoLDA0O"}', "bad-field"),
        (b'{"op":"present","token":"AAECAwQF+gcICQoLDA0ODw"}', "bad-field"),
        (b'{"op":"present","token":"AAECAwQF BgcICQoLDA0ODw"}', "bad-field"),
        (b'{"op":"lookup","target":"hcsp:short"}', "bad-identifier"),
        (b'{"op":"accept","session":1,"candidates":"1.2.3.4:5"}', "bad-field"),
        (b'{"op":"accept","session":1,"candidates":["1.2.3.4"]}', "bad-candidate"),
        (b'{"op":"accept","session":1,"candidates":[5]}', "bad-candidate"),
        (b'{"op":"error","reason":"bad-tag!"}', "bad-field"),
        (b'{"op":"lookup","target":"\xff"}', "bad-control"),
        (b"\xef\xbb\xbf{}", "bad-control"),
        (b"{" + b"[" * 5000 + b"}", "bad-control"),
        (b"{" + b" " * MAX_CONTROL_BODY + b"}", "oversized"),
    ],
)
def test_decode_refusals(body: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_control(body)
    assert _reason(caught) == reason


def test_deep_nesting_is_refused_not_crashed() -> None:
    body = b'{"op":"keepalive","x":' + b"[" * 4000 + b"]" * 4000 + b"}"
    with pytest.raises(RemoteProtocolError):
        decode_control(body)


def test_too_many_candidates() -> None:
    items = [f"10.0.0.{i}:1" for i in range(1, 18)]
    with pytest.raises(RemoteProtocolError) as caught:
        decode_control(_body({"op": "accept", "session": 1, "candidates": items}))
    assert _reason(caught) == "too-many-candidates"


def test_optional_fields_are_omitted_and_read_back() -> None:
    assert encode_control_message(RelayOpen(3)) == b'{"op":"relay-open","session":3}'
    opened = decode_control(b'{"op":"relay-open","session":3,"max_ms":5}')
    assert opened == RelayOpen(3, None, 5)


def test_sealed_field_bounds() -> None:
    with pytest.raises(LocalProtocolError):
        encode_control("connect", target=HUB, candidates=(), sealed=bytes(MIN_SEALED - 1))
    body = encode_control("connect", target=HUB, candidates=(), sealed=bytes(MIN_SEALED))
    assert decode_control(body).sealed == bytes(MIN_SEALED)  # type: ignore[attr-defined]


def test_start_round_trip_keeps_candidate_order() -> None:
    candidates = (Candidate.parse("[2001:db8::1]:1"), Candidate.parse("192.0.2.1:2"))
    start = Start(7, candidates, 100, 5000)
    assert decode_control(encode_control_message(start)) == start


def test_relay_records() -> None:
    record = RelayRecord(2**32 - 1, b"\x00" * MAX_RELAY_PAYLOAD)
    body = encode_relay(record)
    assert not is_control(body) and decode_relay(body) == record
    assert decode_channel_body(body) == record
    assert len(body) <= MAX_CHANNEL_BODY
    for body, reason in (
        (b"\x01\x00\x00\x00\x01", "empty"),
        (b"\x02\x00\x00\x00\x01x", "unknown-type"),
        (b"\x01\x00\x00", "truncated"),
        (b"\x01\x00\x00\x00\x01" + bytes(MAX_RELAY_PAYLOAD + 1), "oversized"),
    ):
        with pytest.raises(RemoteProtocolError) as caught:
            decode_relay(body)
        assert _reason(caught) == reason
    with pytest.raises(RemoteProtocolError) as caught:
        decode_channel_body(b"")
    assert _reason(caught) == "empty"
    with pytest.raises(LocalProtocolError):
        RelayRecord(2**32, b"x")
    with pytest.raises(LocalProtocolError):
        RelayRecord(1, b"")
