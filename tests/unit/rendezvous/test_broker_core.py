"""BrokerCore rules one by one, in memory under a fake clock (PROTOCOL.md section 5)."""

from __future__ import annotations

import dataclasses

from roost.rendezvous import control, stun
from roost.rendezvous.broker_events import BrokerCoreConfig, SessionState
from roost.rendezvous.messages import Candidate, Registration, encode_registration
from tests.unit.rendezvous.broker_harness import (
    CERT,
    HUB,
    ISSUER_ADDR,
    NAT_ADDR,
    SEALED,
    Harness,
    ident,
)

ISSUER_CANDIDATES = (Candidate.of("198.51.100.9", 50000), Candidate.of("10.0.0.5", 50000))


def registered(config: BrokerCoreConfig | None = None) -> tuple[Harness, int, bytes]:
    h = Harness(config or BrokerCoreConfig())
    channel, key = h.enroll()
    assert h.register(key, 1)
    return h, channel, key


# ---------------------------------------------------------------------------- STUN


def test_stun_answer_names_the_source_and_is_never_larger_than_the_request() -> None:
    h = Harness()
    request = h.stun_request()
    (answer,) = h.udp(request, ISSUER_ADDR)
    assert len(answer) <= len(request)
    assert stun.parse_binding_response(answer, bytes(range(12))) == Candidate.of(*ISSUER_ADDR)
    assert h.core.counters.stun_answers == 1


def test_a_bare_stun_request_smaller_than_the_answer_is_refused() -> None:
    h = Harness()
    bare = stun.encode_stun(stun.StunMessage(stun.BINDING_REQUEST, bytes(12)))
    assert len(bare) == 20
    assert h.udp(bare, ISSUER_ADDR) == []
    assert h.refusals("reply-too-large") == 1
    # An operator may allow twice the request's size, which standard clients need.
    loose = Harness(BrokerCoreConfig(stun_amplification=2.0))
    (answer,) = loose.udp(bare, ISSUER_ADDR)
    assert len(answer) == 40 <= 2 * len(bare)


def test_stun_that_is_not_a_binding_request_is_refused() -> None:
    h = Harness()
    response = stun.encode_stun(stun.StunMessage(stun.BINDING_SUCCESS, bytes(12)))
    assert h.udp(response + bytes(40)) == []  # trailing bytes: malformed
    assert h.refusals("trailing-bytes") == 1
    padded = stun.encode_stun(
        stun.StunMessage(
            stun.BINDING_SUCCESS,
            bytes(12),
            (stun.StunAttribute(stun.SOFTWARE, bytes(40)),),
        )
    )
    assert h.udp(padded) == []
    assert h.refusals("not-binding") == 1


# ---------------------------------------------------------------------------- RREG


def test_registration_is_acknowledged_with_the_source_address() -> None:
    h = Harness()
    _, key = h.enroll()
    datagram = encode_registration(Registration(HUB, 7, ()), key)
    (ack,) = h.udp(datagram, NAT_ADDR)
    assert len(ack) <= len(datagram)
    assert h.ack(ack) == (7, Candidate.of(*NAT_ADDR))
    entry = h.core.registry.get(HUB)
    assert entry is not None and entry.reflexive == Candidate.of(*NAT_ADDR)
    assert h.core.counters.registrations == 1


def test_registration_refusals_are_counted_and_unanswered() -> None:
    h = Harness()
    assert h.register(bytes(32), 1) == []  # not enrolled
    assert h.refusals("not-enrolled") == 1
    _, key = h.enroll()
    assert h.register(bytes(32), 1) == []  # wrong key: forged tag
    assert h.refusals("bad-tag") == 1
    assert h.register(key, 5)
    assert h.register(key, 5) == []  # replay
    assert h.register(key, 4) == []
    assert h.refusals("counter-not-increasing") == 2
    assert h.udp(b"RACK" + bytes(20)) == []
    assert h.udp(b"XXXX") == []
    assert h.refusals("bad-magic") == 2
    assert h.udp(b"RREG" + bytes(2000)) == []
    assert h.refusals("oversized") == 1
    assert h.udp(b"RREG\x01") == []
    assert h.refusals("truncated") == 1
    assert h.core.counters.registrations == 1


def test_a_flood_from_one_source_is_shed_before_any_work_and_logged_once() -> None:
    config = BrokerCoreConfig(udp_source_rate=1.0, udp_source_burst=5, log_interval_s=60.0)
    h = Harness(config)
    answers = sum(len(h.udp(h.stun_request(), ISSUER_ADDR)) for _ in range(50))
    assert answers == 5
    assert h.refusals("rate-limited") == 45
    assert [e.reason for e in h.logged()] == ["rate-limited"]
    # Another source is not affected.
    assert h.udp(h.stun_request(), ("198.51.100.10", 1))
    h.advance(61.0)
    answered = sum(len(h.udp(h.stun_request(), ISSUER_ADDR)) for _ in range(7))
    assert answered == 5 and len(h.logged()) == 2
    assert h.logged()[-1].suppressed == 44  # silent since the first line


def test_the_global_udp_bucket_bounds_every_source_together() -> None:
    h = Harness(BrokerCoreConfig(global_udp_rate=1.0, global_udp_burst=3))
    answered = sum(len(h.udp(h.stun_request(), (f"198.51.100.{n}", 9))) for n in range(10))
    assert answered == 3 and h.refusals("rate-limited") == 7


# ---------------------------------------------------------------------------- enroll


def test_enroll_needs_a_verified_equipment_identity() -> None:
    h = Harness()
    issuer = h.channel(None)
    (error,) = h.send(issuer, "enroll")
    assert error == control.Error(control.Reason.NOT_EQUIPMENT)
    assert h.refusals("not-equipment") == 1
    channel = h.channel(HUB)
    (enrolled,) = h.send(channel, "enroll")
    assert enrolled.identifier == HUB and len(enrolled.key) == 32
    assert enrolled.interval_ms == 20_000
    (again,) = h.send(channel, "enroll")
    assert again.key != enrolled.key  # a re-enrollment replaces the key
    assert h.core.registry.key_of(HUB) == again.key


def test_keepalive_is_echoed_on_an_enrolled_connection_only() -> None:
    h = Harness()
    channel, _ = h.enroll()
    assert h.send(channel, "keepalive") == [control.Keepalive()]
    other = h.channel(ident(2))
    assert h.send(other, "keepalive") == [control.Error(control.Reason.NOT_ENROLLED)]


# ---------------------------------------------------------------------------- lookup


def test_lookup_answers_only_for_an_enrolled_live_target() -> None:
    h, _, _key = registered()
    issuer = h.channel(None)
    assert h.send(issuer, "lookup", target=HUB) == [control.LookupResult(HUB, CERT)]
    assert h.send(issuer, "lookup", target=ident(9)) == [
        control.Error(control.Reason.UNKNOWN_TARGET)
    ]
    h.core.close_channel(1, h.now)  # the enrolling connection goes away
    h.now += 61.0  # past TTL, before the registry's timer forgets the entry
    fresh = h.channel(None, source="198.51.100.77")
    assert h.send(fresh, "lookup", target=HUB) == [control.Error(control.Reason.TARGET_OFFLINE)]
    assert h.refusals("unknown-target") == 1 and h.refusals("target-offline") == 1
    h.advance(0.0)  # the timer runs: forgotten, so now unknown
    assert h.send(fresh, "lookup", target=HUB) == [control.Error(control.Reason.UNKNOWN_TARGET)]


def test_per_target_rate_limit_protects_a_hub_from_wake_ups() -> None:
    h, _, _key = registered(BrokerCoreConfig(target_rate=0.01, target_burst=2))
    sent = []
    for n in range(5):
        issuer = h.channel(None, source=f"198.51.100.{n}")
        sent += h.send(issuer, "connect", target=HUB, candidates=(), sealed=SEALED)
    # The enrollment spent one token of the hub's bucket, one connect the other.
    assert [type(m).__name__ for m in sent].count("Connecting") == 1
    assert h.refusals("rate-limited") == 4
    assert h.core.counters.wakes_sent == 1


def test_malformed_control_body_is_answered_counted_and_closes_the_channel() -> None:
    h = Harness()
    issuer = h.channel(None)
    h.send_body(issuer, b'{"op":"lookup","target":"nope"}')
    assert h.took(issuer) == [control.Error(control.Reason.BAD_IDENTIFIER)]
    assert issuer in h.closed() and h.core.channels == 0
    other = h.channel(None)
    h.send_body(other, b"{not json")
    assert h.refusals("bad-control") == 1 and other in h.closed()


def test_broker_ops_sent_by_a_client_are_unexpected() -> None:
    h = Harness()
    issuer = h.channel(None)
    reply = h.send(issuer, "connecting", session=5)
    assert reply == [control.Error(control.Reason.UNEXPECTED_MESSAGE, 5)]


def test_tls_source_rate_limit_runs_before_the_parse() -> None:
    h = Harness(BrokerCoreConfig(tls_source_rate=0.01, tls_source_burst=2))
    issuer = h.channel(None)
    for _ in range(4):
        h.send_body(issuer, b"{garbage")
        if issuer in h.closed():
            issuer = h.channel(None)
    assert h.refusals("bad-control") == 2 and h.refusals("rate-limited") == 2


# ---------------------------------------------------------------------------- wake-ups


def test_connect_wakes_the_target_by_rwak_every_500ms_until_5s() -> None:
    h, _, key = registered()
    h.core.close_channel(1, h.now)  # no held connection: UDP only
    issuer = h.channel(None)
    (connecting,) = h.send(issuer, "connect", target=HUB, candidates=(), sealed=SEALED)
    assert isinstance(connecting, control.Connecting)
    first = h.now
    h.advance(6.0)
    # The first went out with connecting, then one every 500 ms up to 5 s.
    wakes = h.wakes_to(NAT_ADDR, key)
    assert len(wakes) == 10
    counters = [c for c, _ in wakes]
    assert counters == sorted(set(counters)) and counters[0] > 1000
    assert len({t for _, t in wakes}) == 1
    assert h.now - first >= 5.0
    assert h.took(issuer)[-1] == control.Error(control.Reason.WAKE_TIMEOUT, connecting.session)
    assert h.core.sessions == 0 and h.refusals("wake-timeout") == 1


def test_a_held_connection_gets_a_wake_push_when_udp_is_stale() -> None:
    h = Harness()
    held, _key = h.enroll()
    h.send(held, "keepalive")
    issuer = h.channel(None)
    h.send(issuer, "connect", target=HUB, candidates=(), sealed=SEALED)
    (push,) = h.took(held)
    assert isinstance(push, control.WakePush) and len(push.token) == 16
    assert h.core.counters.wake_pushes == 1 and h.core.counters.wakes_sent == 0


def test_a_live_target_without_any_wake_path_is_offline() -> None:
    h = Harness()
    held, _ = h.enroll()
    h.core.close_channel(held, h.now)
    issuer = h.channel(None)
    reply = h.send(issuer, "connect", target=HUB, candidates=(), sealed=SEALED)
    assert reply == [control.Error(control.Reason.TARGET_OFFLINE)]


def test_one_connection_request_per_issuer_connection_and_a_global_cap() -> None:
    h, _, _ = registered(BrokerCoreConfig(max_sessions=1, target_burst=10))
    issuer = h.channel(None)
    h.send(issuer, "connect", target=HUB, candidates=(), sealed=SEALED)
    again = h.send(issuer, "connect", target=HUB, candidates=(), sealed=SEALED)
    assert again == [control.Error(control.Reason.SESSION_LIMIT)]
    other = h.channel(None, source="198.51.100.50")
    assert h.send(other, "connect", target=HUB, candidates=(), sealed=SEALED) == [
        control.Error(control.Reason.SESSION_LIMIT)
    ]
    assert h.core.counters.connects == 1


# ---------------------------------------------------------------------------- present


def connect(h: Harness, key: bytes) -> tuple[int, int, bytes]:
    issuer = h.channel(None)
    h.datagrams.clear()
    (connecting,) = h.send(
        issuer, "connect", target=HUB, candidates=ISSUER_CANDIDATES, sealed=SEALED
    )
    pushes = [m for _, m in h.records if isinstance(m, control.WakePush)]
    token = pushes[0].token if pushes else h.wakes_to(NAT_ADDR, key)[0][1]
    return issuer, connecting.session, token


def test_present_checks_identity_token_and_one_time_use() -> None:
    h, _, key = registered()
    _issuer, session, token = connect(h, key)
    anonymous = h.channel(None)
    assert h.send(anonymous, "present", token=token) == [
        control.Error(control.Reason.NOT_EQUIPMENT)
    ]
    stranger = h.channel(ident(5))
    assert h.send(stranger, "present", token=token) == [control.Error(control.Reason.WRONG_ID)]
    target = h.channel(HUB)
    assert h.send(target, "present", token=bytes(16)) == [control.Error(control.Reason.BAD_TOKEN)]
    (request,) = h.send(target, "present", token=token)
    assert request == control.Request(session, ISSUER_CANDIDATES, SEALED)
    second = h.channel(HUB)
    assert h.send(second, "present", token=token) == [control.Error(control.Reason.TOKEN_REUSED)]
    for reason in ("not-equipment", "wrong-id", "bad-token", "token-reused"):
        assert h.refusals(reason) == 1
    # Presence stopped the resends.
    h.datagrams.clear()
    h.advance(2.0)
    assert h.wakes_to(NAT_ADDR, key) == []


def test_accept_starts_both_sides_with_the_other_sides_candidates() -> None:
    h, _, key = registered()
    issuer, session, token = connect(h, key)
    target = h.channel(HUB)
    h.send(target, "present", token=token)
    local = (Candidate.of("192.168.1.20", 40001),)
    h.send(target, "accept", session=session, candidates=local)
    (to_issuer,) = h.took(issuer)
    (to_target,) = h.took(target)
    assert to_issuer == control.Start(session, (Candidate.of(*NAT_ADDR), *local), 200, 3000)
    assert to_target == control.Start(session, ISSUER_CANDIDATES, 200, 3000)
    assert h.core.session_state(session) is SessionState.STARTED
    # Only the target answers, once.
    assert h.send(issuer, "accept", session=session, candidates=()) == [
        control.Error(control.Reason.UNKNOWN_SESSION, session)
    ]
    assert h.send(target, "accept", session=session, candidates=()) == [
        control.Error(control.Reason.UNEXPECTED_MESSAGE, session)
    ]


def test_reject_is_forwarded_to_the_issuer_and_ends_the_session() -> None:
    h, _, key = registered()
    issuer, session, token = connect(h, key)
    target = h.channel(HUB)
    h.send(target, "present", token=token)
    h.send(target, "reject", session=session, reason=control.Reason.BAD_PASSWORD)
    assert h.took(issuer) == [control.Reject(session, control.Reason.BAD_PASSWORD)]
    assert h.core.sessions == 0 and h.core.counters.rejects == 1


def test_a_target_that_never_answers_times_out() -> None:
    h, _, key = registered()
    issuer, session, token = connect(h, key)
    target = h.channel(HUB)
    h.send(target, "present", token=token)
    h.records.clear()
    h.advance(10.5)
    assert control.Error(control.Reason.ANSWER_TIMEOUT, session) in h.took(issuer)
    assert h.refusals("answer-timeout") == 1


def test_issuer_disconnect_tells_the_target() -> None:
    h, _, key = registered()
    issuer, session, token = connect(h, key)
    target = h.channel(HUB)
    h.send(target, "present", token=token)
    h.records.clear()
    h.core.close_channel(issuer, h.now)
    h.pump()
    assert h.took(target) == [control.Error(control.Reason.DISCONNECTED, session)]
    assert h.core.sessions == 0


# ---------------------------------------------------------------------------- relay


def started(config: BrokerCoreConfig | None = None) -> tuple[Harness, int, int, int]:
    h, _, key = registered(config)
    issuer, session, token = connect(h, key)
    target = h.channel(HUB)
    h.send(target, "present", token=token)
    h.send(target, "accept", session=session, candidates=())
    return h, issuer, target, session


def test_relay_open_then_records_both_ways_within_the_byte_limit() -> None:
    h, issuer, target, session = started(BrokerCoreConfig(relay_max_bytes=3000))
    h.send(issuer, "relay-open", session=session)
    opened = control.RelayOpen(session, 3000, 600_000)
    assert h.took(issuer) == [opened] and h.took(target) == [opened]
    assert h.send(target, "relay-open", session=session) == []  # both asked: one open
    one = control.encode_relay(control.RelayRecord(session, b"a" * 1000))
    h.send_body(issuer, one)
    assert h.took(target) == [control.RelayRecord(session, b"a" * 1000)]
    h.send_body(target, control.encode_relay(control.RelayRecord(session, b"b" * 1000)))
    assert h.took(issuer) == [control.RelayRecord(session, b"b" * 1000)]
    assert h.core.counters.relayed_bytes == 2000
    h.send_body(issuer, one)
    h.send_body(issuer, one)  # 4000 > 3000
    assert h.took(issuer) == [control.RelayClose(session, control.Reason.RELAY_LIMIT)]
    assert h.took(target) == [control.RelayClose(session, control.Reason.RELAY_LIMIT)]
    assert h.core.relaying == 0 and h.refusals("relay-limit") == 1


def test_relay_records_outside_a_relay_are_dropped_and_counted() -> None:
    h, issuer, target, session = started()
    h.send_body(issuer, control.encode_relay(control.RelayRecord(session, b"x")))
    assert h.took(target) == []
    h.send_body(issuer, control.encode_relay(control.RelayRecord(session + 1, b"x")))
    assert h.refusals("unknown-session") == 2
    h.send_body(issuer, b"\x02junk")
    assert h.refusals("unknown-type") == 1


def test_relay_time_limit_closes_the_relay() -> None:
    h, issuer, _target, session = started(BrokerCoreConfig(relay_max_s=5.0, channel_idle_s=60))
    h.send(issuer, "relay-open", session=session)
    h.records.clear()
    h.advance(5.1)
    assert h.took(issuer) == [control.RelayClose(session, control.Reason.RELAY_EXPIRED)]


def test_relayed_sessions_per_hub_are_capped() -> None:
    config = BrokerCoreConfig(relay_sessions_per_hub=1, target_burst=20)
    h, issuer, target, session = started(config)
    h.send(issuer, "relay-open", session=session)
    key = h.core.registry.key_of(HUB)
    assert key is not None
    issuer2, session2, token2 = connect(h, key)
    target2 = h.channel(HUB)
    h.send(target2, "present", token=token2)
    h.send(target2, "accept", session=session2, candidates=())
    assert h.send(issuer2, "relay-open", session=session2) == [
        control.Error(control.Reason.RELAY_LIMIT, session2)
    ]
    # The first relay closes: the slot is free again.
    h.send(issuer, "relay-close", session=session, reason=control.Reason.CLOSED)
    assert h.took(target) == [control.RelayClose(session, control.Reason.CLOSED)]
    assert isinstance(h.send(issuer2, "relay-open", session=session2)[0], control.RelayOpen)


# ---------------------------------------------------------------------------- timers


def test_idle_channels_close_and_held_ones_last_a_ttl() -> None:
    h = Harness()
    held, _ = h.enroll()
    idle = h.channel(None)
    h.advance(31.0)
    assert h.closed() == [idle]
    h.advance(30.0)
    assert held in h.closed()
    assert h.refusals("idle-timeout") == 0  # closing idle connections is not a refusal


def test_the_registry_expires_under_the_core_timer() -> None:
    h, held, _key = registered()
    h.core.close_channel(held, h.now)
    assert len(h.core.registry) == 1
    h.advance(61.0)
    assert len(h.core.registry) == 0 and h.core.counters.expired == 1
    assert h.core.get_timer() is None


def test_config_rejects_nonsense() -> None:
    for bad in ({"interval_s": 0}, {"max_sessions": 0}, {"deadline_ms": 0}):
        try:
            dataclasses.replace(BrokerCoreConfig(), **bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")


def test_start_in_ms_takes_half_of_each_sides_round_trip_off() -> None:
    h, _, key = registered()
    issuer, session, token = connect(h, key)
    target = h.channel(HUB)
    h.send(target, "present", token=token)
    h.core.channel_rtt(issuer, 100)
    h.core.channel_rtt(target, 500)
    h.send(target, "accept", session=session, candidates=())
    (to_issuer,) = h.took(issuer)
    (to_target,) = h.took(target)
    assert (to_issuer.start_in_ms, to_target.start_in_ms) == (150, 0)


def _start_delays(issuer_rtt: int, target_rtt: int) -> tuple[int, int]:
    h, _, key = registered()
    issuer, session, token = connect(h, key)
    target = h.channel(HUB)
    h.send(target, "present", token=token)
    h.core.channel_rtt(issuer, issuer_rtt)
    h.core.channel_rtt(target, target_rtt)
    h.send(target, "accept", session=session, candidates=())
    (to_issuer,) = h.took(issuer)
    (to_target,) = h.took(target)
    return to_issuer.start_in_ms, to_target.start_in_ms


def test_the_common_start_follows_the_measured_round_trips() -> None:
    margin = BrokerCoreConfig().start_margin_ms
    # Issuer 40 ms away, hub 20 ms: the start reaches the issuer 20 ms after it leaves,
    # the hub 10 ms after; both must probe at 20 + margin ms.
    issuer_in, target_in = _start_delays(40, 20)
    assert issuer_in + 20 == target_in + 10 == 20 + margin
    # Symmetric and short: far below the fixed bound.
    assert _start_delays(2, 2) == (margin, margin)


def test_the_common_start_is_bounded_and_falls_back_when_a_round_trip_is_unknown() -> None:
    bound = BrokerCoreConfig().start_delay_ms
    # Without the kernel's estimate for one side the fixed delay is all there is.
    assert _start_delays(0, 20) == (bound, bound - 10)
    # A far side never pushes the common start past the bound.
    assert _start_delays(30, 1000) == (bound - 15, 0)
