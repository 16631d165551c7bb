"""The hub's side of one device channel, pure (PROTOCOL.md section 4).

The adapter creates one core per accepted TLS connection, knowing the device identifier the
client certificate proved and this hub's own identifier. The core waits for the hello (at
most ``hello_timeout``), checks that it names exactly those two parties, and then lets the
daemon decide admission (capacity is the daemon's business): ``accept`` sends the welcome,
``refuse`` closes. Once open, frames come out as one :class:`FramesReceived` batch per
``receive_data`` call and the daemon answers with ``send_ack`` after storing them.
"""

from __future__ import annotations

from collections.abc import Sequence

from roost.channel._core import ChannelCore
from roost.channel.events import ChannelCoreConfig, FramesReceived, HelloReceived
from roost.channel.state import HUB_TRANSITIONS, ChannelInput, HubState
from roost.errors import (
    LocalProtocolError,
    RefusedError,
    RemoteProtocolError,
    TransportError,
    VerificationError,
)
from roost.hcsp.channel import AckMessage, ChannelMessage, DocumentMessage, FrameMessage
from roost.hcsp.documents import (
    Hello,
    HubAddress,
    Redirect,
    Welcome,
    decode_document,
    encode_document,
    is_device_identifier,
    is_hub_identifier,
)
from roost.reasons import Reason

__all__ = ["HubChannelCore"]


class HubChannelCore(ChannelCore[HubState]):
    """One device channel as the hub sees it.

    Raises ``VerificationError`` (``not-device``) at construction when the certificate's
    identifier is not a device's: such a client never gets as far as a hello.
    """

    def __init__(
        self, config: ChannelCoreConfig, *, hub_id: str, device_id: str, now: float
    ) -> None:
        if not is_device_identifier(device_id):
            raise VerificationError(
                "device channel client is not a device", reason=Reason.NOT_DEVICE
            )
        if not is_hub_identifier(hub_id):
            raise LocalProtocolError(f"{hub_id!r} is not a hub identifier", reason=Reason.NOT_HUB)
        super().__init__(config, HUB_TRANSITIONS, HubState.AWAIT_HELLO, HubState.CLOSED)
        self.hub_id = hub_id
        self.device_id = device_id
        self.hello: Hello | None = None
        # The newest frame seq received on this channel: an ACK beyond it would promise
        # durability for a frame this hub never had.
        self.highest_received: int | None = None
        self._batch: list[FrameMessage] = []
        self._deadline = now + config.hello_timeout

    # ----------------------------------------------------------------------- commands

    def accept(self, features: Sequence[str], max_clients: int) -> None:
        """Admit the device: send the welcome (section 4) and start taking frames."""
        welcome = Welcome(self.hub_id, self.device_id, tuple(features), max_clients)
        body = DocumentMessage(encode_document(welcome))
        self._step(ChannelInput.ACCEPT)
        self._send(body)

    def refuse(self, reason: str) -> None:
        """Turn the device away (e.g. ``full``); nothing is sent, the channel just closes."""
        self._finish(
            ChannelInput.REFUSE, reason, RefusedError(f"device refused: {reason}", reason=reason)
        )

    def send_ack(self, seq: int) -> None:
        """Acknowledge every frame up to ``seq`` as durably stored; no-op once closed."""
        if not self._command(ChannelInput.SEND_ACK):
            return
        if self.highest_received is None or seq > self.highest_received:
            raise LocalProtocolError(
                f"ACK {seq} beyond the newest frame received", reason=Reason.ACK_AHEAD
            )
        self._send(AckMessage(seq))

    def send_redirect(self, target: HubAddress, features: Sequence[str]) -> None:
        """Tell the device to move to ``target`` (seed S210–S260); no-op once closed."""
        redirect = Redirect(self.hub_id, self.device_id, target, tuple(features))
        body = DocumentMessage(encode_document(redirect))
        if self._command(ChannelInput.SEND_REDIRECT):
            self._send(body)

    # -------------------------------------------------------------------- peer input

    def _on_message(self, message: ChannelMessage, now: float) -> None:
        self._step(self._kind(message))
        if isinstance(message, DocumentMessage):
            self._on_hello(message)
        elif isinstance(message, FrameMessage):
            self._batch.append(message)
            if self.highest_received is None or message.seq > self.highest_received:
                self.highest_received = message.seq

    def _on_hello(self, message: DocumentMessage) -> None:
        # Only AWAIT_HELLO accepts a document (the table), so this is the first message.
        document = decode_document(message.xml)
        if not isinstance(document, Hello):
            raise RemoteProtocolError("first message is not a hello", reason=Reason.BAD_HELLO)
        if document.device != self.device_id or document.hub != self.hub_id:
            raise RemoteProtocolError("hello names another party", reason=Reason.BAD_HELLO)
        self.hello = document
        self._deadline = None
        self._emit(HelloReceived(document.device, document.app, document.last_acked, document.name))

    def _after_receive(self, now: float) -> None:
        if self._batch:
            self._emit(FramesReceived(tuple(self._batch)))
            self._batch = []

    def _discard_after(self, mark: int) -> None:
        # A read that breaks a rule is dropped whole: its frames are not stored (the channel
        # closes before any ACK could leave, so storing them would let the device's next
        # hub store them again), and a hello in it is not admitted.
        self._batch = []
        while len(self._events) > mark:
            self._events.pop()

    def _on_end_of_stream(self, now: float) -> None:
        if self._state is HubState.AWAIT_HELLO:
            # A client that leaves without a hello failed the handshake (counted bad-hello).
            error = RemoteProtocolError("closed before hello", reason=Reason.BAD_HELLO)
            self._finish(ChannelInput.END_OF_STREAM, error.reason, error)
        else:
            self._finish(ChannelInput.END_OF_STREAM, Reason.DISCONNECTED, None)

    def _on_timer(self, now: float) -> None:
        error = TransportError(
            f"no hello within {self.config.hello_timeout} s", reason=Reason.HELLO_TIMEOUT
        )
        self._finish(ChannelInput.TIMER, error.reason, error)
