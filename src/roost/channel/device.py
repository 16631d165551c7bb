"""The device's side of its channel to a hub, pure (PROTOCOL.md section 4).

The adapter creates the core once TLS is up and the hub's certificate proved ``hub_id``;
the core queues the hello at once and waits (at most ``welcome_timeout``) for a welcome
naming this device and that hub. Then frames go out with ``send_frame``; ACKs, redirects and
other documents come in as events. ``start_drain`` stops the sending and ends the channel
when the hub has acknowledged everything sent, or at ``drain_timeout``: closing before the
last ACK would make the next hub store those frames again (docs/hub-and-device.md).
"""

from __future__ import annotations

from roost.channel._core import ChannelCore
from roost.channel.events import (
    AckReceived,
    ChannelCoreConfig,
    DocumentIgnored,
    DrainComplete,
    RedirectReceived,
    WelcomeReceived,
)
from roost.channel.state import DEVICE_TRANSITIONS, ChannelInput, DeviceState
from roost.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    TransportError,
    VerificationError,
)
from roost.hcsp.channel import AckMessage, ChannelMessage, DocumentMessage, FrameMessage
from roost.hcsp.documents import (
    Hello,
    Redirect,
    Welcome,
    decode_document,
    encode_document,
    is_device_identifier,
    is_hub_identifier,
)
from roost.reasons import Reason

__all__ = ["DeviceChannelCore"]


class DeviceChannelCore(ChannelCore[DeviceState]):
    """One channel to a hub as the device sees it.

    Raises ``VerificationError`` (``not-hub``) at construction when the certificate's
    identifier is not a hub's.
    """

    def __init__(
        self,
        config: ChannelCoreConfig,
        *,
        device_id: str,
        hub_id: str,
        last_acked: int,
        now: float,
        app: str = "camera",
        name: str | None = None,
    ) -> None:
        if not is_hub_identifier(hub_id):
            raise VerificationError("peer is not a hub", reason=Reason.NOT_HUB)
        if not is_device_identifier(device_id):
            raise LocalProtocolError(
                f"{device_id!r} is not a device identifier", reason=Reason.NOT_DEVICE
            )
        super().__init__(config, DEVICE_TRANSITIONS, DeviceState.AWAIT_WELCOME, DeviceState.CLOSED)
        self.device_id = device_id
        self.hub_id = hub_id
        # Both start at what the spool says was acknowledged: the hub may ACK up to there.
        self.acked = last_acked
        self.last_sent = last_acked
        self.welcome: Welcome | None = None
        # Section 4: the name is a label for people; the hub identifies us by certificate.
        hello = Hello(device_id, hub_id, app, last_acked, name)
        self._send(DocumentMessage(encode_document(hello)))
        self._deadline = now + config.welcome_timeout

    @property
    def can_send(self) -> bool:
        """True while frames may be sent (welcomed, not draining, not closed)."""
        return self._state is DeviceState.STREAMING

    # ----------------------------------------------------------------------- commands

    def send_frame(self, seq: int, captured_at_ms: int, mime: str, payload: bytes) -> None:
        """Queue one frame; sequence numbers must increase (section 4: never reused)."""
        self._step(ChannelInput.SEND_FRAME)
        if seq <= self.last_sent:
            raise LocalProtocolError(
                f"frame {seq} is not after {self.last_sent}", reason=Reason.DUPLICATE_SEQ
            )
        self._send(FrameMessage(seq, captured_at_ms, mime, payload))
        self.last_sent = seq

    def start_drain(self, now: float) -> None:
        """Stop sending; end the channel at the last ACK or after ``drain_timeout``."""
        self._step(ChannelInput.START_DRAIN)
        self._deadline = now + self.config.drain_timeout
        self._maybe_drained()

    # -------------------------------------------------------------------- peer input

    def _on_message(self, message: ChannelMessage, now: float) -> None:
        waiting = self._state is DeviceState.AWAIT_WELCOME
        self._step(self._kind(message))
        if isinstance(message, AckMessage):
            self._on_ack(message.seq)
        elif isinstance(message, DocumentMessage):
            if waiting:
                self._on_welcome(message)
            else:
                self._on_document(message)

    def _on_welcome(self, message: DocumentMessage) -> None:
        document = decode_document(message.xml)
        if not isinstance(document, Welcome):
            raise RemoteProtocolError("expected welcome", reason=Reason.BAD_WELCOME)
        if document.hub != self.hub_id or document.device != self.device_id:
            raise VerificationError("welcome names another party", reason=Reason.BAD_WELCOME)
        self.welcome = document
        self._deadline = None
        self._emit(WelcomeReceived(document.features, document.max_clients))

    def _on_document(self, message: DocumentMessage) -> None:
        document = decode_document(message.xml)
        # A redirect counts only when it names this device (seed FIG. 8B); it arrived on
        # the channel the hub's certificate authenticated, which is what makes it genuine.
        if isinstance(document, Redirect) and document.device == self.device_id:
            self._emit(RedirectReceived(document))
        else:
            self._emit(DocumentIgnored(Reason.UNEXPECTED_DOCUMENT))

    def _on_ack(self, seq: int) -> None:
        if seq > self.last_sent:
            raise RemoteProtocolError("ACK beyond what was sent", reason=Reason.ACK_AHEAD)
        self.acked = max(self.acked, seq)
        self._emit(AckReceived(seq))
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self._state is DeviceState.DRAINING and self.acked >= self.last_sent:
            self._emit(DrainComplete(self.acked, self.last_sent, timed_out=False))
            self._finish(ChannelInput.DRAINED, Reason.CLOSED, None)

    def _on_end_of_stream(self, now: float) -> None:
        if self._state is DeviceState.AWAIT_WELCOME:
            error = TransportError("hub closed the channel before welcome", reason=Reason.REFUSED)
            self._finish(ChannelInput.END_OF_STREAM, error.reason, error)
        else:
            self._finish(ChannelInput.END_OF_STREAM, Reason.DISCONNECTED, None)

    def _on_timer(self, now: float) -> None:
        if self._state is DeviceState.DRAINING:
            self._emit(DrainComplete(self.acked, self.last_sent, timed_out=True))
            self._finish(ChannelInput.TIMER, Reason.CLOSED, None)
            return
        error = TransportError(
            f"no welcome within {self.config.welcome_timeout} s", reason=Reason.HELLO_TIMEOUT
        )
        self._finish(ChannelInput.TIMER, error.reason, error)
