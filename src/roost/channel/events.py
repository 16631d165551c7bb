"""Configuration and events of the device-channel cores (PROTOCOL.md section 4).

Events are what ``next_event()`` returns to the adapter, in the order the bytes (or the
deadline) produced them. Every core emits exactly one :class:`ChannelClosed`, as its last
event, however the channel ended.
"""

from __future__ import annotations

from dataclasses import dataclass

from roost.errors import ConfigError, RoostError
from roost.hcsp.channel import MAX_CHANNEL_MESSAGE, FrameMessage
from roost.hcsp.documents import Redirect

__all__ = [
    "AckReceived",
    "ChannelClosed",
    "ChannelCoreConfig",
    "ChannelEvent",
    "DocumentIgnored",
    "DrainComplete",
    "FramesReceived",
    "HelloReceived",
    "RedirectReceived",
    "WelcomeReceived",
]


@dataclass(frozen=True, slots=True)
class ChannelCoreConfig:
    """The deadlines and bounds of one channel endpoint (either side).

    ``hello_timeout``: the hub closes a channel whose hello has not arrived by then
    (docs/hub-and-device.md, "within 10 s"). ``welcome_timeout``: the device gives up on a
    hub that does not welcome it. ``drain_timeout``: how long a device waits for the last
    ACK before closing a channel it is leaving (the device config's ``drain_timeout``).
    ``max_message``: the largest message accepted or sent (section 4: at most 4 MiB).
    """

    hello_timeout: float = 10.0
    welcome_timeout: float = 5.0
    drain_timeout: float = 2.0
    max_message: int = MAX_CHANNEL_MESSAGE

    def __post_init__(self) -> None:
        for name in ("hello_timeout", "welcome_timeout", "drain_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        if not 1 <= self.max_message <= MAX_CHANNEL_MESSAGE:
            raise ConfigError(f"max_message must be within 1..{MAX_CHANNEL_MESSAGE}")


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """Base of every device-channel event."""


@dataclass(frozen=True, slots=True)
class HelloReceived(ChannelEvent):
    """Hub side: the verified device said hello to this hub; accept or refuse it now."""

    device_id: str
    app: str
    last_acked: int
    # The name the device gave (a label, never identity); None from an older device.
    name: str | None = None


@dataclass(frozen=True, slots=True)
class FramesReceived(ChannelEvent):
    """Hub side: the frames one ``receive_data`` call completed, in stream order.

    One batch per call lets the hub store a socket read with one ``store_many`` and answer
    it with one cumulative ACK (docs/hub-and-device.md).
    """

    frames: tuple[FrameMessage, ...]


@dataclass(frozen=True, slots=True)
class WelcomeReceived(ChannelEvent):
    """Device side: the hub welcomed this device; frames may flow."""

    features: tuple[str, ...]
    max_clients: int


@dataclass(frozen=True, slots=True)
class AckReceived(ChannelEvent):
    """Device side: the hub has durably stored every frame with a seq up to ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class RedirectReceived(ChannelEvent):
    """Device side: the hub asks this device to move (seed FIG. 8B); the daemon decides."""

    redirect: Redirect


@dataclass(frozen=True, slots=True)
class DocumentIgnored(ChannelEvent):
    """Device side: a well-formed document that is not a redirect for this device.

    It is counted and ignored rather than ending the channel: the hub is authenticated and
    a newer hub may send documents this device does not know.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class DrainComplete(ChannelEvent):
    """Device side: the drain ended, by the last ACK or by the drain deadline."""

    acked: int
    last_sent: int
    timed_out: bool


@dataclass(frozen=True, slots=True)
class ChannelClosed(ChannelEvent):
    """The channel ended; ``error`` is None for an orderly end (ours or the peer's)."""

    reason: str
    error: RoostError | None = None
