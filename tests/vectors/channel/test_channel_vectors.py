"""Golden vectors for the device channel (PROTOCOL.md section 4), checked byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from roost.errors import RemoteProtocolError
from roost.hcsp.channel import (
    AckMessage,
    ChannelDecoder,
    ChannelMessage,
    DocumentMessage,
    FrameMessage,
    decode_message,
    encode_message,
)

_VECTORS = json.loads((Path(__file__).parent / "channel_vectors.json").read_text())


def _build(fields: dict[str, Any]) -> ChannelMessage:
    if fields["type"] == "document":
        return DocumentMessage(xml=fields["xml"].encode("utf-8"))
    if fields["type"] == "frame":
        return FrameMessage(
            seq=fields["seq"],
            captured_at_ms=fields["captured_at_ms"],
            mime=fields["mime"],
            payload=bytes.fromhex(fields["payload_hex"]),
        )
    return AckMessage(seq=fields["seq"])


def test_every_message_type_has_a_vector() -> None:
    types = {vector["message"]["type"] for vector in _VECTORS["messages"]}
    assert types == {"document", "frame", "ack"}


@pytest.mark.parametrize("vector", _VECTORS["messages"], ids=lambda v: v["name"])
def test_encode_is_byte_exact(vector: dict[str, Any]) -> None:
    assert encode_message(_build(vector["message"])).hex() == vector["wire"]


@pytest.mark.parametrize("vector", _VECTORS["messages"], ids=lambda v: v["name"])
def test_decode_is_exact(vector: dict[str, Any]) -> None:
    wire = bytes.fromhex(vector["wire"])
    expected = _build(vector["message"])
    assert int.from_bytes(wire[:4], "big") == len(wire) - 4
    assert decode_message(wire[4:]) == expected
    assert ChannelDecoder().feed(wire) == [expected]


@pytest.mark.parametrize("vector", _VECTORS["rejects"], ids=lambda v: v["name"])
def test_reject_vectors(vector: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        ChannelDecoder().feed(bytes.fromhex(vector["wire"]))
    assert caught.value.reason == vector["reason"]
