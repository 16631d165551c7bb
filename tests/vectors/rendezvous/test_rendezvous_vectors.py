"""Golden vectors for the broker's wire formats (PROTOCOL.md section 5), byte for byte.

The generator (make_vectors.py) rebuilds every vector from fixed keys and values; each
stored file must equal the rebuilt bytes and decode back to the values it was built from.
Where a check can be made without our codec (HMAC tags, the seal's key schedule, STUN
FINGERPRINT and XOR-MAPPED-ADDRESS), it is made independently, from the layout alone.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import struct
import zlib
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from roost.rendezvous.control import (
    decode_channel_body,
    decode_control,
    decode_relay,
    encode_control_message,
)
from roost.rendezvous.messages import (
    decode_ack,
    decode_registration,
    decode_wake,
    encode_candidates,
    verify_registration,
    verify_wake,
)
from roost.rendezvous.seal import SealedCredentials, open_request
from roost.rendezvous.stun import (
    BINDING_REQUEST,
    BINDING_SUCCESS,
    decode_stun,
    parse_binding_request,
    parse_binding_response,
)

HERE = Path(__file__).resolve().parent


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "rendezvous_make_vectors", HERE / "make_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()


def _stored(name: str) -> bytes:
    return bytes.fromhex((HERE / f"{name}.hex").read_text().strip())


@pytest.mark.parametrize("name", sorted(GEN.datagrams()))
def test_stored_bytes_equal_the_rebuilt_bytes(name: str) -> None:
    assert _stored(name) == GEN.datagrams()[name]


def test_no_stray_vector_files() -> None:
    stored = {path.stem for path in HERE.glob("*.hex")}
    assert stored == set(GEN.datagrams())


def test_registration_vector_decodes_and_its_tag_is_hmac_sha256() -> None:
    data = _stored("registration")
    received = decode_registration(data)
    assert verify_registration(received, GEN.REGISTRATION_KEY) == GEN.REGISTRATION
    # Independently of our codec: the layout's fields and the stdlib HMAC.
    identifier = GEN.TARGET_ID.encode()
    assert data[:4] == b"RREG" and data[4] == 1 and data[5] == len(identifier)
    assert data[6 : 6 + len(identifier)] == identifier
    assert struct.unpack(">Q", data[6 + len(identifier) : 14 + len(identifier)])[0] == (
        GEN.REGISTRATION.counter
    )
    assert data[14 + len(identifier) :][:-16] == encode_candidates(GEN.TARGET_CANDIDATES)
    expected = hmac.new(GEN.REGISTRATION_KEY, data[:-16], hashlib.sha256).digest()[:16]
    assert data[-16:] == expected
    assert len(data) == 6 + 27 + 8 + 1 + 7 + 19 + 16


def test_acks_are_never_larger_than_the_registration() -> None:
    registration = _stored("registration-empty")
    for name, observed in (("ack-ipv4", GEN.OBSERVED_V4), ("ack-ipv6", GEN.OBSERVED_V6)):
        ack = decode_ack(_stored(name))
        assert ack.counter == GEN.REGISTRATION.counter and ack.observed == observed
        assert len(_stored(name)) <= len(registration)


def test_wake_vector() -> None:
    data = _stored("wake")
    assert len(data) == 45
    assert verify_wake(decode_wake(data), GEN.REGISTRATION_KEY) == GEN.WAKE
    expected = hmac.new(GEN.REGISTRATION_KEY, data[:-16], hashlib.sha256).digest()[:16]
    assert data[-16:] == expected and data[13:29] == GEN.TOKEN


def test_sealed_vector_opens_and_follows_the_documented_key_schedule() -> None:
    sealed = _stored("sealed")
    assert open_request(GEN.TARGET_KEY, GEN.TARGET_ID, sealed, GEN.ISSUER_CANDIDATES) == (
        SealedCredentials(GEN.USER, GEN.PASSWORD)
    )
    # Rebuild the key schedule from seal.py's docstring with the raw primitives.
    ephemeral = sealed[1:66]
    assert sealed[0] == 1
    assert ephemeral == GEN.EPHEMERAL_KEY.public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint
    )
    target = GEN.TARGET_KEY.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    shared = GEN.TARGET_KEY.exchange(
        ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ephemeral)
    )
    identifier = GEN.TARGET_ID.encode()
    info = b"roost/1 connect" + bytes([len(identifier)]) + identifier + ephemeral + target
    okm = HKDF(hashes.SHA256(), 44, salt=None, info=info).derive(shared)
    associated = b"\x01" + encode_candidates(GEN.ISSUER_CANDIDATES)
    plaintext = AESGCM(okm[:32]).decrypt(okm[32:], sealed[66:], associated)
    user, password = GEN.USER.encode(), GEN.PASSWORD.encode()
    fields = bytes([len(user)]) + user + struct.pack(">H", len(password)) + password
    assert plaintext == fields + bytes(64 - len(fields))


def test_relay_vector() -> None:
    record = decode_relay(_stored("relay"))
    assert record.session == 0x01020304 and record.payload == bytes.fromhex("c0ffee") * 4
    assert decode_channel_body(_stored("relay")) == record


def test_stun_vectors_follow_rfc_8489() -> None:
    request = _stored("stun-request")
    message = parse_binding_request(request)
    assert message.message_type == BINDING_REQUEST and message.fingerprint
    assert message.transaction_id == GEN.TRANSACTION_ID
    for name, observed in (
        ("stun-response-ipv4", GEN.OBSERVED_V4),
        ("stun-response-ipv6", GEN.OBSERVED_V6),
    ):
        data = _stored(name)
        assert decode_stun(data).message_type == BINDING_SUCCESS
        assert parse_binding_response(data, GEN.TRANSACTION_ID) == observed
        # FINGERPRINT: CRC-32 of everything before it, XOR 0x5354554E (RFC 8489 §14.7).
        assert data[-8:-4] == bytes.fromhex("80280004")
        crc = (zlib.crc32(data[:-8]) ^ 0x5354554E).to_bytes(4, "big")
        assert data[-4:] == crc
        # XOR-MAPPED-ADDRESS port: the port XOR the cookie's top 16 bits.
        assert struct.unpack(">H", data[26:28])[0] == observed.port ^ 0x2112
        # Our own requests are never smaller than our responses (no amplification).
        assert len(data) <= len(request)


def test_control_bodies_are_exact() -> None:
    document = json.loads((HERE / "control.json").read_text())
    messages = GEN.control_messages()
    assert set(document["bodies"]) == set(messages)
    for op, text in document["bodies"].items():
        body = text.encode("ascii")
        assert encode_control_message(messages[op]) == body
        assert decode_control(body) == messages[op]
        assert decode_channel_body(body) == messages[op]
