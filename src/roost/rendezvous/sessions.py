"""What both ends of a brokered session share: the punch plan and the kind of path.

Both the agent (the hub, target of a connection) and the issuer (``roost connect``) turn the
broker's ``start`` into the same :class:`StartPunch` command for their adapter, which runs
the punching core (``punch.py``) from its one UDP socket (docs/broker.md, "The flow", steps
6 and 7). Times are the cores' monotonic ``now`` plus the broker's milliseconds, so both
sides probe at the common start time within half a round trip.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from roost.errors import LocalProtocolError
from roost.reasons import Reason
from roost.rendezvous.control import Start
from roost.rendezvous.messages import MAX_CANDIDATES, Candidate

__all__ = [
    "PUNCH_ATTEMPTS",
    "PathKind",
    "RendezvousEvent",
    "StartPunch",
    "merge_candidates",
    "punch_plan",
]

# Step 7: three probe attempts spaced within the broker's deadline.
PUNCH_ATTEMPTS = 3


class PathKind(enum.Enum):
    """How a session's datagrams travel: punched UDP, or relay records via the broker."""

    DIRECT = "direct"
    RELAY = "relay"


@dataclass(frozen=True, slots=True)
class RendezvousEvent:
    """Base of every event and command the agent and issuer cores give their adapters."""


@dataclass(frozen=True, slots=True)
class StartPunch(RendezvousEvent):
    """Probe every one of ``remote_candidates`` from ``start_at``; ask for the relay (report
    ``punch_failed``) when nothing answered by ``deadline`` (both monotonic seconds)."""

    session: int
    remote_candidates: tuple[Candidate, ...]
    start_at: float
    deadline: float
    attempts: int = PUNCH_ATTEMPTS


def punch_plan(start: Start, now: float, attempts: int = PUNCH_ATTEMPTS) -> StartPunch:
    """The punch command for a ``start`` received at ``now`` (step 6: probe ``start_in_ms``
    after receipt, give up ``deadline_ms`` after the start time)."""
    start_at = now + start.start_in_ms / 1000.0
    return StartPunch(
        start.session,
        start.candidates,
        start_at,
        start_at + start.deadline_ms / 1000.0,
        attempts,
    )


def merge_candidates(*groups: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
    """The candidates of ``groups`` in order, each once, at most ``MAX_CANDIDATES``: the
    reflexive address first, because behind a NAT it is the one most likely to answer."""
    merged: list[Candidate] = []
    for group in groups:
        for candidate in group:
            if not isinstance(candidate, Candidate):
                raise LocalProtocolError("not a Candidate", reason=Reason.BAD_CANDIDATE)
            if candidate not in merged and len(merged) < MAX_CANDIDATES:
                merged.append(candidate)
    return tuple(merged)
