"""Golden vectors for HCSP (tests/vectors/hcsp, produced by make_vectors.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from roost.hcsp.announce import (
    decode_announcement,
    encode_announcement,
    verify_announcement_signature,
)
from roost.hcsp.documents import decode_document, encode_document
from roost.pki.certs import identifier_of

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "hcsp"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hcsp_make_vectors", VECTORS / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _load_generator()


@pytest.mark.parametrize("name", sorted(GENERATOR.documents()))
def test_document_bytes_are_exact(name: str) -> None:
    stored = (VECTORS / f"{name}.xml").read_bytes()
    document = GENERATOR.documents()[name]
    assert encode_document(document) == stored
    assert decode_document(stored) == document


def test_announcement_vector() -> None:
    datagram = bytes.fromhex((VECTORS / "announcement.hex").read_text().strip())
    hub_der = (VECTORS / "hub.der").read_bytes()
    announcement = decode_announcement(datagram)
    assert announcement.document == (VECTORS / "subscribe.xml").read_bytes()
    assert announcement.certificate == hub_der
    # The stored signature still verifies under the fixed key's certificate ...
    certificate = x509.load_der_x509_certificate(hub_der)
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    verify_announcement_signature(announcement, public_key)
    assert identifier_of(certificate) == GENERATOR.HUB_ID
    # ... and re-encoding the decoded fields reproduces every byte but the randomised
    # ECDSA signature.
    again = encode_announcement(announcement.document, announcement.certificate, GENERATOR.HUB_KEY)
    signed = announcement.signed_bytes
    assert again[: len(signed)] == datagram[: len(signed)]
    assert len(datagram) == 845


def test_certificate_chains_to_the_stored_ca() -> None:
    ca = x509.load_der_x509_certificate((VECTORS / "ca.der").read_bytes())
    hub = x509.load_der_x509_certificate((VECTORS / "hub.der").read_bytes())
    hub.verify_directly_issued_by(ca)
    assert ca.public_key() == GENERATOR.CA_KEY.public_key()
