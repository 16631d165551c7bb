"""The automated operator of seed FIG. 5 and FIG. 6: what to do with the CA at time `at`.

Pure: it reads the generation table and a time and returns actions; `roost ca tick` applies
them. The schedule is the seed's Nth/(N+1)th operation plan:

- a lead time (default 5 years) before CA N expires, prepare N+1 and bring up its download
  server (S502–S504);
- at CA N's expiry, issuing moves to N+1 (S510);
- the download server of N+1 is certified by CA N, so its permitted period ends when CA N
  expires; after that the generation is unpublished (S511).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Action", "GenerationTimes", "Step", "plan"]


class Action(enum.Enum):
    PREPARE = "prepare"
    ACTIVATE = "activate"
    UNPUBLISH = "unpublish"


@dataclass(frozen=True, slots=True)
class GenerationTimes:
    generation: int
    not_after: dt.datetime
    published: bool


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    generation: int


def plan(
    generations: Sequence[GenerationTimes], active: int, at: dt.datetime, lead: dt.timedelta
) -> list[Step]:
    """The next actions due at `at`, in the order they must be applied.

    Applying them and calling again yields the following ones; an empty list means the
    authority is where the schedule wants it.
    """
    by_gen = {g.generation: g for g in generations}
    newest = max(by_gen)
    current = by_gen[active]
    steps: list[Step] = []
    for g in generations:
        previous = by_gen.get(g.generation - 1)
        if g.published and previous is not None and at >= previous.not_after:
            steps.append(Step(Action.UNPUBLISH, g.generation))
    if newest == active and at >= current.not_after - lead:
        steps.append(Step(Action.PREPARE, newest + 1))
    elif newest > active and at >= current.not_after:
        steps.append(Step(Action.ACTIVATE, active + 1))
    return steps
