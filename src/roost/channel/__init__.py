"""The device channel as pure cores (PROTOCOL.md section 4), one per side.

:class:`HubChannelCore` and :class:`DeviceChannelCore` take bytes, commands and ``now`` and
return events and bytes to send, in the aioquic shape (``receive_data``, ``next_event``,
``data_to_send``, ``get_timer``, ``handle_timer``). Their rules are the tables in
:mod:`roost.channel.state`; the wire codec is :mod:`roost.hcsp.channel`. The asyncio
adapters are ``roost.hub.daemon`` (hub side) and ``roost.device.channel`` (device side).
"""

from roost.channel.device import DeviceChannelCore
from roost.channel.events import (
    AckReceived,
    ChannelClosed,
    ChannelCoreConfig,
    ChannelEvent,
    DocumentIgnored,
    DrainComplete,
    FramesReceived,
    HelloReceived,
    RedirectReceived,
    WelcomeReceived,
)
from roost.channel.hub import HubChannelCore
from roost.channel.state import (
    DEVICE_TRANSITIONS,
    HUB_TRANSITIONS,
    ChannelInput,
    DeviceState,
    HubState,
    refusal_reason,
)

__all__ = [
    "DEVICE_TRANSITIONS",
    "HUB_TRANSITIONS",
    "AckReceived",
    "ChannelClosed",
    "ChannelCoreConfig",
    "ChannelEvent",
    "ChannelInput",
    "DeviceChannelCore",
    "DeviceState",
    "DocumentIgnored",
    "DrainComplete",
    "FramesReceived",
    "HelloReceived",
    "HubChannelCore",
    "HubState",
    "RedirectReceived",
    "WelcomeReceived",
    "refusal_reason",
]
