"""Bounded waits for tests: poll a condition instead of sleeping a guessed time.

Every duration a test waits is a multiple of one unit, `time_unit()` seconds, which the
environment variable ``ROOST_TEST_TIME_SCALE`` stretches (``2`` doubles every timeout) on a
slow or loaded machine. A wait that runs out raises `AssertionError` naming what it waited
for, so a failure says what did not happen rather than which assert came next.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "DEFAULT_INTERVAL",
    "TIME_SCALE_ENV",
    "async_pause",
    "async_wait_until",
    "pause",
    "scaled",
    "time_unit",
    "wait_until",
    "wait_until_or_show_logs",
]

TIME_SCALE_ENV = "ROOST_TEST_TIME_SCALE"
# How often a condition is polled, in units: short enough that a wait ends soon after the
# condition holds, long enough not to compete with the processes being waited for.
DEFAULT_INTERVAL = 0.05


def time_unit() -> float:
    """One timeout unit in seconds: 1.0 times ``ROOST_TEST_TIME_SCALE`` (default 1)."""
    scale = float(os.environ.get(TIME_SCALE_ENV, "1"))
    if scale <= 0:
        raise ValueError(f"{TIME_SCALE_ENV} must be positive, not {scale}")
    return scale


def scaled(units: float) -> float:
    """`units` timeout units in seconds."""
    return units * time_unit()


def _outcome(what: str, timeout: float) -> AssertionError:
    return AssertionError(f"timed out after {scaled(timeout):.1f} s waiting for {what}")


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    interval: float = DEFAULT_INTERVAL,
    *,
    what: str = "the condition",
) -> None:
    """Poll `predicate` until it is true; `timeout` and `interval` are in units.

    The predicate is asked once more at the deadline, so a condition that became true
    during the last interval is not reported as a timeout.
    """
    deadline = time.monotonic() + scaled(timeout)
    while True:
        if predicate():
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise _outcome(what, timeout)
        time.sleep(min(scaled(interval), left))


def wait_until_or_show_logs(
    what: str, condition: Callable[[], object], timeout: float, logs: Path
) -> None:
    """`wait_until` polling every quarter unit; a timeout shows the end of each
    ``logs/*.log`` (the processes the test started), which usually says why."""
    try:
        wait_until(condition, timeout, interval=0.25, what=what)
    except AssertionError as timed_out:
        tails = {p.name: p.read_text(errors="replace")[-800:] for p in logs.glob("*.log")}
        raise AssertionError(f"{timed_out}: {tails}") from None


async def async_wait_until(
    predicate: Callable[[], object],
    timeout: float,
    interval: float = DEFAULT_INTERVAL,
    *,
    what: str = "the condition",
) -> None:
    """`wait_until` for a test running on the event loop: the loop keeps running between
    polls, so the daemons under test make progress."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout)
    while True:
        if predicate():
            return
        left = deadline - loop.time()
        if left <= 0:
            raise _outcome(what, timeout)
        await asyncio.sleep(min(scaled(interval), left))


def pause(units: float) -> None:
    """Sleep on purpose, when time passing is the behaviour under test (a hold-down)."""
    time.sleep(scaled(units))


async def async_pause(units: float) -> None:
    """`pause` on the event loop."""
    await asyncio.sleep(scaled(units))
