"""What both device-channel cores share: the decoder, the outbox, the event queue, the table.

Pure (STYLE.md): bytes and ``now`` in, events and bytes out, no clock, socket or file.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from typing import Generic, TypeVar

from roost.channel.events import ChannelClosed, ChannelCoreConfig, ChannelEvent
from roost.channel.state import ChannelInput, refusal_reason
from roost.errors import LocalProtocolError, RemoteProtocolError, RoostError, peer_input
from roost.hcsp.channel import (
    AckMessage,
    ChannelConfig,
    ChannelDecoder,
    ChannelMessage,
    DocumentMessage,
    FrameMessage,
    encode_message,
)
from roost.reasons import Reason

__all__ = ["ChannelCore"]

S = TypeVar("S", bound=enum.Enum)

_KIND_OF: Mapping[type[ChannelMessage], ChannelInput] = {
    DocumentMessage: ChannelInput.DOCUMENT,
    FrameMessage: ChannelInput.FRAME,
    AckMessage: ChannelInput.ACK,
}


class ChannelCore(Generic[S]):
    """The receive boundary and bookkeeping of one side; subclasses add the rules."""

    def __init__(
        self,
        config: ChannelCoreConfig,
        table: Mapping[tuple[S, ChannelInput], S],
        initial: S,
        closed: S,
    ) -> None:
        self.config = config
        self._table = table
        self._state = initial
        self._closed_state = closed
        self._wire = ChannelConfig(max_message=config.max_message)
        self._decoder = ChannelDecoder(config.max_message)
        self._outbox = bytearray()
        self._events: deque[ChannelEvent] = deque()
        self._deadline: float | None = None
        self.close_reason: str | None = None
        self.close_error: RoostError | None = None

    # ------------------------------------------------------------------ the aioquic shape

    @property
    def state(self) -> S:
        """The current state (a member of the side's state enum)."""
        return self._state

    @property
    def is_closed(self) -> bool:
        """True once the channel ended; the adapter closes the transport then."""
        return self._state is self._closed_state

    def next_event(self) -> ChannelEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """Bytes to write to the stream now (possibly empty); taking them clears them."""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (monotonic seconds), or None."""
        return None if self.is_closed else self._deadline

    def handle_timer(self, now: float) -> None:
        """Run the deadline that is due at ``now``; calling early or late is harmless."""
        if self._deadline is None or self.is_closed or now < self._deadline:
            return
        self._deadline = None
        self._on_timer(now)

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the stream; ``b""`` means the peer closed it.

        A peer's fault never leaves as an exception: it closes the channel and shows as a
        :class:`ChannelClosed` carrying the typed error (h11's receive-boundary rule, with
        ``peer_input`` turning a shared helper's ``LocalProtocolError`` into a remote one).
        """
        if self.is_closed:
            return
        if not data:
            self.receive_eof(now)
            return
        mark = len(self._events)
        try:
            with peer_input():
                for message in self._decoder.feed(data):
                    self._on_message(message, now)
                    if self.is_closed:
                        break
                self._after_receive(now)
        except RoostError as error:
            self._discard_after(mark)
            self._fail(error)

    def receive_eof(self, now: float) -> None:
        """The peer closed its side; a message cut off in the middle counts as truncated."""
        if self.is_closed:
            return
        try:
            self._decoder.end_of_stream()
        except RemoteProtocolError as error:
            self._fail(error)
            return
        self._on_end_of_stream(now)

    def close(self) -> None:
        """Close the channel from our side (nothing more is sent or accepted)."""
        if not self.is_closed:
            self._finish(ChannelInput.CLOSE, Reason.CLOSED, None)

    # -------------------------------------------------------------------- for the sides

    def _on_message(self, message: ChannelMessage, now: float) -> None:
        raise NotImplementedError

    def _on_timer(self, now: float) -> None:
        raise NotImplementedError

    def _on_end_of_stream(self, now: float) -> None:
        raise NotImplementedError

    def _after_receive(self, now: float) -> None:
        """Called once all messages of one ``receive_data`` call were handled."""

    def _discard_after(self, mark: int) -> None:
        """Drop events queued since ``mark`` when the same read then broke a rule.

        The device keeps them (an ACK before a broken message is still true); the hub
        overrides this to drop them, see ``HubChannelCore``.
        """

    def _kind(self, message: ChannelMessage) -> ChannelInput:
        return _KIND_OF[type(message)]

    def _step(self, kind: ChannelInput) -> None:
        """Take the table's transition for ``kind`` or refuse it (peer's fault or ours)."""
        following = self._table.get((self._state, kind))
        if following is None:
            reason = refusal_reason(self._state, kind)
            what = f"{kind.value} in state {self._state.value}"
            if kind in _LOCAL_COMMANDS:
                raise LocalProtocolError(f"cannot {what}", reason=reason)
            raise RemoteProtocolError(f"unexpected {what}", reason=reason)
        self._state = following

    def _command(self, kind: ChannelInput) -> bool:
        """Check a command against the table; False when it is a no-op on a closed channel."""
        was_closed = self.is_closed
        self._step(kind)
        return not was_closed

    def _send(self, message: ChannelMessage) -> None:
        self._outbox += encode_message(message, self._wire)

    def _emit(self, event: ChannelEvent) -> None:
        self._events.append(event)

    def _fail(self, error: RoostError) -> None:
        if not self.is_closed:
            self._finish(ChannelInput.FAIL, error.reason, error)

    def _finish(self, kind: ChannelInput, reason: str, error: RoostError | None) -> None:
        """Move to the closed state through the table and emit the one ChannelClosed."""
        self._step(kind)
        self._deadline = None
        self.close_reason = reason
        self.close_error = error
        self._emit(ChannelClosed(reason, error))


_LOCAL_COMMANDS = frozenset(
    {
        ChannelInput.ACCEPT,
        ChannelInput.REFUSE,
        ChannelInput.SEND_ACK,
        ChannelInput.SEND_REDIRECT,
        ChannelInput.SEND_FRAME,
        ChannelInput.START_DRAIN,
        ChannelInput.CLOSE,
    }
)
