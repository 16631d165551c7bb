"""roost.timer.CoreTimer: the one call_at every adapter keeps for its core."""

from __future__ import annotations

import asyncio

from roost.timer import CoreTimer


async def test_same_deadline_keeps_the_handle_and_a_new_one_replaces_it() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = CoreTimer(loop, lambda: fired.append(loop.time()))
    at = loop.time() + 0.05
    timer.arm(at)
    handle = timer._handle
    timer.arm(at)
    assert timer._handle is handle
    timer.arm(at + 0.01)
    assert timer._handle is not handle and timer.deadline == at + 0.01
    await asyncio.sleep(0.1)
    assert len(fired) == 1 and fired[0] >= at + 0.01 - 0.005
    assert not timer.armed and timer.deadline is None


async def test_keep_earlier_leaves_an_earlier_handle_armed() -> None:
    loop = asyncio.get_running_loop()
    timer = CoreTimer(loop, lambda: None, keep_earlier=True)
    at = loop.time() + 1.0
    timer.arm(at)
    handle = timer._handle
    timer.arm(at + 5.0)  # later: the earlier handle fires first and the core re-arms
    assert timer._handle is handle and timer.deadline == at
    timer.arm(at - 0.5)  # earlier: must be re-armed
    assert timer._handle is not handle and timer.deadline == at - 0.5
    timer.arm(None)
    assert not timer.armed


async def test_floor_and_foreign_clock() -> None:
    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    timer = CoreTimer(loop, fired.set, floor=0.001)
    # A core on its own clock: deadline 1000.02 when its now is 1000.0 means "in 20 ms".
    timer.arm(1000.02, now=1000.0)
    handle = timer._handle
    assert handle is not None and 0.0 < handle.when() - loop.time() <= 0.021
    await asyncio.wait_for(fired.wait(), 1.0)
    # A deadline in the past still waits the floor instead of spinning.
    timer.arm(loop.time() - 5.0)
    assert timer._handle is not None and timer._handle.when() >= loop.time()
    timer.cancel()
