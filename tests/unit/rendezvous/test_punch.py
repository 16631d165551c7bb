"""The puncher core in memory: two sides on a simulated network under a fake clock, with
loss, a late start on one side and a NAT that rewrites source ports (peer-reflexive)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.errors import LocalProtocolError, RemoteProtocolError
from roost.reasons import Reason
from roost.rendezvous.punch import (
    PROBE_SIZE,
    Address,
    DirectPathFound,
    PeerLearned,
    Probe,
    ProbeKind,
    Puncher,
    PunchEvent,
    PunchFailed,
    PunchState,
    decode_probe,
    encode_probe,
    is_probe,
)

A: Address = ("192.0.2.1", 4000)
B: Address = ("198.51.100.7", 5000)
A_MAPPED: Address = ("203.0.113.9", 62000)
LATENCY = 0.02


@dataclass
class Net:
    """Delivers datagrams after LATENCY; ``drop(n, src, dst)`` decides the fate of the n-th
    datagram; with ``nat`` A's outgoing source becomes A_MAPPED and only A_MAPPED reaches A
    from outside (a port-rewriting NAT that drops unsolicited traffic to A's own address)."""

    sides: dict[Address, Puncher]
    drop: Callable[[int, Address, Address], bool] = lambda n, src, dst: False
    nat: bool = False
    now: float = 0.0
    in_flight: list[tuple[float, bytes, Address, Address]] = field(default_factory=list)
    sent = 0
    events: dict[Address, list[PunchEvent]] = field(default_factory=dict)

    def _send(self, source: Address, data: bytes, destination: Address) -> None:
        self.sent += 1
        if self.drop(self.sent, source, destination):
            return
        if self.nat and source == A:
            source = A_MAPPED
        if self.nat and destination == A:
            return
        if destination == A_MAPPED:
            destination = A
        if destination in self.sides:
            self.in_flight.append((self.now + LATENCY, data, source, destination))

    def flush(self) -> None:
        for address, side in self.sides.items():
            for data, destination in side.datagrams_to_send(self.now):
                self._send(address, data, destination)
            while (event := side.next_event()) is not None:
                self.events.setdefault(address, []).append(event)

    def run(self, until: float) -> None:
        for _ in range(10_000):
            self.flush()
            times = [t for t in (s.get_timer() for s in self.sides.values()) if t is not None]
            times += [item[0] for item in self.in_flight]
            if not times or min(times) > until:
                return
            self.now = max(self.now, min(times))
            due = [item for item in self.in_flight if item[0] <= self.now]
            self.in_flight = [item for item in self.in_flight if item[0] > self.now]
            for _, data, source, destination in due:
                self.sides[destination].receive(data, source, self.now)
            for side in self.sides.values():
                side.handle_timer(self.now)
        raise AssertionError("simulation did not settle")


def pair(
    a_candidates: list[Address] | None = None,
    b_candidates: list[Address] | None = None,
    b_start: float = 0.0,
    deadline: float = 3.0,
) -> tuple[Puncher, Puncher]:
    a = Puncher(7, a_candidates or [B], 0.0, deadline, rng=random.Random(1))
    b = Puncher(7, b_candidates or [A], b_start, deadline, rng=random.Random(2))
    return a, b


def test_both_sides_find_each_other_directly() -> None:
    a, b = pair()
    net = Net({A: a, B: b})
    net.run(5.0)
    assert (a.state, a.result) == (PunchState.DIRECT, B)
    assert (b.state, b.result) == (PunchState.DIRECT, A)
    assert DirectPathFound(B) in net.events[A] and DirectPathFound(A) in net.events[B]
    # Once direct, a side stops probing: one round each, plus the one triggered check each
    # sent when the other's probe arrived (the two crossed in flight), nothing after.
    assert a.probes_sent == 2 and b.probes_sent == 2
    assert a.get_timer() is None and b.get_timer() is None


def test_unreachable_candidates_fail_at_the_deadline_after_three_rounds() -> None:
    a, _ = pair(a_candidates=[("192.0.2.200", 1), ("192.0.2.201", 2)])
    net = Net({A: a})
    net.run(10.0)
    assert a.state is PunchState.FAILED and a.result is None
    assert a.probes_sent == 6  # 3 attempts x 2 candidates.
    assert net.events[A] == [PunchFailed()]
    assert net.now == pytest.approx(3.0)


def test_rounds_are_spread_over_the_deadline() -> None:
    a = Puncher(1, [B], 10.0, 13.0, rng=random.Random(0))
    assert a.get_timer() == 10.0
    assert a.datagrams_to_send(9.9) == [] and a.state is PunchState.WAITING
    assert [d for d, _ in a.datagrams_to_send(10.0)] == [encode_probe(Probe(1, 1, a.nonce))]
    assert a.get_timer() == pytest.approx(11.0)
    assert len(a.datagrams_to_send(11.0)) == 1 and a.get_timer() == pytest.approx(12.0)
    assert len(a.datagrams_to_send(12.5)) == 1 and a.get_timer() == 13.0
    assert a.datagrams_to_send(13.0) == [] and a.state is PunchState.FAILED


def test_loss_of_the_first_round_is_recovered_by_a_later_one() -> None:
    a, b = pair()
    # The first four datagrams (both first probes and anything sent in reply) are lost.
    net = Net({A: a, B: b}, drop=lambda n, src, dst: n <= 4)
    net.run(5.0)
    assert a.result == B and b.result == A
    assert a.probes_sent >= 2


def test_total_loss_fails_both_sides() -> None:
    a, b = pair()
    net = Net({A: a, B: b}, drop=lambda n, src, dst: True)
    net.run(5.0)
    assert a.state is b.state is PunchState.FAILED


def test_late_start_on_one_side_still_meets() -> None:
    # B starts 1.5 s late (a slow broker path); A's probes reach B while B is waiting, B
    # answers them anyway, and B's own first round finds A.
    a, b = pair(b_start=1.5)
    net = Net({A: a, B: b})
    net.run(5.0)
    assert a.result == B and a.probes_sent == 1
    assert b.result == A and b.state is PunchState.DIRECT


def test_a_probe_from_a_known_candidate_is_probed_back_at_once() -> None:
    # RFC 8445 section 7.3.1.4 (triggered check): B is still waiting for its start, 1.5 s
    # away, when A's probe arrives; B answers it and probes A back at once, so both sides
    # are direct within two crossings instead of B waiting for its first round.
    a, b = pair(b_start=1.5)
    net = Net({A: a, B: b})
    net.run(0.5)
    assert (a.state, a.result) == (PunchState.DIRECT, B)
    assert (b.state, b.result) == (PunchState.DIRECT, A)
    assert b.probes_sent == 1  # the triggered check only: B's own round never ran


def test_a_probe_from_a_listed_candidate_is_the_path_half_a_round_trip_early() -> None:
    # B has not sent anything yet (its start is 1.5 s away) when A's probe arrives from a
    # candidate the broker listed: B takes that address as its path on arrival, one
    # crossing after A sent, without waiting for an answer to a probe of its own.
    a, b = pair(b_start=1.5)
    net = Net({A: a, B: b})
    net.run(LATENCY)
    assert (b.state, b.result) == (PunchState.DIRECT, A)
    assert net.events[B] == [DirectPathFound(A)]
    assert a.state is PunchState.PROBING  # A still waits for B's answer, one crossing more
    net.run(2 * LATENCY)
    assert (a.state, a.result) == (PunchState.DIRECT, B)


def test_a_probe_from_an_unlisted_address_needs_our_nonce() -> None:
    # A probe from an address nobody listed (spoofed, or peer-reflexive) is answered and
    # learned, never taken as the path by itself: the path is where our nonce comes back.
    a = Puncher(9, [B], 0.0, 3.0, rng=random.Random(3))
    a.datagrams_to_send(0.0)
    stranger: Address = ("192.0.2.77", 999)
    a.receive(encode_probe(Probe(ProbeKind.PROBE, 9, b"s" * 8)), stranger, 0.1)
    assert a.state is PunchState.PROBING and a.result is None
    assert a.learned == [stranger]
    a.receive(encode_probe(Probe(ProbeKind.ANSWER, 9, a.nonce)), stranger, 0.2)
    assert a.result == stranger


def test_peer_reflexive_address_is_learned_answered_and_wins() -> None:
    a, b = pair()
    net = Net({A: a, B: b}, nat=True)
    net.run(5.0)
    # B's probes to A's own address die at the NAT; A's probe arrives from A_MAPPED, B
    # learns that address, answers it and probes it at once.
    assert PeerLearned(A_MAPPED) in net.events[B]
    assert b.learned == [A_MAPPED]
    assert b.result == A_MAPPED and a.result == B


def test_answers_with_a_foreign_nonce_or_session_are_ignored() -> None:
    a = Puncher(9, [B], 0.0, 3.0, rng=random.Random(3))
    a.datagrams_to_send(0.0)
    a.receive(encode_probe(Probe(ProbeKind.ANSWER, 9, b"x" * 8)), B, 0.1)
    a.receive(encode_probe(Probe(ProbeKind.ANSWER, 8, a.nonce)), B, 0.1)
    a.receive(b"RPRB\x01", B, 0.1)
    assert a.state is PunchState.PROBING and a.result is None
    assert a.ignored == {Reason.UNKNOWN_NONCE: 1, Reason.WRONG_SESSION: 1, Reason.TRUNCATED: 1}
    a.receive(encode_probe(Probe(ProbeKind.ANSWER, 9, a.nonce)), ("::ffff:0:1", 9, 0, 0), 0.2)
    assert a.result == ("::ffff:0:1", 9)


def test_probes_are_answered_in_every_state_and_learned_addresses_are_capped() -> None:
    a = Puncher(5, [B], 0.0, 1.0, rng=random.Random(4))
    a.handle_timer(2.0)
    assert a.state is PunchState.FAILED
    for port in range(1, 20):
        a.receive(encode_probe(Probe(ProbeKind.PROBE, 5, b"n" * 8)), ("192.0.2.50", port), 2.0)
    sent = a.datagrams_to_send(2.0)
    assert len(sent) == 19
    assert all(decode_probe(d) == Probe(ProbeKind.ANSWER, 5, b"n" * 8) for d, _ in sent)
    assert len(a.learned) == a.config.max_learned


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        Puncher(1, [B], 1.0, 1.0)
    with pytest.raises(LocalProtocolError):
        Puncher(1 << 32, [B], 0.0, 1.0)
    with pytest.raises(LocalProtocolError) as info:
        Puncher(1, [("192.0.2.1", p) for p in range(1, 18)], 0.0, 1.0)
    assert info.value.reason == Reason.TOO_MANY_CANDIDATES


def test_probe_codec_round_trip_and_rejections() -> None:
    probe = Probe(ProbeKind.ANSWER, 0xDEADBEEF, bytes(range(8)))
    data = encode_probe(probe)
    assert len(data) == PROBE_SIZE and is_probe(data)
    assert data == b"RPRB\x01\x02\xde\xad\xbe\xef" + bytes(range(8))
    assert decode_probe(data) == probe
    cases = {
        data + b"x": Reason.OVERSIZED,
        data[:-1]: Reason.TRUNCATED,
        b"XPRB" + data[4:]: Reason.BAD_MAGIC,
        data[:4] + b"\x02" + data[5:]: Reason.BAD_VERSION,
        data[:5] + b"\x03" + data[6:]: Reason.UNKNOWN_TYPE,
    }
    for bad, reason in cases.items():
        with pytest.raises(RemoteProtocolError) as info:
            decode_probe(bad)
        assert info.value.reason == reason


@given(st.binary(max_size=40))
def test_decoder_returns_a_probe_or_a_catalogued_error(data: bytes) -> None:
    try:
        probe = decode_probe(data)
    except RemoteProtocolError as exc:
        assert exc.reason in set(Reason)
    else:
        assert encode_probe(probe) == data


@given(
    st.binary(min_size=6, max_size=6), st.integers(0, 0xFFFFFFFF), st.binary(min_size=8, max_size=8)
)
def test_decoder_accepts_every_well_formed_probe(head: bytes, session: int, nonce: bytes) -> None:
    kind = ProbeKind.PROBE if head[0] % 2 else ProbeKind.ANSWER
    probe = Probe(kind, session, nonce)
    assert decode_probe(encode_probe(probe)) == probe
