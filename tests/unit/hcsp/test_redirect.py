"""Redirect planning (PROTOCOL.md section 3): at most the free capacity, batched, jittered."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from roost.hcsp.documents import Endpoint
from roost.hcsp.election import rank_of
from roost.hcsp.events import LiveHub
from roost.hcsp.redirect import RedirectConfig, RedirectPlanner, fair_share


def _hub(identifier: str, connected: int, max_clients: int, *, is_self: bool = False) -> LiveHub:
    identifier = "hcsp:" + identifier * 22
    return LiveHub(
        identifier=identifier,
        endpoint=Endpoint("192.168.1.1", 17320),
        features=("hcsp",),
        connected=connected,
        max_clients=max_clients,
        rank=rank_of(("hcsp",), max_clients, identifier),
        first_heard=0.0,
        last_seen=0.0,
        is_self=is_self,
    )


DEVICES = [f"ab:{i:022d}" for i in range(50)]


@given(
    st.integers(0, 40),
    st.integers(0, 40),
    st.integers(0, 50),
    st.integers(1, 10),
    st.floats(0, 2),
    st.floats(0, 1),
    st.randoms(use_true_random=False),
)
def test_plan_respects_capacity_batches_and_spacing(
    connected: int,
    max_clients: int,
    device_count: int,
    batch_size: int,
    spacing: float,
    jitter: float,
    rng: random.Random,
) -> None:
    config = RedirectConfig(batch_size=batch_size, batch_spacing=spacing, max_jitter=jitter)
    planner = RedirectPlanner(config)
    winner = _hub("W", connected, max_clients)
    batches = planner.plan(DEVICES[:device_count], winner, 100.0, rng)
    planned = [d for b in batches for d in b.devices]
    assert len(planned) == min(device_count, max(0, max_clients - connected))
    assert len(set(planned)) == len(planned)
    assert all(1 <= len(b.devices) <= batch_size for b in batches)
    if batches:
        assert 100.0 <= batches[0].due_at <= 100.0 + jitter
    for earlier, later in itertools.pairwise(batches):
        gap = later.due_at - earlier.due_at
        assert spacing - 1e-9 <= gap <= spacing + jitter + 1e-9
    # Draining everything hands out exactly the plan, never more.
    assert planner.due(1e9) == planned
    assert planner.next_deadline() is None


def test_never_all_at_once() -> None:
    planner = RedirectPlanner()
    batches = planner.plan(DEVICES[:30], _hub("W", 0, 100), 0.0, random.Random(1))
    assert [len(b.devices) for b in batches] == [8, 8, 8, 6]
    assert len(planner.due(batches[0].due_at)) == 8


def test_in_flight_devices_count_against_capacity_until_the_grace_ends() -> None:
    planner = RedirectPlanner(RedirectConfig(in_flight_grace=3.0))
    rng = random.Random(2)
    winner = _hub("W", 0, 10)
    planner.plan(DEVICES, winner, 0.0, rng)
    sent = planner.due(10.0)
    assert len(sent) == 10
    # The winner has not announced the arrivals yet: nothing more may go.
    assert planner.plan(DEVICES[10:], winner, 11.0, rng) == ()
    # Past the grace, the winner's own count is trusted again.
    assert planner.plan(DEVICES[10:], _hub("W", 10, 12), 13.5, rng)[0].devices == tuple(
        DEVICES[10:12]
    )


def test_replanning_keeps_the_next_batch_time() -> None:
    planner = RedirectPlanner()
    rng = random.Random(3)
    first = planner.plan(DEVICES[:20], _hub("W", 0, 20), 0.0, rng)
    again = planner.plan(DEVICES[:20], _hub("W", 2, 20), 0.4, rng)
    assert again[0].due_at == first[0].due_at
    assert sum(len(b.devices) for b in again) == 18


def test_new_winner_restarts_the_plan() -> None:
    planner = RedirectPlanner()
    rng = random.Random(4)
    planner.plan(DEVICES[:4], _hub("W", 0, 4), 0.0, rng)
    planner.due(5.0)
    batches = planner.plan(DEVICES[4:8], _hub("X", 0, 4), 6.0, rng)
    assert planner.target is not None and planner.target.identifier == "hcsp:" + "X" * 22
    assert [d for b in batches for d in b.devices] == DEVICES[4:8]
    planner.cancel()
    assert planner.batches == () and planner.target is None


@given(st.integers(0, 30), st.lists(st.integers(0, 5), min_size=1, max_size=6))
def test_fair_shares_add_up_to_the_free_capacity(free: int, loads: list[int]) -> None:
    winner = _hub("W", 0, free)
    losers = [_hub(chr(ord("A") + i), load, 50) for i, load in enumerate(loads)]
    hubs = [winner, *losers]
    shares = [fair_share(winner, hubs, hub.identifier) for hub in losers]
    assert all(share == 0 for share, hub in zip(shares, losers, strict=True) if hub.connected == 0)
    if any(hub.connected for hub in losers):
        assert sum(shares) == free
        assert max(shares) - min(s for s, h in zip(shares, losers, strict=True) if h.connected) <= 1
    assert fair_share(winner, hubs, winner.identifier) == 0
