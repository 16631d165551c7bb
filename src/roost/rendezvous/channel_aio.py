"""One TLS control connection to the broker, framed (adapter for the agent and the issuer).

Both ends of a brokered connection talk to the broker's TLS port (PROTOCOL.md section 5):
the hub with its own certificate (mutual TLS), the issuer with none. Either way the broker
must prove it is the broker: its certificate chains to the caller's trust store at the
store's time floor, names the dialled host in its SAN (DNS or IP), and carries no node
identifier (a hub or device certificate is no broker, docs/broker.md "Running it").

Records are ``u32 length | body`` (``roost.framing``, at most ``control.MAX_CHANNEL_BODY``).
A channel keeps the bodies written before it is up and sends them once the handshake and
the certificate check passed; ``close_when_flushed`` closes it after what was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import Callable, Sequence

from cryptography import x509

from roost.errors import RoostError, TransportError, VerificationError
from roost.framing import RecordFramer, encode_record
from roost.pki.certs import load_certificate, san_uris
from roost.pki.verify import verify_server_name
from roost.reasons import Reason
from roost.rendezvous.control import MAX_CHANNEL_BODY

__all__ = ["BrokerChannel", "verify_broker"]

_log = logging.getLogger(__name__)
_READ_CHUNK = 64 * 1024
_NODE_PREFIXES = ("hcsp:", "ab:")


def verify_broker(
    leaf: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    time_floor: dt.datetime,
    host: str,
) -> None:
    """Raise VerificationError unless ``leaf`` is a broker certificate for ``host``: chain
    to ``anchors`` at ``time_floor`` (``chain``), SAN names ``host``, no node identifier
    (``not-broker``)."""
    verify_server_name(leaf, anchors, time_floor, host)
    if any(uri.startswith(_NODE_PREFIXES) for uri in san_uris(leaf)):
        raise VerificationError(
            "the broker presented a hub or device certificate", reason=Reason.NOT_BROKER
        )


class BrokerChannel:
    """One framed TLS connection to the broker; ``on_body`` gets each record body,
    ``on_closed`` is called once when the connection ends (or never opened)."""

    def __init__(
        self,
        on_body: Callable[[bytes], None],
        on_closed: Callable[[], None],
    ) -> None:
        self._on_body = on_body
        self._on_closed = on_closed
        self._pending: list[bytes] = []
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._close_requested = False
        self.closed = False
        self.bytes_written = 0

    @property
    def is_up(self) -> bool:
        return self._writer is not None and not self.closed

    async def open(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        verify: Callable[[x509.Certificate], None],
        timeout_s: float = 10.0,
    ) -> None:
        """Connect and check the broker; TransportError ``connect`` when nothing answers,
        VerificationError when the broker is not trusted. Starts the reader."""
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ssl_context, server_hostname=host, limit=_READ_CHUNK
                )
        except ssl.SSLCertVerificationError as exc:
            self._finish()
            raise VerificationError(
                f"the broker's certificate is not trusted: {exc.verify_message}",
                reason=Reason.CHAIN,
            ) from exc
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._finish()
            raise TransportError(
                f"broker {host}:{port} unreachable: {exc or type(exc).__name__}",
                reason=Reason.CONNECT,
            ) from exc
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not der:
                raise VerificationError("the broker sent no certificate", reason=Reason.CHAIN)
            verify(load_certificate(der))
        except BaseException:
            writer.close()
            self._finish()
            raise
        self._writer = writer
        if self.closed or self._close_requested:
            # Closed while the handshake ran: write what was queued, then go.
            self._flush()
            writer.close()
            self._finish()
            return
        self._flush()
        self._task = asyncio.ensure_future(self._read(reader))

    def _flush(self) -> None:
        assert self._writer is not None
        pending, self._pending = self._pending, []
        for body in pending:
            self._write_now(body)

    def _write_now(self, body: bytes) -> None:
        assert self._writer is not None
        if self._writer.is_closing():
            return
        record = encode_record(body)
        self.bytes_written += len(record)
        self._writer.write(record)

    def write(self, body: bytes) -> None:
        """Send one record body (kept until the connection is up; dropped once closed)."""
        if self.closed:
            return
        if self._writer is None:
            self._pending.append(body)
        else:
            self._write_now(body)

    def close_when_flushed(self) -> None:
        """Close after every body written so far (at once if the connection is up)."""
        self._close_requested = True
        if self._writer is not None:
            self._writer.close()
            self._finish()

    def abort(self) -> None:
        """Close now; queued bodies are dropped."""
        self._pending.clear()
        self.close_when_flushed()
        if self._writer is None:
            self._finish()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        framer = RecordFramer(MAX_CHANNEL_BODY, what="broker channel")
        try:
            while not self.closed:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    break
                for body in framer.feed(data):
                    self._on_body(body)
        except RoostError as exc:
            _log.info("broker channel ended: %s", exc.reason)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._writer is not None:
                self._writer.close()
            self._finish()

    def _finish(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_closed()

    async def wait_closed(self) -> None:
        """Until the reader ended (after ``close_when_flushed`` or the broker's close)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)
