"""The shared registry's pure side: when the core says presence is due, the Redis value's
layout, node-to-node messages, adoption, the routing decision and the node link's path
choice, address record, hello and back-off (docs/broker-scale.md)."""

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
    LINK_VERSION,
    Hop,
    NodeMessage,
    PeerRecord,
    PresenceConfig,
    PresencePolicy,
    PresenceRecord,
    Route,
    Via,
    check_hello,
    choose_via,
    decode_node_message,
    decode_peer,
    decode_presence,
    hello,
    link_backoff,
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


def test_a_channel_takes_the_link_only_to_the_owners_own_instance() -> None:
    # Up to that very instance: the link, nothing to open.
    assert choose_via(7, 7) == (Via.LINK, False)
    # None up: pub/sub for this channel, and a link asked for.
    assert choose_via(None, 7) == (Via.PUBSUB, True)
    # Up to an older instance: the owner restarted; pub/sub now, and the link renewed.
    assert choose_via(6, 7) == (Via.PUBSUB, True)
    # Up to a newer instance than the presence names (the presence lags a restart):
    # pub/sub reaches the new instance too, and the link stays.
    assert choose_via(8, 7) == (Via.PUBSUB, False)


def test_the_link_back_off_doubles_to_its_cap_with_the_jitter() -> None:
    delays = [link_backoff(n, 1.0, first_s=0.1, cap_s=5.0) for n in range(10)]
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert max(delays) == 5.0 and delays[-1] == 5.0
    assert link_backoff(2, 0.8, first_s=0.1, cap_s=5.0) == pytest.approx(0.32)
    assert link_backoff(10**6, 1.2, first_s=0.1, cap_s=5.0) == pytest.approx(6.0)


@given(
    epoch=st.integers(0, 2**64 - 1),
    host=st.text(min_size=1, max_size=60),
    port=st.integers(1, 65535),
    local=st.one_of(
        st.just(("", "")),
        st.tuples(st.text(min_size=1, max_size=25), st.text(min_size=1, max_size=60)),
    ),
)
def test_peer_records_round_trip(epoch: int, host: str, port: int, local: tuple[str, str]) -> None:
    record = PeerRecord(epoch, host, port, *local)
    if len(host.encode()) > 255 or len(local[0].encode()) > 100:
        return
    assert decode_peer(record.encode()) == record


def test_a_version_1_peer_record_still_decodes_without_a_local_socket() -> None:
    # A process of the previous release advertises u8 1 | u64 epoch | u16 port | host.
    old = b"\x01" + (7).to_bytes(8, "big") + (7444).to_bytes(2, "big") + b"\x09" + b"10.0.0.11"
    assert decode_peer(old) == PeerRecord(7, "10.0.0.11", 7444)


def test_the_local_socket_is_offered_only_to_the_same_machine() -> None:
    record = PeerRecord(1, "127.0.0.1", 7444, "roost-link/b1/1", "boot-x:net-4026531840")
    assert record.local_for("boot-x:net-4026531840") == "roost-link/b1/1"
    # Another host (boot id) or another network namespace on the same host: TLS.
    assert record.local_for("boot-y:net-4026531840") == ""
    assert record.local_for("boot-x:net-4026532999") == ""
    assert PeerRecord(1, "127.0.0.1", 7444).local_for("") == ""


@given(st.binary(max_size=80))
def test_peer_decoding_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_peer(data)


def test_peer_records_refuse_what_names_no_address() -> None:
    for bad in (
        PeerRecord(1, "", 7444),
        PeerRecord(1, "h", 0),
        PeerRecord(1, "h", 1, "local-without-machine"),
        PeerRecord(1, "h", 1, "x" * 101, "m"),
    ):
        with pytest.raises(ValueError):
            bad.encode()
    good = PeerRecord(3, "10.0.0.11", 7444, "roost-link/b1/3", "boot:net").encode()
    for broken in (
        good[:-1],
        b"\x03" + good[1:],
        good + b"x",
        good[:9] + b"\x00\x00" + good[11:],
        PeerRecord(3, "10.0.0.11", 7444).encode()[:-2] + b"\x01m\x00",
    ):
        with pytest.raises(RemoteProtocolError):
            decode_peer(broken)


def _reason(message: NodeMessage, node: str, epoch: int, peer: tuple[str, int] | None) -> str:
    try:
        check_hello(message, node, epoch, peer)
    except RemoteProtocolError as caught:
        return caught.reason
    return "ok"


def test_a_hello_must_name_this_very_instance() -> None:
    # b2 (epoch 20) dials b1 (epoch 10); b1 answers with its own hello.
    dialled = hello("b2", 20, "b1", 10)
    assert decode_node_message(dialled.encode()) == dialled
    assert dialled.kind is Hop.HELLO and dialled.rtt_ms == LINK_VERSION
    assert _reason(dialled, "b1", 10, None) == "ok"
    # An address read before b1 restarted (epoch 11 now), or meant for another node.
    assert _reason(dialled, "b1", 11, None) == "wrong-node"
    assert _reason(dialled, "b3", 10, None) == "wrong-node"
    answer = hello("b1", 10, "b2", 20)
    assert _reason(answer, "b2", 20, ("b1", 10)) == "ok"
    # The answer of another instance than the one the dialler read the address of.
    assert _reason(answer, "b2", 20, ("b1", 9)) == "wrong-node"
    assert _reason(hello("b9", 10, "b2", 20), "b2", 20, ("b1", 10)) == "wrong-node"
    # Not a hello, or another link version.
    opened = NodeMessage(Hop.OPEN, "b2", 20, 10, LINK_VERSION, b"b1")
    assert _reason(opened, "b1", 10, None) == "bad-hello"
    newer = NodeMessage(Hop.HELLO, "b2", 20, 10, LINK_VERSION + 1, b"b1")
    assert _reason(newer, "b1", 10, None) == "bad-hello"


def test_presence_config_is_checked() -> None:
    with pytest.raises(ValueError):
        PresenceConfig(every=0)
    with pytest.raises(ValueError):
        PresenceConfig(prefix="")
    assert PresenceConfig(prefix="x:").presence_key(HUB) == f"x:p:{HUB}"
    assert PresenceConfig(prefix="x:").peer_key("b1") == "x:l:b1"
    for bad in ({"link_cap_s": 0.0}, {"max_links": 0}, {"peer_ttl_s": -1.0}):
        with pytest.raises(ValueError):
            PresenceConfig(**bad)  # type: ignore[arg-type]
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
