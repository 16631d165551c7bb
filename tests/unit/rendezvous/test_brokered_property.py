"""Random broker behaviour against both cores: control ops in any order, any session, any
channel, mixed with datagrams, timers and the adapter's answers. Nothing may raise (peer
input is ignored and counted), a wrong password never leads to a punch, the issuer ends
with at most one outcome, and a timer never stays due after it ran."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from roost.reasons import Reason
from roost.rendezvous.agent import AgentConfig, AgentCore, CheckPassword
from roost.rendezvous.control import (
    Accept,
    Connect,
    Connecting,
    ControlMessage,
    Enroll,
    Enrolled,
    Error,
    Keepalive,
    Lookup,
    LookupResult,
    Present,
    Reject,
    RelayClose,
    RelayOpen,
    Request,
    Start,
    WakePush,
)
from roost.rendezvous.issuer import IssuerConfig, IssuerCore, Outcome, VerifyCertificate
from roost.rendezvous.messages import Ack, encode_ack
from roost.rendezvous.seal import seal_request
from roost.rendezvous.sessions import StartPunch
from roost.rendezvous.state import (
    AGENT_LINK_TRANSITIONS,
    AGENT_SESSION_TRANSITIONS,
    ISSUER_TRANSITIONS,
    AgentSessionState,
    IssuerState,
    LinkState,
)
from tests.unit.rendezvous.brokerlab import (
    CERTIFICATE,
    HUB_ID,
    HUB_KEY,
    HUB_LOCAL,
    HUB_REFLEXIVE,
    ISSUER_LOCAL,
    REGISTRATION_KEY,
    TOKEN,
    Lab,
    Scenario,
)

OTHER_ID = "hcsp:AAAAAAAAAAAAAAAAAAAAAA"
SEALED = seal_request(HUB_KEY.public_key(), HUB_ID, ISSUER_LOCAL, "owner", "pw")

MESSAGES: list[ControlMessage] = [
    Enroll(),
    Enrolled(HUB_ID, REGISTRATION_KEY, 20_000),
    Enrolled(OTHER_ID, REGISTRATION_KEY, 20_000),
    Enrolled(HUB_ID, bytes(32), 5_000),
    Lookup(HUB_ID),
    LookupResult(HUB_ID, CERTIFICATE),
    LookupResult(OTHER_ID, CERTIFICATE),
    Connect(HUB_ID, ISSUER_LOCAL, SEALED),
    Connecting(42),
    Connecting(7),
    WakePush(TOKEN),
    WakePush(bytes(16)),
    Present(TOKEN),
    Request(42, ISSUER_LOCAL, SEALED),
    Request(7, ISSUER_LOCAL, SEALED),
    Accept(42, HUB_LOCAL),
    Reject(42, Reason.BAD_PASSWORD),
    Reject(7, Reason.LOCKED_OUT),
    Start(42, (HUB_REFLEXIVE,), 100, 3000),
    Start(7, (), 0, 0),
    RelayOpen(42),
    RelayOpen(42, 1000, 1000),
    RelayClose(42, Reason.RELAY_LIMIT),
    RelayClose(7, Reason.CLOSED),
    Keepalive(),
    Error(Reason.RATE_LIMITED),
    Error(Reason.UNKNOWN_TARGET, 42),
    Error(Reason.TARGET_OFFLINE, 7),
]

# The ops of a session that gets somewhere, weighted up so random runs reach every state.
FLOW: list[ControlMessage] = [
    Request(42, ISSUER_LOCAL, SEALED),
    Start(42, (HUB_REFLEXIVE,), 100, 3000),
    RelayOpen(42, 1000, 1000),
    Connecting(42),
    LookupResult(HUB_ID, CERTIFICATE),
]
control = st.tuples(
    st.just("control"),
    st.sampled_from([0, 1, 2, 2, 2, 3, 4]),
    st.sampled_from(MESSAGES) | st.sampled_from(FLOW),
)
_STEPS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "control": control,
    "wake": st.tuples(st.just("wake"), st.integers(0, 20), st.booleans()),
    "ack": st.tuples(st.just("ack"), st.integers(1, 4), st.just(None)),
    "bytes": st.tuples(st.just("bytes"), st.binary(max_size=60), st.just(None)),
    "time": st.tuples(st.just("time"), st.floats(0, 40), st.just(None)),
    "answer": st.tuples(st.just("answer"), st.booleans(), st.booleans()),
    "punch": st.tuples(st.just("punch"), st.sampled_from([7, 42]), st.booleans()),
    "closed": st.tuples(st.just("closed"), st.integers(0, 6), st.just(None)),
    "stun": st.tuples(st.just("stun"), st.booleans(), st.just(None)),
    "start": st.tuples(st.just("start"), st.just(None), st.just(None)),
}
# Control ops, wake-ups and answers come most often: they move the sessions along.
_WEIGHTED = ["control"] * 6 + ["wake", "answer", "answer", "time"] + sorted(_STEPS)
step = st.sampled_from(_WEIGHTED).flatmap(_STEPS.__getitem__)


def _check_timer(core: Any, now: float) -> None:
    due = core.get_timer()
    assert due is None or due > now


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=10, max_size=80), st.integers(0, 2**32), st.booleans())
def test_random_broker_behaviour_never_breaks_the_agent(
    steps: list[Any], seed: int, enrolled: bool
) -> None:
    agent = AgentCore(AgentConfig(), HUB_ID, random.Random(seed), candidates=HUB_LOCAL)
    lab = Lab()
    now = 10.0
    if enrolled:
        # Half the runs start registered, so the random steps reach the sessions' states.
        agent.start(now)
        agent.control_received(1, Enrolled(HUB_ID, REGISTRATION_KEY, 20_000), now)
    pending: list[CheckPassword] = []
    # The last password verdict the adapter gave per session number.
    verdict: dict[int, bool] = {}
    for kind, first, second in steps:
        if kind == "control":
            agent.control_received(first, second, now)
        elif kind == "wake":
            key = REGISTRATION_KEY if second else bytes(32)
            agent.datagram_received(lab.wake_datagram(first, key=key), ("192.0.2.1", 3478), now)
        elif kind == "ack":
            ack = encode_ack(Ack(first, HUB_REFLEXIVE))
            agent.datagram_received(ack, ("192.0.2.1", 3478), now)
        elif kind == "bytes":
            agent.datagram_received(first, ("192.0.2.1", 3478), now)
        elif kind == "time":
            now += first
            agent.handle_timer(now)
            _check_timer(agent, now)
        elif kind == "answer" and pending:
            work = pending.pop(0)
            if agent.sessions.get(work.session) is AgentSessionState.CHECKING:
                verdict[work.session] = first
            agent.password_checked(work.session, first, now)
        elif kind == "punch":
            if second:
                agent.punch_succeeded(first, ("198.51.100.7", 5000), now)
            else:
                agent.punch_failed(first, now)
        elif kind == "closed":
            agent.channel_closed(first, now)
        elif kind == "start":
            agent.start(now)
        while (event := agent.next_event()) is not None:
            if isinstance(event, CheckPassword):
                pending.append(event)
            elif isinstance(event, StartPunch):
                # A punch only ever starts for a session whose password was accepted.
                assert verdict.get(event.session) is True
        agent.datagrams_to_send()
        agent.records_to_send()
        assert agent.live_sessions <= agent.config.max_sessions
    assert all(
        isinstance(reason, str) and reason in set(Reason) for reason in agent.counters.ignored
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=10, max_size=80))
def test_random_broker_behaviour_never_breaks_the_issuer(steps: list[Any]) -> None:
    issuer = IssuerCore(IssuerConfig(), HUB_ID, "owner", "pw", local_candidates=ISSUER_LOCAL)
    now = 10.0
    outcomes: list[Outcome] = []
    pending: list[VerifyCertificate] = []
    for kind, first, second in steps:
        if kind == "control":
            issuer.control_received(second, now)
        elif kind == "time":
            now += first
            issuer.handle_timer(now)
            _check_timer(issuer, now)
        elif kind == "answer" and pending:
            work = pending.pop(0)
            if first:
                issuer.certificate_verified(work.certificate, HUB_KEY.public_key(), now)
            else:
                issuer.certificate_refused(Reason.CHAIN, now)
        elif kind == "punch":
            if second:
                issuer.punch_succeeded(("203.0.113.20", 62000), now)
            else:
                issuer.punch_failed(now)
        elif kind == "closed":
            issuer.connection_lost(now)
        elif kind == "stun":
            issuer.stun_result(HUB_REFLEXIVE if first else None, now)
        elif kind == "start":
            issuer.start(now)
        while (event := issuer.next_event()) is not None:
            if isinstance(event, Outcome):
                outcomes.append(event)
            elif isinstance(event, VerifyCertificate):
                pending.append(event)
            elif isinstance(event, StartPunch):
                # No punch without the broker's connecting first.
                assert issuer.session == event.session
        issuer.records_to_send()
    assert len(outcomes) <= 1
    if issuer.state in (IssuerState.FAILED, IssuerState.DIRECT, IssuerState.RELAY):
        assert len(outcomes) == 1


def test_tables_use_only_their_own_states() -> None:
    assert {s for pair in AGENT_LINK_TRANSITIONS for s in pair[:1]} <= set(LinkState)
    assert set(AGENT_LINK_TRANSITIONS.values()) <= set(LinkState)
    assert set(AGENT_SESSION_TRANSITIONS.values()) <= set(AgentSessionState)
    assert set(ISSUER_TRANSITIONS.values()) <= set(IssuerState)
    # Terminal states leave nowhere; everything else is reachable from the start.
    assert not any(state is AgentSessionState.CLOSED for state, _ in AGENT_SESSION_TRANSITIONS)
    assert not any(
        state in (IssuerState.FAILED, IssuerState.CLOSED) for state, _ in ISSUER_TRANSITIONS
    )
    for table, start in (
        (AGENT_LINK_TRANSITIONS, LinkState.IDLE),
        (AGENT_SESSION_TRANSITIONS, AgentSessionState.PRESENTING),
        (ISSUER_TRANSITIONS, IssuerState.IDLE),
    ):
        reached = {start}
        for _ in range(len(table)):
            reached |= {target for (state, _), target in table.items() if state in reached}
        states = {state for state, _ in table} | set(table.values())
        assert reached == states


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 5), st.booleans(), st.sampled_from(MESSAGES + FLOW)),
        max_size=12,
    ),
    st.booleans(),
    st.booleans(),
)
def test_noise_injected_into_a_real_flow(
    noise: list[tuple[float, bool, ControlMessage]], right_password: bool, punch_ok: bool
) -> None:
    lab = Lab(Scenario(users={"owner": "pw" if right_password else "other"}, punch_ok=punch_ok))
    lab.agent.start(lab.now)
    lab.run(1.0)
    for delay, to_agent, message in noise:
        if to_agent:
            lab.at(delay, lambda m=message: lab.agent.control_received(2, m, lab.now))
        else:
            lab.at(delay, lambda m=message: lab.issuer.control_received(m, lab.now))
    lab.connect(seconds=60.0)
    outcomes = [e for e in lab.issuer_events if isinstance(e, Outcome)]
    assert len(outcomes) <= 1
    agent_punches = [e for e in lab.agent_events if isinstance(e, StartPunch)]
    if not right_password:
        # Whatever the noise, the hub never punches for a wrong password.
        assert agent_punches == []
    assert lab.agent.get_timer() is None or lab.agent.get_timer() > lab.now
