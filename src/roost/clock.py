"""The one place Roost reads the time (STYLE.md, "Time is an argument").

Cores never read a clock: they take a monotonic ``now`` (seconds, for timers, windows and
rate limits) and, where certificates or logs need it, a UTC wall time (``wall_ms`` or an
aware ``datetime``). Adapters and daemons get a :class:`Clock` through their constructor,
so a test can hand them a fake one; :data:`SYSTEM_CLOCK` is what the CLI wires in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["SYSTEM_CLOCK", "Clock", "set_wall_offset_ms", "wall_ms_now"]

# A step applied to the wall time, for fault tests only: a daemon started with
# ROOST_TEST_CLOCK_OFFSET_FILE follows the offset written there (roost.cli.run), so a test
# can step one process's clock forward and back while it runs, as an NTP step or a wrong
# RTC would (docs/testing.md, "Faults"). Monotonic time is never offset: deadlines and
# timers do not jump, exactly as on a real machine whose wall clock is stepped.
_wall_offset_ms = 0


def set_wall_offset_ms(offset_ms: int) -> None:
    """Shift what :func:`wall_ms_now` reports by ``offset_ms`` (tests' clock steps)."""
    global _wall_offset_ms
    _wall_offset_ms = int(offset_ms)


def wall_ms_now() -> int:
    """Unix time in milliseconds (announcement ``ts``, frame ``captured_at_ms``, logs)."""
    return time.time_ns() // 1_000_000 + _wall_offset_ms


@dataclass(frozen=True, slots=True)
class Clock:
    """Monotonic seconds for deadlines, wall milliseconds for what goes on the wire."""

    now: Callable[[], float] = time.monotonic
    wall_ms: Callable[[], int] = wall_ms_now

    def utc(self) -> datetime:
        """The wall time as an aware UTC datetime (certificate validity checks)."""
        return datetime.fromtimestamp(self.wall_ms() / 1000, UTC)


SYSTEM_CLOCK = Clock()
