"""Certificate verdicts for announcements (PROTOCOL.md section 3, step 7): verified once,
kept for a bounded time in a bounded table, negative verdicts included."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from roost.errors import VerificationError
from roost.hcsp.certcache import CertificateCache, RejectedCertificate, VerifiedCertificate
from roost.pki.certs import Role
from tests.helpers.pki import Node

from .hubs import CountingVerifier, hub_node, new_ca

CA = new_ca()
HUBS = [hub_node(CA, "10.0.0.1") for _ in range(3)]


def _der(node: Node) -> bytes:
    return node.cert.public_bytes(serialization.Encoding.DER)


def _cache(capacity: int = 8, ttl: float = 60.0) -> tuple[CountingVerifier, CertificateCache]:
    verifier = CountingVerifier(CA.cert)
    return verifier, CertificateCache(verifier, capacity, ttl)


def test_a_good_certificate_is_verified_once_and_then_served_from_the_cache() -> None:
    verifier, cache = _cache()
    first, hit = cache.verdict(_der(HUBS[0]), 0.0)
    assert isinstance(first, VerifiedCertificate) and not hit
    assert first.public_key_for(HUBS[0].identifier) == first.public_key
    second, hit = cache.verdict(_der(HUBS[0]), 59.9)
    assert second is first and hit and verifier.calls == 1


def test_the_verdict_names_the_certificate_and_refuses_another_identifier() -> None:
    _, cache = _cache()
    verdict, _ = cache.verdict(_der(HUBS[0]), 0.0)
    with pytest.raises(VerificationError) as caught:
        verdict.public_key_for(HUBS[1].identifier)
    assert caught.value.reason == "wrong-id"


def test_a_rejection_is_cached_with_its_reason() -> None:
    verifier, cache = _cache()
    stranger = hub_node(new_ca(), "10.0.0.1")  # chains to a CA nobody trusts
    verdict, hit = cache.verdict(_der(stranger), 0.0)
    assert isinstance(verdict, RejectedCertificate) and not hit
    again, hit = cache.verdict(_der(stranger), 1.0)
    assert again is verdict and hit and verifier.calls == 1
    with pytest.raises(VerificationError) as caught:
        again.public_key_for(stranger.identifier)
    assert caught.value.reason == verdict.reason


@pytest.mark.parametrize(
    ("der", "reason"),
    [
        (b"\x30\x03\x02\x01\x00", "bad-cert"),
        (_der(CA.issue(Role.DEVICE)), "not-a-hub"),
    ],
)
def test_junk_and_device_certificates_are_rejections_not_exceptions(
    der: bytes, reason: str
) -> None:
    _, cache = _cache()
    verdict, _ = cache.verdict(der, 0.0)
    assert isinstance(verdict, RejectedCertificate) and verdict.reason == reason


def test_a_verdict_expires_after_its_ttl() -> None:
    verifier, cache = _cache(ttl=10.0)
    cache.verdict(_der(HUBS[0]), 0.0)
    _, hit = cache.verdict(_der(HUBS[0]), 10.0)
    assert not hit and verifier.calls == 2


def test_the_least_recently_used_verdict_is_evicted_at_capacity() -> None:
    verifier, cache = _cache(capacity=2)
    cache.verdict(_der(HUBS[0]), 0.0)
    cache.verdict(_der(HUBS[1]), 0.0)
    cache.verdict(_der(HUBS[0]), 1.0)  # hub 0 is now the most recently used
    cache.verdict(_der(HUBS[2]), 2.0)
    assert len(cache) == 2 and verifier.calls == 3
    assert cache.verdict(_der(HUBS[0]), 3.0)[1]
    assert not cache.verdict(_der(HUBS[1]), 3.0)[1]


def test_clear_forgets_every_verdict() -> None:
    verifier, cache = _cache()
    cache.verdict(_der(HUBS[0]), 0.0)
    cache.clear()
    assert len(cache) == 0
    assert not cache.verdict(_der(HUBS[0]), 1.0)[1] and verifier.calls == 2


def test_the_cache_needs_capacity_and_a_lifetime() -> None:
    with pytest.raises(ValueError):
        CertificateCache(CountingVerifier(CA.cert), 0, 1.0)
    with pytest.raises(ValueError):
        CertificateCache(CountingVerifier(CA.cert), 1, 0.0)
