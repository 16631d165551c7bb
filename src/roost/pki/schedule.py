"""The automated operator of seed FIG. 5 and FIG. 6: what to do with the CA at time `at`.

Pure: it reads the generation table and a time and returns actions; `roost ca tick` applies
them. The schedule is the seed's Nth/(N+1)th operation plan:

- a lead time (default 5 years) before CA N expires, prepare N+1 and bring up its download
  server (S502–S504);
- at CA N's expiry, issuing moves to N+1 (S510);
- the download server of N+1 is certified by CA N, so its permitted period ends when CA N
  expires; after that the generation is unpublished (S511).

Every step has a time it is *due* (`upcoming`). A tick that runs late, even decades late,
applies the missed steps at the times they were due (`catch_up`), not at the late `at`: CA
N+1 is then prepared while CA N could still certify its download server, and the authority
ends where an operator who never missed a tick would have left it, with one difference: a
generation made late stays published for one lead time from the late tick (its
`publish_until`), since no device could fetch it while it was due. A clockless device
still holding CA N accepts N+1's download certificate (validity is judged at its time
floor, which cannot pass CA N's expiry while N is all it trusts). That is what keeps a late
authority usable: the active generation is valid at `at`, and devices that held any
generation before the gap can walk the CA information chain to the newest one
(docs/OPERATIONS.md, "A tick after a long gap").
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace

from roost.errors import StateError

__all__ = [
    "MAX_CATCH_UP_STEPS",
    "Action",
    "GenerationTimes",
    "Step",
    "TimedStep",
    "catch_up",
    "plan",
    "upcoming",
]

# One tick applies at most this many steps; a gap needing more (a validity of one year
# left alone for centuries) is refused in words instead of minting generations for minutes.
MAX_CATCH_UP_STEPS = 300
# X.509 GeneralizedTime ends with the year 9999; no certificate may outlive it.
_LAST_TIME = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


class Action(enum.Enum):
    PREPARE = "prepare"
    ACTIVATE = "activate"
    UNPUBLISH = "unpublish"


@dataclass(frozen=True, slots=True)
class GenerationTimes:
    generation: int
    not_after: dt.datetime
    published: bool
    # A generation a late tick made stays published until then, whatever CA N's expiry.
    publish_until: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    generation: int


@dataclass(frozen=True, slots=True)
class TimedStep:
    """A step and the time the schedule wants it applied."""

    action: Action
    generation: int
    due: dt.datetime

    @property
    def step(self) -> Step:
        return Step(self.action, self.generation)


def upcoming(
    generations: Sequence[GenerationTimes], active: int, lead: dt.timedelta
) -> list[TimedStep]:
    """Every step the schedule wants next, whatever the time, earliest due first.

    Unpublishing comes before activating or preparing at the same instant, the order the
    seed applies S511 and S510 in.
    """
    by_gen = {g.generation: g for g in generations}
    newest = max(by_gen)
    current = by_gen[active]
    steps: list[TimedStep] = []
    for g in generations:
        previous = by_gen.get(g.generation - 1)
        if g.published and previous is not None:
            due = previous.not_after
            if g.publish_until is not None:
                due = max(due, g.publish_until)
            steps.append(TimedStep(Action.UNPUBLISH, g.generation, due))
    if newest == active:
        steps.append(TimedStep(Action.PREPARE, newest + 1, current.not_after - lead))
    else:
        steps.append(TimedStep(Action.ACTIVATE, active + 1, current.not_after))
    # A stable sort keeps unpublish steps before the prepare or activate step due together.
    return sorted(steps, key=lambda s: s.due)


def plan(
    generations: Sequence[GenerationTimes], active: int, at: dt.datetime, lead: dt.timedelta
) -> list[Step]:
    """The next actions due at `at`, in the order they must be applied.

    Applying them and calling again yields the following ones; an empty list means the
    authority is where the schedule wants it.
    """
    return [s.step for s in upcoming(generations, active, lead) if s.due <= at]


def catch_up(
    generations: Sequence[GenerationTimes],
    active: int,
    at: dt.datetime,
    lead: dt.timedelta,
    validity: dt.timedelta,
) -> list[TimedStep]:
    """Every step due by `at`, each at its due time, found by simulating the table.

    A prepared generation N+1 is valid from its due time for `validity`, as the authority
    makes it. Raises StateError, before anything is written, when the steps would be too
    many or would need a certificate beyond the year 9999.
    """
    table = list(generations)
    steps: list[TimedStep] = []
    while True:
        pending = upcoming(table, active, lead)
        if not pending or pending[0].due > at:
            return steps
        if len(steps) >= MAX_CATCH_UP_STEPS:
            raise StateError(
                f"a tick at {at.isoformat()} would take more than {MAX_CATCH_UP_STEPS} steps;"
                " tick at earlier times first",
                reason="bad-args",
            )
        step = pending[0]
        if step.action is Action.PREPARE:
            if step.due > _LAST_TIME - validity:
                raise StateError(
                    f"generation {step.generation} would be valid past the year 9999",
                    reason="bad-args",
                )
            # Made late, it was never served while CA N was valid: it stays published for
            # one lead time from now, so devices still holding N can fetch it.
            until = min(at, _LAST_TIME - lead) + lead if step.due < at else None
            table.append(GenerationTimes(step.generation, step.due + validity, True, until))
        elif step.action is Action.ACTIVATE:
            active = step.generation
        else:
            table = [
                replace(g, published=False) if g.generation == step.generation else g for g in table
            ]
        steps.append(step)
