"""Cached certificate verdicts for announcement receivers (PROTOCOL.md section 3, step 7), pure.

Path validation is the expensive part of accepting an announcement, and every hub sends
the same certificate once per advert interval. Verdicts are therefore kept per certificate
digest for a bounded time in a bounded least-recently-used table. Negative verdicts are
kept too, so a flood of one bad certificate from many spoofed sources costs one path
validation per cache lifetime.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from roost.errors import RoostError, VerificationError
from roost.pki.certs import identifier_of, load_certificate

__all__ = [
    "CertificateCache",
    "CertificateVerdict",
    "CertificateVerifier",
    "RejectedCertificate",
    "VerifiedCertificate",
]

# The injected trust check: chain the certificate to a trusted CA generation and return
# the node identifier it proves, or raise VerificationError (section 1).
CertificateVerifier = Callable[[x509.Certificate], str]


@dataclass(frozen=True, slots=True)
class VerifiedCertificate:
    """A hub certificate that chained to a trusted generation, until ``expires_at``."""

    identifier: str
    public_key: ec.EllipticCurvePublicKey
    expires_at: float

    def public_key_for(self, identifier: str) -> ec.EllipticCurvePublicKey:
        """The key to check the signature with; raises ``wrong-id`` for another sender."""
        if self.identifier != identifier:
            raise VerificationError(
                f"certificate is {self.identifier}, announcement claims {identifier}",
                reason="wrong-id",
            )
        return self.public_key


@dataclass(frozen=True, slots=True)
class RejectedCertificate:
    """A certificate that failed verification for ``reason``, until ``expires_at``."""

    reason: str
    expires_at: float

    def public_key_for(self, identifier: str) -> ec.EllipticCurvePublicKey:
        """Always raises VerificationError with the cached reason."""
        del identifier  # A rejected certificate proves no identifier at all.
        raise VerificationError("certificate was rejected", reason=self.reason)


CertificateVerdict = VerifiedCertificate | RejectedCertificate


def _judge(der: bytes, verify: CertificateVerifier, expires_at: float) -> CertificateVerdict:
    try:
        certificate = load_certificate(der)
        identifier = verify(certificate)
        public_key = certificate.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise VerificationError("hub key is not ECDSA", reason="bad-key")
        if not identifier.startswith("hcsp:") or identifier_of(certificate) != identifier:
            raise VerificationError("certificate is not a hub's", reason="not-a-hub")
    except RoostError as exc:
        return RejectedCertificate(exc.reason, expires_at)
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion):
        # cryptography parses some certificate parts lazily (extensions, the key) and
        # reports junk as ValueError, or as InvalidVersion, which is not a ValueError
        # and which load_certificate lets through; a hostile certificate must end as a
        # counted rejection, never an exception (PROTOCOL.md preamble).
        return RejectedCertificate("bad-cert", expires_at)
    return VerifiedCertificate(identifier, public_key, expires_at)


class CertificateCache:
    """Verdicts by certificate digest: at most ``capacity``, each trusted for ``ttl`` s."""

    __slots__ = ("_capacity", "_ttl", "_verdicts", "_verify")

    def __init__(self, verify: CertificateVerifier, capacity: int, ttl: float) -> None:
        if capacity < 1 or ttl <= 0:
            raise ValueError("the certificate cache needs capacity >= 1 and ttl > 0")
        self._verify = verify
        self._capacity = capacity
        self._ttl = ttl
        self._verdicts: OrderedDict[bytes, CertificateVerdict] = OrderedDict()

    def __len__(self) -> int:
        return len(self._verdicts)

    def verdict(self, der: bytes, now: float) -> tuple[CertificateVerdict, bool]:
        """The verdict on certificate ``der`` and whether it came from the cache.

        Never raises for a hostile certificate: every failure is a RejectedCertificate.
        """
        fingerprint = hashlib.sha256(der).digest()
        cached = self._verdicts.get(fingerprint)
        if cached is not None and cached.expires_at > now:
            self._verdicts.move_to_end(fingerprint)
            return cached, True
        fresh = _judge(der, self._verify, now + self._ttl)
        self._verdicts[fingerprint] = fresh
        self._verdicts.move_to_end(fingerprint)
        while len(self._verdicts) > self._capacity:
            self._verdicts.popitem(last=False)
        return fresh, False

    def clear(self) -> None:
        """Forget every verdict; call after the trust store changes."""
        self._verdicts.clear()
