"""Usage authentication messages and their codecs (PROTOCOL.md §6), pure.

Every decoder checks :data:`MAX_MESSAGE_SIZE` before parsing and raises only
``RemoteProtocolError``; formats are listed in docs/guard.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from roost.errors import LocalProtocolError, RemoteProtocolError
from roost.guard.suites import KdfParams
from roost.guard.userstore import SALT_SIZE
from roost.wire import Reader, Writer, check_size

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_PAIRS_ASKED",
    "MAX_SUITES_OFFERED",
    "NONCE_SIZE",
    "PROOF_SIZE",
    "REJECT_TYPE",
    "Accept",
    "Challenge",
    "ChallengeEntry",
    "Hello",
    "Proof",
    "Reject",
    "decode_accept",
    "decode_challenge",
    "decode_hello",
    "decode_proof",
    "decode_reject",
    "encode_accept",
    "encode_challenge",
    "encode_hello",
    "encode_proof",
    "encode_reject",
]

MAX_MESSAGE_SIZE = 4096
NONCE_SIZE = 32
PROOF_SIZE = 32
MAX_PAIRS_ASKED = 16
MAX_SUITES_OFFERED = 8

_HELLO, _CHALLENGE, _PROOF, _ACCEPT, _REJECT = 1, 2, 3, 4, 5
REJECT_TYPE = _REJECT


# --- Messages and codecs -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    user_id: str
    password: str
    client_nonce: bytes
    suites: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChallengeEntry:
    label: str
    salt: bytes


@dataclass(frozen=True, slots=True)
class Challenge:
    suite: str
    server_nonce: bytes
    counter: int
    server_time_ms: int
    kdf: KdfParams
    entries: tuple[ChallengeEntry, ...]


@dataclass(frozen=True, slots=True)
class Proof:
    proofs: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Accept:
    server_signature: bytes


@dataclass(frozen=True, slots=True)
class Reject:
    """Carries no detail by design: the peer learns only that it was refused."""


def _short_text(reader: Reader, what: str, maximum: int) -> str:
    raw = reader.take(reader.u8())
    if not 1 <= len(raw) <= maximum:
        raise RemoteProtocolError(f"{what} length out of bounds", reason="malformed")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} is not UTF-8", reason="malformed") from None


def _put_text(writer: Writer, text: str, maximum: int) -> None:
    raw = text.encode("utf-8")
    if not 1 <= len(raw) <= maximum:
        raise LocalProtocolError(f"text of {len(raw)} bytes does not fit")
    writer.u8(len(raw)).raw(raw)


def _expect_type(reader: Reader, expected: int) -> None:
    if reader.u8() != expected:
        raise RemoteProtocolError("unexpected message type", reason="unexpected-message")


def encode_hello(hello: Hello, *, include_password: bool = True) -> bytes:
    writer = Writer().u8(_HELLO)
    _put_text(writer, hello.user_id, 64)
    password = hello.password.encode("utf-8") if include_password else b""
    if len(password) > 1024:
        raise LocalProtocolError("password longer than 1024 bytes")
    writer.u16(len(password)).raw(password)
    if len(hello.client_nonce) != NONCE_SIZE:
        raise LocalProtocolError("client nonce must be 32 bytes")
    writer.raw(hello.client_nonce)
    if not 1 <= len(hello.suites) <= MAX_SUITES_OFFERED:
        raise LocalProtocolError("offer 1 to 8 suites")
    writer.u8(len(hello.suites))
    for name in hello.suites:
        _put_text(writer, name, 64)
    return writer.bytes()


def decode_hello(data: bytes) -> Hello:
    check_size(data, MAX_MESSAGE_SIZE, "hello")
    reader = Reader(data, "hello")
    _expect_type(reader, _HELLO)
    user_id = _short_text(reader, "user id", 64)
    length = reader.u16()
    if length > 1024:
        raise RemoteProtocolError("password too long", reason="malformed")
    try:
        password = reader.take(length).decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("password is not UTF-8", reason="malformed") from None
    nonce = reader.take(NONCE_SIZE)
    count = reader.u8()
    if not 1 <= count <= MAX_SUITES_OFFERED:
        raise RemoteProtocolError("suite count out of bounds", reason="malformed")
    suites = tuple(_short_text(reader, "suite", 64) for _ in range(count))
    reader.expect_end()
    return Hello(user_id, password, nonce, suites)


def encode_challenge(challenge: Challenge) -> bytes:
    writer = Writer().u8(_CHALLENGE)
    _put_text(writer, challenge.suite, 64)
    if len(challenge.server_nonce) != NONCE_SIZE:
        raise LocalProtocolError("server nonce must be 32 bytes")
    writer.raw(challenge.server_nonce).u64(challenge.counter).u64(challenge.server_time_ms)
    kdf = challenge.kdf
    writer.u8(kdf.log2_n).u8(kdf.r).u8(kdf.p)
    if not 1 <= len(challenge.entries) <= MAX_PAIRS_ASKED:
        raise LocalProtocolError("ask 1 to 16 pairs")
    writer.u8(len(challenge.entries))
    for entry in challenge.entries:
        _put_text(writer, entry.label, 32)
        if len(entry.salt) != SALT_SIZE:
            raise LocalProtocolError("salt must be 16 bytes")
        writer.raw(entry.salt)
    return writer.bytes()


def decode_challenge(data: bytes) -> Challenge:
    check_size(data, MAX_MESSAGE_SIZE, "challenge")
    reader = Reader(data, "challenge")
    _expect_type(reader, _CHALLENGE)
    suite = _short_text(reader, "suite", 64)
    nonce = reader.take(NONCE_SIZE)
    counter = reader.u64()
    server_time_ms = reader.u64()
    kdf = KdfParams(reader.u8(), reader.u8(), reader.u8())
    kdf.check()
    count = reader.u8()
    if not 1 <= count <= MAX_PAIRS_ASKED:
        raise RemoteProtocolError("pair count out of bounds", reason="malformed")
    entries = tuple(
        ChallengeEntry(_short_text(reader, "label", 32), reader.take(SALT_SIZE))
        for _ in range(count)
    )
    reader.expect_end()
    return Challenge(suite, nonce, counter, server_time_ms, kdf, entries)


def encode_proof(proof: Proof) -> bytes:
    if not 1 <= len(proof.proofs) <= MAX_PAIRS_ASKED:
        raise LocalProtocolError("1 to 16 proofs")
    writer = Writer().u8(_PROOF).u8(len(proof.proofs))
    for item in proof.proofs:
        if len(item) != PROOF_SIZE:
            raise LocalProtocolError("proofs are 32 bytes")
        writer.raw(item)
    return writer.bytes()


def decode_proof(data: bytes) -> Proof:
    check_size(data, MAX_MESSAGE_SIZE, "proof")
    reader = Reader(data, "proof")
    _expect_type(reader, _PROOF)
    count = reader.u8()
    if not 1 <= count <= MAX_PAIRS_ASKED:
        raise RemoteProtocolError("proof count out of bounds", reason="malformed")
    proofs = tuple(reader.take(PROOF_SIZE) for _ in range(count))
    reader.expect_end()
    return Proof(proofs)


def encode_accept(accept: Accept) -> bytes:
    if len(accept.server_signature) not in (32, 64):
        raise LocalProtocolError("server signature is 32 or 64 bytes")
    return (
        Writer().u8(_ACCEPT).u8(len(accept.server_signature)).raw(accept.server_signature).bytes()
    )


def decode_accept(data: bytes) -> Accept:
    check_size(data, MAX_MESSAGE_SIZE, "accept")
    reader = Reader(data, "accept")
    _expect_type(reader, _ACCEPT)
    length = reader.u8()
    if length not in (32, 64):
        raise RemoteProtocolError("server signature length", reason="malformed")
    signature = reader.take(length)
    reader.expect_end()
    return Accept(signature)


def encode_reject(_reject: Reject | None = None) -> bytes:
    return bytes([_REJECT])


def decode_reject(data: bytes) -> Reject:
    check_size(data, MAX_MESSAGE_SIZE, "reject")
    reader = Reader(data, "reject")
    _expect_type(reader, _REJECT)
    reader.expect_end()
    return Reject()
