"""A scripted hub (equipment) and issuer against BrokerCore: the whole of PROTOCOL.md
section 5 in memory, with real certificates, a real sealed password and relay records."""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.serialization import Encoding

from roost.pki.certs import Role
from roost.rendezvous import control, stun
from roost.rendezvous.broker import BrokerCore
from roost.rendezvous.messages import Candidate
from roost.rendezvous.seal import SealedCredentials, open_request, seal_request
from tests.helpers.pki import TestCA
from tests.unit.rendezvous.broker_harness import NAT_ADDR, Harness

ISSUER_UDP = ("198.51.100.9", 50000)


def test_enroll_register_lookup_connect_wake_present_accept_start_relay() -> None:
    ca = TestCA()
    hub = ca.issue(Role.HUB)
    der = hub.cert.public_bytes(Encoding.DER)
    h = Harness()

    # 1. Enrollment over mutual TLS (the adapter verified the certificate).
    held = h.channel(hub.identifier, source="203.0.113.7", cert=der)
    (enrolled,) = h.send(held, "enroll")
    assert enrolled.identifier == hub.identifier
    key = enrolled.key

    # 2. Registration from the hub's one UDP socket, behind its NAT.
    hub_local = (Candidate.of("192.168.1.20", 40001),)
    (ack,) = h.register(key, 1_000, identifier=hub.identifier, local=hub_local)
    assert h.ack(ack) == (1_000, Candidate.of(*NAT_ADDR))

    # 3. The issuer learns its reflexive address from its punch socket, then looks up.
    transaction = b"issuer-stun!"
    (answer,) = h.udp(stun.build_binding_request(transaction), ISSUER_UDP)
    reflexive = stun.parse_binding_response(answer, transaction)
    assert reflexive == Candidate.of(*ISSUER_UDP)
    issuer = h.channel(None, source="198.51.100.9")
    (result,) = h.send(issuer, "lookup", target=hub.identifier)
    assert result.certificate == der
    candidates = (reflexive, Candidate.of("10.0.0.5", 50000))
    sealed = seal_request(
        hub.cert.public_key(), hub.identifier, candidates, "owner", "correct horse"
    )
    h.datagrams.clear()
    (connecting,) = h.send(
        issuer, "connect", target=hub.identifier, candidates=candidates, sealed=sealed
    )
    session = connecting.session

    # 4. The wake-up: RWAK to the reflexive address, tagged with the hub's key.
    (wake_counter, token), *_ = h.wakes_to(NAT_ADDR, key)
    assert wake_counter > 0
    present = h.channel(hub.identifier, source="203.0.113.7", cert=der)
    (request,) = h.send(present, "present", token=token)

    # 5. The hub opens the sealed password with its own key.
    assert request.session == session
    assert open_request(hub.key, hub.identifier, request.sealed, request.candidates) == (
        SealedCredentials("owner", "correct horse")
    )
    h.send(present, "accept", session=session, candidates=hub_local)

    # 6. start to both, each with the other side's candidates.
    (start_issuer,) = h.took(issuer)
    (start_hub,) = h.took(present)
    assert start_issuer.candidates == (Candidate.of(*NAT_ADDR), *hub_local)
    assert start_hub.candidates == candidates
    assert start_issuer.deadline_ms == start_hub.deadline_ms > 0

    # 8. No direct path by the deadline: relay, both ways.
    h.send(present, "relay-open", session=session)
    assert isinstance(h.took(issuer)[0], control.RelayOpen)
    for sender, receiver, payload in ((issuer, present, b"\x40quic-1"), (present, issuer, b"q2")):
        h.send_body(sender, control.encode_relay(control.RelayRecord(session, payload)))
        assert h.took(receiver) == [control.RelayRecord(session, payload)]
    h.send(issuer, "relay-close", session=session, reason=control.Reason.CLOSED)
    assert h.took(present) == [control.RelayClose(session, control.Reason.CLOSED)]

    counters = h.core.counters
    assert (counters.enrollments, counters.registrations, counters.stun_answers) == (1, 1, 1)
    assert (counters.lookups, counters.connects, counters.presents, counters.accepts) == (
        1,
        1,
        1,
        1,
    )
    assert counters.relayed_sessions == 1 and counters.relayed_bytes == len(b"\x40quic-1q2")
    assert h.core.sessions == 0 and h.core.rejections.total() == 0


def test_a_wrong_password_never_reaches_punching() -> None:
    ca = TestCA()
    hub = ca.issue(Role.HUB)
    der = hub.cert.public_bytes(Encoding.DER)
    h = Harness()
    held = h.channel(hub.identifier, cert=der)
    (enrolled,) = h.send(held, "enroll")
    issuer = h.channel(None)
    sealed = seal_request(hub.cert.public_key(), hub.identifier, (), "owner", "wrong")
    (connecting,) = h.send(issuer, "connect", target=hub.identifier, candidates=(), sealed=sealed)
    (push,) = h.took(held)  # no registration yet: the held connection carries the wake
    present = h.channel(hub.identifier, cert=der)
    (request,) = h.send(present, "present", token=push.token)
    assert open_request(
        hub.key, hub.identifier, request.sealed, request.candidates
    ) == SealedCredentials("owner", "wrong")
    h.send(present, "reject", session=connecting.session, reason=control.Reason.BAD_PASSWORD)
    assert h.took(issuer) == [control.Reject(connecting.session, control.Reason.BAD_PASSWORD)]
    assert h.core.counters.accepts == 0 and enrolled.key


def test_wake_counters_follow_the_wall_clock_when_the_adapter_gives_it() -> None:
    # Two processes of one registry started at different times must send RWAK counters an
    # equipment accepts from either (section 5): with the wall offset, each counter is at
    # least the wall clock in microseconds, whatever the process's starting counter was.
    ca = TestCA()
    hub = ca.issue(Role.HUB)
    der = hub.cert.public_bytes(Encoding.DER)
    h = Harness()
    wall_offset_s = 1_800_000_000.0 - h.now
    h.core = BrokerCore(
        h.config, rng=random.Random(7), wake_counter_start=1000, wall_offset_s=wall_offset_s
    )
    (enrolled,) = h.send(h.channel(hub.identifier, source="203.0.113.7", cert=der), "enroll")
    h.register(enrolled.key, 1, identifier=hub.identifier)
    candidates = (Candidate.of(*ISSUER_UDP),)

    def wake_counter() -> int:
        issuer = h.channel(None, source="198.51.100.9")
        sealed = seal_request(hub.cert.public_key(), hub.identifier, candidates, "owner", "pw")
        h.datagrams.clear()
        h.send(issuer, "connect", target=hub.identifier, candidates=candidates, sealed=sealed)
        (counter, _token), *_ = h.wakes_to(NAT_ADDR, enrolled.key)
        h.core.close_channel(issuer, h.now)
        return counter

    first = wake_counter()
    assert first >= 1_800_000_000 * 1_000_000
    h.advance(30.0)
    second = wake_counter()
    assert second >= first + 30 * 1_000_000
