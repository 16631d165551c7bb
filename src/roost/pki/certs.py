"""Certificates and node identifiers (PROTOCOL.md section 1).

Pure functions: keys and times come in as arguments, DER/PEM bytes come out.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from roost.errors import RemoteProtocolError, VerificationError

__all__ = [
    "LeafRequest",
    "Role",
    "cert_to_pem",
    "certs_from_pem",
    "generate_key",
    "identifier_for_key",
    "identifier_of",
    "issue_leaf",
    "key_from_pem",
    "key_to_pem",
    "load_certificate",
    "make_ca",
    "san_uris",
]

# PROTOCOL.md section 1: role prefixes of node identifiers.
_PREFIX = {"hub": "hcsp:", "device": "ab:"}
MAX_CERT_DER = 8 * 1024


class Role(enum.Enum):
    HUB = "hub"
    DEVICE = "device"
    DOWNLOAD = "download"
    BROKER = "broker"


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key: the only curve `cryptography.x509.verification` and TLS both accept."""
    return ec.generate_private_key(ec.SECP256R1())


def _spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def identifier_for_key(role: Role, public_key: ec.EllipticCurvePublicKey) -> str:
    """`prefix + base64url-nopad(SHA-256(SPKI DER)[0:16])` (PROTOCOL.md section 1)."""
    prefix = _PREFIX.get(role.value)
    if prefix is None:
        raise ValueError(f"role {role.value} has no node identifier")
    digest = hashlib.sha256(_spki_der(public_key)).digest()[:16]
    return prefix + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def identifier_of(cert: x509.Certificate) -> str:
    """The node identifier a certificate carries, checked against its own key.

    Raises VerificationError unless there is exactly one `hcsp:`/`ab:` SAN URI and it equals
    the hash of the certificate's key (PROTOCOL.md section 1, last rule).
    """
    ids = [u for u in san_uris(cert) if u.startswith(tuple(_PREFIX.values()))]
    if len(ids) != 1:
        raise VerificationError("certificate carries no single node identifier", reason="no-id")
    claimed = ids[0]
    role = Role.HUB if claimed.startswith("hcsp:") else Role.DEVICE
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError("certificate key is not ECDSA", reason="bad-key")
    if identifier_for_key(role, key) != claimed:
        raise VerificationError("identifier does not match the key", reason="id-mismatch")
    return claimed


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Roost"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _serial() -> int:
    return x509.random_serial_number()


def make_ca(
    key: ec.EllipticCurvePrivateKey,
    generation: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """Self-signed CA of one generation: CA:TRUE, pathlen 0 (PROTOCOL.md section 1 table)."""
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(f"Roost CA generation {generation}"))
        .issuer_name(_name(f"Roost CA generation {generation}"))
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
    )
    return builder.sign(key, hashes.SHA256())


@dataclass(frozen=True, slots=True)
class LeafRequest:
    role: Role
    public_key: ec.EllipticCurvePublicKey
    dns_names: Sequence[str] = ()
    ip_addresses: Sequence[str] = ()


def _eku(role: Role) -> list[x509.ObjectIdentifier]:
    # PROTOCOL.md section 1 table: hubs and devices authenticate both ways, and so do
    # brokers (to each other, on the node link between broker processes).
    if role in (Role.HUB, Role.DEVICE, Role.BROKER):
        return [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return [ExtendedKeyUsageOID.SERVER_AUTH]


def issue_leaf(
    request: LeafRequest,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> tuple[x509.Certificate, str | None]:
    """Issue a leaf of `request.role` under a CA; returns the certificate and its identifier."""
    names: list[x509.GeneralName] = []
    identifier: str | None = None
    if request.role in (Role.HUB, Role.DEVICE):
        identifier = identifier_for_key(request.role, request.public_key)
        names.append(x509.UniformResourceIdentifier(identifier))
    names.extend(x509.DNSName(n) for n in request.dns_names)
    names.extend(x509.IPAddress(ipaddress.ip_address(a)) for a in request.ip_addresses)
    if not names:
        raise ValueError(f"a {request.role.value} certificate needs at least one DNS or IP name")
    common_name = identifier or (request.dns_names or request.ip_addresses)[0]
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(request.public_key)
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(_eku(request.role)), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(request.public_key), False)
        .add_extension(aki, critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256()), identifier


def load_certificate(der: bytes) -> x509.Certificate:
    """Parse a DER certificate received from outside; typed error on junk."""
    if len(der) > MAX_CERT_DER:
        raise RemoteProtocolError("certificate too large", reason="oversized")
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise RemoteProtocolError("certificate does not parse", reason="bad-cert") from exc


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certs_from_pem(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise RemoteProtocolError("PEM does not hold certificates", reason="bad-cert") from exc


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise VerificationError("private key is not ECDSA P-256", reason="bad-key")
    return key
