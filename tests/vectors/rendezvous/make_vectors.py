"""Regenerate the rendezvous golden vectors in this directory (run from the repository root).

Every input is fixed: the registration key and the P-256 keys come from labels, the
ephemeral key of the sealed request is fixed too, and HMAC, ECDH, HKDF and AES-GCM are
deterministic, so every byte is reproducible and the tests rebuild each vector and
compare. Source: Roost's own construction, PROTOCOL.md section 5.

    PYTHONPATH=src .venv/bin/python tests/vectors/rendezvous/make_vectors.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from roost.pki.certs import Role, identifier_for_key
from roost.reasons import Reason
from roost.rendezvous.control import (
    Accept,
    Connect,
    Connecting,
    ControlMessage,
    Enroll,
    Enrolled,
    Error,
    Hold,
    Holding,
    Keepalive,
    Lookup,
    LookupResult,
    Present,
    Reject,
    RelayClose,
    RelayOpen,
    RelayRecord,
    Request,
    Start,
    WakePush,
    encode_control_message,
    encode_relay,
)
from roost.rendezvous.messages import (
    Ack,
    Candidate,
    Registration,
    Wake,
    encode_ack,
    encode_registration,
    encode_wake,
)
from roost.rendezvous.seal import seal_request
from roost.rendezvous.stun import (
    StunMessage,
    build_binding_request,
    build_binding_response,
)

HERE = Path(__file__).resolve().parent


def fixed_key(label: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key from a scalar derived from ``label`` (always a valid scalar < n)."""
    scalar = int.from_bytes(hashlib.sha256(label.encode()).digest(), "big") >> 8
    return ec.derive_private_key(scalar, ec.SECP256R1())


REGISTRATION_KEY = hashlib.sha256(b"roost rendezvous vector registration key").digest()
TARGET_KEY = fixed_key("roost rendezvous vector target hub")
EPHEMERAL_KEY = fixed_key("roost rendezvous vector issuer ephemeral")
TARGET_ID = identifier_for_key(Role.HUB, TARGET_KEY.public_key())
USER = "owner"
PASSWORD = "correct horse battery staple"
TOKEN = bytes(range(16))
TRANSACTION_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
TARGET_CANDIDATES = (
    Candidate.parse("192.168.1.9:41000"),
    Candidate.parse("[2001:db8:1::9]:41000"),
)
ISSUER_CANDIDATES = (
    Candidate.parse("198.51.100.7:50123"),
    Candidate.parse("10.0.0.5:50123"),
)
OBSERVED_V4 = Candidate.parse("203.0.113.20:62000")
OBSERVED_V6 = Candidate.parse("[2001:db8:ffff::20]:62000")
REGISTRATION = Registration(TARGET_ID, 1764600000000, TARGET_CANDIDATES)
WAKE = Wake(7, TOKEN)
# The control codec carries certificate bytes without parsing them: a stand-in suffices.
CERTIFICATE = bytes.fromhex("3082") + bytes(range(64))


def sealed() -> bytes:
    """The sealed request of the vector (fixed ephemeral key)."""
    return seal_request(
        TARGET_KEY.public_key(), TARGET_ID, ISSUER_CANDIDATES, USER, PASSWORD, EPHEMERAL_KEY
    )


def datagrams() -> dict[str, bytes]:
    """The binary vectors stored as ``<name>.hex``."""
    registration = encode_registration(REGISTRATION, REGISTRATION_KEY)
    stun_request = build_binding_request(TRANSACTION_ID)
    request_message = StunMessage(0x0001, TRANSACTION_ID)
    return {
        "registration": registration,
        "registration-empty": encode_registration(Registration(TARGET_ID, 1, ()), REGISTRATION_KEY),
        "ack-ipv4": encode_ack(Ack(REGISTRATION.counter, OBSERVED_V4), registration),
        "ack-ipv6": encode_ack(Ack(REGISTRATION.counter, OBSERVED_V6), registration),
        "wake": encode_wake(WAKE, REGISTRATION_KEY),
        "sealed": sealed(),
        "relay": encode_relay(RelayRecord(0x01020304, bytes.fromhex("c0ffee") * 4)),
        "stun-request": stun_request,
        "stun-response-ipv4": build_binding_response(request_message, OBSERVED_V4),
        "stun-response-ipv6": build_binding_response(request_message, OBSERVED_V6),
    }


def control_messages() -> dict[str, ControlMessage]:
    """One message per op, stored with its exact body in ``control.json``."""
    messages: list[ControlMessage] = [
        Enroll(),
        Enrolled(TARGET_ID, REGISTRATION_KEY, 20_000),
        Lookup(TARGET_ID),
        LookupResult(TARGET_ID, CERTIFICATE),
        Connect(TARGET_ID, ISSUER_CANDIDATES, sealed()),
        Connecting(42),
        WakePush(TOKEN),
        Present(TOKEN),
        Hold(),
        Holding(),
        Request(42, ISSUER_CANDIDATES, sealed()),
        Accept(42, TARGET_CANDIDATES),
        Reject(42, Reason.BAD_PASSWORD),
        Start(42, (OBSERVED_V4, *TARGET_CANDIDATES), 150, 3000),
        RelayOpen(42, 1 << 20, 120_000),
        RelayClose(42, Reason.CLOSED),
        Keepalive(),
        Error(Reason.UNKNOWN_OP),
    ]
    return {message.op: message for message in messages}


def main() -> None:
    for name, data in datagrams().items():
        (HERE / f"{name}.hex").write_text(data.hex() + "\n")
    bodies = {
        op: encode_control_message(message).decode("ascii")
        for op, message in control_messages().items()
    }
    document = {"source": "Roost's own construction, PROTOCOL.md section 5", "bodies": bodies}
    (HERE / "control.json").write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
