"""The one flush both device-channel adapters share (STYLE.md, "thin adapters").

``roost.hub.daemon`` (hub side) and ``roost.device.channel`` (device side) each run a
channel core on an asyncio stream; after every input they write what the core wants sent
and re-arm ONE ``loop.call_at`` for the core's next deadline (hello, welcome or drain,
PROTOCOL.md section 4). What each does once the core is closed stays theirs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from roost.channel._core import ChannelCore

__all__ = ["flush_channel"]


def flush_channel(
    core: ChannelCore[Any],
    writer: asyncio.StreamWriter,
    timer: asyncio.TimerHandle | None,
    on_timer: Callable[[], None],
) -> asyncio.TimerHandle | None:
    """Write the core's pending bytes, cancel ``timer`` and return the one timer armed for
    ``core.get_timer()`` (None when the core has no deadline)."""
    data = core.data_to_send()
    if data and not writer.is_closing():
        writer.write(data)
    if timer is not None:
        timer.cancel()
    deadline = core.get_timer()
    if deadline is None:
        return None
    return asyncio.get_running_loop().call_at(deadline, on_timer)
