"""Every decoder: ``decode(encode(x)) == x``, and arbitrary bytes decode or raise ours."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import RemoteProtocolError, VerificationError
from roost.guard.card import format_card, generate_card, parse_card
from roost.guard.challenge import (
    Accept,
    Challenge,
    ChallengeEntry,
    Hello,
    Proof,
    Reject,
    decode_accept,
    decode_challenge,
    decode_hello,
    decode_proof,
    decode_reject,
    encode_accept,
    encode_challenge,
    encode_hello,
    encode_proof,
    encode_reject,
)
from roost.guard.log import (
    Checkpoint,
    Receipt,
    decode_checkpoint,
    decode_checkpoint_document,
    decode_receipt,
    encode_checkpoint,
    encode_receipt,
)
from roost.guard.ratchet import Frame, decode_frame, encode_frame
from roost.guard.session import decode_fields, encode_fields
from roost.guard.suites import KdfParams

OURS = (RemoteProtocolError, VerificationError)

text = st.text(min_size=1, max_size=16).filter(lambda s: 1 <= len(s.encode()) <= 32)
nonce = st.binary(min_size=32, max_size=32)
suite_names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)

hellos = st.builds(
    Hello,
    user_id=text,
    password=st.text(max_size=40),
    client_nonce=nonce,
    suites=st.lists(suite_names, min_size=1, max_size=8).map(tuple),
)
challenges = st.builds(
    Challenge,
    suite=suite_names,
    server_nonce=nonce,
    counter=st.integers(0, 2**64 - 1),
    server_time_ms=st.integers(0, 2**64 - 1),
    kdf=st.builds(KdfParams, st.integers(1, 20), st.integers(1, 16), st.integers(1, 4)),
    entries=st.lists(
        st.builds(ChallengeEntry, text, st.binary(min_size=16, max_size=16)),
        min_size=1,
        max_size=16,
    ).map(tuple),
)
proofs = st.builds(
    Proof, st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=16).map(tuple)
)
accepts = st.builds(
    Accept, st.one_of(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64))
)
frames = st.builds(
    Frame, st.sampled_from([1, 2]), st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=200)
)
checkpoints = st.builds(
    Checkpoint,
    origin=st.text(min_size=1, max_size=20),
    size=st.integers(0, 2**63 - 1),
    root=st.binary(min_size=32, max_size=32),
    timestamp_ms=st.integers(0, 2**63 - 1),
    public_key=st.binary(min_size=32, max_size=32),
    signature=st.binary(min_size=64, max_size=64),
)
receipts = st.builds(
    Receipt,
    message_digest=st.binary(min_size=32, max_size=32),
    leaf_index=st.integers(0, 2**63 - 1),
    proof=st.lists(st.binary(min_size=32, max_size=32), max_size=10).map(tuple),
    checkpoint=checkpoints,
)
field_lists = st.lists(st.binary(max_size=40), max_size=20).map(tuple)

ROUND_TRIPS: list[tuple[str, Any, Callable[[Any], bytes], Callable[[bytes], Any]]] = [
    ("hello", hellos, encode_hello, decode_hello),
    ("challenge", challenges, encode_challenge, decode_challenge),
    ("proof", proofs, encode_proof, decode_proof),
    ("accept", accepts, encode_accept, decode_accept),
    ("reject", st.just(Reject()), encode_reject, decode_reject),
    ("frame", frames, encode_frame, lambda data: decode_frame(data, 1 << 20)),
    ("checkpoint", checkpoints, encode_checkpoint, decode_checkpoint),
    ("receipt", receipts, encode_receipt, decode_receipt),
    ("fields", field_lists, encode_fields, decode_fields),
]


@pytest.mark.parametrize(
    ("name", "strategy", "encode", "decode"),
    ROUND_TRIPS,
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_round_trip(name: str, strategy: Any, encode: Any, decode: Any) -> None:
    @settings(max_examples=150, deadline=None)
    @given(strategy)
    def check(value: Any) -> None:
        assert decode(encode(value)) == value

    check()


DECODERS: list[tuple[str, Callable[[bytes], Any]]] = [
    (name, decode) for name, _, _, decode in ROUND_TRIPS
] + [("checkpoint-document", decode_checkpoint_document)]


@pytest.mark.parametrize(
    ("name", "decode"), DECODERS, ids=lambda x: x if isinstance(x, str) else ""
)
def test_arbitrary_bytes_decode_or_raise_ours(name: str, decode: Any) -> None:
    prefixes = {
        "hello": b"\x01",
        "challenge": b"\x02",
        "proof": b"\x03",
        "accept": b"\x04",
        "reject": b"\x05",
        "frame": b"\x10",
        "receipt": b'{"version": 1, ',
        "checkpoint-document": b'{"origin": ',
    }

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300), st.booleans())
    def check(data: bytes, with_prefix: bool) -> None:
        if with_prefix:
            data = prefixes.get(name, b"") + data
        with contextlib.suppress(OURS):
            decode(data)

    check()


@pytest.mark.parametrize(
    ("name", "strategy", "encode", "decode"),
    ROUND_TRIPS,
    ids=lambda x: x if isinstance(x, str) else "",
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


def test_oversized_input_is_refused_before_parsing() -> None:
    for _, decode in DECODERS:
        with pytest.raises(RemoteProtocolError) as caught:
            decode(b"\x01" * (2 << 20))
        assert caught.value.reason == "oversized"


# ------------------------------------------------------------------ card files (--card-file)


@given(st.integers(min_value=3, max_value=40), st.binary(min_size=8, max_size=8))
def test_printed_card_parses_back_to_the_same_codes(pairs: int, seed: bytes) -> None:
    stream = iter(seed * 400)
    card = generate_card(pairs, random_bytes=lambda n: bytes(next(stream) for _ in range(n)))
    assert parse_card(format_card("alice", card)) == dict(card.entries)


@given(st.text(max_size=2000))
def test_any_text_parses_as_a_card_or_raises_ours(text: str) -> None:
    with contextlib.suppress(RemoteProtocolError):
        codes = parse_card(text)
        assert codes and all(len(code) == 8 for code in codes.values())


def test_huge_card_file_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_card("01: AAAA-BBBB\n" * 10_000)
