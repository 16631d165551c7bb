"""Election (PROTOCOL.md section 3, seed FIG. 6): a total order, arrival-order independent."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from roost.hcsp.election import Candidate, HubRank, elect, rank_of

from .strategies import hub_ids

ranks = st.builds(
    HubRank,
    st.integers(0, 5),
    st.integers(0, 10),
    st.sampled_from(["hcsp:" + c * 22 for c in "ABCD"]),
)


def _rank(features: int, max_clients: int, identifier: str) -> HubRank:
    return HubRank(features, max_clients, "hcsp:" + identifier * 22)


def test_more_features_win_first() -> None:
    assert _rank(3, 1, "Z").beats(_rank(2, 100, "A"))


def test_then_larger_max_wins() -> None:
    assert _rank(2, 6, "Z").beats(_rank(2, 5, "A"))


def test_then_smaller_identifier_wins() -> None:
    assert _rank(2, 5, "A").beats(_rank(2, 5, "B"))
    assert not _rank(2, 5, "B").beats(_rank(2, 5, "A"))


def test_repeated_features_count_once() -> None:
    assert rank_of(["db", "db", "webs"], 5, "hcsp:" + "A" * 22).feature_count == 2


@given(ranks, ranks)
def test_rank_is_total_and_antisymmetric(a: HubRank, b: HubRank) -> None:
    if a == b:
        assert not a.beats(b) and not b.beats(a)
    else:
        assert a.beats(b) != b.beats(a)


@given(ranks, ranks, ranks)
def test_rank_is_transitive(a: HubRank, b: HubRank, c: HubRank) -> None:
    if a.beats(b) and b.beats(c):
        assert a.beats(c)


hubs = st.lists(
    st.builds(HubRank, st.integers(0, 4), st.integers(0, 8), hub_ids),
    min_size=1,
    max_size=8,
    unique_by=lambda rank: rank.identifier,
)


@settings(max_examples=200)
@given(hubs, st.randoms(use_true_random=False), st.lists(st.floats(0, 10), min_size=8, max_size=8))
def test_every_arrival_order_elects_the_same_winner(
    ranks_: list[HubRank], rng: random.Random, heard: list[float]
) -> None:
    candidates = [Candidate(r, heard[i], r.identifier) for i, r in enumerate(ranks_)]
    expected = elect(candidates, 10.0, 3.0)
    for _ in range(5):
        shuffled = list(candidates)
        rng.shuffle(shuffled)
        assert elect(shuffled, 10.0, 3.0) == expected
    if expected is not None:
        eligible = [c for c in candidates if 10.0 - c.first_heard >= 3.0]
        assert all(not c.rank.beats(expected.rank) for c in eligible)


def test_newcomer_wins_only_after_hold_down() -> None:
    old = Candidate(_rank(1, 5, "B"), 0.0, "old")
    newcomer = Candidate(_rank(3, 5, "C"), 10.0, "new")
    assert elect([old, newcomer], 12.9, 3.0) == old
    assert elect([old, newcomer], 13.0, 3.0) == newcomer


def test_no_winner_during_the_settle_window() -> None:
    assert elect([Candidate(_rank(1, 5, "B"), 0.0, "a")], 1.0, 3.0) is None
    assert elect([], 1.0, 3.0) is None
