"""Three hubs and a listening device on a fake LAN (PROTOCOL.md section 3): convergence,
hold-down, failover and redirect planning, with loss, duplication and reordering."""

from __future__ import annotations

import random

from roost.hcsp.core import AnnounceCore
from roost.hcsp.events import HubDown, WinnerChanged
from roost.hcsp.redirect import RedirectConfig, RedirectPlanner, fair_share
from tests.helpers.fake_lan import FakeLan
from tests.helpers.pki import Node

from .hubs import device_core, hub_core, new_ca

CA = new_ca()


def _add_hub(
    lan: FakeLan, name: str, host: str, features: tuple[str, ...], max_clients: int
) -> tuple[Node, AnnounceCore]:
    node, core = hub_core(CA, host, features, max_clients)
    lan.add(name, host, core)
    return node, core


def _three_hubs(lan: FakeLan) -> dict[str, Node]:
    nodes = {
        "a": _add_hub(lan, "a", "192.168.1.1", ("hcsp", "webs"), 5)[0],
        "b": _add_hub(lan, "b", "192.168.1.2", ("hcsp", "webs"), 4)[0],
        "c": _add_hub(lan, "c", "192.168.1.3", ("hcsp",), 50)[0],
    }
    lan.add("device", "192.168.1.50", device_core(CA))
    return nodes


def test_all_nodes_converge_despite_loss_duplication_and_reordering() -> None:
    lan = FakeLan(seed=7, loss=0.05, duplicate=0.2, max_extra_delay=1.2)
    nodes = _three_hubs(lan)
    lan.run_until(10.0)
    # More features beat a larger max: a (2 features, max 5) beats b (max 4) and c.
    assert set(lan.winners().values()) == {nodes["a"].identifier}
    for node in lan.nodes.values():
        assert len(node.core.live_hubs(lan.clock.now)) == 3
    # Duplicates were refused as replays, late copies as non-increasing, nothing else.
    rejected: dict[str, int] = {}
    for node in lan.nodes.values():
        for reason, count in node.core.counters.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
    assert set(rejected) == {"replay", "seq-not-increasing"}
    # Each hub ignored its own multicast echoes.
    assert all(lan.nodes[name].core.counters.own_echoes > 0 for name in "abc")


def test_every_join_order_elects_the_same_winner() -> None:
    for order in ("abc", "cab", "bca"):
        lan = FakeLan(seed=1)
        hosts = {"a": "192.168.1.1", "b": "192.168.1.2", "c": "192.168.1.3"}
        identifiers = []
        for i, name in enumerate(order):
            lan.run_until(i * 0.7)
            # Equal feature counts (in any order) and equal max: only identifiers differ.
            features = ("hcsp", "db") if i % 2 else ("db", "hcsp")
            identifiers.append(_add_hub(lan, name, hosts[name], features, 8)[0].identifier)
        lan.add("device", "192.168.1.50", device_core(CA))
        lan.run_until(6.0)
        assert set(lan.winners().values()) == {min(identifiers)}


def test_better_newcomer_wins_only_after_hold_down_and_failover_follows() -> None:
    lan = FakeLan(seed=3)
    a, _ = _add_hub(lan, "a", "192.168.1.1", ("hcsp", "webs"), 5)
    _add_hub(lan, "b", "192.168.1.2", ("hcsp",), 5)
    lan.add("device", "192.168.1.50", device_core(CA))
    lan.run_until(6.0)
    assert set(lan.winners().values()) == {a.identifier}

    newcomer, _ = _add_hub(lan, "c", "192.168.1.3", ("hcsp", "webs", "db"), 5)
    lan.run_until(8.9)
    others = {k: v for k, v in lan.winners().items() if k != "c"}
    assert set(others.values()) == {a.identifier}
    # The newcomer itself is in its settle window: everyone it hears is new to it.
    assert lan.winners()["c"] is None
    lan.run_until(9.1)
    assert set(lan.winners().values()) == {newcomer.identifier}
    changed = [e for e in lan.nodes["device"].events if isinstance(e, WinnerChanged)]
    assert changed[-1].previous is not None and changed[-1].previous.identifier == a.identifier

    # The winner stops announcing: its last datagram left at t=12.0, arriving at 12.001.
    lan.run_until(12.5)
    lan.nodes["c"].crashed = True
    # Skew per observer: a has one hub above it (0.1 s), b two (0.2 s), the device 0.5 s.
    lan.run_until(15.05)
    assert set(lan.winners().values()) == {newcomer.identifier}
    lan.run_until(15.15)
    assert lan.winners()["a"] == a.identifier
    assert lan.winners()["b"] == newcomer.identifier
    lan.run_until(15.6)
    assert set(lan.winners().values()) == {a.identifier}
    downs = {
        name: [e.hub.identifier for e in node.events if isinstance(e, HubDown)]
        for name, node in lan.nodes.items()
        if name != "c"
    }
    assert downs == {name: [newcomer.identifier] for name in ("a", "b", "device")}


def test_losing_hub_plans_a_capacity_limited_batched_jittered_redirect() -> None:
    lan = FakeLan(seed=5)
    winner_node, winner_core = _add_hub(lan, "a", "192.168.1.1", ("hcsp", "webs"), 12)
    loser_node, loser_core = _add_hub(lan, "b", "192.168.1.2", ("hcsp",), 30)
    winner_core.set_load(2, 12)
    devices = [f"ab:device{i:02d}" for i in range(20)]
    loser_core.set_load(len(devices), 30)
    lan.run_until(4.0)

    now = lan.clock.now
    winner = loser_core.winner(now)
    assert winner is not None and winner.identifier == winner_node.identifier
    share = fair_share(winner, loser_core.live_hubs(now), loser_node.identifier)
    assert share == winner.free_capacity == 10

    config = RedirectConfig()
    planner = RedirectPlanner(config)
    rng = random.Random(11)
    batches = planner.plan(devices, winner, now, rng, share=share)
    assert [len(b.devices) for b in batches] == [8, 2]
    assert now <= batches[0].due_at <= now + config.max_jitter
    spacing, jitter = config.batch_spacing, config.max_jitter
    assert batches[0].due_at + spacing <= batches[1].due_at <= batches[0].due_at + spacing + jitter
    assert planner.due(now - 0.001) == []
    first = planner.due(batches[0].due_at)
    assert first == devices[:8]

    # The eight arrive at the winner, which announces its new load; re-planning counts
    # them once (in flight, until the grace runs out) and keeps the next batch's time.
    winner_core.set_load(10, 12)
    lan.run_until(now + 1.2)
    fresher = loser_core.winner(lan.clock.now)
    assert fresher is not None and fresher.free_capacity == 2
    replanned = planner.plan(devices[8:], fresher, lan.clock.now, rng)
    assert replanned == ()
    lan.run_until(now + 5.0)
    later = loser_core.winner(lan.clock.now)
    assert later is not None
    replanned = planner.plan(devices[8:], later, lan.clock.now, rng)
    assert [b.devices for b in replanned] == [tuple(devices[8:10])]
