"""Hub to hub for the dashboard: mutual TLS on the device-channel port, ALPN ``roost-web/1``.

Every hub already knows every other live hub's identifier and device-channel endpoint
from their verified announcements (PROTOCOL.md section 3), and every hub holds a hub
certificate from the home's CA. So a hub asks another for its cameras and streams over
TLS to that endpoint, presenting its own hub certificate and offering the ALPN protocol
``roost-web/1``: the receiving daemon sees the protocol, verifies the client certificate as
a hub's (section 1) and hands the connection to :func:`bridge_to_peer_app`, which pipes it
to the dashboard's peer application on a private Unix socket. The dialling side checks that
the server's certificate is the hub it meant to reach. Devices never offer the protocol,
so their channels are untouched, and no extra port or announcement field is needed: a page
bookmarked on any hub can show cameras wherever they stream, before and after a handover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from roost.errors import TransportError, VerificationError
from roost.pki.tls import client_context, peer_certificate
from roost.pki.trust import TrustState
from roost.reasons import Reason

__all__ = ["PEER_ALPN", "PeerClient", "PeerResponse", "bridge_to_peer_app"]

PEER_ALPN = "roost-web/1"
_PIPE_CHUNK = 256 * 1024
_MAX_JSON = 4 * 1024 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_PIPE_CHUNK):
            writer.write(data)
            # Back-pressure: a slow reader on the far side slows this copy, so the copy
            # never buffers more than the socket buffers.
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def bridge_to_peer_app(
    socket_path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Pipe a verified peer hub's TLS connection to the peer app on ``socket_path``."""
    try:
        app_reader, app_writer = await asyncio.open_unix_connection(str(socket_path))
    except OSError:
        writer.close()
        return
    upstream = asyncio.ensure_future(_pipe(reader, app_writer))
    try:
        # The app answers HTTP/1.0 and closes: once its side ends, the answer is complete
        # (TLS has no half-close to pass on), so both connections are closed.
        await _pipe(app_reader, writer)
    finally:
        upstream.cancel()
        app_writer.close()
        writer.close()


class PeerResponse:
    """A peer hub's answer: status, headers, and the body still to read (then ``close``)."""

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.status = status
        self.headers = headers
        self.reader = reader
        self._writer = writer

    async def read(self, limit: int = _MAX_JSON) -> bytes:
        """The whole body (the peer closes after it: HTTP/1.0), at most ``limit`` bytes."""
        data = await self.reader.read(limit + 1)
        while len(data) <= limit and (more := await self.reader.read(limit + 1 - len(data))):
            data += more
        if len(data) > limit:
            raise TransportError("peer answer too large", reason=Reason.OVERSIZED)
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        while data := await self.reader.read(_PIPE_CHUNK):
            yield data

    def close(self) -> None:
        self._writer.close()


class PeerClient:
    """Requests to other hubs' peer apps, as this hub (its certificate and key).

    Each request is one TLS connection and HTTP/1.0, so the body ends where the connection
    does; the server's certificate is checked to be the hub asked for before the request
    is sent.
    """

    def __init__(self, cert_file: Path, key_file: Path, timeout_s: float = 3.0) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self._timeout = timeout_s
        self._anchors: tuple[bytes, ...] = ()
        self._context: ssl.SSLContext | None = None

    def context(self, trust: TrustState) -> ssl.SSLContext:
        """The client context, rebuilt when the trusted anchors changed (a rollover)."""
        key = tuple(anchor.public_bytes(Encoding.DER) for anchor in trust.anchors)
        if self._context is None or key != self._anchors:
            context = client_context(trust.anchors, self._cert_file, self._key_file)
            context.set_alpn_protocols([PEER_ALPN])
            self._context, self._anchors = context, key
        return self._context

    async def close(self) -> None:
        self._context = None

    async def open(self, trust: TrustState, hub_id: str, endpoint: str, path: str) -> PeerResponse:
        """GET ``path`` from hub ``hub_id`` at ``endpoint``; the caller closes the response.

        Raises TransportError when the hub cannot be reached or answers nonsense, and
        VerificationError when the server is not ``hub_id``.
        """
        host, _, port = endpoint.rpartition(":")
        host = host.strip("[]")
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    host, int(port), ssl=self.context(trust), limit=_PIPE_CHUNK
                )
        except (OSError, TimeoutError, ValueError, ssl.SSLError) as exc:
            raise TransportError(f"peer hub {hub_id}: {exc!r}", reason=Reason.CONNECT) from exc
        try:
            self._check_server(trust, hub_id, writer.get_extra_info("ssl_object"))
            writer.write(f"GET {path} HTTP/1.0\r\nHost: roost-peer\r\n\r\n".encode("ascii"))
            async with asyncio.timeout(self._timeout):
                head = await reader.readuntil(b"\r\n\r\n")
            status, headers = _parse_head(head)
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            writer.close()
            raise TransportError(f"peer hub {hub_id}: {exc!r}", reason=Reason.CONNECT) from exc
        except BaseException:
            writer.close()
            raise
        return PeerResponse(status, headers, reader, writer)

    async def get_json(self, trust: TrustState, hub_id: str, endpoint: str, path: str) -> Any:
        """GET a JSON document from a peer hub (bounded by the client timeout)."""
        response = await self.open(trust, hub_id, endpoint, path)
        try:
            if response.status != 200:
                raise TransportError(
                    f"peer hub {hub_id} answered {response.status}", reason=Reason.STATUS
                )
            async with asyncio.timeout(self._timeout):
                return json.loads(await response.read())
        finally:
            response.close()

    @staticmethod
    def _check_server(trust: TrustState, hub_id: str, ssl_object: Any) -> None:
        leaf = peer_certificate(ssl_object)
        # The chain was checked in the handshake; the identifier is checked here, at the
        # trust store's validation time (PROTOCOL.md section 1).
        try:
            trust.verify_node(leaf, hub_id)
        except VerificationError as exc:
            raise VerificationError(
                f"peer at the endpoint is not hub {hub_id}", reason=exc.reason
            ) from exc


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise TransportError("peer answer is not HTTP", reason=Reason.BAD_HTTP)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers
