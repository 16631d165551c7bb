"""HCSP XML documents (PROTOCOL.md sections 3 and 4): round trips, hardening, validation."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import LocalProtocolError, RemoteProtocolError
from roost.hcsp.documents import (
    MAX_NAME_LENGTH,
    NAMESPACE,
    Document,
    Endpoint,
    Hello,
    HubAddress,
    Subscribe,
    decode_document,
    encode_document,
)

from .strategies import documents, endpoints, hub_addresses

HUB = "hcsp:PtPvXYJSQsqwTJpPGjw0gA"
DEVICE = "ab:EIW6Qe0ARnWrsJZTsHWadA"


def _wrap(body: str, to: str = "ab:*", sender: str = f"{HUB};ip=192.168.1.9:17320") -> bytes:
    return f'<hcsp xmlns="{NAMESPACE}" to="{to}" from="{sender}">{body}</hcsp>'.encode()


def _subscribe_body(**overrides: str) -> str:
    attributes = {
        "features": "hcsp,webs,db",
        "connected": "0",
        "max": "5",
        "seq": "1763900000123",
        "ts": "1763900000123",
    }
    attributes.update(overrides)
    rendered = " ".join(f'{key}="{value}"' for key, value in attributes.items())
    return f"<subscribe {rendered}/>"


def _hello_body(**extra: str) -> str:
    rendered = "".join(f' {key}="{value}"' for key, value in extra.items())
    return f'<hello app="camera" last-acked="7"{rendered}/>'


def _reason(data: bytes, max_size: int = 4096) -> str:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_document(data, max_size)
    return caught.value.reason


@settings(max_examples=300)
@given(documents)
def test_decode_inverts_encode(document: Document) -> None:
    assert decode_document(encode_document(document)) == document


@given(documents)
def test_encoding_is_deterministic(document: Document) -> None:
    assert encode_document(document) == encode_document(document)


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_document(data)


@settings(max_examples=500)
@given(documents, st.data())
def test_mutated_documents_decode_or_raise_remote_protocol_error(
    document: Document, data: st.DataObject
) -> None:
    encoded = bytearray(encode_document(document))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(encoded) - 1))
        encoded[index] = data.draw(st.integers(0, 255))
    with contextlib.suppress(RemoteProtocolError):
        decode_document(bytes(encoded))


@given(endpoints)
def test_endpoint_round_trip(endpoint: Endpoint) -> None:
    assert Endpoint.parse(endpoint.format()) == endpoint


@given(hub_addresses)
def test_hub_address_round_trip(address: HubAddress) -> None:
    assert HubAddress.parse(address.format()) == address


def test_ipv6_endpoint_uses_brackets() -> None:
    assert Endpoint("fd00::9", 17320).format() == "[fd00::9]:17320"
    assert Endpoint.parse("[fd00:0::9]:17320") == Endpoint("fd00::9", 17320)


@pytest.mark.parametrize(
    "text",
    [
        "192.168.1.9",
        "fd00::9:17320",
        "[192.168.1.9]:1",
        "host.lan:80",
        "1.2.3.4:0",
        "1.2.3.4:70000",
        "[fe80::1%eth0]:80",
        "[fd00::1]80",
        "1.2.3.4: 80",
        "1.2.3.4:+80",
    ],
)
def test_bad_endpoints_are_rejected(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        Endpoint.parse(text)


def test_non_canonical_endpoint_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError):
        Endpoint("fd00:0::9", 1)


def test_unknown_attributes_and_children_are_ignored() -> None:
    body = (
        '<future-thing a="b"><nested/></future-thing>'
        + _subscribe_body().replace("<subscribe ", '<subscribe colour="blue" ')
        + "<other/>"
    )
    data = _wrap(body).replace(b"<hcsp ", b'<hcsp extra="1" ')
    document = decode_document(data)
    assert isinstance(document, Subscribe)
    assert document.features == ("hcsp", "webs", "db")
    assert document.max_clients == 5


def test_dtd_is_forbidden() -> None:
    data = b"<!DOCTYPE hcsp [<!ELEMENT hcsp ANY>]>" + _wrap(_subscribe_body())
    assert _reason(data) == "xml-forbidden"


def test_entity_is_forbidden() -> None:
    data = b'<!DOCTYPE hcsp [<!ENTITY f "hcsp">]>' + _wrap(_subscribe_body(features="&f;"))
    assert _reason(data) == "xml-forbidden"


def test_billion_laughs_is_forbidden() -> None:
    # Each entity expands to ten copies of the previous one: 10**6 "lol"s from 300 bytes.
    levels = ['<!ENTITY l0 "lol">'] + [
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 7)
    ]
    data = f"<!DOCTYPE hcsp [{''.join(levels)}]>".encode() + _wrap(_subscribe_body(features="&l6;"))
    assert _reason(data) == "xml-forbidden"


def test_external_entity_is_forbidden() -> None:
    data = b'<!DOCTYPE hcsp [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + _wrap(
        _subscribe_body(features="&x;")
    )
    assert _reason(data) == "xml-forbidden"


def test_oversized_document_is_rejected_before_parsing() -> None:
    data = _wrap(_subscribe_body()) + b" " * 100
    assert _reason(data, max_size=len(data) - 1) == "oversized"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<hcsp", "malformed-xml"),
        (b"\xff\xfe", "bad-utf8"),
        (b'<hcsp to="ab:*"/>', "bad-root"),
        (_wrap(""), "bad-body"),
        (_wrap(_subscribe_body() + _subscribe_body()), "bad-body"),
        (_wrap(_subscribe_body(), to=DEVICE), "bad-id"),
        (_wrap(_subscribe_body(), sender=HUB), "bad-hub-address"),
        (_wrap(_subscribe_body(), sender="hcsp:short;ip=1.2.3.4:5"), "bad-hub-address"),
        (_wrap(_subscribe_body(connected="-1")), "bad-integer"),
        (_wrap(_subscribe_body(max="65536")), "bad-integer"),
        (_wrap(_subscribe_body(seq="18446744073709551616")), "bad-integer"),
        (_wrap(_subscribe_body(ts="1e3")), "bad-integer"),
        (_wrap(_subscribe_body(features="a,,b")), "bad-features"),
        (_wrap(_subscribe_body(features=",".join(["f"] * 33))), "bad-features"),
        (_wrap(_subscribe_body(features="x" * 33)), "bad-features"),
        (_wrap(_subscribe_body(features="a b")), "bad-features"),
        (_wrap('<subscribe features="" connected="0" max="1" seq="1"/>'), "missing-attribute"),
        (_wrap('<hello app="camera" last-acked="1"/>', to=HUB, sender=HUB), "bad-id"),
        (_wrap('<hello app="ca mera" last-acked="1"/>', to=HUB, sender=DEVICE), "bad-app"),
        (_wrap(_hello_body(name=""), to=HUB, sender=DEVICE), "bad-name"),
        (_wrap(_hello_body(name="x" * 65), to=HUB, sender=DEVICE), "bad-name"),
        (_wrap(_hello_body(name="porch&#10;door"), to=HUB, sender=DEVICE), "bad-name"),
        (_wrap(_hello_body(name="porch&#9;"), to=HUB, sender=DEVICE), "bad-name"),
        # XML 1.0 itself forbids C0 controls but tab, newline and return; C1 ones parse.
        (_wrap(_hello_body(name="a&#27;[31mb"), to=HUB, sender=DEVICE), "malformed-xml"),
        (_wrap(_hello_body(name="a&#x85;b"), to=HUB, sender=DEVICE), "bad-name"),
        (_wrap(_hello_body(name="&#x202E;hcraop"), to=HUB, sender=DEVICE), "bad-name"),
        (_wrap(_hello_body(name="\u00a0porch"), to=HUB, sender=DEVICE), "bad-name"),
        (_wrap(_hello_body(name=" porch"), to=HUB, sender=DEVICE), "bad-name"),
        (_wrap(_hello_body(name="porch "), to=HUB, sender=DEVICE), "bad-name"),
        (_wrap('<welcome features="a" max="1"/>', to=HUB, sender=HUB), "bad-id"),
        (_wrap('<redirect id="x" features="a"/>', to=DEVICE, sender=HUB), "bad-hub-address"),
    ],
)
def test_invalid_documents_raise_typed_reasons(data: bytes, reason: str) -> None:
    assert _reason(data) == reason


def test_empty_feature_list_is_allowed() -> None:
    document = decode_document(_wrap(_subscribe_body(features="")))
    assert isinstance(document, Subscribe)
    assert document.features == ()


def test_document_in_another_namespace_is_rejected() -> None:
    data = _wrap(_subscribe_body()).replace(NAMESPACE.encode(), b"urn:other")
    assert _reason(data) == "bad-root"


def test_constructors_refuse_invalid_values() -> None:
    address = HubAddress(HUB, Endpoint("192.168.1.9", 17320))
    with pytest.raises(LocalProtocolError):
        Subscribe(address, ("bad token",), 0, 1, 1, 1)
    with pytest.raises(LocalProtocolError):
        Subscribe(address, (), -1, 1, 1, 1)
    with pytest.raises(LocalProtocolError):
        HubAddress(DEVICE, Endpoint("192.168.1.9", 17320))


def test_a_hello_without_a_name_is_valid() -> None:
    # Section 4: an older device sends no name; its hello is still a hello.
    document = decode_document(_wrap(_hello_body(), to=HUB, sender=DEVICE))
    assert document == Hello(DEVICE, HUB, "camera", 7)
    assert document.name is None
    assert b"name=" not in encode_document(document)


@pytest.mark.parametrize(
    "name",
    ["porch", "Front porch", "Küche 2", "カメラ", "a", "x" * MAX_NAME_LENGTH, 'say "hi" & <go>'],
)
def test_a_hello_with_a_name_round_trips(name: str) -> None:
    document = Hello(DEVICE, HUB, "camera", 7, name)
    data = encode_document(document)
    assert data.endswith(b"/></hcsp>")
    decoded = decode_document(data)
    assert isinstance(decoded, Hello)
    assert decoded.name == name
    assert decoded == document


def test_a_name_at_the_limit_counts_characters_not_bytes() -> None:
    # 64 three-byte characters are one name; a 65th is one too many.
    at_limit = "é" * MAX_NAME_LENGTH
    assert decode_document(_wrap(_hello_body(name=at_limit), to=HUB, sender=DEVICE)) == Hello(
        DEVICE, HUB, "camera", 7, at_limit
    )
    assert _reason(_wrap(_hello_body(name=at_limit + "é"), to=HUB, sender=DEVICE)) == "bad-name"


@pytest.mark.parametrize("name", ["", "x" * 65, "a\nb", "\x1b[31m", "\u202eabc", " a", "a\u2028b"])
def test_a_hello_refuses_to_carry_a_bad_name(name: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        Hello(DEVICE, HUB, "camera", 7, name)
    assert caught.value.reason == "bad-name"
