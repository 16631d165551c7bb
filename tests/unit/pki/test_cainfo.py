"""CA information codec and the N → N+1 acceptance rule (PROTOCOL.md section 2)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import RemoteProtocolError, VerificationError
from roost.pki.cainfo import (
    MAX_CAINFO_SIZE,
    CAInfoBody,
    Flags,
    accept_successor,
    decode_cainfo,
    encode_body,
    sign_body,
)
from tests.helpers.dlkeys import Chain, build, dl_key, public, shared_chain
from tests.helpers.pki import TestCA

VECTORS = Path(__file__).parents[2] / "vectors" / "pki"


@pytest.fixture(scope="module")
def chain() -> Chain:
    return Chain(2)


def test_round_trip_is_byte_exact(chain: Chain) -> None:
    info = chain.infos[1]
    again = decode_cainfo(info.raw)
    assert again == info
    assert encode_body(info.body) == info.signed_bytes
    assert sign_body(info.body, chain.keys[:2]) == info.raw  # Ed25519 is deterministic.


def test_golden_vector() -> None:
    """Fixed CA certificate and fixed DL keys give exactly the stored bytes."""
    vector = json.loads((VECTORS / "cainfo.json").read_text())
    body = CAInfoBody(
        generation=vector["generation"],
        issued_at=vector["issued_at"],
        flags=Flags(vector["flags"]),
        prev_digest=bytes.fromhex(vector["prev_digest"]),
        ca_cert_der=bytes.fromhex(vector["ca_cert_der"]),
        next_url=vector["next_url"],
        dl_threshold=vector["dl_threshold"],
        dl_keys=tuple(public(dl_key(label)) for label in vector["dl_key_labels"]),
    )
    signers = [dl_key(label) for label in vector["signer_labels"]]
    encoded = sign_body(body, signers)
    assert encoded.hex() == vector["encoded"]
    decoded = decode_cainfo(bytes.fromhex(vector["encoded"]))
    assert decoded.body == body
    assert decoded.digest.hex() == vector["sha256"]


def test_successor_accepted(chain: Chain) -> None:
    accept_successor(chain.infos[0], chain.infos[1])


def _reason(exc: pytest.ExceptionInfo[BaseException]) -> str:
    value = exc.value
    assert isinstance(value, VerificationError | RemoteProtocolError)
    return value.reason


def test_rollback_and_skip_rejected() -> None:
    chain = Chain(3)
    with pytest.raises(VerificationError) as exc:
        accept_successor(chain.infos[1], chain.infos[0])
    assert _reason(exc) == "rollback"
    with pytest.raises(VerificationError) as exc:
        accept_successor(chain.infos[1], chain.infos[1])
    assert _reason(exc) == "rollback"
    with pytest.raises(VerificationError) as exc:
        accept_successor(chain.infos[0], chain.infos[2])
    assert _reason(exc) == "skipped"


def test_wrong_prev_digest_rejected(chain: Chain) -> None:
    forged = build(2, TestCA(2), chain.infos[0], chain.keys, chain.keys[:2], prev_digest=b"\1" * 32)
    with pytest.raises(VerificationError) as exc:
        accept_successor(chain.infos[0], forged)
    assert _reason(exc) == "bad-prev"


def test_too_few_signatures_rejected(chain: Chain) -> None:
    one = build(2, TestCA(2), chain.infos[0], chain.keys, chain.keys[:1])
    with pytest.raises(VerificationError) as exc:
        accept_successor(chain.infos[0], one)
    assert _reason(exc) == "threshold"


def test_duplicate_signature_counts_once(chain: Chain) -> None:
    doubled = build(2, TestCA(2), chain.infos[0], chain.keys, [chain.keys[0], chain.keys[0]])
    with pytest.raises(VerificationError):
        accept_successor(chain.infos[0], doubled)


def test_signatures_by_foreign_keys_rejected(chain: Chain) -> None:
    strangers = [dl_key("stranger-1"), dl_key("stranger-2")]
    forged = build(2, TestCA(2), chain.infos[0], strangers, strangers)
    with pytest.raises(VerificationError) as exc:
        accept_successor(chain.infos[0], forged)
    assert _reason(exc) == "threshold"


def test_new_key_set_must_also_sign(chain: Chain) -> None:
    """Rotation: N+1 needs a threshold of N's keys *and* of its own (section 2)."""
    new_keys = [dl_key(f"new-{i}") for i in range(3)]
    old_only = build(2, TestCA(2), chain.infos[0], new_keys, chain.keys[:2])
    with pytest.raises(VerificationError) as exc:
        accept_successor(chain.infos[0], old_only)
    assert _reason(exc) == "threshold-new"
    both = build(2, TestCA(2), chain.infos[0], new_keys, chain.keys[:2] + new_keys[:2])
    accept_successor(chain.infos[0], both)


def test_tampered_byte_breaks_signatures(chain: Chain) -> None:
    raw = bytearray(chain.infos[1].raw)
    raw[20] ^= 0x01  # inside prev_digest
    with pytest.raises(VerificationError):
        accept_successor(chain.infos[0], decode_cainfo(bytes(raw)))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\0", "trailing-bytes"),
        (lambda b: b"XXXX" + b[4:], "bad-magic"),
        (lambda b: b[:4] + b"\2" + b[5:], "bad-version"),
        (lambda b: b + bytes(MAX_CAINFO_SIZE), "oversized"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b"", "truncated"),
    ],
)
def test_malformed_rejected(chain: Chain, mutate: object, reason: str) -> None:
    assert callable(mutate)
    with pytest.raises(RemoteProtocolError) as exc:
        decode_cainfo(mutate(chain.infos[1].raw))
    assert exc.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_hostile_bytes_give_typed_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_cainfo(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_documents_decode_or_typed_error(data: st.DataObject) -> None:
    raw = bytearray(shared_chain().infos[0].raw)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(RemoteProtocolError):
        decode_cainfo(bytes(raw))


@settings(max_examples=60, deadline=None)
@given(
    generation=st.integers(1, 2**32 - 1),
    issued_at=st.integers(0, 2**64 - 1),
    revokes=st.booleans(),
    url_tail=st.text(max_size=40),
    threshold=st.integers(1, 3),
)
def test_encode_decode_round_trip(
    generation: int, issued_at: int, revokes: bool, url_tail: str, threshold: int
) -> None:
    shared = shared_chain()
    keys = shared.keys
    body = CAInfoBody(
        generation=generation,
        issued_at=issued_at,
        flags=Flags.REVOKES_PREVIOUS if revokes else Flags.NONE,
        prev_digest=bytes(32) if generation == 1 else b"\7" * 32,
        ca_cert_der=shared.infos[0].body.ca_cert_der,
        next_url="https://example.invalid/" + url_tail,
        dl_threshold=threshold,
        dl_keys=tuple(public(k) for k in keys),
    )
    decoded = decode_cainfo(sign_body(body, keys[:threshold]))
    assert decoded.body == body


def test_certificate_with_invalid_version_is_a_typed_error(chain: Chain) -> None:
    """cryptography raises InvalidVersion (not a ValueError) for an X.509 version of 6."""
    raw = chain.infos[0].raw
    der = chain.infos[0].body.ca_cert_der
    broken_der = der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x05", 1)
    assert broken_der != der
    with pytest.raises(RemoteProtocolError) as exc:
        decode_cainfo(raw.replace(der, broken_der))
    assert exc.value.reason == "bad-cert"
