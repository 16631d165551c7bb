"""The one flush both device-channel adapters share (STYLE.md, "thin adapters").

``roost.hub.daemon`` (hub side) and ``roost.device.channel`` (device side) each run a
channel core on an asyncio stream; after every input they write what the core wants sent
and re-arm ONE ``loop.call_at`` for the core's next deadline (hello, welcome or drain,
PROTOCOL.md section 4). What each does once the core is closed stays theirs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from roost.channel._core import ChannelCore
from roost.timer import CoreTimer

__all__ = ["flush_channel"]


def flush_channel(core: ChannelCore[Any], writer: asyncio.StreamWriter, timer: CoreTimer) -> None:
    """Write the core's pending bytes and arm the one timer for ``core.get_timer()``."""
    data = core.data_to_send()
    if data and not writer.is_closing():
        writer.write(data)
    timer.arm(core.get_timer())
