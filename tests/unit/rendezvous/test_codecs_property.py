"""Every rendezvous decoder: ``decode(encode(x)) == x``, and any bytes decode or raise ours.

"Ours" is RemoteProtocolError or VerificationError with a catalogued reason: a decoder
must never crash, never raise LocalProtocolError (that would blame us for the peer's
bytes) and never return something its encoder could not have written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import RemoteProtocolError, RoostError, VerificationError
from roost.reasons import Reason
from roost.rendezvous import control
from roost.rendezvous.control import (
    MAX_RELAY_PAYLOAD,
    ControlMessage,
    RelayRecord,
    decode_channel_body,
    decode_control,
    decode_relay,
    encode_control_message,
    encode_relay,
)
from roost.rendezvous.messages import (
    MAX_CANDIDATES,
    Ack,
    Candidate,
    Registration,
    Wake,
    decode_ack,
    decode_candidates,
    decode_registration,
    decode_wake,
    encode_ack,
    encode_candidates,
    encode_registration,
    encode_wake,
    verify_registration,
    verify_wake,
)
from roost.rendezvous.seal import (
    MAX_PASSWORD,
    MAX_USER,
    SealedCredentials,
    open_request,
    seal_request,
)
from roost.rendezvous.stun import (
    FINGERPRINT,
    MAGIC_COOKIE,
    StunAttribute,
    StunMessage,
    build_binding_request,
    build_binding_response,
    decode_stun,
    decode_xor_address,
    encode_stun,
    encode_xor_address,
    parse_binding_request,
    parse_binding_response,
)

OURS = (RemoteProtocolError, VerificationError)
KEY = hashlib.sha256(b"property key").digest()
TRANSACTION = bytes(range(12))
TARGET = ec.derive_private_key(12345678901234567890, ec.SECP256R1())
TARGET_ID = "hcsp:PtPvXYJSQsqwTJpPGjw0gA"
FIXED_CANDIDATES = (Candidate.parse("192.0.2.1:1"),)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
identifiers = st.from_regex(r"(hcsp|ab):[A-Za-z0-9_-]{22}", fullmatch=True)
candidates = st.builds(
    Candidate, st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(1, 65535)
)
candidate_lists = st.lists(candidates, max_size=MAX_CANDIDATES).map(tuple)
registrations = st.builds(Registration, identifiers, u64, candidate_lists)
acks = st.builds(Ack, u64, candidates)
wakes = st.builds(Wake, u64, st.binary(min_size=16, max_size=16))
stun_messages = st.builds(
    StunMessage,
    st.integers(0, 0x3FFF),
    st.binary(min_size=12, max_size=12),
    st.lists(
        st.builds(
            StunAttribute,
            st.integers(0, 0xFFFF).filter(lambda t: t != FINGERPRINT),
            st.binary(max_size=40),
        ),
        max_size=12,
    ).map(tuple),
    st.booleans(),
)
relay_records = st.builds(RelayRecord, u32, st.binary(min_size=1, max_size=MAX_RELAY_PAYLOAD))
reasons = st.sampled_from(list(Reason))
ms = st.integers(0, 86_400_000)
sealed_bytes = st.integers(0, 4).map(lambda blocks: bytes(146 + 64 * blocks))


def _control_strategy() -> st.SearchStrategy[ControlMessage]:
    kinds: dict[str, st.SearchStrategy[Any]] = {
        "identifier": identifiers,
        "target": identifiers,
        "key": st.binary(min_size=32, max_size=32),
        "interval_ms": ms,
        "certificate": st.binary(min_size=1, max_size=4096),
        "candidates": candidate_lists,
        "sealed": sealed_bytes,
        "session": u32,
        "token": st.binary(min_size=16, max_size=16),
        "reason": reasons,
        "start_in_ms": ms,
        "deadline_ms": ms,
        "max_bytes": st.integers(0, 2**53),
        "max_ms": ms,
    }
    options = []
    for cls in control._OPS.values():
        fields = {}
        for name, _, optional in cls._schema:
            fields[name] = st.one_of(st.none(), kinds[name]) if optional else kinds[name]
        options.append(st.builds(cls, **fields))
    return st.one_of(options)


control_messages = _control_strategy()


def _registration_round_trip(value: Registration) -> Registration:
    return verify_registration(decode_registration(encode_registration(value, KEY)), KEY)


def _wake_round_trip(value: Wake) -> Wake:
    return verify_wake(decode_wake(encode_wake(value, KEY)), KEY)


ROUND_TRIPS: list[tuple[str, Any, Callable[[Any], Any]]] = [
    ("registration", registrations, _registration_round_trip),
    ("ack", acks, lambda value: decode_ack(encode_ack(value))),
    ("wake", wakes, _wake_round_trip),
    ("candidates", candidate_lists, lambda value: decode_candidates(encode_candidates(value))),
    ("stun", stun_messages, lambda value: decode_stun(encode_stun(value))),
    (
        "xor-address",
        candidates,
        lambda value: decode_xor_address(encode_xor_address(value, TRANSACTION), TRANSACTION),
    ),
    (
        "binding-response",
        candidates,
        lambda value: parse_binding_response(
            build_binding_response(
                parse_binding_request(build_binding_request(TRANSACTION)), value
            ),
            TRANSACTION,
        ),
    ),
    ("control", control_messages, lambda value: decode_control(encode_control_message(value))),
    ("relay", relay_records, lambda value: decode_relay(encode_relay(value))),
    ("channel-control", control_messages, lambda v: decode_channel_body(encode_control_message(v))),
    ("channel-relay", relay_records, lambda value: decode_channel_body(encode_relay(value))),
]


@pytest.mark.parametrize(
    ("name", "strategy", "round_trip"), ROUND_TRIPS, ids=lambda x: x if isinstance(x, str) else ""
)
def test_round_trip(name: str, strategy: Any, round_trip: Any) -> None:
    @settings(max_examples=150, deadline=None)
    @given(strategy)
    def check(value: Any) -> None:
        assert round_trip(value) == value

    check()


@settings(max_examples=40, deadline=None)
@given(
    st.text(min_size=1, max_size=20).filter(
        lambda s: len(s.encode("utf-8", "surrogatepass")) <= MAX_USER
    ),
    st.text(max_size=80).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= MAX_PASSWORD),
    candidate_lists,
)
def test_seal_round_trip(
    user: str, password: str, issuer_candidates: tuple[Candidate, ...]
) -> None:
    try:
        sealed = seal_request(TARGET.public_key(), TARGET_ID, issuer_candidates, user, password)
    except RoostError as error:
        # Only lone surrogates, which UTF-8 cannot carry, are refused.
        assert error.reason == "bad-field"
        return
    assert open_request(TARGET, TARGET_ID, sealed, issuer_candidates) == SealedCredentials(
        user, password
    )


def _open(data: bytes) -> SealedCredentials:
    return open_request(TARGET, TARGET_ID, data, FIXED_CANDIDATES)


DECODERS: list[tuple[str, Callable[[bytes], Any], bytes]] = [
    ("registration", decode_registration, b"RREG\x01\x1b"),
    ("ack", decode_ack, b"RACK" + bytes(8)),
    ("wake", decode_wake, b"RWAK\x01"),
    ("candidates", decode_candidates, b"\x01\x04"),
    (
        "stun",
        decode_stun,
        (0x0001).to_bytes(2, "big") + b"\x00\x08" + MAGIC_COOKIE.to_bytes(4, "big"),
    ),
    ("binding-request", parse_binding_request, b"\x00\x01\x00\x00\x21\x12\xa4\x42"),
    ("binding-response", lambda data: parse_binding_response(data, TRANSACTION), b"\x01\x01"),
    ("xor-address", lambda data: decode_xor_address(data, TRANSACTION), b"\x00\x01"),
    ("control", decode_control, b'{"op":"'),
    ("relay", decode_relay, b"\x01"),
    ("channel", decode_channel_body, b"{"),
    ("sealed", _open, b"\x01\x04"),
]


@pytest.mark.parametrize(
    ("name", "decode", "prefix"), DECODERS, ids=lambda x: x if isinstance(x, str) else ""
)
def test_arbitrary_bytes_decode_or_raise_ours(name: str, decode: Any, prefix: bytes) -> None:
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600), st.booleans())
    def check(data: bytes, with_prefix: bool) -> None:
        if with_prefix:
            data = prefix + data
        try:
            decode(data)
        except OURS as error:
            assert error.reason in frozenset(Reason), error.reason

    check()


MUTABLE: list[tuple[str, Any, Callable[[Any], bytes], Callable[[bytes], Any]]] = [
    (
        "registration",
        registrations,
        lambda v: encode_registration(v, KEY),
        lambda d: verify_registration(decode_registration(d), KEY),
    ),
    ("ack", acks, encode_ack, decode_ack),
    ("wake", wakes, lambda v: encode_wake(v, KEY), lambda d: verify_wake(decode_wake(d), KEY)),
    ("stun", stun_messages, encode_stun, decode_stun),
    ("control", control_messages, encode_control_message, decode_channel_body),
    ("relay", relay_records, encode_relay, decode_channel_body),
]


@pytest.mark.parametrize(
    ("name", "strategy", "encode", "decode"), MUTABLE, ids=lambda x: x if isinstance(x, str) else ""
)
def test_mutated_encodings_decode_or_raise_ours(
    name: str, strategy: Any, encode: Any, decode: Any
) -> None:
    @settings(max_examples=150, deadline=None)
    @given(strategy, st.integers(0, 10_000), st.integers(0, 255), st.integers(-3, 3))
    def check(value: Any, where: int, byte: int, cut: int) -> None:
        data = bytearray(encode(value))
        data[where % len(data)] = byte
        if cut < 0:
            data = data[:cut]
        elif cut > 0:
            data += b"\x00" * cut
        with contextlib.suppress(OURS):
            decode(bytes(data))

    check()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0x3FFF), st.lists(st.binary(min_size=4, max_size=4), max_size=60))
def test_stun_with_a_consistent_header_decodes_or_raises_ours(
    kind: int, words: list[bytes]
) -> None:
    # Random attribute bytes behind a valid header reach the attribute walk every time.
    body = b"".join(words)
    header = (
        kind.to_bytes(2, "big") + len(body).to_bytes(2, "big") + MAGIC_COOKIE.to_bytes(4, "big")
    )
    with contextlib.suppress(OURS):
        decode_stun(header + TRANSACTION + body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(sorted(control._OPS)),
    st.dictionaries(
        st.sampled_from(
            [
                "identifier",
                "target",
                "key",
                "session",
                "token",
                "candidates",
                "sealed",
                "reason",
                "start_in_ms",
                "deadline_ms",
                "max_bytes",
                "max_ms",
                "interval_ms",
                "certificate",
                "x",
            ]
        ),
        json_values,
        max_size=6,
    ),
)
def test_control_objects_with_random_fields_decode_or_raise_ours(
    op: str, fields: dict[str, Any]
) -> None:
    body = json.dumps({"op": op, **fields}).encode()
    try:
        message = decode_control(body)
    except OURS:
        return
    # Whatever decodes re-encodes to a body that decodes to the same message.
    assert decode_control(encode_control_message(message)) == message


def test_oversized_input_is_refused_before_parsing() -> None:
    for name, decode, _ in DECODERS:
        if name == "xor-address":
            continue  # an attribute value, bounded by the STUN message around it
        with pytest.raises(RemoteProtocolError) as caught:
            decode(b"\x01" * (2 << 20))
        assert caught.value.reason == "oversized", name
