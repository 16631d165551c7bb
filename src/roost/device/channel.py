"""The device's channel to a hub: :class:`DeviceChannelCore` on an asyncio TLS stream.

A thin adapter (STYLE.md): one reader task feeds the socket into the core and hands its
events to the daemon's callbacks; ``transmit`` writes what the core wants sent and re-arms
ONE ``loop.call_at`` for the core's deadline (welcome or drain). Every protocol decision is
the core's (PROTOCOL.md section 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable

from cryptography import x509

from roost.channel import (
    AckReceived,
    ChannelClosed,
    ChannelCoreConfig,
    DeviceChannelCore,
    DocumentIgnored,
    RedirectReceived,
    WelcomeReceived,
)
from roost.channel.aio import flush_channel
from roost.errors import TransportError
from roost.hcsp.documents import Redirect
from roost.pki.tls import peer_certificate
from roost.reasons import Reason
from roost.timer import CoreTimer

__all__ = ["CONNECT_TIMEOUT", "HubChannel", "open_hub_channel"]

log = logging.getLogger("roost.device")
_READ_CHUNK = 64 * 1024
# TCP and TLS to a hub must finish within this; the welcome has its own deadline in the core.
CONNECT_TIMEOUT = 5.0
# How many redirects may wait for the connection manager; more are dropped (the hub's
# planner repeats itself if the device stays).
_REDIRECT_QUEUE = 4


class HubChannel:
    """One authenticated channel to a hub: frames out, ACKs and redirects in.

    ``on_ack(seq)`` runs for every ACK (the spool forgets what the hub stored);
    ``on_ignored(reason)`` for every document that is not a redirect for this device.
    Redirects wait in ``redirects`` for the connection manager. ``closed`` is set once the
    channel ended, for whatever reason; ``close()`` ends it from this side.
    """

    def __init__(
        self,
        core: DeviceChannelCore,
        endpoint: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        on_ack: Callable[[int], object],
        on_ignored: Callable[[str], None],
    ) -> None:
        self.core = core
        self.hub_id = core.hub_id
        self.endpoint = endpoint
        self.reader = reader
        self.writer = writer
        self._loop = asyncio.get_running_loop()
        self.opened_at = self._loop.time()
        self.redirects: asyncio.Queue[Redirect] = asyncio.Queue(maxsize=_REDIRECT_QUEUE)
        self.closed = asyncio.Event()
        self._on_ack = on_ack
        self._on_ignored = on_ignored
        self._welcomed = asyncio.Event()
        self._open_error: BaseException | None = None
        self._timer = CoreTimer(self._loop, self._on_timer)
        self._reader_task: asyncio.Task[None] | None = None

    # --------------------------------------------------------------------- what it is

    @property
    def acked(self) -> int:
        """The newest seq this hub acknowledged (or the spool's mark when opened)."""
        return self.core.acked

    @property
    def last_sent(self) -> int:
        """The newest seq sent on this channel."""
        return self.core.last_sent

    @property
    def sending(self) -> bool:
        """True while frames may be sent (welcomed, not draining, not closed)."""
        return self.core.can_send

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Send the hello the core queued and start reading."""
        self.transmit()
        self._reader_task = asyncio.create_task(self._read_loop())

    async def wait_welcome(self) -> None:
        """Return once the hub welcomed this device; raise what ended the channel otherwise."""
        await self._welcomed.wait()
        if self._open_error is not None:
            raise self._open_error

    def send_frame(self, seq: int, captured_at_ms: int, mime: str, payload: bytes) -> None:
        """Send one frame (in seq order); raises LocalProtocolError when not streaming."""
        self.core.send_frame(seq, captured_at_ms, mime, payload)
        self.transmit()

    async def drain_and_close(self) -> None:
        """Stop sending, wait until the hub acknowledged what it got, then close.

        Closing before the last ACK would make the next hub store those frames again; the
        core ends the drain at the last ACK or at its drain deadline.
        """
        if self.core.can_send:
            self.core.start_drain(self._loop.time())
            self._dispatch()
            self.transmit()
        else:
            self.close()
        # The core's deadline ends the drain; this bound only guards against a stalled loop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), self.core.config.drain_timeout + 1.0)
        self.close()

    def close(self) -> None:
        """End the channel now (idempotent)."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.core.close()
        self._timer.cancel()
        self.writer.close()
        task = self._reader_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if not self._welcomed.is_set():
            self._settle(TransportError("channel closed before welcome", reason=Reason.CLOSED))

    # ------------------------------------------------------------------- the adapter

    def transmit(self) -> None:
        """Write what the core wants sent and re-arm the one timer for its deadline."""
        flush_channel(self.core, self.writer, self._timer)
        if self.core.is_closed:
            self.close()

    def _on_timer(self) -> None:
        self.core.handle_timer(self._loop.time())
        self._dispatch()
        self.transmit()

    async def _read_loop(self) -> None:
        try:
            while not self.core.is_closed:
                data = await self.reader.read(_READ_CHUNK)
                self.core.receive_data(data, self._loop.time())
                self._dispatch()
                self.transmit()
        except (OSError, ConnectionError) as exc:
            self._ended(exc)
        finally:
            self.close()

    def _dispatch(self) -> None:
        while (event := self.core.next_event()) is not None:
            if isinstance(event, AckReceived):
                self._on_ack(event.seq)
            elif isinstance(event, RedirectReceived):
                with contextlib.suppress(asyncio.QueueFull):
                    self.redirects.put_nowait(event.redirect)
            elif isinstance(event, DocumentIgnored):
                self._on_ignored(event.reason)
            elif isinstance(event, WelcomeReceived):
                self.opened_at = self._loop.time()
                self._settle(None)
            elif isinstance(event, ChannelClosed) and event.error is not None:
                self._ended(event.error)

    def _ended(self, error: BaseException) -> None:
        """An established channel's end is logged here, once per channel. Before the
        welcome the error goes to :meth:`wait_welcome`'s caller instead, which counts it
        and logs it at most once per hub host per interval (PROTOCOL.md preamble), so a
        hub refusing every attempt does not cost a line per attempt."""
        if self._welcomed.is_set():
            log.info("channel to %s ended: %s", self.hub_id, error)
        else:
            self._settle(error)

    def _settle(self, error: BaseException | None) -> None:
        if not self._welcomed.is_set():
            self._open_error = error
            self._welcomed.set()


async def open_hub_channel(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    verify: Callable[[x509.Certificate], Awaitable[str]],
    device_id: str,
    last_acked: int,
    config: ChannelCoreConfig,
    name: str | None = None,
    on_ack: Callable[[int], object],
    on_ignored: Callable[[str], None],
    connect_timeout: float = CONNECT_TIMEOUT,
) -> HubChannel:
    """TLS to a hub, verify its certificate with ``verify``, hello and welcome.

    Raises ``RoostError`` (verification, protocol, ``hello-timeout``, ``refused``),
    ``OSError`` or ``TimeoutError`` on any failure; nothing stays open then.
    """
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ssl_context, limit=_READ_CHUNK), connect_timeout
    )
    channel: HubChannel | None = None
    try:
        leaf = peer_certificate(writer.get_extra_info("ssl_object"))
        hub_id = await verify(leaf)
        core = DeviceChannelCore(
            config,
            device_id=device_id,
            hub_id=hub_id,
            last_acked=last_acked,
            now=loop.time(),
            name=name,
        )
        channel = HubChannel(
            core, (host, port), reader, writer, on_ack=on_ack, on_ignored=on_ignored
        )
        channel.start()
        await channel.wait_welcome()
    except BaseException:
        if channel is not None:
            channel.close()
        writer.close()
        raise
    return channel
