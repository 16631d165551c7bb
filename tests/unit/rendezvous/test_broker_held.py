"""BrokerCore with holding connections (``hold``, docs/broker.md "Held connections"): a
request pushed straight over the target's connection, several sessions on it, the relay over
it, the ``max_held`` limit; in memory under a fake clock."""

from __future__ import annotations

from roost.rendezvous import control
from roost.rendezvous.broker_events import BrokerCoreConfig, SessionState
from roost.rendezvous.messages import Candidate
from tests.unit.rendezvous.broker_harness import HUB, NAT_ADDR, SEALED, Harness, ident

ISSUER_CANDIDATES = (Candidate.of("198.51.100.9", 50000),)
HUB_CANDIDATES = (Candidate.of("192.168.1.20", 40001),)


def holding(config: BrokerCoreConfig | None = None) -> tuple[Harness, int, bytes]:
    """A hub enrolled and registered, its enrollment connection held."""
    h = Harness(config or BrokerCoreConfig(target_burst=20))
    channel, key = h.enroll()
    assert h.register(key, 1)
    assert h.send(channel, "hold") == [control.Holding()]
    return h, channel, key


def connect(h: Harness, source: str = "198.51.100.9") -> tuple[int, int]:
    issuer = h.channel(None, source=source)
    h.datagrams.clear()
    (connecting,) = h.send(
        issuer, "connect", target=HUB, candidates=ISSUER_CANDIDATES, sealed=SEALED
    )
    assert isinstance(connecting, control.Connecting)
    return issuer, connecting.session


def test_hold_is_for_the_enrolled_equipment_on_its_enrollment_connection() -> None:
    h = Harness()
    issuer = h.channel(None)
    assert h.send(issuer, "hold") == [control.Error(control.Reason.NOT_EQUIPMENT)]
    unenrolled = h.channel(HUB)
    assert h.send(unenrolled, "hold") == [control.Error(control.Reason.NOT_ENROLLED)]
    channel, _ = h.enroll()
    assert h.send(channel, "hold") == [control.Holding()]
    # Asking twice is answered again and counted once.
    assert h.send(channel, "hold") == [control.Holding()]
    assert h.core.holding == 1 and h.core.counters.holds == 1
    assert h.core.holder_of(HUB) == channel


def test_a_connect_pushes_the_request_over_the_holding_connection_without_a_wake_up() -> None:
    h, held, _ = holding()
    issuer, session = connect(h)
    # Straight over the holding connection: no RWAK, no wake push, no present awaited.
    assert h.took(held) == [control.Request(session, ISSUER_CANDIDATES, SEALED)]
    assert [d for d, _ in h.datagrams if d[:4] == b"RWAK"] == []
    counters = h.core.counters
    assert counters.wakes_sent == 0 and counters.wake_pushes == 0
    assert counters.requests_pushed == 1 and counters.presents == 0
    assert h.core.session_state(session) is SessionState.REQUESTED
    # The accept on it starts both sides, each with the other's candidates.
    h.send(held, "accept", session=session, candidates=HUB_CANDIDATES)
    (to_hub,) = [m for m in h.took(held) if isinstance(m, control.Start)]
    (to_issuer,) = [m for m in h.took(issuer) if isinstance(m, control.Start)]
    assert to_hub.candidates == ISSUER_CANDIDATES
    assert to_issuer.candidates == (Candidate.of(*NAT_ADDR), *HUB_CANDIDATES)
    assert h.core.session_state(session) is SessionState.STARTED
    # Nothing more goes out later: no wake-up resends for a pushed request.
    h.datagrams.clear()
    h.advance(6.0)
    assert [d for d, _ in h.datagrams if d[:4] == b"RWAK"] == []


def test_the_start_delay_uses_the_holding_connections_round_trip() -> None:
    h, held, _ = holding()
    issuer, session = connect(h)
    h.core.channel_rtt(held, 40)
    h.core.channel_rtt(issuer, 20)
    h.send(held, "accept", session=session, candidates=())
    (to_hub,) = [m for m in h.took(held) if isinstance(m, control.Start)]
    (to_issuer,) = [m for m in h.took(issuer) if isinstance(m, control.Start)]
    # common = 40 / 2 + margin; each side waits it less half its own round trip.
    common = 20 + BrokerCoreConfig().start_margin_ms
    assert (to_issuer.start_in_ms, to_hub.start_in_ms) == (common - 10, common - 20)


def test_several_sessions_share_one_holding_connection() -> None:
    h, held, _ = holding()
    first_issuer, first = connect(h, "198.51.100.9")
    second_issuer, second = connect(h, "198.51.100.10")
    assert first != second
    assert h.core.channels == 3 and h.core.sessions == 2
    # Each answer names its session; the other one is untouched.
    h.send(held, "reject", session=second, reason="bad-password")
    assert h.took(second_issuer) == [control.Reject(second, control.Reason.BAD_PASSWORD)]
    assert h.core.session_state(first) is SessionState.REQUESTED
    h.send(held, "accept", session=first, candidates=())
    assert any(isinstance(m, control.Start) for m in h.took(first_issuer))
    # The issuer of one session cannot act for the other.
    assert h.send(second_issuer, "relay-open", session=first) == [
        control.Error(control.Reason.UNKNOWN_SESSION, first)
    ]


def test_the_relay_runs_over_the_holding_connection_by_session() -> None:
    h, held, _ = holding()
    first_issuer, first = connect(h, "198.51.100.9")
    second_issuer, second = connect(h, "198.51.100.10")
    for session in (first, second):
        h.send(held, "accept", session=session, candidates=())
    for session in (first, second):
        opened = h.send(held, "relay-open", session=session)
        assert opened[0].session == session and opened[0].max_bytes is not None
    assert h.core.relaying == 2
    # Records from the hub go to the issuer of their session; the issuers' come back.
    h.send_body(held, control.encode_relay(control.RelayRecord(first, b"to-one")))
    assert h.took(first_issuer) == [control.RelayRecord(first, b"to-one")]
    assert h.took(second_issuer) == []
    h.send_body(held, control.encode_relay(control.RelayRecord(second, b"to-two")))
    assert h.took(second_issuer) == [control.RelayRecord(second, b"to-two")]
    assert h.took(first_issuer) == []
    h.send_body(second_issuer, control.encode_relay(control.RelayRecord(second, b"back")))
    assert h.took(held) == [control.RelayRecord(second, b"back")]
    # An issuer's record for the other session is refused, not forwarded.
    h.send_body(first_issuer, control.encode_relay(control.RelayRecord(second, b"steal")))
    assert h.took(held) == [] and h.refusals("unknown-session") == 1
    # relay-close from the hub ends that session only; the connection stays held.
    h.send(held, "relay-close", session=first, reason="closed")
    assert h.took(first_issuer) == [control.RelayClose(first, control.Reason.CLOSED)]
    assert h.core.session_state(first) is None
    assert h.core.session_state(second) is SessionState.RELAYING and h.core.holding == 1


def test_losing_the_holding_connection_ends_its_sessions_and_falls_back_to_rwak() -> None:
    h, held, key = holding()
    issuers = [connect(h, f"198.51.100.{n}") for n in (9, 10)]
    h.records.clear()
    h.core.close_channel(held, h.now)
    h.pump()
    for issuer, session in issuers:
        assert h.took(issuer) == [control.Error(control.Reason.DISCONNECTED, session)]
    assert h.core.sessions == 0 and h.core.holding == 0 and h.core.holder_of(HUB) is None
    # Registered over UDP within TTL: the next connect wakes it the base way.
    _issuer, session = connect(h, "198.51.100.11")
    assert h.wakes_to(NAT_ADDR, key) and h.core.session_state(session) is SessionState.WAKING
    assert h.core.counters.requests_pushed == 2


def test_a_pushed_request_left_unanswered_times_out() -> None:
    h, _held, _ = holding()
    issuer, session = connect(h)
    h.advance(BrokerCoreConfig().answer_timeout_s + 0.1)
    assert h.took(issuer)[-1] == control.Error(control.Reason.ANSWER_TIMEOUT, session)
    assert h.core.sessions == 0 and h.refusals("answer-timeout") == 1
    assert h.core.holding == 1  # the connection itself is still held


def test_max_held_refuses_hold_with_a_counted_reason_and_udp_still_works() -> None:
    h = Harness(BrokerCoreConfig(max_held=1, target_burst=20))
    first, _ = h.enroll(HUB)
    assert h.send(first, "hold") == [control.Holding()]
    other = ident(2)
    second, key = h.enroll(other)
    assert h.register(key, 1, identifier=other, addr=("203.0.113.8", 40002))
    assert h.send(second, "hold") == [control.Error(control.Reason.HELD_LIMIT)]
    assert h.refusals("held-limit") == 1 and h.core.holding == 1
    # The refused hub is woken the base way (RWAK to its registration).
    issuer = h.channel(None)
    h.datagrams.clear()
    h.send(issuer, "connect", target=other, candidates=(), sealed=SEALED)
    assert h.wakes_to(("203.0.113.8", 40002), key)
    # A slot freed is a slot taken by the next who asks.
    h.core.close_channel(first, h.now)
    assert h.send(second, "hold") == [control.Holding()]
    # max_held = 0: a broker that holds nothing.
    none = Harness(BrokerCoreConfig(max_held=0))
    channel, _ = none.enroll()
    assert none.send(channel, "hold") == [control.Error(control.Reason.HELD_LIMIT)]


def test_enrolling_again_elsewhere_gives_the_old_holding_connection_up() -> None:
    h, old, _ = holding()
    new, key = h.enroll()
    assert h.core.holding == 0 and h.core.holder_of(HUB) is None
    # Until the new one holds, the request goes the base way: a wake over the new one.
    assert h.register(key, 2)
    issuer, session = connect(h)
    assert [type(m) for m in h.took(new)] == [control.WakePush] and h.took(old) == []
    assert h.send(new, "hold") == [control.Holding()]
    assert h.core.holding == 1 and h.core.holder_of(HUB) == new
    # The old connection closing later takes nothing from the new one.
    h.core.close_channel(old, h.now)
    assert h.core.holder_of(HUB) == new
    entry = h.core.registry.get(HUB)
    assert entry is not None and entry.held == new
    assert h.core.session_state(session) is SessionState.WAKING
    assert issuer > 0


def test_accepted_connections_are_counted_and_equipment_ones_apart() -> None:
    h, _held, _ = holding()
    before = (h.core.counters.channels_opened, h.core.counters.equipment_channels)
    assert before == (1, 1)
    connect(h)
    connect(h, "198.51.100.10")
    # Two issuers, no hub connection: the requests went over the held one.
    assert (h.core.counters.channels_opened, h.core.counters.equipment_channels) == (3, 1)
