"""The one timer an adapter keeps for its core (STYLE.md, "thin adapters"; aioquic's shape).

Every core says when it next needs ``handle_timer(now)`` through ``get_timer()``; its
adapter keeps exactly one ``loop.call_at`` for that moment and re-arms it after each
input. :class:`CoreTimer` is that one handle, shared by every adapter (announcements, the
device channel, the guard, the broker, the agent, the issuer, punching, QUIC), so the rule
is written once:

- the same deadline keeps the armed handle (no cancel and re-arm per datagram);
- with ``keep_earlier`` an armed handle that fires *before* the new deadline is kept too:
  for cores whose deadline only moves later (a session's idle limit, the broker's presence
  queue) it fires early, finds nothing due, and re-arms, so the hot path costs no timer work;
- ``floor`` keeps a deadline already in the past from spinning the loop;
- a core on another clock than the loop's passes ``now`` from that clock, and the delay is
  carried over to the loop's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["CoreTimer"]


class CoreTimer:
    """One ``call_at`` handle for a core's next deadline; ``on_fire`` runs when it is due."""

    __slots__ = ("_at", "_floor", "_handle", "_keep_earlier", "_loop", "_on_fire")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_fire: Callable[[], None],
        *,
        keep_earlier: bool = False,
        floor: float = 0.0,
    ) -> None:
        self._loop = loop
        self._on_fire = on_fire
        self._keep_earlier = keep_earlier
        self._floor = floor
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    @property
    def deadline(self) -> float | None:
        """The deadline the armed handle is for (in the core's clock), or None."""
        return self._at

    def arm(self, deadline: float | None, *, now: float | None = None) -> None:
        """Make the one handle match ``deadline`` (None: no deadline, cancel)."""
        if deadline is None:
            self.cancel()
            return
        at = self._at
        if self._handle is not None and at is not None:
            if at == deadline or (self._keep_earlier and at <= deadline):
                return
            self._handle.cancel()
        loop_now = self._loop.time()
        when = deadline if now is None else loop_now + (deadline - now)
        if self._floor:
            when = max(when, loop_now + self._floor)
        self._at = deadline
        self._handle = self._loop.call_at(when, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._at = None

    def _fire(self) -> None:
        self._handle = None
        self._at = None
        self._on_fire()
