"""Hub election (PROTOCOL.md section 3 "Election", seed FIG. 6 made a total order).

The seed's server apparatus, on receiving a verified subscribe, compares feature lists
(step S210), then the maximum numbers of clients, then the server identifiers, and decides
whether to hand its clients over. "Richer feature list" is a set relation and can leave two
hubs each looking richer (research/handover.md §3 item 3), so the comparison here is a rank
key with a total order: more distinct features, then larger ``max``, then the
lexicographically smaller identifier. Identifiers are unique (they hash each hub's key), so
no two distinct hubs ever tie.

Every hub applies ``elect`` to the same set of live verified hubs including itself, so all
hubs reach the same winner whatever order the announcements arrived in. A newcomer must
have been heard for ``hold_down`` seconds before it can win (keepalived's preempt delay,
handover §3 item 5), which also gives a cold-started network a short settle window
(handover §3 item 6) during which there may be no winner at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["DEFAULT_HOLD_DOWN", "Candidate", "HubRank", "elect", "rank_of"]

DEFAULT_HOLD_DOWN = 3.0


@dataclass(frozen=True, slots=True)
class HubRank:
    """What the election reads from a verified announcement."""

    feature_count: int
    max_clients: int
    identifier: str

    def sort_key(self) -> tuple[int, int, str]:
        """Ascending order of this key is descending order of preference."""
        # S210 compare feature lists: more distinct features is better, hence negated.
        # Then the maximum numbers of clients: larger is better, hence negated.
        # Then the server identifiers: the smaller one wins, and it is unique per hub.
        return (-self.feature_count, -self.max_clients, self.identifier)

    def beats(self, other: HubRank) -> bool:
        """True when this hub ranks strictly above ``other``."""
        return self.sort_key() < other.sort_key()


def rank_of(features: Iterable[str], max_clients: int, identifier: str) -> HubRank:
    """The rank of a hub; repeated feature names count once."""
    return HubRank(len(set(features)), max_clients, identifier)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Candidate(Generic[T]):
    """A live verified hub offered to the election, with whatever the caller attaches."""

    rank: HubRank
    first_heard: float
    payload: T


def elect(candidates: Iterable[Candidate[T]], now: float, hold_down: float) -> Candidate[T] | None:
    """The best candidate heard for at least ``hold_down`` seconds, or None if there is none.

    The caller passes only live, verified hubs, its own hub included when it is one. The
    result depends on the set of candidates and ``now`` only, never on their order.
    """
    eligible = [c for c in candidates if now - c.first_heard >= hold_down]
    if not eligible:
        return None
    return min(eligible, key=lambda c: c.rank.sort_key())
