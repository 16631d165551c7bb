"""The agent's held connection (``hold_connection``, docs/broker.md "Held connections"): one
mutual-TLS connection kept open next to the UDP registrations, requests pushed over it,
several at once, keepalives answered or the connection reopened; in memory, fake clock."""

from __future__ import annotations

import random

import pytest

from roost.reasons import Reason
from roost.rendezvous.agent import (
    AgentConfig,
    AgentCore,
    CheckPassword,
    CloseConnection,
    OpenHeldConnection,
    OpenPresentConnection,
    RelayReady,
    SessionEnded,
)
from roost.rendezvous.control import (
    Enrolled,
    Error,
    Holding,
    Keepalive,
    Reject,
    RelayOpen,
    Request,
    Start,
    decode_control,
)
from roost.rendezvous.issuer import Connected
from roost.rendezvous.messages import Ack, decode_registration, encode_ack, verify_registration
from roost.rendezvous.seal import seal_request
from roost.rendezvous.sessions import PathKind, StartPunch
from roost.rendezvous.state import AgentSessionState, LinkState
from tests.unit.rendezvous.brokerlab import (
    HUB_ID,
    HUB_KEY,
    HUB_LOCAL,
    HUB_REFLEXIVE,
    ISSUER_LOCAL,
    REGISTRATION_KEY,
    Lab,
    Scenario,
)

HOLD = AgentConfig(hold_connection=True)


def _held_lab(scenario: Scenario | None = None, config: AgentConfig = HOLD) -> Lab:
    lab = Lab(scenario, agent_config=config)
    lab.agent.start(lab.now)
    lab.run(1.0)
    return lab


def _agent(**config: object) -> AgentCore:
    return AgentCore(
        AgentConfig(hold_connection=True, **config),  # type: ignore[arg-type]
        HUB_ID,
        random.Random(5),
        candidates=HUB_LOCAL,
        counter_start=1_000,
    )


def _events(core: AgentCore) -> list[object]:
    return list(iter(core.next_event, None))


def _ops(core: AgentCore) -> list[tuple[int, str]]:
    return [(channel, decode_control(body).op) for channel, body in core.records_to_send()]


def _holding_agent(now: float = 0.0) -> tuple[AgentCore, int]:
    """An agent whose one connection the broker holds (scripted, no lab)."""
    agent = _agent()
    agent.start(now)
    (opened,) = _events(agent)
    assert isinstance(opened, OpenHeldConnection) and not opened.fallback
    channel = opened.channel
    agent.control_received(channel, Enrolled(HUB_ID, REGISTRATION_KEY, 20_000), now)
    agent.control_received(channel, Holding(), now)
    assert agent.holding
    _events(agent)
    agent.records_to_send()
    agent.datagrams_to_send()
    return agent, channel


def _until_reopened(agent: AgentCore) -> tuple[float, OpenHeldConnection]:
    """Fire the agent's timers (registrations among them) until it reopens its held
    connection: when, and the event."""
    for _ in range(100):
        when = agent.get_timer()
        assert when is not None
        agent.handle_timer(when)
        for datagram in agent.datagrams_to_send():
            # The broker answers every registration: UDP works, this is no fallback.
            counter = verify_registration(decode_registration(datagram), REGISTRATION_KEY).counter
            rack = encode_ack(Ack(counter, HUB_REFLEXIVE), datagram)
            agent.datagram_received(rack, ("192.0.2.1", 3478), when)
        opened = [e for e in _events(agent) if isinstance(e, OpenHeldConnection)]
        if opened:
            return when, opened[0]
    raise AssertionError("the held connection was not reopened")


def _sealed() -> bytes:
    return seal_request(HUB_KEY.public_key(), HUB_ID, ISSUER_LOCAL, "owner", "pw")


# ------------------------------------------------------------------ with the paired lab


def test_one_connection_enrolls_then_is_held_next_to_the_registrations() -> None:
    lab = _held_lab()
    assert lab.opened == ["held"]
    assert lab.agent.state is LinkState.REGISTERING and lab.agent.holding
    assert lab.agent.counters.holds == 1 and lab.agent.counters.acks >= 1
    # The enrollment connection is the held one: it stays open.
    held = lab.agent.held_channel
    assert held is not None and lab._channels[held] == "holding"
    assert not any(isinstance(e, CloseConnection) for e in lab.agent_events)


def test_a_request_comes_over_the_held_connection_without_a_wake_up() -> None:
    lab = _held_lab()
    lab.connect()
    outcome = next(e for e in lab.issuer_events if isinstance(e, Connected))
    assert outcome.path is PathKind.DIRECT
    # No RWAK, no wake push, no second connection, no present.
    assert lab.opened == ["held"] and lab.wakes_sent == 0
    assert lab.agent.counters.wakes == 0 and lab.agent.counters.held_requests == 1
    assert lab.agent.holding
    # The session's records went over the held connection; it is still open.
    assert lab.agent.channel_of(42) == lab.agent.held_channel


def test_the_relay_runs_over_the_held_connection() -> None:
    lab = _held_lab(Scenario(punch_ok=False))
    lab.connect()
    outcome = next(e for e in lab.issuer_events if isinstance(e, Connected))
    assert outcome.path is PathKind.RELAY
    (ready,) = [e for e in lab.agent_events if isinstance(e, RelayReady)]
    assert ready.channel == lab.agent.held_channel and lab.opened == ["held"]
    assert lab.agent.sessions == {42: AgentSessionState.RELAY}


def test_a_held_connection_without_keepalive_answers_is_reopened() -> None:
    lab = _held_lab(Scenario(echo_keepalive=False))
    config = lab.agent.config
    first = lab.agent.held_channel
    lab.run(config.keepalive_interval + config.keepalive_timeout + 0.5)
    assert lab.agent.counters.keepalive_timeouts == 1
    assert CloseConnection(first) in lab.agent_events  # type: ignore[arg-type]
    lab.run(config.enroll_retry * (1 + config.jitter) + 1.0)
    assert lab.opened == ["held", "held"] and lab.agent.holding
    assert lab.agent.held_channel != first
    # With answers the connection lives on: keepalives every interval, no reopen.
    lab.s.echo_keepalive = True
    lab.run(5 * config.keepalive_interval)
    assert lab.opened == ["held", "held"] and lab.agent.counters.keepalive_timeouts == 1


def test_a_refused_hold_leaves_the_wake_up_flow_and_is_asked_again_later() -> None:
    lab = _held_lab(Scenario(hold_ok=False))
    assert not lab.agent.holding and lab.agent.held_channel is None
    assert lab.agent.counters.hold_refused == {"held-limit": 1}
    # Reachable the base way: RWAK, then a present connection.
    lab.connect()
    assert next(e for e in lab.issuer_events if isinstance(e, Connected))
    assert lab.opened == ["held", "present"] and lab.wakes_sent == 1
    # After hold_retry (± jitter) the agent asks again, and this time the broker holds.
    lab.s.hold_ok = True
    config = lab.agent.config
    lab.run(config.hold_retry * (1 + config.jitter) + 1.0)
    assert lab.opened == ["held", "present", "held"] and lab.agent.holding


def test_udp_blocked_keeps_the_held_connection_and_opens_no_other() -> None:
    lab = _held_lab(Scenario(udp_ok=False))
    config = lab.agent.config
    lab.run(3 * config.interval * (1 + config.jitter) + config.rack_timeout)
    assert lab.agent.state is LinkState.HELD and lab.agent.counters.fallbacks == 1
    assert lab.opened == ["held"] and lab.agent.holding
    lab.connect()
    assert next(e for e in lab.issuer_events if isinstance(e, Connected))
    # UDP comes back: registering again, and the connection is still held.
    lab.s.udp_ok = True
    lab.run(30.0)
    assert lab.agent.state is LinkState.REGISTERING and lab.agent.holding
    assert lab.opened == ["held"]


def test_udp_blocked_with_a_refused_hold_keeps_the_connection_as_the_fallback() -> None:
    lab = _held_lab(Scenario(udp_ok=False, hold_ok=False))
    config = lab.agent.config
    lab.run(3 * config.interval * (1 + config.jitter) + config.rack_timeout + 1.0)
    assert lab.agent.state is LinkState.HELD and not lab.agent.holding
    assert lab.agent.held_channel is not None
    # The fallback of the base flow: a wake over it, then a present connection.
    lab._channels[lab.agent.held_channel] = "held"
    lab.connect()
    assert next(e for e in lab.issuer_events if isinstance(e, Connected))
    assert lab.opened[-1] == "present" and lab.agent.counters.wakes == 1


# ------------------------------------------------------------------ scripted


def test_several_sessions_share_the_held_connection_by_their_numbers() -> None:
    agent, held = _holding_agent()
    sealed = _sealed()
    agent.control_received(held, Request(7, ISSUER_LOCAL, sealed), 1.0)
    agent.control_received(held, Request(8, ISSUER_LOCAL, sealed), 1.0)
    checks = [e for e in _events(agent) if isinstance(e, CheckPassword)]
    assert [c.session for c in checks] == [7, 8]
    agent.password_checked(7, True, 1.1)
    agent.password_checked(8, True, 1.1)
    records = _ops(agent)
    assert records == [(held, "accept"), (held, "accept")]
    # Start for 7 starts its punch only; relay-open for 8 gives its relay on the held channel.
    agent.control_received(held, Start(7, ISSUER_LOCAL, 0, 3000), 1.2)
    agent.control_received(held, Start(8, ISSUER_LOCAL, 0, 3000), 1.2)
    agent.punch_failed(8, 4.2)
    assert _ops(agent) == [(held, "relay-open")]
    agent.control_received(held, RelayOpen(8, 1 << 20, 60_000), 4.3)
    events = _events(agent)
    assert [e.session for e in events if isinstance(e, StartPunch)] == [7, 8]
    assert [e for e in events if isinstance(e, RelayReady)] == [
        RelayReady(8, held, 1 << 20, 60_000)
    ]
    assert agent.sessions == {7: AgentSessionState.PUNCHING, 8: AgentSessionState.RELAY}
    # An error for 7 ends 7 only, and closes no connection: the held one carries 8.
    agent.control_received(held, Error(Reason.DISCONNECTED, 7), 4.4)
    events = _events(agent)
    assert [e for e in events if isinstance(e, SessionEnded)] == [
        SessionEnded(7, held, Reason.DISCONNECTED)
    ]
    assert not any(isinstance(e, CloseConnection) for e in events)
    assert agent.sessions == {8: AgentSessionState.RELAY} and agent.holding
    # A message for a session the connection does not carry is only counted.
    agent.control_received(held, RelayOpen(9), 4.5)
    assert agent.counters.ignored["unknown-session"] == 1


def test_pushed_requests_beyond_max_sessions_are_rejected_busy_at_once() -> None:
    agent, held = _holding_agent()
    sealed = _sealed()
    for session in range(1, agent.config.max_sessions + 2):
        agent.control_received(held, Request(session, ISSUER_LOCAL, sealed), 1.0)
    assert agent.live_sessions == agent.config.max_sessions
    records = agent.records_to_send()
    assert [decode_control(body) for _, body in records] == [
        Reject(agent.config.max_sessions + 1, Reason.BUSY)
    ]
    assert agent.counters.rejected["busy"] == 1
    # A repeated session number is not a second session.
    agent.control_received(held, Request(1, ISSUER_LOCAL, sealed), 1.0)
    assert agent.counters.ignored["unexpected-message"] == 1


def test_a_request_over_a_connection_not_yet_held_is_ignored() -> None:
    agent = _agent()
    agent.start(0.0)
    (opened,) = _events(agent)
    channel = opened.channel  # type: ignore[attr-defined]
    agent.control_received(channel, Enrolled(HUB_ID, REGISTRATION_KEY, 20_000), 0.0)
    assert [op for _, op in _ops(agent)] == ["enroll", "hold"]
    agent.control_received(channel, Request(3, ISSUER_LOCAL, _sealed()), 0.1)
    assert agent.counters.ignored["unexpected-message"] == 1 and agent.live_sessions == 0


def test_losing_the_held_connection_ends_its_setups_and_reopens_with_back_off() -> None:
    agent, held = _holding_agent()
    sealed = _sealed()
    agent.control_received(held, Request(7, ISSUER_LOCAL, sealed), 1.0)
    agent.control_received(held, Request(8, ISSUER_LOCAL, sealed), 1.0)
    for session in (7, 8):
        agent.password_checked(session, True, 1.1)
        agent.control_received(held, Start(session, ISSUER_LOCAL, 0, 3000), 1.2)
    agent.punch_succeeded(7, ("198.51.100.7", 50123), 1.3)
    _events(agent)
    agent.channel_closed(held, 2.0)
    events = _events(agent)
    # The direct session goes on without the broker; the one still punching ends.
    assert [e for e in events if isinstance(e, SessionEnded)] == [
        SessionEnded(8, held, Reason.DISCONNECTED)
    ]
    assert agent.sessions == {7: AgentSessionState.DIRECT}
    assert not agent.holding and agent.held_channel is None
    config = agent.config
    now, delays = 2.0, []
    for _ in range(4):
        when, opened = _until_reopened(agent)
        delays.append(when - now)
        assert not opened.fallback
        assert [op for ch, op in _ops(agent) if ch == opened.channel] == ["enroll"]
        now = when
        agent.channel_closed(opened.channel, now)
    for failures, delay in enumerate(delays, start=1):
        factor = min(2 ** (failures - 1), config.enroll_backoff_max)
        low, high = factor * (1 - config.jitter), factor * (1 + config.jitter)
        assert low * config.enroll_retry <= delay <= high * config.enroll_retry


def test_stop_ends_the_pushed_sessions_and_closes_the_held_connection() -> None:
    agent, held = _holding_agent()
    agent.control_received(held, Request(7, ISSUER_LOCAL, _sealed()), 1.0)
    _events(agent)
    agent.stop(2.0)
    events = _events(agent)
    assert SessionEnded(7, held, Reason.CLOSED) in events
    assert events.count(CloseConnection(held)) == 1
    assert agent.live_sessions == 0 and agent.get_timer() is None and not agent.holding


def test_keepalives_are_answered_or_the_connection_is_given_up() -> None:
    agent, held = _holding_agent()
    config = agent.config
    now = 0.0
    for _ in range(3):
        now = agent.get_timer() or 0.0
        agent.handle_timer(now)
        if (held, "keepalive") in _ops(agent):
            agent.control_received(held, Keepalive(), now + 0.01)
    assert agent.counters.keepalives >= 1 and agent.counters.keepalive_timeouts == 0
    # Now the broker goes silent.
    agent.datagrams_to_send()
    deadline = now + config.keepalive_interval + config.keepalive_timeout + 1
    while (timer := agent.get_timer()) is not None and timer <= deadline:
        agent.handle_timer(timer)
        if agent.counters.keepalive_timeouts:
            break
    assert agent.counters.keepalive_timeouts == 1
    assert CloseConnection(held) in _events(agent)
    assert agent.held_channel is None and agent.counters.ignored["keepalive-timeout"] == 1


def test_without_the_option_the_base_flow_is_unchanged() -> None:
    # hold_connection off (the core's default): the enrollment connection closes, a
    # wake-up opens a present connection, and no hold is ever asked for.
    lab = Lab()
    lab.agent.start(lab.now)
    lab.run(1.0)
    assert lab.opened == ["enroll"] and lab.agent.held_channel is None
    lab.connect()
    assert next(e for e in lab.issuer_events if isinstance(e, Connected))
    assert lab.opened == ["enroll", "present"] and lab.wakes_sent >= 1
    assert lab.agent.counters.holds == 0 and not lab.agent.holding
    assert any(isinstance(e, OpenPresentConnection) for e in lab.agent_events)


@pytest.mark.parametrize("config", [{"keepalive_timeout": 0}, {"hold_retry": -1.0}])
def test_hold_timers_are_validated(config: dict[str, object]) -> None:
    from roost.errors import ConfigError

    with pytest.raises(ConfigError):
        AgentConfig(**config)  # type: ignore[arg-type]


NEW_KEY = bytes(range(100, 100 + len(REGISTRATION_KEY)))


def _fallen_back() -> tuple[AgentCore, int, list[int], float]:
    """An agent whose registrations went unanswered until it opened its fallback
    connection and sent ``enroll`` there (unanswered yet): the agent, that channel, the
    counters it is still waiting on, and the time."""
    agent = AgentCore(AgentConfig(hold_connection=False), HUB_ID, random.Random(5), counter_start=1)
    agent.start(0.0)
    for event in _events(agent):
        channel = getattr(event, "channel", None)
    assert channel is not None
    agent.control_received(channel, Enrolled(HUB_ID, REGISTRATION_KEY, 20_000), 0.0)
    _events(agent)
    agent.records_to_send()
    sent: list[int] = []
    for _ in range(100):
        when = agent.get_timer()
        assert when is not None
        agent.handle_timer(when)
        for datagram in agent.datagrams_to_send():
            registration = verify_registration(decode_registration(datagram), REGISTRATION_KEY)
            sent.append(registration.counter)
        fallback = [e for e in _events(agent) if isinstance(e, OpenHeldConnection) and e.fallback]
        if fallback:
            assert [body for _, body in agent.records_to_send()]  # the enroll
            return agent, fallback[0].channel, sent, when
    raise AssertionError("no fallback connection")


def test_a_rack_during_the_fallbacks_enrollment_keeps_that_connection_until_its_answer() -> None:
    # The broker process restarted: registrations went unanswered, so the agent opened its
    # fallback connection (at the next broker of its list) and enrolled there. A RACK for
    # an earlier registration then arrives (the restarted process answering late). The new
    # enrollment replaces the key at the broker, so the agent keeps the connection until
    # the answer and registers under the new key; closing it at the RACK left the broker
    # checking a key the agent never learned (every registration refused bad-tag).
    agent, fallback, sent, now = _fallen_back()
    assert agent.state is LinkState.HELD
    late = encode_ack(Ack(sent[-1], HUB_REFLEXIVE))
    agent.datagram_received(late, ("192.0.2.1", 3478), now + 0.1)
    assert agent.state is LinkState.REGISTERING
    assert not [e for e in _events(agent) if isinstance(e, CloseConnection)]
    assert agent.held_channel == fallback
    agent.control_received(fallback, Enrolled(HUB_ID, NEW_KEY, 20_000), now + 0.2)
    assert agent.enrolled_key == NEW_KEY
    assert CloseConnection(fallback) in _events(agent) and agent.held_channel is None
    (registration,) = agent.datagrams_to_send()
    verify_registration(decode_registration(registration), NEW_KEY)
