"""CA information: one generation of trust (PROTOCOL.md section 2; seed FIG. 4).

The codec and the acceptance rule of N+1 by a holder of N are pure: bytes in, a decoded
`CAInfo` or a typed error out. Signing needs the Ed25519 private keys and lives here too so
that the authority and the tests build byte-identical documents.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from roost.errors import RemoteProtocolError, VerificationError
from roost.wire import Reader, Writer, check_size

__all__ = [
    "MAGIC",
    "MAX_CAINFO_SIZE",
    "MEDIA_TYPE",
    "CAInfo",
    "CAInfoBody",
    "Flags",
    "accept_successor",
    "check_standalone",
    "decode_cainfo",
    "encode_body",
    "sign_body",
]

MAGIC = b"RCAI"
# Section 2, "Publication": the media type of a published generation.
MEDIA_TYPE = "application/vnd.roost.ca-info"
VERSION = 1
MAX_CAINFO_SIZE = 16 * 1024
_ED25519_KEY = 32
_ED25519_SIG = 64
_ZERO_DIGEST = bytes(32)


class Flags(enum.IntFlag):
    NONE = 0
    # Bit 0: CA N-1 is compromised; holders drop it at once (section 2, flags).
    REVOKES_PREVIOUS = 1


@dataclass(frozen=True, slots=True)
class CAInfoBody:
    """Every field before `sig_count`: the bytes the signatures cover."""

    generation: int
    issued_at: int
    flags: Flags
    prev_digest: bytes
    ca_cert_der: bytes
    next_url: str
    dl_threshold: int
    dl_keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CAInfo:
    """A decoded CA information document with the exact bytes it came from."""

    body: CAInfoBody
    signatures: tuple[tuple[bytes, bytes], ...]
    raw: bytes = field(repr=False)
    signed_length: int = field(repr=False)

    @property
    def generation(self) -> int:
        return self.body.generation

    @property
    def digest(self) -> bytes:
        """SHA-256 of the complete document: the next generation's `prev_digest`."""
        return hashlib.sha256(self.raw).digest()

    @property
    def revokes_previous(self) -> bool:
        return bool(self.body.flags & Flags.REVOKES_PREVIOUS)

    @property
    def issued_at_time(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.body.issued_at, dt.UTC)

    @property
    def ca_certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.body.ca_cert_der)

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[: self.signed_length]


def encode_body(body: CAInfoBody) -> bytes:
    """The signed part of a CA information document (section 2 table, up to `sig_count`)."""
    url = body.next_url.encode("utf-8")
    if not 1 <= body.dl_threshold <= len(body.dl_keys) <= 255:
        raise ValueError("need 1 <= dl_threshold <= dl_key_count <= 255")
    if any(len(k) != _ED25519_KEY for k in body.dl_keys):
        raise ValueError("DL keys are 32-byte Ed25519 public keys")
    if len(body.prev_digest) != 32:
        raise ValueError("prev_digest is 32 bytes")
    w = (
        Writer()
        .raw(MAGIC)
        .u8(VERSION)
        .u32(body.generation)
        .u64(body.issued_at)
        .u8(int(body.flags))
        .raw(body.prev_digest)
        .u32(len(body.ca_cert_der))
        .raw(body.ca_cert_der)
        .u16(len(url))
        .raw(url)
        .u8(body.dl_threshold)
        .u8(len(body.dl_keys))
    )
    for key in body.dl_keys:
        w.raw(key)
    return w.bytes()


def sign_body(body: CAInfoBody, signers: Iterable[Ed25519PrivateKey]) -> bytes:
    """Encode and sign: `sig_count` then (public key, signature) pairs over the body bytes."""
    signed = encode_body(body)
    pairs = [(k.public_key().public_bytes_raw(), k.sign(signed)) for k in signers]
    w = Writer().raw(signed).u8(len(pairs))
    for public, signature in pairs:
        w.raw(public).raw(signature)
    out = w.bytes()
    if len(out) > MAX_CAINFO_SIZE:
        raise ValueError(f"CA information is {len(out)} bytes, above {MAX_CAINFO_SIZE}")
    return out


def decode_cainfo(data: bytes, max_size: int = MAX_CAINFO_SIZE) -> CAInfo:
    """Parse CA information; structure only (signatures are checked by `accept_successor`)."""
    check_size(data, max_size, "CA information")
    r = Reader(data, "CA information")
    if r.take(4) != MAGIC:
        raise RemoteProtocolError("not CA information (bad magic)", reason="bad-magic")
    version = r.u8()
    if version != VERSION:
        raise RemoteProtocolError(f"CA information version {version}", reason="bad-version")
    generation = r.u32()
    if generation < 1:
        raise RemoteProtocolError("generation 0", reason="bad-generation")
    issued_at = r.u64()
    flag_bits = r.u8()
    if flag_bits & ~int(Flags.REVOKES_PREVIOUS):
        raise RemoteProtocolError("unknown flag bits", reason="bad-flags")
    prev_digest = r.take(32)
    if (generation == 1) != (prev_digest == _ZERO_DIGEST):
        raise RemoteProtocolError(
            "prev_digest must be zero exactly for generation 1", reason="bad-prev"
        )
    ca_cert_der = r.take(r.u32())
    try:
        x509.load_der_x509_certificate(ca_cert_der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise RemoteProtocolError("CA certificate does not parse", reason="bad-cert") from exc
    try:
        next_url = r.take(r.u16()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("next_url is not UTF-8", reason="bad-url") from exc
    if not next_url.startswith("https://"):
        raise RemoteProtocolError("next_url must be https", reason="bad-url")
    dl_threshold = r.u8()
    key_count = r.u8()
    if not 1 <= dl_threshold <= key_count:
        raise RemoteProtocolError("dl_threshold out of range", reason="bad-threshold")
    dl_keys = tuple(r.take(_ED25519_KEY) for _ in range(key_count))
    signed_length = r.position
    sig_count = r.u8()
    signatures = tuple((r.take(_ED25519_KEY), r.take(_ED25519_SIG)) for _ in range(sig_count))
    r.expect_end()
    body = CAInfoBody(
        generation,
        issued_at,
        Flags(flag_bits),
        prev_digest,
        ca_cert_der,
        next_url,
        dl_threshold,
        dl_keys,
    )
    return CAInfo(body, signatures, bytes(data), signed_length)


def _count_valid(info: CAInfo, allowed: Sequence[bytes]) -> int:
    """Distinct keys of `allowed` that made a valid signature over the signed bytes."""
    allowed_set = set(allowed)
    valid: set[bytes] = set()
    message = info.signed_bytes
    for public, signature in info.signatures:
        if public not in allowed_set or public in valid:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        except (InvalidSignature, ValueError):
            continue
        valid.add(public)
    return len(valid)


def accept_successor(trusted: CAInfo, candidate: CAInfo) -> None:
    """Raise unless `candidate` is a valid generation N+1 for a holder of `trusted` N.

    Section 2: exactly N+1, prev_digest = SHA-256(N), a threshold of N's DL keys and a
    threshold of N+1's own DL keys (python-tuf's root rotation rule, made clockless).
    """
    if candidate.generation != trusted.generation + 1:
        reason = "rollback" if candidate.generation <= trusted.generation else "skipped"
        raise VerificationError(
            f"generation {candidate.generation} does not follow {trusted.generation}",
            reason=reason,
        )
    if candidate.body.prev_digest != trusted.digest:
        raise VerificationError(
            "prev_digest does not match the trusted generation", reason="bad-prev"
        )
    if _count_valid(candidate, trusted.body.dl_keys) < trusted.body.dl_threshold:
        raise VerificationError("too few signatures by the trusted DL keys", reason="threshold")
    if _count_valid(candidate, candidate.body.dl_keys) < candidate.body.dl_threshold:
        raise VerificationError("too few signatures by its own DL keys", reason="threshold-new")


def _check_next_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise VerificationError(f"next_url {url!r} is not a URL: {exc}", reason="bad-url") from exc
    bad_char = any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url)
    if parts.scheme != "https" or not parts.hostname or bad_char or port == 0:
        raise VerificationError(
            f"next_url {url!r} is not an https://HOST[:PORT]/PATH address", reason="bad-url"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise VerificationError(
            f"next_url {url!r} carries a query, fragment or user name", reason="bad-url"
        )


def check_standalone(info: CAInfo, floor: dt.datetime) -> None:
    """What a holder can check of CA information it is asked to trust with nothing before it.

    Provisioning trusts the file as installed (section 2: generation 1 is trusted because it
    is installed), so nothing proves where it came from: a person compares its fingerprint
    (`digest`) with the authority's. What the file can prove about itself is checked here:
    a threshold of its own DL keys signed exactly these bytes (so a flipped byte anywhere in
    the body, a signature or a key is caught), `next_url` has the form rollover needs, and
    the CA certificate is a self-signed CA of this generation, still valid at `floor`.
    Raises VerificationError saying which of these failed.
    """
    valid = _count_valid(info, info.body.dl_keys)
    if valid < info.body.dl_threshold:
        raise VerificationError(
            f"only {valid} of its {len(info.signatures)} signatures verify against its own DL"
            f" keys, {info.body.dl_threshold} are needed: the file is damaged or not from the"
            " authority",
            reason="threshold-new",
        )
    _check_next_url(info.body.next_url)
    cert = info.ca_certificate
    try:
        cert.verify_directly_issued_by(cert)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound) as exc:
        raise VerificationError(
            f"the CA certificate is not a valid self-signed CA: {exc or type(exc).__name__}",
            reason="bad-cert",
        ) from exc
    if not constraints.ca:
        raise VerificationError("the CA certificate is not a CA (CA:FALSE)", reason="bad-cert")
    if cert.not_valid_after_utc <= floor:
        raise VerificationError(
            f"CA generation {info.generation} expired at {cert.not_valid_after_utc:%Y-%m-%d},"
            f" before {floor:%Y-%m-%d}, the earliest time this trust store accepts",
            reason="ca-expired",
        )
