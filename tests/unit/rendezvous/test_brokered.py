"""Both ends of a brokered connection, paired through a scripted broker (docs/broker.md,
"The flow"): in memory, under a fake clock, no sockets and no sleeps."""

from __future__ import annotations

import itertools

import pytest

from roost.reasons import Reason
from roost.rendezvous.agent import (
    CheckPassword,
    OpenPresentConnection,
    ReflexiveAddress,
    SessionEnded,
)
from roost.rendezvous.agent import RelayReady as AgentRelayReady
from roost.rendezvous.control import Connect, Request, Start, decode_control
from roost.rendezvous.issuer import (
    Connected,
    Failed,
    IssuerConfig,
    Outcome,
    RelayReady,
    SessionClosed,
    failure_message,
)
from roost.rendezvous.sessions import PathKind, StartPunch
from roost.rendezvous.state import AgentSessionState, IssuerState, LinkState
from tests.unit.rendezvous.brokerlab import (
    HUB_LOCAL,
    HUB_REFLEXIVE,
    ISSUER_LOCAL,
    ISSUER_REFLEXIVE,
    SESSION,
    Lab,
    Scenario,
)


def _outcome(lab: Lab) -> Outcome:
    outcomes = [e for e in lab.issuer_events if isinstance(e, Outcome)]
    assert len(outcomes) == 1, outcomes
    return outcomes[0]


def _punches(lab: Lab) -> list[StartPunch]:
    return [e for e in lab.agent_events + lab.issuer_events if isinstance(e, StartPunch)]


def _registered(scenario: Scenario | None = None, **kwargs: object) -> Lab:
    lab = Lab(scenario, **kwargs)  # type: ignore[arg-type]
    lab.agent.start(lab.now)
    lab.run(1.0)
    return lab


def test_happy_path_is_direct_and_timed_from_now_only() -> None:
    lab = _registered()
    assert lab.agent.state is LinkState.REGISTERING
    assert lab.opened == ["enroll"] and lab.agent.reflexive == HUB_REFLEXIVE
    assert any(isinstance(e, ReflexiveAddress) for e in lab.agent_events)
    started = lab.now
    lab.connect()
    outcome = _outcome(lab)
    assert isinstance(outcome, Connected)
    assert outcome.path is PathKind.DIRECT and outcome.session == SESSION
    assert outcome.addr == HUB_REFLEXIVE.as_tuple()
    # The sealed request opened at the hub to the user and password typed at the issuer.
    assert lab.checked == [("owner", "pw")]
    # Offered candidates: the reflexive address from STUN first, then the local ones.
    request = next(m for m in lab.broker_sent if isinstance(m, Request))
    assert request.candidates == (ISSUER_REFLEXIVE, *ISSUER_LOCAL)
    agent_start, issuer_start = (m for m in lab.broker_sent if isinstance(m, Start))
    assert issuer_start.candidates == (HUB_REFLEXIVE, *HUB_LOCAL)
    # Timings: the lab's clock only. The broker answers half a round trip after a record
    # (the lab delivers records to it at once); a punch takes start_in plus one round trip.
    rtt = lab.s.rtt
    assert outcome.timings["lookup_ms"] == round(rtt / 2 * 1000)
    assert outcome.timings["stun_ms"] == round(rtt * 1000)
    assert outcome.timings["punch_ms"] == lab.s.start_in_ms + round(rtt * 1000)
    assert outcome.timings["connect_ms"] >= round(lab.s.kdf_seconds * 1000)
    assert 0 < outcome.setup_ms < 1000 and started < lab.now
    assert lab.agent.sessions == {SESSION: AgentSessionState.DIRECT}
    assert lab.agent.counters.direct == 1 and lab.agent.counters.accepted == 1
    assert lab.issuer.state is IssuerState.DIRECT
    assert lab.opened == ["enroll", "present"]
    # Both probed at the common start time.
    agent_punch, issuer_punch = sorted(_punches(lab), key=lambda p: p.start_at)
    assert abs(agent_punch.start_at - issuer_punch.start_at) < rtt
    assert agent_punch.remote_candidates == (ISSUER_REFLEXIVE, *ISSUER_LOCAL)
    assert agent_punch.attempts == issuer_punch.attempts == 3
    del agent_start


def test_punch_fails_then_both_sides_use_the_relay() -> None:
    lab = _registered(Scenario(punch_ok=False))
    lab.connect()
    outcome = _outcome(lab)
    assert isinstance(outcome, Connected) and outcome.path is PathKind.RELAY
    assert outcome.addr is None
    assert (outcome.relay_max_bytes, outcome.relay_max_ms) == (1 << 20, 120_000)
    assert "relay_ms" in outcome.timings and "punch_ms" in outcome.timings
    assert any(isinstance(e, RelayReady) for e in lab.issuer_events)
    ready = [e for e in lab.agent_events if isinstance(e, AgentRelayReady)]
    assert len(ready) == 1 and ready[0].session == SESSION
    assert lab.agent.sessions == {SESSION: AgentSessionState.RELAY}
    # The punch deadline came from the broker's deadline_ms.
    assert outcome.setup_ms >= lab.s.deadline_ms


def test_wrong_password_is_rejected_before_any_punch() -> None:
    lab = _registered(Scenario(users={"owner": "something else"}))
    lab.connect()
    outcome = _outcome(lab)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.BAD_PASSWORD
    assert outcome.message == failure_message(Reason.BAD_PASSWORD)
    assert "wrong password" in outcome.message
    assert _punches(lab) == []
    assert not any(isinstance(m, Start) for m in lab.broker_sent)
    assert lab.agent.counters.rejected == {"bad-password": 1}
    assert lab.agent.sessions == {}
    assert any(
        isinstance(e, SessionEnded) and e.reason is Reason.BAD_PASSWORD for e in lab.agent_events
    )


def test_unknown_user_is_rejected_as_a_wrong_password() -> None:
    lab = _registered(user="mallory", password="pw")
    lab.connect()
    outcome = _outcome(lab)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.BAD_PASSWORD
    assert lab.checked == [("mallory", "pw")] and _punches(lab) == []


def test_a_broker_that_alters_the_candidates_gets_a_bad_seal_reject() -> None:
    lab = _registered()
    original = lab._from_issuer

    def altering(message: object) -> None:
        if isinstance(message, Connect):
            message = Connect(message.target, ISSUER_LOCAL, message.sealed)
        original(message)  # type: ignore[arg-type]

    lab._from_issuer = altering  # type: ignore[method-assign]
    lab.connect()
    outcome = _outcome(lab)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.BAD_SEAL
    assert _punches(lab) == [] and lab.checked == []


def test_unknown_target_fails_and_never_wakes_the_hub() -> None:
    lab = _registered(Scenario(known=False))
    lab.connect()
    outcome = _outcome(lab)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.UNKNOWN_TARGET
    assert outcome.message.startswith("unknown hub")
    assert not any(isinstance(e, OpenPresentConnection) for e in lab.agent_events)
    assert not any(isinstance(m, Connect) for m in lab.broker_sent)


@pytest.mark.parametrize(
    ("reason", "words"),
    [(Reason.RATE_LIMITED, "rate limited"), (Reason.TARGET_OFFLINE, "hub offline")],
)
def test_broker_errors_on_connect_fail_clearly(reason: Reason, words: str) -> None:
    lab = _registered(Scenario(connect_error=reason))
    lab.connect()
    outcome = _outcome(lab)
    assert isinstance(outcome, Failed) and outcome.reason is reason and words in outcome.message
    assert not any(isinstance(e, CheckPassword) for e in lab.agent_events)


def test_relay_refused_at_the_limit_fails_with_relay_limit() -> None:
    lab = _registered(Scenario(punch_ok=False, refuse_relay=True))
    lab.connect()
    outcome = _outcome(lab)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.RELAY_LIMIT
    assert outcome.message == "relay limit reached"
    assert lab.agent.sessions == {}


def test_relay_closed_at_its_limit_ends_a_connected_session() -> None:
    lab = _registered(Scenario(punch_ok=False, close_relay_after=60.0))
    lab.connect(seconds=120.0)
    outcome = _outcome(lab)
    assert isinstance(outcome, Connected) and outcome.path is PathKind.RELAY
    closed = [e for e in lab.issuer_events if isinstance(e, SessionClosed)]
    assert closed == [SessionClosed(SESSION, Reason.RELAY_LIMIT)]
    assert lab.issuer.state is IssuerState.CLOSED and lab.agent.sessions == {}


def test_stun_without_answer_offers_local_candidates_only() -> None:
    lab = _registered(Scenario(stun_ok=False))
    lab.connect()
    assert isinstance(_outcome(lab), Connected)
    assert lab.issuer.counters.stun_timeouts == 1
    request = next(m for m in lab.broker_sent if isinstance(m, Request))
    assert request.candidates == ISSUER_LOCAL
    assert "stun_ms" not in _outcome(lab).timings


@pytest.mark.parametrize(
    ("scenario", "reason", "after"),
    [
        (Scenario(answer_lookup=False), Reason.LOOKUP_TIMEOUT, IssuerConfig().lookup_timeout),
        (Scenario(deliver_wake=False), Reason.ACCEPT_TIMEOUT, IssuerConfig().accept_timeout),
        (Scenario(punch_ok=False, answer_relay=False), Reason.RELAY_TIMEOUT, None),
    ],
)
def test_timeouts_fail_with_their_reason(
    scenario: Scenario, reason: Reason, after: float | None
) -> None:
    lab = _registered(scenario)
    lab.connect(seconds=60.0)
    outcome = _outcome(lab)
    assert isinstance(outcome, Failed) and outcome.reason is reason
    assert outcome.message.startswith("timed out")
    if after is not None:
        # Measured from the fake clock: the wait, plus the round trips before it began.
        assert after * 1000 <= outcome.setup_ms <= after * 1000 + 200
    assert lab.issuer.get_timer() is None


def test_hub_session_without_start_ends_at_its_setup_deadline() -> None:
    lab = _registered()
    original = lab._to_agent

    def no_start(channel: int, message: object) -> None:
        if not isinstance(message, Start):
            original(channel, message)  # type: ignore[arg-type]

    lab._to_agent = no_start  # type: ignore[method-assign]
    lab.connect(seconds=60.0)
    ended = [e for e in lab.agent_events if isinstance(e, SessionEnded)]
    assert [e.reason for e in ended] == [Reason.SETUP_TIMEOUT]
    assert lab.agent.counters.ended["setup-timeout"] == 1 and lab.agent.sessions == {}


def test_racks_missing_hold_a_connection_with_keepalives_and_wake_over_it() -> None:
    lab = _registered(Scenario(udp_ok=False))
    config = lab.agent.config
    lab.run(3 * config.interval * (1 + config.jitter) + config.rack_timeout)
    assert lab.agent.state is LinkState.HELD
    assert lab.opened == ["enroll", "held"]
    assert lab.agent.counters.fallbacks == 1
    assert lab.agent.counters.ignored["rack-missing"] == 1
    held_since = lab.now
    lab.run(5 * config.keepalive_interval)
    gaps = [b - a for a, b in zip(lab.keepalives, lab.keepalives[1:], strict=False)]
    assert len(lab.keepalives) >= 4 and all(
        g == pytest.approx(config.keepalive_interval) for g in gaps
    )
    # Registrations go on over UDP (to notice when it works again).
    assert sum(t > held_since for t in lab.registrations) >= 4
    # A connection request now wakes the hub over the held connection.
    lab.connect()
    outcome = _outcome(lab)
    assert isinstance(outcome, Connected) and outcome.path is PathKind.DIRECT
    assert lab.opened == ["enroll", "held", "present"]
    assert lab.agent.counters.wakes == 1


def test_a_short_broker_interval_paces_the_held_connections_keepalives() -> None:
    # The broker closes a held connection quiet for its TTL (three of its intervals): with
    # a 1 s interval a 20 s keepalive would lose the connection, and with it the hub.
    lab = _registered(Scenario(udp_ok=False, interval_ms=1_000))
    config = lab.agent.config
    lab.run(3 * 1.0 * (1 + config.jitter) + config.rack_timeout + 1.0)
    assert lab.agent.state is LinkState.HELD
    held_since = lab.now
    lab.run(10.0)
    times = [held_since, *(t for t in lab.keepalives if t > held_since)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 9 and all(g <= 1.0 + 1e-9 for g in gaps)
    lab.connect()
    outcome = _outcome(lab)
    assert isinstance(outcome, Connected) and lab.opened == ["enroll", "held", "present"]


def test_udp_that_works_again_closes_the_held_connection() -> None:
    lab = _registered(Scenario(udp_ok=False))
    lab.run(120.0)
    assert lab.agent.state is LinkState.HELD
    held = lab.agent.held_channel
    lab.s.udp_ok = True
    lab.run(30.0)
    assert lab.agent.state is LinkState.REGISTERING and lab.agent.held_channel is None
    assert held is not None and held not in lab._channels


def test_registrations_follow_the_interval_within_the_jitter() -> None:
    lab = _registered(seed=12345)
    lab.run(20 * 200)
    gaps = [b - a for a, b in zip(lab.registrations, lab.registrations[1:], strict=False)]
    assert len(gaps) >= 150
    assert all(16.0 <= gap <= 24.0 for gap in gaps)
    # The spread is used, on both sides of the interval (seeded: reproducible).
    assert min(gaps) < 17.0 and max(gaps) > 23.0
    assert lab.agent.counters.acks == lab.agent.counters.registrations
    # The counter grows by one per registration, from the adapter's start value.
    assert lab.agent.counters.ignored == {}


def test_forged_and_replayed_wake_ups_are_ignored_and_counted() -> None:
    lab = _registered()
    source = ("192.0.2.1", 3478)
    forged = lab.wake_datagram(10, key=bytes(32))
    lab.agent.datagram_received(forged, source, lab.now)
    assert lab.agent.counters.ignored["bad-tag"] == 1
    assert lab.agent.next_event() is None and lab.agent.live_sessions == 0
    genuine = lab.wake_datagram(10)
    lab.agent.datagram_received(genuine, source, lab.now)
    opened = lab.agent.next_event()
    assert isinstance(opened, OpenPresentConnection) and opened.token == bytes(range(16))
    present = lab.agent.records_to_send()
    assert [decode_control(body).op for _, body in present] == ["present"]
    # The same datagram again: its counter is not above the last one.
    lab.agent.datagram_received(genuine, source, lab.now)
    assert lab.agent.counters.ignored["counter-not-increasing"] == 1
    # The broker's resend: a new counter, the same token: no second connection.
    lab.agent.datagram_received(lab.wake_datagram(11), source, lab.now)
    assert lab.agent.counters.wake_resends == 1
    assert lab.agent.next_event() is None and lab.agent.live_sessions == 1
    # A truncated one, and one before the key is known, cost a count each.
    lab.agent.datagram_received(genuine[:-1], source, lab.now)
    assert lab.agent.counters.ignored["truncated"] == 1


def test_a_new_registration_key_starts_a_new_wake_counter_floor() -> None:
    # Enrolled again (at another broker process, after a move): that process counts its
    # wake-ups from its own start, which may be below the last counter accepted.
    lab = _registered()
    source = ("192.0.2.1", 3478)
    lab.agent.datagram_received(lab.wake_datagram(1_000), source, lab.now)
    assert isinstance(lab.agent.next_event(), OpenPresentConnection)
    lab.agent.records_to_send()
    key = bytes(range(100, 132))
    lab.agent.enrolled(lab.agent.identifier, key, 0, lab.now)
    lab.agent.datagram_received(lab.wake_datagram(5, key=key, token=bytes(16)), source, lab.now)
    assert "counter-not-increasing" not in lab.agent.counters.ignored
    opened = lab.agent.next_event()
    assert isinstance(opened, OpenPresentConnection) and opened.token == bytes(16)


def test_wake_up_before_enrollment_is_ignored() -> None:
    lab = Lab()
    lab.agent.datagram_received(lab.wake_datagram(1), ("192.0.2.1", 3478), lab.now)
    assert lab.agent.counters.ignored == {"not-enrolled": 1}
    assert lab.agent.next_event() is None


def test_wake_ups_beyond_max_sessions_are_refused_as_busy() -> None:
    lab = _registered()
    source = ("192.0.2.1", 3478)
    for counter in range(1, lab.agent.config.max_sessions + 2):
        token = counter.to_bytes(16, "big")
        lab.agent.datagram_received(lab.wake_datagram(counter, token), source, lab.now)
    assert lab.agent.live_sessions == lab.agent.config.max_sessions
    assert lab.agent.counters.ignored["busy"] == 1


def test_a_certificate_the_trust_store_refuses_fails_before_connect() -> None:
    lab = _registered(Scenario(certificate_ok=False))
    lab.connect()
    outcome = _outcome(lab)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.CHAIN
    assert "not trusted" in outcome.message
    assert not any(isinstance(m, Connect) for m in lab.broker_sent)


def test_failure_messages_cover_the_clear_failures_of_issue_9() -> None:
    for reason in (
        Reason.BAD_PASSWORD,
        Reason.UNKNOWN_TARGET,
        Reason.TARGET_OFFLINE,
        Reason.RATE_LIMITED,
        Reason.RELAY_LIMIT,
        Reason.LOOKUP_TIMEOUT,
    ):
        assert not failure_message(reason).startswith("the connection failed")
    assert failure_message("no-such-reason") == "the connection failed (no-such-reason)"
