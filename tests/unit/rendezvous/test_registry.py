"""The broker's registry: TTL, bounded expiry, held connections, and its memory per entry."""

from __future__ import annotations

import base64
import random
import tracemalloc

import pytest

from roost.errors import RefusedError
from roost.rendezvous.messages import Candidate
from roost.rendezvous.registry import Registry

KEY = bytes(range(32))
CERT = b"\x30" * 500


def ident(n: int) -> str:
    return "hcsp:" + base64.urlsafe_b64encode(n.to_bytes(16, "big")).rstrip(b"=").decode()


REFLEXIVE = Candidate.of("203.0.113.7", 40001)
LOCAL = (Candidate.of("192.168.1.20", 40001), Candidate.parse("[2001:db8::20]:40001"))


def test_enroll_register_and_read_back() -> None:
    registry = Registry(ttl=60.0, max_entries=10)
    registry.enroll(ident(1), KEY, CERT, now=0.0)
    entry = registry.get(ident(1))
    assert entry is not None
    assert (entry.key, entry.counter, entry.reflexive, entry.local) == (KEY, None, None, ())
    assert entry.certificate is CERT
    assert registry.live(ident(1), 59.9) and not registry.live(ident(1), 60.0)
    assert not registry.udp_fresh(ident(1), 1.0)
    registry.register(ident(1), 1234, REFLEXIVE, LOCAL, now=10.0)
    entry = registry.get(ident(1))
    assert entry is not None
    assert (entry.counter, entry.reflexive, entry.local, entry.last_seen) == (
        1234,
        REFLEXIVE,
        LOCAL,
        10.0,
    )
    assert registry.udp_fresh(ident(1), 69.9) and not registry.udp_fresh(ident(1), 70.0)


def test_reenrollment_replaces_the_key_keeps_the_counter_forgets_addresses() -> None:
    registry = Registry(ttl=60.0, max_entries=10)
    registry.enroll(ident(1), KEY, CERT, now=0.0)
    registry.register(ident(1), 99, REFLEXIVE, LOCAL, now=1.0)
    registry.enroll(ident(1), bytes(32), CERT, now=2.0)
    entry = registry.get(ident(1))
    assert entry is not None
    assert (entry.key, entry.counter, entry.reflexive) == (bytes(32), 99, None)


def test_expire_forgets_from_the_front_with_bounded_work() -> None:
    registry = Registry(ttl=60.0, max_entries=100)
    for n in range(10):
        registry.enroll(ident(n), KEY, None, now=float(n))
    # Entry 0 refreshed: it moves behind the others.
    registry.register(ident(0), 5, REFLEXIVE, (), now=20.0)
    assert registry.next_expiry() == 61.0
    assert registry.expire(70.0, budget=3) == 3
    assert len(registry) == 7
    assert registry.expire(70.0) == 6
    assert list(registry) == [ident(0)]
    assert registry.expire(79.9) == 0 and registry.expire(80.0) == 1
    assert registry.next_expiry() is None


def test_a_held_connection_keeps_an_entry_live_past_ttl() -> None:
    registry = Registry(ttl=60.0, max_entries=10)
    registry.enroll(ident(1), KEY, CERT, now=0.0)
    registry.register(ident(1), 5, REFLEXIVE, (), now=0.0)
    registry.hold(ident(1), channel=7)
    assert registry.live(ident(1), 500.0)
    assert registry.expire(500.0) == 0 and ident(1) in registry
    # The stale UDP address is dropped: wake-ups now go over the connection only.
    assert not registry.udp_fresh(ident(1), 500.0)
    registry.release(ident(1), channel=8)  # not the held one: no effect
    assert registry.get(ident(1)).held == 7  # type: ignore[union-attr]
    registry.release(ident(1), channel=7)
    assert registry.expire(560.0) == 1


def test_full_registry_refuses_new_identifiers() -> None:
    registry = Registry(ttl=60.0, max_entries=2)
    registry.enroll(ident(1), KEY, None, now=0.0)
    registry.enroll(ident(2), KEY, None, now=0.0)
    with pytest.raises(RefusedError) as caught:
        registry.enroll(ident(3), KEY, None, now=1.0)
    assert caught.value.reason == "table-full"
    registry.enroll(ident(1), KEY, None, now=1.0)  # an existing one may re-enroll
    registry.enroll(ident(3), KEY, None, now=60.5)  # room once the others expired
    assert ident(3) in registry


def test_memory_per_entry_is_under_400_bytes() -> None:
    count = 20_000
    rng = random.Random(1)
    certificate = b"\x30" * 600  # one DER object; each entry holds a reference
    registry = Registry(ttl=60.0, max_entries=count)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(count):
            identifier = ident(rng.getrandbits(128))
            registry.enroll(identifier, rng.randbytes(32), certificate, now=0.0)
            registry.register(
                identifier,
                1_700_000_000_000 + n,
                Candidate.of("203.0.113.7", 1024 + n % 60000),
                (Candidate.of("192.168.1.20", 40000),),
                now=1.0,
            )
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(registry) == count
    per_entry = used / count
    assert 100 < per_entry < 400, per_entry
