"""The shared registry's pure side: when the core says presence is due, the Redis value's
layout, node-to-node messages, adoption and the routing decision (docs/broker-scale.md)."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.errors import RemoteProtocolError
from roost.rendezvous.broker import BrokerCore
from roost.rendezvous.broker_events import BrokerCoreConfig
from roost.rendezvous.messages import Registration, encode_registration
from roost.rendezvous.presence import (
    Hop,
    NodeMessage,
    PresenceConfig,
    PresencePolicy,
    PresenceRecord,
    Route,
    decode_node_message,
    decode_presence,
    route_target,
)
from tests.unit.rendezvous.broker_harness import CERT, HUB, NAT_ADDR, Harness

KEY = bytes(range(32))


class SharedHarness(Harness):
    def __post_init__(self) -> None:
        policy = PresencePolicy(PresenceConfig(every=4), self.config.interval_s, self.config.ttl_s)
        self.core = BrokerCore(
            self.config, rng=random.Random(7), wake_counter_start=1000, presence=policy
        )


def test_presence_is_due_on_enrollment_change_and_every_kth_registration_only() -> None:
    h = SharedHarness()
    _, key = h.enroll()
    assert h.core.presence_to_write() == [HUB]
    assert h.register(key, 1)  # first addresses: a change
    assert h.core.presence_to_write() == [HUB]
    due = []
    for counter in range(2, 18):
        assert h.register(key, counter)
        due += [counter] * len(h.core.presence_to_write())
    assert due == [4, 8, 12, 16]  # every 4th, never per datagram
    # A new NAT port is a change: written at once.
    assert h.register(key, 18, addr=(NAT_ADDR[0], NAT_ADDR[1] + 1))
    assert h.core.presence_to_write() == [HUB]


def test_the_memory_registry_alone_writes_and_resolves_nothing() -> None:
    h = Harness()
    assert h.register(bytes(32), 1) == []
    _, key = h.enroll()
    for counter in range(1, 10):
        h.register(key, counter)
    assert h.core.presence_to_write() == [] and h.core.registrations_to_resolve() == []


def test_held_keepalives_are_written_every_kth() -> None:
    h = SharedHarness()
    channel, _ = h.enroll()
    h.core.presence_to_write()
    written = 0
    for _ in range(8):
        h.send(channel, "keepalive")
        written += len(h.core.presence_to_write())
    assert written == 2


def test_an_unknown_or_rekeyed_registration_is_handed_out_then_adopted() -> None:
    h = SharedHarness()
    datagram = encode_registration(Registration(HUB, 50, ()), KEY)
    assert h.udp(datagram) == []
    assert h.core.registrations_to_resolve() == [(HUB, datagram, NAT_ADDR)]
    # The adapter found the entry in Redis: the counter written there is the floor.
    h.core.adopt(HUB, KEY, 40, CERT, h.now)
    (ack,) = h.udp(datagram)
    assert h.ack(ack)[0] == 50
    assert h.core.presence_to_write() == [HUB]
    replay = encode_registration(Registration(HUB, 39, ()), KEY)
    assert h.udp(replay) == [] and h.refusals("counter-not-increasing") == 1
    # Enrolled again at another process: the old key fails, the registration is handed out.
    other = bytes(reversed(KEY))
    rekeyed = encode_registration(Registration(HUB, 60, ()), other)
    assert h.udp(rekeyed) == []
    assert h.core.registrations_to_resolve() == [(HUB, rekeyed, NAT_ADDR)]
    entry = h.core.registry.get(HUB)
    assert entry is not None and entry.certificate == CERT


def test_adoption_never_lowers_the_counter() -> None:
    h = SharedHarness()
    _, key = h.enroll()
    h.register(key, 90)
    h.core.adopt(HUB, key, 10, CERT, h.now)
    assert h.core.registry.counter_of(HUB) == 90


def test_presence_ttl_outlasts_k_registrations_with_jitter() -> None:
    policy = PresencePolicy(PresenceConfig(every=16), 20.0, 60.0)
    assert policy.ttl_ms == round((16 * 20 * 1.25 + 60) * 1000)


@given(
    owner=st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 64),
    epoch=st.integers(0, 2**64 - 1),
    counter=st.integers(0, 2**64 - 1),
    certificate=st.one_of(st.none(), st.binary(min_size=1, max_size=4096)),
    reachable=st.booleans(),
)
def test_presence_records_round_trip(
    owner: str, epoch: int, counter: int, certificate: bytes | None, reachable: bool
) -> None:
    record = PresenceRecord(owner, epoch, counter, KEY, certificate, reachable)
    assert decode_presence(record.encode()) == record


@given(st.binary(max_size=200))
def test_presence_decoding_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_presence(data)


@given(
    kind=st.sampled_from(list(Hop)),
    channel=st.integers(0, 2**64 - 1),
    rtt=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=300),
)
def test_node_messages_round_trip(kind: Hop, channel: int, rtt: int, payload: bytes) -> None:
    message = NodeMessage(kind, "b1", 1234, channel, rtt, payload)
    assert decode_node_message(message.encode()) == message


@given(st.binary(max_size=100))
def test_node_message_decoding_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_node_message(data)


def test_routing_forwards_only_to_another_live_process_instance() -> None:
    record = PresenceRecord("b2", 5, 1, KEY, CERT)
    assert route_target(True, record, "b1", 1) is Route.LOCAL
    assert route_target(False, None, "b1", 1) is Route.ASK
    assert route_target(False, record, "b1", 1) is Route.FORWARD
    # Our own record (an entry this process let lapse) and an unreachable one: local.
    assert route_target(False, record, "b2", 5) is Route.LOCAL
    assert route_target(False, PresenceRecord("b2", 4, 1, KEY, CERT), "b2", 5) is Route.FORWARD
    unreachable = PresenceRecord("b2", 5, 1, KEY, CERT, reachable=False)
    assert route_target(False, unreachable, "b1", 1) is Route.LOCAL


def test_presence_config_is_checked() -> None:
    with pytest.raises(ValueError):
        PresenceConfig(every=0)
    with pytest.raises(ValueError):
        PresenceConfig(prefix="")
    assert PresenceConfig(prefix="x:").presence_key(HUB) == f"x:p:{HUB}"
    assert BrokerCoreConfig().ttl_s == 60.0


def test_a_lookup_for_a_target_owned_elsewhere_is_answered_from_its_presence() -> None:
    h = SharedHarness()
    issuer = h.channel(None)
    h.records.clear()
    h.core.answer_lookup(issuer, HUB, CERT, h.now)
    h.pump()
    (found,) = h.took(issuer)
    assert found.target == HUB and found.certificate == CERT
    assert h.core.counters.lookups == 1
    # The per-target bucket is spent as for a local lookup: a burst is refused.
    for _ in range(10):
        h.core.answer_lookup(issuer, HUB, CERT, h.now)
    h.pump()
    assert h.refusals("rate-limited") >= 1
