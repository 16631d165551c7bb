"""The device's connection manager core (PROTOCOL.md section 4) under a fake clock.

No sockets and no sleeps: the test plays the adapter, answering each action the manager
gives with the outcome it wants, and moves the clock by hand.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.device.daemon import DeviceCounters
from roost.device.manager import (
    Action,
    Close,
    Connect,
    ConnectionManager,
    Drain,
    FollowRedirect,
    Idle,
    ManagerConfig,
    State,
    Stream,
    Wait,
)
from roost.errors import ConfigError, LocalProtocolError
from roost.hcsp.documents import Endpoint, HubAddress, Redirect
from roost.hcsp.election import rank_of
from roost.hcsp.events import LiveHub

DEVICE = "ab:" + "d" * 22
BOOTSTRAP = ("127.0.0.1", 17400)
BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 5.0
MIN_DWELL = 2.0


def hub_id(n: int) -> str:
    return f"hcsp:{n:022d}"


def live(n: int, *, connected: int = 0, max_clients: int = 8) -> LiveHub:
    identifier = hub_id(n)
    return LiveHub(
        identifier=identifier,
        endpoint=Endpoint("127.0.0.1", 17320 + n),
        features=("hcsp",),
        connected=connected,
        max_clients=max_clients,
        rank=rank_of(("hcsp",), max_clients, identifier),
        first_heard=0.0,
        last_seen=0.0,
    )


def connect_to(hub: LiveHub) -> Connect:
    return Connect(hub.endpoint.host, hub.endpoint.port, hub.identifier)


def redirect_to(hub: LiveHub, sender: str) -> Redirect:
    return Redirect(sender, DEVICE, HubAddress(hub.identifier, hub.endpoint), ("hcsp",))


def config(**changes: object) -> ManagerConfig:
    fields: dict[str, object] = {
        "backoff_initial": BACKOFF_INITIAL,
        "backoff_max": BACKOFF_MAX,
        "min_dwell": MIN_DWELL,
        "failed_hold": BACKOFF_MAX,
        "lost_hold": BACKOFF_INITIAL,
        "hubs": (BOOTSTRAP,),
    }
    fields.update(changes)
    return ManagerConfig(**fields)  # type: ignore[arg-type]


@dataclass
class FakeClock:
    now: float = 100.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def manager(seed: int = 7, **changes: object) -> ConnectionManager:
    return ConnectionManager(config(**changes), random.Random(seed))


def fail_round(m: ConnectionManager, clock: FakeClock) -> list[Connect]:
    """Answer every Connect of the round with a failure; returns what was tried."""
    tried: list[Connect] = []
    action = m.next_action(clock.now)
    while isinstance(action, Connect):
        tried.append(action)
        m.connect_failed(action.expected_id, "refused", clock.now)
        action = m.next_action(clock.now)
    assert isinstance(action, Wait)
    assert m.state is State.SEARCHING
    return tried


def streaming_on(m: ConnectionManager, clock: FakeClock, hub: LiveHub) -> None:
    m.hubs_changed([hub], clock.now)
    assert m.next_action(clock.now) == connect_to(hub)
    m.connect_succeeded(hub.identifier, clock.now)
    assert m.next_action(clock.now) == Stream(hub.identifier)


# --------------------------------------------------------------------------- candidates


def test_live_hubs_in_the_given_order_then_bootstrap_hubs_without_an_identifier() -> None:
    m, clock = manager(), FakeClock()
    a, b, c = live(1), live(2), live(3)
    m.hubs_changed([b, a, c], clock.now)
    tried = fail_round(m, clock)
    assert tried == [connect_to(b), connect_to(a), connect_to(c), Connect(*BOOTSTRAP, None)]
    assert m.counters.connect_failures["refused"] == 4


def test_a_hub_with_no_free_capacity_is_skipped() -> None:
    m, clock = manager(), FakeClock()
    full, room = live(1, connected=8, max_clients=8), live(2, connected=7, max_clients=8)
    m.hubs_changed([full, room], clock.now)
    assert fail_round(m, clock) == [connect_to(room), Connect(*BOOTSTRAP, None)]


def test_no_candidates_and_no_bootstrap_waits_the_backoff() -> None:
    m, clock = manager(hubs=()), FakeClock()
    assert m.next_action(clock.now) == Wait(clock.now + BACKOFF_INITIAL)
    assert m.state is State.SEARCHING


def test_failed_candidate_is_skipped_until_its_hold_from_the_round_start_passes() -> None:
    m, clock = manager(), FakeClock()
    a, b = live(1), live(2)
    m.hubs_changed([a, b], clock.now)
    round_started = clock.now
    assert m.next_action(clock.now) == connect_to(a)
    clock.advance(1.0)  # the attempt took a while
    m.connect_failed(a.identifier, "timeout", clock.now)
    assert m.next_action(clock.now) == connect_to(b)
    clock.advance(1.0)
    m.connect_failed(b.identifier, "timeout", clock.now)
    assert m.failed_until[a.identifier] == round_started + BACKOFF_MAX
    assert m.failed_until[b.identifier] == round_started + BACKOFF_MAX
    assert m.next_action(clock.now) == Connect(*BOOTSTRAP, None)
    m.connect_failed(None, "refused", clock.now)
    # Rounds inside the hold try the bootstrap hub only.
    while clock.now < round_started + BACKOFF_MAX:
        wait = m.next_action(clock.now)
        assert isinstance(wait, Wait)
        clock.now = wait.until
        if clock.now >= round_started + BACKOFF_MAX:
            break
        assert fail_round(m, clock) == [Connect(*BOOTSTRAP, None)]
    # Once the hold passed, both are candidates again, still best first.
    assert m.next_action(clock.now) == connect_to(a)
    assert dict(m.failed_until) == {}


# ------------------------------------------------------------------------------ back-off


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    m, clock = manager(seed=2026), FakeClock()
    previous = BACKOFF_INITIAL
    waits = []
    for _ in range(12):
        fail_round(m, clock)
        wait = m.next_action(clock.now)
        assert isinstance(wait, Wait)
        waits.append(wait.until - clock.now)
        clock.now = wait.until
        assert m.next_action(clock.now) == Connect(*BOOTSTRAP, None)
        grown = min(BACKOFF_MAX, previous * 2)
        assert grown * 0.8 <= m.backoff <= grown * 1.2
        previous = m.backoff
    assert waits[0] == pytest.approx(BACKOFF_INITIAL)
    assert all(w <= BACKOFF_MAX * 1.2 for w in waits)
    assert waits[-1] >= BACKOFF_MAX * 0.8
    # The jitter is real: the same growth from the cap does not land on one value.
    assert len({round(w, 9) for w in waits[-5:]}) > 1


def test_the_same_seed_gives_the_same_backoffs() -> None:
    def backoffs(seed: int) -> list[float]:
        m, clock = manager(seed=seed), FakeClock()
        seen = []
        for _ in range(6):
            fail_round(m, clock)
            wait = m.next_action(clock.now)
            assert isinstance(wait, Wait)
            clock.now = wait.until
            m.next_action(clock.now)
            seen.append(m.backoff)
            m.connect_failed(None, "refused", clock.now)
        return seen

    assert backoffs(11) == backoffs(11)
    assert backoffs(11) != backoffs(12)


def test_success_resets_the_backoff() -> None:
    m, clock = manager(), FakeClock()
    for _ in range(4):
        fail_round(m, clock)
        wait = m.next_action(clock.now)
        assert isinstance(wait, Wait)
        clock.now = wait.until
    assert m.backoff > BACKOFF_INITIAL * 2
    assert m.next_action(clock.now) == Connect(*BOOTSTRAP, None)
    m.connect_succeeded(hub_id(9), clock.now)
    assert m.backoff == BACKOFF_INITIAL
    assert m.state is State.STREAMING and m.hub_id == hub_id(9)
    assert m.counters.connects == 1


def test_hubs_changed_wakes_a_waiting_search_early() -> None:
    m, clock = manager(hubs=()), FakeClock()
    wait = m.next_action(clock.now)
    assert isinstance(wait, Wait)
    clock.advance(BACKOFF_INITIAL / 4)
    assert m.next_action(clock.now) == wait  # nothing changed: still waiting
    hub = live(1)
    m.hubs_changed([hub], clock.now)
    assert clock.now < wait.until
    assert m.next_action(clock.now) == connect_to(hub)
    assert m.state is State.CONNECTING


def test_hubs_changed_during_a_round_does_not_shorten_the_next_wait() -> None:
    m, clock = manager(), FakeClock()
    assert m.next_action(clock.now) == Connect(*BOOTSTRAP, None)
    m.hubs_changed([live(1, connected=8, max_clients=8)], clock.now)
    m.connect_failed(None, "refused", clock.now)
    wait = m.next_action(clock.now)
    assert isinstance(wait, Wait)
    assert m.next_action(clock.now) == wait


# ---------------------------------------------------------------------------- redirects


def test_a_redirect_is_followed_no_sooner_than_the_minimum_dwell() -> None:
    m, clock = manager(), FakeClock()
    a, b = live(1), live(2)
    opened_at = clock.now
    streaming_on(m, clock, a)
    clock.advance(0.5)
    m.redirect_received(redirect_to(b, a.identifier), clock.now)
    follow = m.next_action(clock.now)
    assert follow == FollowRedirect(HubAddress(b.identifier, b.endpoint), opened_at + MIN_DWELL)
    assert m.state is State.FOLLOWING_REDIRECT and m.hub_id == a.identifier
    clock.now = opened_at + MIN_DWELL
    m.redirect_completed(clock.now)
    assert m.next_action(clock.now) == Drain(a.identifier)
    assert m.state is State.DRAINING
    assert m.next_action(clock.now) == Stream(b.identifier)
    assert m.state is State.STREAMING and m.hub_id == b.identifier
    assert m.counters.redirects_followed == 1
    # The dwell runs from when the new channel opened.
    clock.advance(0.1)
    m.redirect_received(redirect_to(a, b.identifier), clock.now)
    follow = m.next_action(clock.now)
    assert isinstance(follow, FollowRedirect)
    assert follow.not_before == opened_at + 2 * MIN_DWELL


def test_a_redirect_after_the_dwell_is_followed_at_once() -> None:
    m, clock = manager(), FakeClock()
    a, b = live(1), live(2)
    streaming_on(m, clock, a)
    clock.advance(MIN_DWELL * 3)
    m.redirect_received(redirect_to(b, a.identifier), clock.now)
    follow = m.next_action(clock.now)
    assert isinstance(follow, FollowRedirect) and follow.not_before < clock.now


def test_a_refused_redirect_keeps_the_old_channel() -> None:
    m, clock = manager(), FakeClock()
    a, b = live(1), live(2)
    streaming_on(m, clock, a)
    m.redirect_received(redirect_to(b, a.identifier), clock.now)
    assert isinstance(m.next_action(clock.now), FollowRedirect)
    m.redirect_failed("wrong-id", clock.now)
    assert m.state is State.STREAMING
    assert m.next_action(clock.now) == Stream(a.identifier)
    assert m.counters.redirects_refused["wrong-id"] == 1
    assert m.counters.redirects_followed == 0 and m.counters.failovers == 0


def test_hub_lost_while_following_fails_over_only_if_the_redirect_fails() -> None:
    m, clock = manager(), FakeClock()
    a, b = live(1), live(2)
    streaming_on(m, clock, a)
    m.redirect_received(redirect_to(b, a.identifier), clock.now)
    assert isinstance(m.next_action(clock.now), FollowRedirect)
    m.hub_lost(a.identifier, clock.now)
    assert m.state is State.FOLLOWING_REDIRECT
    m.redirect_failed("connect", clock.now)
    assert m.state is State.FAILING_OVER
    assert m.next_action(clock.now) == Close(a.identifier)
    assert m.counters.failovers == 1

    m2, clock2 = manager(), FakeClock()
    streaming_on(m2, clock2, a)
    m2.redirect_received(redirect_to(b, a.identifier), clock2.now)
    m2.next_action(clock2.now)
    m2.hub_lost(a.identifier, clock2.now)
    m2.redirect_completed(clock2.now)
    assert m2.next_action(clock2.now) == Drain(a.identifier)
    assert m2.next_action(clock2.now) == Stream(b.identifier)
    assert m2.counters.failovers == 0


# ----------------------------------------------------------------------------- failover


def test_hub_lost_fails_over_then_searches() -> None:
    m, clock = manager(hubs=()), FakeClock()
    a = live(1)
    streaming_on(m, clock, a)
    clock.advance(3.0)
    m.hub_lost(hub_id(5), clock.now)  # another hub: nothing changes
    assert m.state is State.STREAMING
    m.hub_lost(a.identifier, clock.now)
    lost_at = clock.now
    assert m.state is State.FAILING_OVER and m.state.value == "failing-over"
    assert m.hub_id is None
    assert m.counters.failovers == 1
    assert m.failed_until[a.identifier] == lost_at + BACKOFF_INITIAL
    assert m.next_action(clock.now) == Close(a.identifier)
    wait = m.next_action(clock.now)
    assert isinstance(wait, Wait)
    assert BACKOFF_INITIAL * 0.5 <= wait.until - lost_at <= BACKOFF_INITIAL * 1.5
    # Announcements do not cut the failover pause short.
    m.hubs_changed([a], clock.now)
    assert m.next_action(clock.now) == wait
    clock.now = wait.until
    action = m.next_action(clock.now)
    if clock.now < lost_at + BACKOFF_INITIAL:
        # Still inside the lost hub's hold: nothing to try, so the device searches.
        assert isinstance(action, Wait)
    else:
        assert action == connect_to(a)
        m.connect_failed(a.identifier, "refused", clock.now)
        action = m.next_action(clock.now)
        assert isinstance(action, Wait)
    assert m.state is State.SEARCHING and m.state.value == "searching"


def test_the_lost_hub_is_skipped_inside_its_hold() -> None:
    # A pause shorter than the hold: the first round after the failover must skip the hub.
    m, clock = manager(lost_hold=10.0), FakeClock()
    a, b = live(1), live(2)
    streaming_on(m, clock, a)
    m.hubs_changed([a, b], clock.now)
    m.hub_lost(a.identifier, clock.now)
    assert m.next_action(clock.now) == Close(a.identifier)
    wait = m.next_action(clock.now)
    assert isinstance(wait, Wait)
    clock.now = wait.until
    assert m.next_action(clock.now) == connect_to(b)


# ------------------------------------------------------------------------ the contract


def test_state_values_are_the_status_strings() -> None:
    assert State.STARTING.value == "starting"
    assert State.SEARCHING.value == "searching"
    assert State.STREAMING.value == "streaming"
    assert State.FAILING_OVER.value == "failing-over"
    assert manager().state is State.STARTING


def test_reports_that_answer_nothing_are_refused() -> None:
    m, clock = manager(), FakeClock()
    with pytest.raises(LocalProtocolError):
        m.connect_failed(None, "refused", clock.now)
    with pytest.raises(LocalProtocolError):
        m.redirect_completed(clock.now)
    with pytest.raises(LocalProtocolError):
        m.redirect_received(redirect_to(live(2), hub_id(1)), clock.now)
    assert m.next_action(clock.now) == Connect(*BOOTSTRAP, None)
    with pytest.raises(LocalProtocolError):
        m.connect_failed(hub_id(3), "refused", clock.now)  # not the attempt in flight
    assert m.next_action(clock.now) == Connect(*BOOTSTRAP, None)  # still in flight
    m.connect_succeeded(hub_id(1), clock.now)
    with pytest.raises(LocalProtocolError):
        m.redirect_failed("connect", clock.now)
    with pytest.raises(LocalProtocolError):
        m.connect_succeeded(hub_id(1), clock.now)


def test_a_hub_proving_another_identifier_is_refused() -> None:
    m, clock = manager(), FakeClock()
    a = live(1)
    m.hubs_changed([a], clock.now)
    assert m.next_action(clock.now) == connect_to(a)
    with pytest.raises(LocalProtocolError):
        m.connect_succeeded(hub_id(2), clock.now)


def test_after_stop_everything_is_ignored_and_the_action_is_idle() -> None:
    m, clock = manager(), FakeClock()
    streaming_on(m, clock, live(1))
    m.stopped()
    assert m.state is State.STOPPED
    m.hub_lost(hub_id(1), clock.now)
    m.connect_failed(None, "refused", clock.now)
    m.redirect_received(redirect_to(live(2), hub_id(1)), clock.now)
    assert m.next_action(clock.now) == Idle()
    assert m.counters.failovers == 0 and not m.counters.connect_failures


def test_the_daemons_counters_are_updated_in_place() -> None:
    counters = DeviceCounters()
    m = ConnectionManager(config(), random.Random(1), counters)
    clock = FakeClock()
    fail_round(m, clock)
    assert counters.connect_failures == {"refused": 1}
    streaming_on(m, clock, live(1))
    assert counters.connects == 1
    assert m.counters is counters


@pytest.mark.parametrize(
    "changes",
    [
        {"backoff_initial": -1.0},
        {"backoff_max": float("nan")},
        {"min_dwell": float("inf")},
        {"backoff_jitter": (1.2, 0.8)},
        {"failover_jitter": (0.0, 1.0)},
    ],
)
def test_invalid_configuration_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        config(**changes)


# --------------------------------------------------------------------------- properties

HUBS = [live(n, connected=n % 3, max_clients=2 + n % 2) for n in range(1, 5)]
# The adapter's faithful answers come most often, so deep states are reached; the other
# inputs arrive out of turn, and a stop is rare because nothing follows it.
OPS = (
    *["next"] * 3,
    *["answer"] * 6,
    *["advance"] * 3,
    "hubs",
    "hubs",
    "connected",
    "connect-failed",
    "redirect",
    "redirect-failed",
    "redirect-completed",
    "lost",
    "stop",
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(OPS), st.integers(0, 15), st.floats(0.0, 3.0)),
        max_size=120,
    ),
    st.randoms(use_true_random=False),
)
def test_random_inputs_raise_only_local_protocol_errors_and_honour_holds(
    steps: list[tuple[str, int, float]], rng: random.Random
) -> None:
    """Connect is never aimed at a hub inside its failed-until window.

    A redirect is exempt: the current hub names the target, as section 4 describes.
    """
    m = ConnectionManager(config(), rng)
    clock = FakeClock()
    last: Action | None = None
    for op, pick, seconds in steps:
        try:
            if op == "next" or (op == "answer" and last is None):
                last = m.next_action(clock.now)
                _check(m, last, clock.now)
            elif op == "answer":
                _answer(m, last, pick, clock.now)
                last = None
            elif op == "hubs":
                m.hubs_changed([h for i, h in enumerate(HUBS) if pick >> i & 1], clock.now)
            elif op == "connected":
                m.connect_succeeded(HUBS[pick % 4].identifier, clock.now)
            elif op == "connect-failed":
                m.connect_failed(None if pick > 7 else HUBS[pick % 4].identifier, "x", clock.now)
            elif op == "redirect":
                m.redirect_received(redirect_to(HUBS[pick % 4], hub_id(9)), clock.now)
            elif op == "redirect-failed":
                m.redirect_failed("x", clock.now)
            elif op == "redirect-completed":
                m.redirect_completed(clock.now)
            elif op == "lost":
                m.hub_lost(
                    m.hub_id if pick > 3 and m.hub_id else HUBS[pick % 4].identifier, clock.now
                )
            elif op == "advance":
                clock.advance(seconds)
            elif pick == 15:
                m.stopped()
        except LocalProtocolError:
            pass
        assert isinstance(m.state, State)
        assert m.backoff <= BACKOFF_MAX * 1.2


def _check(m: ConnectionManager, action: Action, now: float) -> None:
    if isinstance(action, Connect) and action.expected_id is not None:
        assert m.failed_until.get(action.expected_id, 0.0) <= now
    if isinstance(action, Stream):
        assert m.state is State.STREAMING and action.hub_id == m.hub_id
    if isinstance(action, Idle):
        assert m.state is State.STOPPED


def _answer(m: ConnectionManager, action: Action | None, pick: int, now: float) -> None:
    """The outcome a real adapter could report for ``action``."""
    if isinstance(action, Connect):
        if pick % 2:
            m.connect_succeeded(action.expected_id or HUBS[pick % 4].identifier, now)
        else:
            m.connect_failed(action.expected_id, "refused", now)
    elif isinstance(action, FollowRedirect):
        if pick % 2:
            m.redirect_completed(now)
        else:
            m.redirect_failed("connect", now)
    elif isinstance(action, Stream):
        if pick % 2:
            m.hub_lost(action.hub_id, now)
        else:
            m.redirect_received(redirect_to(HUBS[pick % 4], action.hub_id), now)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(("act", "act", "act", "act", "hubs", "lost", "redirect")),
            st.integers(0, 15),
        ),
        max_size=120,
    ),
    st.randoms(use_true_random=False),
)
def test_a_faithful_adapter_never_connects_to_a_held_hub(
    steps: list[tuple[str, int]], rng: random.Random
) -> None:
    """Every action answered as a real adapter would; failures are the common outcome."""
    m = ConnectionManager(config(), rng)
    clock = FakeClock()
    for op, pick in steps:
        if op == "hubs":
            m.hubs_changed([h for i, h in enumerate(HUBS) if pick >> i & 1], clock.now)
            continue
        if op == "lost":
            if m.hub_id is not None:
                m.hub_lost(m.hub_id, clock.now)
            continue
        action = m.next_action(clock.now)
        _check(m, action, clock.now)
        if isinstance(action, Connect):
            clock.advance(pick / 10)
            if pick % 4 == 0:
                m.connect_succeeded(action.expected_id or HUBS[pick % 4].identifier, clock.now)
            else:
                m.connect_failed(action.expected_id, "refused", clock.now)
        elif isinstance(action, Wait):
            clock.now = max(clock.now, action.until) if pick % 2 else clock.now + pick / 100
        elif isinstance(action, FollowRedirect):
            clock.now = max(clock.now, action.not_before)
            if pick % 2:
                m.redirect_completed(clock.now)
            else:
                m.redirect_failed("connect", clock.now)
        elif isinstance(action, Stream) and op == "redirect":
            m.redirect_received(redirect_to(HUBS[pick % 4], action.hub_id), clock.now)
        elif isinstance(action, Stream):
            clock.advance(pick / 5)
        assert m.backoff <= BACKOFF_MAX * 1.2


# ------------------------------------------------------------------------ DNS-SD hints


def test_dns_sd_hints_come_after_announced_hubs_and_before_bootstrap_hubs() -> None:
    m, clock = manager(), FakeClock()
    a = live(1)
    m.hubs_changed([a], clock.now)
    # Hub 1 is announced too: its announcement wins, the hint adds nothing.
    m.hints_changed([("192.0.2.5", 7400, hub_id(5)), ("192.0.2.1", 9, hub_id(1))], clock.now)
    tried = fail_round(m, clock)
    assert tried == [
        connect_to(a),
        Connect("192.0.2.5", 7400, hub_id(5)),
        Connect(*BOOTSTRAP, None),
    ]


def test_a_hint_must_prove_the_identifier_its_record_named() -> None:
    m, clock = manager(hubs=()), FakeClock()
    m.hints_changed([("192.0.2.5", 7400, hub_id(5))], clock.now)
    assert m.next_action(clock.now) == Connect("192.0.2.5", 7400, hub_id(5))
    with pytest.raises(LocalProtocolError):
        m.connect_succeeded(hub_id(6), clock.now)


def test_a_failed_hint_is_held_like_a_failed_hub_and_hints_wake_a_search() -> None:
    m, clock = manager(hubs=()), FakeClock()
    assert isinstance(m.next_action(clock.now), Wait)
    m.hints_changed([("192.0.2.5", 7400, hub_id(5))], clock.now)
    action = m.next_action(clock.now)  # woken early, before the back-off ran out
    assert action == Connect("192.0.2.5", 7400, hub_id(5))
    m.connect_failed(hub_id(5), "wrong-id", clock.now)
    assert isinstance(m.next_action(clock.now), Wait)
    clock.advance(BACKOFF_MAX / 2)
    m.hints_changed([("192.0.2.5", 7400, hub_id(5))], clock.now)
    assert isinstance(m.next_action(clock.now), Wait)  # still held
    clock.advance(BACKOFF_MAX)
    assert m.next_action(clock.now) == Connect("192.0.2.5", 7400, hub_id(5))
