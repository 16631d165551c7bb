"""Single-core rules of the agent and the issuer that the paired flow does not reach."""

from __future__ import annotations

import ipaddress
import random

import pytest

from roost.errors import ConfigError, LocalProtocolError
from roost.reasons import Reason
from roost.rendezvous.agent import (
    AgentConfig,
    AgentCore,
    CloseConnection,
    OpenEnrollConnection,
)
from roost.rendezvous.control import (
    Connecting,
    Enrolled,
    LookupResult,
    RelayOpen,
    Request,
    Start,
    decode_control,
)
from roost.rendezvous.issuer import (
    Failed,
    IssuerConfig,
    IssuerCore,
    VerifyCertificate,
)
from roost.rendezvous.messages import (
    Ack,
    Candidate,
    decode_registration,
    encode_ack,
    verify_registration,
)
from roost.rendezvous.seal import seal_request
from roost.rendezvous.sessions import merge_candidates
from roost.rendezvous.state import IssuerState, LinkState
from tests.unit.rendezvous.brokerlab import (
    CERTIFICATE,
    HUB_ID,
    HUB_KEY,
    HUB_LOCAL,
    ISSUER_LOCAL,
    REGISTRATION_KEY,
    Lab,
)

OTHER_ID = "hcsp:AAAAAAAAAAAAAAAAAAAAAA"


def _agent(**config: object) -> AgentCore:
    return AgentCore(
        AgentConfig(**config),  # type: ignore[arg-type]
        HUB_ID,
        random.Random(3),
        candidates=HUB_LOCAL,
        counter_start=1_764_600_000_000,
    )


def _events(core: object) -> list[object]:
    return list(iter(core.next_event, None))  # type: ignore[attr-defined]


def test_registrations_are_tagged_and_their_counter_grows_from_the_start_value() -> None:
    agent = _agent()
    agent.start(0.0)
    agent.enrolled(HUB_ID, REGISTRATION_KEY, 20_000, 0.0)
    agent.handle_timer(30.0)
    registrations = [
        verify_registration(decode_registration(datagram), REGISTRATION_KEY)
        for datagram in agent.datagrams_to_send()
    ]
    assert [r.counter for r in registrations] == [1_764_600_000_001, 1_764_600_000_002]
    assert all(r.candidates == HUB_LOCAL and r.identifier == HUB_ID for r in registrations)


def test_a_tiny_broker_interval_is_raised_to_the_minimum() -> None:
    agent = _agent()
    agent.enrolled(HUB_ID, REGISTRATION_KEY, 1, 0.0)
    agent.datagrams_to_send()
    # The next registration comes min_interval ± the jitter later, not 1 ms later.
    due = agent.get_timer()
    assert due is not None and 0.8 <= due <= 1.2
    agent.handle_timer(0.79)
    assert agent.datagrams_to_send() == []


def test_enrollment_for_another_identifier_or_with_a_bad_key_is_ignored() -> None:
    agent = _agent()
    agent.start(0.0)
    agent.control_received(1, Enrolled(OTHER_ID, REGISTRATION_KEY, 20_000), 0.0)
    agent.enrolled(HUB_ID, b"short", 20_000, 0.0)
    assert agent.enrolled_key is None and agent.state is LinkState.ENROLLING
    assert agent.counters.ignored == {"wrong-id": 1, "bad-registration-key": 1}


def test_a_lost_enrollment_connection_is_retried() -> None:
    agent = _agent()
    agent.start(0.0)
    assert _events(agent) == [OpenEnrollConnection(1)]
    agent.channel_closed(1, 0.5)
    assert agent.counters.ignored["enroll-failed"] == 1
    assert agent.get_timer() == 0.5 + agent.config.enroll_retry
    agent.handle_timer(agent.config.enroll_retry + 0.5)
    assert _events(agent) == [OpenEnrollConnection(2)]
    assert [decode_control(body).op for _, body in agent.records_to_send()] == [
        "enroll",
        "enroll",
    ]


def test_messages_on_unknown_channels_and_for_other_sessions_are_counted() -> None:
    lab = Lab()
    lab.agent.start(lab.now)
    lab.run(1.0)
    lab.agent.control_received(99, Start(42, (), 0, 0), lab.now)
    assert lab.agent.counters.ignored["unknown-session"] == 1
    lab.agent.datagram_received(lab.wake_datagram(1), ("192.0.2.1", 3478), lab.now)
    [opened] = [e for e in _events(lab.agent) if not isinstance(e, CloseConnection)]
    channel = opened.channel  # type: ignore[attr-defined]
    sealed = seal_request(HUB_KEY.public_key(), HUB_ID, ISSUER_LOCAL, "owner", "pw")
    lab.agent.control_received(channel, Start(42, (), 0, 0), lab.now)
    assert lab.agent.counters.ignored["unknown-session"] == 2
    lab.agent.control_received(channel, Request(42, ISSUER_LOCAL, sealed), lab.now)
    # A start before the password was checked is not in the table.
    lab.agent.control_received(channel, Start(42, (), 0, 0), lab.now)
    assert lab.agent.counters.ignored["unexpected-message"] == 1
    lab.agent.control_received(channel, RelayOpen(7), lab.now)
    assert lab.agent.counters.ignored["unknown-session"] == 3


def test_answering_one_password_check_twice_is_our_bug() -> None:
    lab = Lab()
    lab.agent.start(lab.now)
    lab.run(1.0)
    lab.agent.datagram_received(lab.wake_datagram(1), ("192.0.2.1", 3478), lab.now)
    channel = next(e.channel for e in _events(lab.agent) if hasattr(e, "token"))  # type: ignore[attr-defined]
    sealed = seal_request(HUB_KEY.public_key(), HUB_ID, ISSUER_LOCAL, "owner", "pw")
    lab.agent.control_received(channel, Request(42, ISSUER_LOCAL, sealed), lab.now)
    lab.agent.password_checked(42, True, lab.now)
    with pytest.raises(LocalProtocolError):
        lab.agent.password_checked(42, True, lab.now)
    # A result for a session that already ended is only counted (the KDF ran late).
    lab.agent.channel_closed(channel, lab.now)
    lab.agent.password_checked(42, False, lab.now)
    assert lab.agent.counters.ignored["unknown-session"] == 1


def test_a_session_names_its_present_channel_until_it_ends() -> None:
    # The adapter sends a session's relay records on this channel (docs/broker.md).
    lab = Lab()
    lab.agent.start(lab.now)
    lab.run(1.0)
    lab.agent.datagram_received(lab.wake_datagram(1), ("192.0.2.1", 3478), lab.now)
    channel = next(e.channel for e in _events(lab.agent) if hasattr(e, "token"))  # type: ignore[attr-defined]
    assert lab.agent.channel_of(42) is None
    sealed = seal_request(HUB_KEY.public_key(), HUB_ID, ISSUER_LOCAL, "owner", "pw")
    lab.agent.control_received(channel, Request(42, ISSUER_LOCAL, sealed), lab.now)
    assert lab.agent.channel_of(42) == channel
    lab.agent.channel_closed(channel, lab.now)
    assert lab.agent.channel_of(42) is None


def test_stop_closes_every_connection_and_ends_every_session() -> None:
    lab = Lab()
    lab.agent.start(lab.now)
    lab.run(1.0)
    lab.agent.datagram_received(lab.wake_datagram(1), ("192.0.2.1", 3478), lab.now)
    _events(lab.agent)
    lab.agent.stop(lab.now)
    events = _events(lab.agent)
    assert any(isinstance(e, CloseConnection) for e in events)
    assert lab.agent.live_sessions == 0 and lab.agent.get_timer() is None
    assert lab.agent.state is LinkState.STOPPED


@pytest.mark.parametrize(
    "config",
    [
        {"interval": 0},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"missed_racks": 0},
        {"rack_timeout": float("nan")},
        {"max_sessions": 0},
    ],
)
def test_agent_config_is_validated(config: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        AgentConfig(**config)  # type: ignore[arg-type]


@pytest.mark.parametrize("config", [{"lookup_timeout": 0}, {"attempts": 0}, {"relay_timeout": -1}])
def test_issuer_config_is_validated(config: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        IssuerConfig(**config)  # type: ignore[arg-type]


def _issuer() -> IssuerCore:
    issuer = IssuerCore(IssuerConfig(), HUB_ID, "owner", "pw", local_candidates=ISSUER_LOCAL)
    issuer.start(0.0)
    return issuer


def test_a_lookup_result_for_another_hub_fails_without_sealing() -> None:
    issuer = _issuer()
    issuer.control_received(LookupResult(OTHER_ID, CERTIFICATE), 0.1)
    failed = [e for e in _events(issuer) if isinstance(e, Failed)]
    assert len(failed) == 1 and failed[0].reason is Reason.WRONG_ID
    assert [decode_control(body).op for body in issuer.records_to_send()] == ["lookup"]


def test_a_certificate_of_another_curve_fails_with_bad_key() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    issuer = _issuer()
    issuer.stun_result(None, 0.05)
    issuer.control_received(LookupResult(HUB_ID, CERTIFICATE), 0.1)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    issuer.certificate_verified(CERTIFICATE, p384, 0.2)  # type: ignore[arg-type]
    assert issuer.state is IssuerState.FAILED
    assert isinstance(issuer.outcome, Failed) and issuer.outcome.reason is Reason.BAD_KEY


def test_verification_results_never_asked_are_our_bug_and_late_ones_are_ignored() -> None:
    issuer = _issuer()
    with pytest.raises(LocalProtocolError):
        issuer.certificate_verified(CERTIFICATE, HUB_KEY.public_key(), 0.1)
    with pytest.raises(LocalProtocolError):
        issuer.certificate_refused(Reason.CHAIN, 0.1)
    issuer.control_received(LookupResult(HUB_ID, CERTIFICATE), 0.1)
    assert any(isinstance(e, VerifyCertificate) for e in _events(issuer))
    issuer.connection_lost(0.2)
    issuer.certificate_verified(CERTIFICATE, HUB_KEY.public_key(), 0.3)
    assert issuer.state is IssuerState.FAILED
    assert isinstance(issuer.outcome, Failed) and issuer.outcome.reason is Reason.DISCONNECTED
    assert [decode_control(body).op for body in issuer.records_to_send()] == ["lookup"]


def test_a_start_for_another_session_is_ignored() -> None:
    issuer = _issuer()
    issuer.stun_result(None, 0.05)
    issuer.control_received(LookupResult(HUB_ID, CERTIFICATE), 0.1)
    issuer.certificate_verified(CERTIFICATE, HUB_KEY.public_key(), 0.2)
    issuer.control_received(Connecting(42), 0.3)
    issuer.control_received(Start(7, (), 0, 1000), 0.4)
    assert issuer.state is IssuerState.WAKING
    assert issuer.counters.ignored["unknown-session"] == 1


def test_merge_candidates_keeps_order_drops_repeats_and_caps_at_sixteen() -> None:
    from roost.rendezvous.messages import Candidate

    many = tuple(Candidate.parse(f"10.0.0.{i}:1000") for i in range(1, 21))
    merged = merge_candidates(many[:2], many[:1], many)
    assert merged[:2] == many[:2] and len(merged) == 16 and len(set(merged)) == 16
    with pytest.raises(LocalProtocolError):
        merge_candidates(("10.0.0.1:1",))  # type: ignore[arg-type]


def _acknowledge(agent: AgentCore, port: int, now: float, address: str = "203.0.113.7") -> None:
    """Answer the agent's latest registration as the broker would, seen from ``port``."""
    (datagram,) = agent.datagrams_to_send()
    counter = verify_registration(decode_registration(datagram), REGISTRATION_KEY).counter
    ack = Ack(counter, Candidate(ipaddress.ip_address(address), port))
    agent.datagram_received(encode_ack(ack), ("198.51.100.1", 3478), now)


def test_a_nat_that_forgets_the_mapping_between_registrations_shortens_the_interval() -> None:
    agent = _agent()
    agent.start(0.0)
    agent.enrolled(HUB_ID, REGISTRATION_KEY, 20_000, 0.0)
    _acknowledge(agent, 40_000, 0.0)
    now = 0.0
    gaps = []
    # Each registration comes out of the NAT on a new port: its mapping did not last the
    # interval, so the interval halves at each sign of it, down to the configured floor.
    for port in (40_001, 40_002, 40_003, 40_004):
        # The RACK cleared its deadline: the next timer is the next registration.
        due = agent.get_timer()
        assert due is not None
        gaps.append(due - now)
        now = due
        agent.handle_timer(now)
        _acknowledge(agent, port, now)
    assert agent.counters.remapped == 4
    assert agent.counters.adapted == 2  # 20 s → 10 s → 5 s, then the floor
    assert gaps[-1] <= 5.0 * 1.2
    # A new public address is a network change, not a short NAT timeout: no adaptation.
    agent.handle_timer(now + 10.0)
    _acknowledge(agent, 40_004, now + 10.0, address="203.0.113.99")
    assert agent.counters.remapped == 4
