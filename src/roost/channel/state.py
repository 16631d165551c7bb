"""The device channel's transition tables, one per side (PROTOCOL.md section 4).

Each core keeps one state from an enum below and, for every peer message, deadline and
command, looks the pair ``(state, input)`` up in its table. A pair that is not in the table
is refused: a peer's message becomes a ``RemoteProtocolError`` with the reason
:func:`refusal_reason` names, a command of ours becomes a ``LocalProtocolError``. Keeping the
rules in one table (as h11's ``_state.py`` does) makes the whole channel readable at a glance
and lets the tests walk every pair.

Hub side: ``AWAIT_HELLO`` → (hello) → ``AWAIT_ADMISSION`` → (accept) → ``OPEN`` → ``CLOSED``.
The admission step exists because capacity is the daemon's to judge, not the core's.

Device side: ``AWAIT_WELCOME`` → (welcome) → ``STREAMING`` → (start_drain) → ``DRAINING`` →
(last ACK or drain deadline) → ``CLOSED``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from roost.reasons import Reason

__all__ = [
    "DEVICE_TRANSITIONS",
    "HUB_TRANSITIONS",
    "ChannelInput",
    "DeviceState",
    "HubState",
    "refusal_reason",
]


class HubState(enum.Enum):
    """Where the hub's side of one device channel is."""

    AWAIT_HELLO = "await-hello"
    AWAIT_ADMISSION = "await-admission"
    OPEN = "open"
    CLOSED = "closed"


class DeviceState(enum.Enum):
    """Where the device's side of its channel to a hub is."""

    AWAIT_WELCOME = "await-welcome"
    STREAMING = "streaming"
    DRAINING = "draining"
    CLOSED = "closed"


class ChannelInput(enum.Enum):
    """What can happen to a channel core: a peer message, a deadline, or a command."""

    # From the peer (section 4 message types, and the end of the stream).
    DOCUMENT = "document"
    FRAME = "frame"
    ACK = "ack"
    END_OF_STREAM = "end-of-stream"
    # From the clock: the core's own deadline passed (hello, welcome or drain).
    TIMER = "timer"
    # Commands of the hub's daemon.
    ACCEPT = "accept"
    REFUSE = "refuse"
    SEND_ACK = "send-ack"
    SEND_REDIRECT = "send-redirect"
    # Commands of the device's daemon.
    SEND_FRAME = "send-frame"
    START_DRAIN = "start-drain"
    # The drain finished: the hub acknowledged everything that was sent.
    DRAINED = "drained"
    # Either side: close now, or a rule was broken.
    CLOSE = "close"
    FAIL = "fail"


_PEER_INPUTS = frozenset(
    {ChannelInput.DOCUMENT, ChannelInput.FRAME, ChannelInput.ACK, ChannelInput.END_OF_STREAM}
)

_H = HubState
_D = DeviceState
_I = ChannelInput

HUB_TRANSITIONS: Mapping[tuple[HubState, ChannelInput], HubState] = {
    # Section 4: the first message must be a hello from the verified device to this hub.
    (_H.AWAIT_HELLO, _I.DOCUMENT): _H.AWAIT_ADMISSION,
    (_H.AWAIT_HELLO, _I.END_OF_STREAM): _H.CLOSED,
    (_H.AWAIT_HELLO, _I.TIMER): _H.CLOSED,
    (_H.AWAIT_HELLO, _I.CLOSE): _H.CLOSED,
    (_H.AWAIT_HELLO, _I.FAIL): _H.CLOSED,
    # The daemon decides (capacity); the device waits for the welcome and sends nothing.
    (_H.AWAIT_ADMISSION, _I.ACCEPT): _H.OPEN,
    (_H.AWAIT_ADMISSION, _I.REFUSE): _H.CLOSED,
    (_H.AWAIT_ADMISSION, _I.END_OF_STREAM): _H.CLOSED,
    (_H.AWAIT_ADMISSION, _I.CLOSE): _H.CLOSED,
    (_H.AWAIT_ADMISSION, _I.FAIL): _H.CLOSED,
    # Frames in, ACKs and redirects out; a device never sends documents or ACKs here.
    (_H.OPEN, _I.FRAME): _H.OPEN,
    (_H.OPEN, _I.SEND_ACK): _H.OPEN,
    (_H.OPEN, _I.SEND_REDIRECT): _H.OPEN,
    (_H.OPEN, _I.END_OF_STREAM): _H.CLOSED,
    (_H.OPEN, _I.CLOSE): _H.CLOSED,
    (_H.OPEN, _I.FAIL): _H.CLOSED,
    # A store that finishes after the channel ended has nobody to acknowledge to, and a
    # redirect planned for a channel that just closed has nobody to move: both are no-ops.
    (_H.CLOSED, _I.SEND_ACK): _H.CLOSED,
    (_H.CLOSED, _I.SEND_REDIRECT): _H.CLOSED,
    (_H.CLOSED, _I.CLOSE): _H.CLOSED,
}

DEVICE_TRANSITIONS: Mapping[tuple[DeviceState, ChannelInput], DeviceState] = {
    # Section 4: the hub answers the hello with a welcome naming both parties.
    (_D.AWAIT_WELCOME, _I.DOCUMENT): _D.STREAMING,
    (_D.AWAIT_WELCOME, _I.END_OF_STREAM): _D.CLOSED,
    (_D.AWAIT_WELCOME, _I.TIMER): _D.CLOSED,
    (_D.AWAIT_WELCOME, _I.CLOSE): _D.CLOSED,
    (_D.AWAIT_WELCOME, _I.FAIL): _D.CLOSED,
    # Frames out; ACKs and redirects (or documents that are ignored and counted) in.
    (_D.STREAMING, _I.SEND_FRAME): _D.STREAMING,
    (_D.STREAMING, _I.ACK): _D.STREAMING,
    (_D.STREAMING, _I.DOCUMENT): _D.STREAMING,
    (_D.STREAMING, _I.START_DRAIN): _D.DRAINING,
    (_D.STREAMING, _I.END_OF_STREAM): _D.CLOSED,
    (_D.STREAMING, _I.CLOSE): _D.CLOSED,
    (_D.STREAMING, _I.FAIL): _D.CLOSED,
    # Drain before close (docs/hub-and-device.md): nothing new goes out, the last ACK (or
    # the drain deadline) ends the channel, so the next hub never stores a frame twice.
    (_D.DRAINING, _I.ACK): _D.DRAINING,
    (_D.DRAINING, _I.DOCUMENT): _D.DRAINING,
    (_D.DRAINING, _I.DRAINED): _D.CLOSED,
    (_D.DRAINING, _I.TIMER): _D.CLOSED,
    (_D.DRAINING, _I.END_OF_STREAM): _D.CLOSED,
    (_D.DRAINING, _I.CLOSE): _D.CLOSED,
    (_D.DRAINING, _I.FAIL): _D.CLOSED,
    (_D.CLOSED, _I.CLOSE): _D.CLOSED,
}

# The reason for a peer message that arrives where the table has no entry for it: before
# the channel is open it is a failed handshake (the counters have always called it so).
_HANDSHAKE_REFUSAL: Mapping[enum.Enum, Reason] = {
    _H.AWAIT_HELLO: Reason.BAD_HELLO,
    _D.AWAIT_WELCOME: Reason.BAD_WELCOME,
}


def refusal_reason(state: enum.Enum, kind: ChannelInput) -> Reason:
    """The reason a core gives for ``kind`` arriving in ``state`` when the table lacks it."""
    if kind in _PEER_INPUTS and state in _HANDSHAKE_REFUSAL:
        return _HANDSHAKE_REFUSAL[state]
    if kind is ChannelInput.DOCUMENT:
        return Reason.UNEXPECTED_DOCUMENT
    return Reason.UNEXPECTED_MESSAGE
