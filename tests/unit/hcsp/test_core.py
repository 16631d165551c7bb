"""The announce core's receive order (PROTOCOL.md section 3): accepted, or rejected and
counted with the state left unchanged."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import LocalProtocolError
from roost.hcsp.announce import decode_announcement, encode_announcement
from roost.hcsp.core import AnnounceConfig, AnnounceCore, serial_greater
from roost.hcsp.documents import (
    Endpoint,
    HubAddress,
    Subscribe,
    decode_document,
    encode_document,
)
from roost.hcsp.events import (
    AnnouncementRefused,
    HcspEvent,
    HubDown,
    HubUp,
    HubUpdated,
    LiveHub,
    WinnerChanged,
)
from tests.helpers.pki import Node

from .hubs import CountingVerifier, device_core, hub_core, hub_node, new_ca, own_hub

WALL = 1_790_000_000_000
HOST = "192.168.1.9"
SOURCE = (HOST, 17320)
CA = new_ca()
DER = serialization.Encoding.DER


def _events(core: AnnounceCore) -> list[HcspEvent]:
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    return events


def _signed(node: Node, document: bytes) -> bytes:
    return encode_announcement(document, node.cert.public_bytes(DER), node.key)


def _subscribe(node: Node, *, seq: int = WALL, ts: int = WALL, host: str = HOST) -> bytes:
    address = HubAddress(node.identifier, Endpoint(host, 17320))
    return encode_document(Subscribe(address, ("hcsp",), 0, 5, seq, ts))


class Receiver:
    """A listening device core with one accepted hub, and a way to assert "nothing changed"."""

    def __init__(self, config: AnnounceConfig | None = None) -> None:
        self.verifier = CountingVerifier(CA.cert)
        self.core = device_core(CA, config, self.verifier)
        self.hub = hub_node(CA, HOST)
        self.core.receive_datagram(_signed(self.hub, _subscribe(self.hub)), SOURCE, 0.0, WALL)
        assert self.core.counters.accepted == 1
        _events(self.core)

    def state(self) -> tuple[list[LiveHub], int]:
        return self.core.live_hubs(0.5), self.core.counters.accepted

    def rejects(self, data: bytes, reason: str, source: tuple[str, int] = SOURCE) -> None:
        before = self.state()
        rejected_before = self.core.counters.rejected[reason]
        self.core.receive_datagram(data, source, 0.5, WALL + 500)
        assert self.core.counters.rejected[reason] == rejected_before + 1, (
            self.core.counters.rejected
        )
        assert self.state() == before
        # No state event; at most the log line for the refusal (PROTOCOL.md preamble).
        events = _events(self.core)
        assert all(isinstance(e, AnnouncementRefused) for e in events), events
        assert all(e.reason == reason for e in events if isinstance(e, AnnouncementRefused))
        # The next genuine announcement is still accepted: the high-water mark did not move.
        fresh = _signed(self.hub, _subscribe(self.hub, seq=WALL + 1))
        self.core.receive_datagram(fresh, SOURCE, 0.6, WALL + 600)
        assert self.core.counters.accepted == before[1] + 1


def test_accepted_announcement_makes_a_live_hub() -> None:
    receiver = Receiver()
    (hub,) = receiver.core.live_hubs(0.1)
    assert hub.identifier == receiver.hub.identifier
    assert hub.endpoint == Endpoint(HOST, 17320)
    assert (hub.connected, hub.max_clients, hub.last_seen) == (0, 5, 0.0)
    assert hub.rank.feature_count == 1


def test_certificate_from_another_ca_is_rejected() -> None:
    stranger = new_ca().issue(hub_node(CA, HOST).role, ips=(HOST,))
    Receiver().rejects(_signed(stranger, _subscribe(stranger, seq=WALL + 5)), "chain")


def test_replayed_datagram_is_rejected() -> None:
    receiver = Receiver()
    receiver.rejects(_signed(receiver.hub, _subscribe(receiver.hub)), "replay")


def test_older_sequence_is_rejected() -> None:
    receiver = Receiver()
    receiver.rejects(
        _signed(receiver.hub, _subscribe(receiver.hub, seq=WALL - 1)), "seq-not-increasing"
    )


def test_from_must_equal_the_certificate_identifier() -> None:
    receiver = Receiver()
    impostor = hub_node(CA, HOST)
    # A valid hub signs a document that claims another hub's identifier.
    forged = _signed(impostor, _subscribe(receiver.hub, seq=WALL + 5))
    receiver.rejects(forged, "wrong-id")


@pytest.mark.parametrize(("ts_offset", "reason"), [(-10_501, "stale"), (10_501, "future")])
def test_timestamp_outside_the_window_is_rejected(ts_offset: int, reason: str) -> None:
    receiver = Receiver()
    data = _signed(receiver.hub, _subscribe(receiver.hub, seq=WALL + 5, ts=WALL + ts_offset))
    receiver.rejects(data, reason)


def test_tampered_document_byte_is_rejected() -> None:
    receiver = Receiver()
    data = bytearray(_signed(receiver.hub, _subscribe(receiver.hub, seq=WALL + 5)))
    index = data.index(b'max="5"') + 5
    data[index] = ord("9")
    receiver.rejects(bytes(data), "bad-signature")


def test_tampered_signature_is_rejected_even_with_a_cached_certificate() -> None:
    receiver = Receiver()
    data = bytearray(_signed(receiver.hub, _subscribe(receiver.hub, seq=WALL + 5)))
    data[-3] ^= 0x40
    receiver.rejects(bytes(data), "bad-signature")
    assert receiver.core.counters.certificate_cache_hits >= 1


def test_oversized_datagram_is_rejected() -> None:
    receiver = Receiver()
    receiver.rejects(_signed(receiver.hub, _subscribe(receiver.hub)) + b"\0" * 600, "oversized")


def test_document_with_a_dtd_is_rejected() -> None:
    receiver = Receiver()
    document = b'<!DOCTYPE hcsp [<!ENTITY f "hcsp">]>' + _subscribe(receiver.hub, seq=WALL + 5)
    receiver.rejects(_signed(receiver.hub, document), "xml-forbidden")


def test_document_other_than_subscribe_is_rejected() -> None:
    receiver = Receiver()
    document = (
        b'<hcsp xmlns="http://www.darwin-hcs.org/arch/hcsp/1.0" to="ab:EIW6Qe0ARnWrsJZTsHWadA"'
        b' from="hcsp:PtPvXYJSQsqwTJpPGjw0gA"><welcome features="a" max="1"/></hcsp>'
    )
    receiver.rejects(_signed(receiver.hub, document), "not-subscribe")


def test_advertised_address_must_be_the_source() -> None:
    receiver = Receiver()
    data = _signed(receiver.hub, _subscribe(receiver.hub, seq=WALL + 5))
    receiver.rejects(data, "source-mismatch", source=("192.168.1.66", 17320))


def test_trusted_advertised_address_override() -> None:
    hub = hub_node(CA, HOST)
    config = AnnounceConfig(trusted_advertised_addresses=frozenset({(hub.identifier, HOST)}))
    core = device_core(CA, config)
    core.receive_datagram(_signed(hub, _subscribe(hub)), ("10.0.0.7", 1), 0.0, WALL)
    assert core.counters.accepted == 1


def test_ipv4_mapped_source_matches_an_ipv4_advertisement() -> None:
    core = device_core(CA)
    hub = hub_node(CA, HOST)
    core.receive_datagram(_signed(hub, _subscribe(hub)), ("::ffff:" + HOST, 1), 0.0, WALL)
    assert core.counters.accepted == 1


def test_flood_from_one_source_is_rate_limited_before_verification() -> None:
    receiver = Receiver()
    replay = _signed(receiver.hub, _subscribe(receiver.hub))
    for _ in range(100):
        receiver.core.receive_datagram(replay, SOURCE, 0.0, WALL)
    rejected = receiver.core.counters.rejected
    # The burst of 40 admitted one accepted datagram (in Receiver) and 39 replays.
    assert rejected["replay"] == 39
    assert rejected["rate-limited"] == 61
    assert receiver.verifier.calls == 1
    # Another source is unaffected.
    other = hub_node(CA, "192.168.1.10")
    data = _signed(other, _subscribe(other, host="192.168.1.10"))
    receiver.core.receive_datagram(data, ("192.168.1.10", 17320), 0.0, WALL)
    assert receiver.core.counters.accepted == 2
    # Tokens refill at 20 per second.
    receiver.core.receive_datagram(
        _signed(receiver.hub, _subscribe(receiver.hub, seq=WALL + 9)), SOURCE, 0.1, WALL + 100
    )
    assert receiver.core.counters.accepted == 3


def test_certificate_is_verified_once_but_every_signature_is_checked() -> None:
    receiver = Receiver()
    for i in range(1, 6):
        data = _signed(receiver.hub, _subscribe(receiver.hub, seq=WALL + i))
        receiver.core.receive_datagram(data, SOURCE, i * 0.1, WALL + i * 100)
    assert receiver.core.counters.accepted == 6
    assert receiver.verifier.calls == 1
    receiver.core.clear_certificate_cache()
    data = _signed(receiver.hub, _subscribe(receiver.hub, seq=WALL + 10))
    receiver.core.receive_datagram(data, SOURCE, 1.0, WALL + 1000)
    assert receiver.verifier.calls == 2


def test_rejected_certificate_is_cached_too() -> None:
    receiver = Receiver()
    stranger = new_ca().issue(receiver.hub.role, ips=(HOST,))
    for i in range(3):
        data = _signed(stranger, _subscribe(stranger, seq=WALL + i))
        receiver.core.receive_datagram(data, SOURCE, 0.1, WALL)
    assert receiver.core.counters.rejected["chain"] == 3
    assert receiver.verifier.calls == 2


def test_own_echo_is_ignored_and_counted_apart() -> None:
    _, core = hub_core(CA, HOST)
    (datagram,) = core.datagrams_to_send(0.0, WALL)
    core.receive_datagram(datagram, SOURCE, 0.0, WALL)
    assert core.counters.own_echoes == 1
    assert core.counters.accepted == 0
    assert sum(core.counters.rejected.values()) == 0
    assert [hub.is_self for hub in core.live_hubs(0.0)] == [True]


def test_hub_table_is_bounded() -> None:
    config = AnnounceConfig(max_hubs=2)
    core = device_core(CA, config)
    hosts = ["192.168.1.11", "192.168.1.12", "192.168.1.13"]
    nodes = [hub_node(CA, host) for host in hosts]
    for node, host in zip(nodes, hosts, strict=True):
        data = _signed(node, _subscribe(node, host=host))
        core.receive_datagram(data, (host, 17320), 0.0, WALL)
    assert core.counters.accepted == 2
    assert core.counters.rejected["table-full"] == 1
    # Once a hub has gone silent its entry makes room for a new one.
    core.handle_timer(10.0, WALL + 10_000)
    data = _signed(nodes[2], _subscribe(nodes[2], seq=WALL + 1, ts=WALL + 10_000, host=hosts[2]))
    core.receive_datagram(data, (hosts[2], 17320), 10.0, WALL + 10_000)
    assert core.counters.accepted == 3


def test_source_table_is_bounded() -> None:
    core = device_core(CA, AnnounceConfig(max_sources=2))
    for i in range(3):
        core.receive_datagram(b"HCSP\x01junk", (f"10.0.0.{i}", 1), 0.0, WALL)
    assert core.counters.rejected["source-table-full"] == 1
    # After the buckets refill, idle sources are evicted for new ones.
    core.receive_datagram(b"HCSP\x01junk", ("10.0.0.9", 1), 5.0, WALL)
    assert core.counters.rejected["source-table-full"] == 1


def test_sequence_strictly_increases_even_if_the_clock_repeats_or_steps_back() -> None:
    _, core = hub_core(CA, HOST)
    seqs = []
    for now, wall in [(0.0, WALL), (1.0, WALL), (2.0, WALL - 5000), (3.0, WALL + 3000)]:
        (datagram,) = core.datagrams_to_send(now, wall)
        document = decode_document(decode_announcement(datagram).document)
        assert isinstance(document, Subscribe)
        seqs.append(document.seq)
    assert seqs == [WALL, WALL + 1, WALL + 2, WALL + 3000]


def test_announces_at_start_up_and_every_interval() -> None:
    _, core = hub_core(CA, HOST)
    assert core.get_timer() == 0.0
    assert len(core.datagrams_to_send(0.0, WALL)) == 1
    assert core.datagrams_to_send(0.5, WALL + 500) == []
    assert core.get_timer() == 1.0
    assert len(core.datagrams_to_send(1.0, WALL + 1000)) == 1


def test_set_load_is_announced() -> None:
    _, core = hub_core(CA, HOST)
    core.set_load(3, 9)
    (datagram,) = core.datagrams_to_send(0.0, WALL)
    document = decode_document(decode_announcement(datagram).document)
    assert isinstance(document, Subscribe)
    assert (document.connected, document.max_clients) == (3, 9)
    with pytest.raises(LocalProtocolError):
        core.set_load(-1, 9)


def test_misconfigured_own_hub_fails_at_start_up() -> None:
    node = hub_node(CA, HOST)
    other = hub_node(CA, HOST)
    own = own_hub(node, HOST)
    wrong = own.__class__(own.address, own.features, 5, other.key, other.cert.public_bytes(DER))
    with pytest.raises(LocalProtocolError):
        AnnounceCore(AnnounceConfig(), wrong, CountingVerifier(CA.cert))
    too_many = tuple(f"feature-number-{i:02d}-with-a-long-name" for i in range(30))
    with pytest.raises(LocalProtocolError):
        AnnounceCore(AnnounceConfig(), own_hub(node, HOST, too_many), CountingVerifier(CA.cert))


def test_silent_hub_goes_down_after_three_intervals_plus_skew() -> None:
    receiver = Receiver()
    core = receiver.core
    # First the hold-down ripens and the hub wins; then, as a device uses the largest
    # skew (0.5 s), the hub is down 3 × 1 s + 0.5 s after it was last seen.
    assert core.get_timer() == pytest.approx(3.0)
    core.handle_timer(3.0, WALL + 3000)
    assert [type(e) for e in _events(core)] == [WinnerChanged]
    assert core.get_timer() == pytest.approx(3.5)
    core.handle_timer(3.4, WALL + 3400)
    assert _events(core) == []
    core.handle_timer(3.5, WALL + 3500)
    events = _events(core)
    assert [type(e) for e in events] == [HubDown, WinnerChanged]
    assert core.live_hubs(3.5) == []


def test_events_up_updated_down_and_winner() -> None:
    core = device_core(CA)
    hub = hub_node(CA, HOST)
    core.receive_datagram(_signed(hub, _subscribe(hub)), SOURCE, 0.0, WALL)
    assert [type(e) for e in _events(core)] == [HubUp]
    core.handle_timer(3.0, WALL + 3000)
    assert core.get_timer() == pytest.approx(3.5)
    (changed,) = _events(core)
    assert isinstance(changed, WinnerChanged)
    assert changed.winner is not None and changed.winner.identifier == hub.identifier
    address = HubAddress(hub.identifier, Endpoint(HOST, 17320))
    busier = encode_document(Subscribe(address, ("hcsp",), 4, 5, WALL + 3000, WALL + 3000))
    core.receive_datagram(_signed(hub, busier), SOURCE, 3.0, WALL + 3000)
    (updated,) = _events(core)
    assert isinstance(updated, HubUpdated) and updated.hub.free_capacity == 1
    core.handle_timer(7.0, WALL + 7000)
    down, lost = _events(core)
    assert isinstance(down, HubDown) and isinstance(lost, WinnerChanged)
    assert lost.winner is None and lost.previous is not None


def test_replay_of_a_departed_hub_is_still_rejected() -> None:
    receiver = Receiver()
    core = receiver.core
    captured = _signed(receiver.hub, _subscribe(receiver.hub))
    core.handle_timer(4.0, WALL + 4000)
    core.receive_datagram(captured, SOURCE, 4.0, WALL + 4000)
    assert core.counters.rejected["replay"] == 1
    assert core.live_hubs(4.0) == []


def test_serial_order() -> None:
    assert serial_greater(2, 1)
    assert not serial_greater(1, 1)
    assert not serial_greater(1, 2)
    assert serial_greater(0, (1 << 64) - 1)


# A limit this high keeps the rate limiter out of the way of the deeper checks.
_PROPERTY_RECEIVER = Receiver(AnnounceConfig(rate_per_second=1e9, rate_burst=1e9))
_VALID = _signed(_PROPERTY_RECEIVER.hub, _subscribe(_PROPERTY_RECEIVER.hub, seq=WALL + 1))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=1500), st.binary(max_size=64).map(lambda b: b"HCSP\x01" + b)))
def test_arbitrary_datagrams_never_raise_and_change_nothing(data: bytes) -> None:
    core = _PROPERTY_RECEIVER.core
    before = core.live_hubs(0.5), core.counters.accepted
    core.receive_datagram(data, (HOST, 17320), 0.5, WALL + 500)
    assert (core.live_hubs(0.5), core.counters.accepted) == before


# Mutated certificates may carry a non-positive serial, which cryptography still parses
# with a deprecation warning; the core must reject them either way.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_datagram_is_rejected_without_changing_state(data: st.DataObject) -> None:
    core = _PROPERTY_RECEIVER.core
    mutated = bytearray(_VALID)
    index = data.draw(st.integers(0, len(mutated) - 1))
    mutated[index] ^= data.draw(st.integers(1, 255))
    before = core.live_hubs(0.5), core.counters.accepted
    core.receive_datagram(bytes(mutated), (HOST, 17320), 0.5, WALL + 500)
    assert (core.live_hubs(0.5), core.counters.accepted) == before
    assert "rate-limited" not in core.counters.rejected


def test_certificate_with_an_invalid_version_is_a_counted_rejection() -> None:
    # cryptography raises InvalidVersion (not a ValueError) for this one; it must not
    # escape the core.
    receiver = Receiver()
    der = bytearray(receiver.hub.cert.public_bytes(DER))
    assert der[8:13] == b"\xa0\x03\x02\x01\x02"
    der[12] = 0x20
    document = _subscribe(receiver.hub, seq=WALL + 5)
    data = encode_announcement(document, bytes(der), receiver.hub.key)
    receiver.rejects(data, "bad-cert")


def test_unverified_newcomer_cannot_evict_a_departed_replay_mark() -> None:
    core = device_core(CA, AnnounceConfig(max_hubs=1))
    hub = hub_node(CA, HOST)
    captured = _signed(hub, _subscribe(hub))
    core.receive_datagram(captured, SOURCE, 0.0, WALL)
    core.handle_timer(4.0, WALL + 4000)
    assert core.live_hubs(4.0) == []
    stranger = new_ca().issue(hub.role, ips=(HOST,))
    core.receive_datagram(_signed(stranger, _subscribe(stranger)), SOURCE, 4.0, WALL + 4000)
    assert core.counters.rejected["chain"] == 1
    core.receive_datagram(captured, SOURCE, 4.0, WALL + 4000)
    assert core.counters.rejected["replay"] == 1


def test_a_flood_from_many_ports_of_one_host_spends_one_bucket() -> None:
    receiver = Receiver()
    replay = _signed(receiver.hub, _subscribe(receiver.hub))
    # 64 ports, two datagrams each: keyed by port none would be limited; keyed by host the
    # host has one burst of 40 (one token went to the Receiver's accepted datagram).
    for port in range(64):
        for _ in range(2):
            receiver.core.receive_datagram(replay, (HOST, 20000 + port), 0.0, WALL)
    rejected = receiver.core.counters.rejected
    assert rejected["replay"] == 39
    assert rejected["rate-limited"] == 128 - 39


def test_an_announcement_claiming_our_identifier_is_verified_like_any_other() -> None:
    node, core = hub_core(CA, HOST)
    other = hub_node(CA, HOST)
    claim = _subscribe(node)
    forged_certificate = encode_announcement(claim, other.cert.public_bytes(DER), other.key)
    forged_signature = encode_announcement(claim, node.cert.public_bytes(DER), other.key)
    core.receive_datagram(forged_certificate, SOURCE, 0.0, WALL)
    core.receive_datagram(forged_signature, SOURCE, 0.0, WALL)
    assert core.counters.own_echoes == 0
    assert core.counters.rejected["forged-own-id"] == 1
    assert core.counters.rejected["bad-signature"] == 1
    # Both are refusals the log rule sees, not silent echoes.
    assert [type(e) for e in _events(core) if isinstance(e, AnnouncementRefused)]
    # A genuine echo still counts as one.
    (datagram,) = core.datagrams_to_send(0.0, WALL)
    core.receive_datagram(datagram, SOURCE, 0.0, WALL)
    assert core.counters.own_echoes == 1
