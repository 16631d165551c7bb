"""Regenerate the HCSP golden vectors in this directory (run once; commit the output).

Keys come from fixed private scalars, so identifiers are stable. Certificates and ECDSA
signatures are randomised by design (serial numbers, signature nonces), so their bytes are
stored here and the tests check them rather than regenerate them.

    .venv/bin/python tests/vectors/hcsp/make_vectors.py
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from roost.hcsp.announce import encode_announcement
from roost.hcsp.documents import (
    Document,
    Endpoint,
    Hello,
    HubAddress,
    Redirect,
    Subscribe,
    Welcome,
    encode_document,
)
from roost.pki.certs import LeafRequest, Role, identifier_for_key, issue_leaf, make_ca

HERE = Path(__file__).resolve().parent
NOT_BEFORE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2046, 1, 1, tzinfo=dt.UTC)
HUB_IP = "192.168.1.9"
PORT = 17320
# Section 3 example time: 2025-11-23T12:13:20.123Z in Unix milliseconds.
SEQ_MS = 1763900000123


def fixed_key(label: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key from a scalar derived from ``label`` (always a valid scalar < n)."""
    scalar = int.from_bytes(hashlib.sha256(label.encode()).digest(), "big") >> 8
    return ec.derive_private_key(scalar, ec.SECP256R1())


CA_KEY = fixed_key("roost hcsp vector CA generation 1")
HUB_KEY = fixed_key("roost hcsp vector hub A")
OTHER_HUB_KEY = fixed_key("roost hcsp vector hub B")
DEVICE_KEY = fixed_key("roost hcsp vector device")
HUB_ID = identifier_for_key(Role.HUB, HUB_KEY.public_key())
OTHER_HUB_ID = identifier_for_key(Role.HUB, OTHER_HUB_KEY.public_key())
DEVICE_ID = identifier_for_key(Role.DEVICE, DEVICE_KEY.public_key())


def documents() -> dict[str, Document]:
    """The documents whose exact bytes are stored as ``<name>.xml``."""
    hub = HubAddress(HUB_ID, Endpoint(HUB_IP, PORT))
    return {
        "subscribe": Subscribe(hub, ("hcsp", "webs", "db"), 0, 5, SEQ_MS, SEQ_MS),
        "subscribe-ipv6": Subscribe(
            HubAddress(HUB_ID, Endpoint("fd00::9", PORT)), ("hcsp",), 3, 8, SEQ_MS + 1, SEQ_MS
        ),
        "hello": Hello(DEVICE_ID, HUB_ID, "camera", 41),
        # Section 4: the optional name, with characters the encoder must escape.
        "hello-named": Hello(DEVICE_ID, HUB_ID, "camera", 41, 'Porch & "front" <door> é'),
        "welcome": Welcome(HUB_ID, DEVICE_ID, ("hcsp", "webs", "db"), 5),
        "redirect": Redirect(
            HUB_ID,
            DEVICE_ID,
            HubAddress(OTHER_HUB_ID, Endpoint(HUB_IP, PORT)),
            ("hcsp", "webs", "db"),
        ),
    }


def main() -> None:
    ca_cert = make_ca(CA_KEY, 1, NOT_BEFORE, NOT_AFTER)
    hub_cert, _ = issue_leaf(
        LeafRequest(Role.HUB, HUB_KEY.public_key(), ip_addresses=[HUB_IP]),
        CA_KEY,
        ca_cert,
        NOT_BEFORE,
        NOT_AFTER,
    )
    der = serialization.Encoding.DER
    (HERE / "ca.der").write_bytes(ca_cert.public_bytes(der))
    (HERE / "hub.der").write_bytes(hub_cert.public_bytes(der))
    for name, document in documents().items():
        (HERE / f"{name}.xml").write_bytes(encode_document(document))
    datagram = encode_announcement(
        encode_document(documents()["subscribe"]), hub_cert.public_bytes(der), HUB_KEY
    )
    (HERE / "announcement.hex").write_text(datagram.hex() + "\n")
    print(f"hub certificate: {len(hub_cert.public_bytes(der))} bytes DER")
    print(f"announcement datagram: {len(datagram)} bytes")


if __name__ == "__main__":
    main()
