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
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509

from roost.errors import TransportError, VerificationError
from roost.pki.tls import client_context, peer_certificate
from roost.pki.trust import TrustState
from roost.reasons import Reason

__all__ = ["PEER_ALPN", "PeerClient", "bridge_to_peer_app"]

PEER_ALPN = "roost-web/1"
_PIPE_CHUNK = 256 * 1024


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
    try:
        await asyncio.gather(_pipe(reader, app_writer), _pipe(app_reader, writer))
    finally:
        app_writer.close()
        writer.close()


class PeerClient:
    """Requests to other hubs' peer apps, as this hub (its certificate and key)."""

    def __init__(self, cert_file: Path, key_file: Path, timeout_s: float = 3.0) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self._timeout = timeout_s
        self._anchors: tuple[bytes, ...] = ()
        self._session: aiohttp.ClientSession | None = None

    def _context(self, anchors: Sequence[x509.Certificate]) -> ssl.SSLContext:
        context = client_context(anchors, self._cert_file, self._key_file)
        context.set_alpn_protocols([PEER_ALPN])
        return context

    def session(self, trust: TrustState) -> aiohttp.ClientSession:
        """The client session, rebuilt when the trusted anchors changed (a rollover)."""
        from cryptography.hazmat.primitives.serialization import Encoding

        key = tuple(anchor.public_bytes(Encoding.DER) for anchor in trust.anchors)
        if self._session is None or key != self._anchors:
            if self._session is not None:
                old = self._session
                asyncio.get_running_loop().create_task(old.close())
            connector = aiohttp.TCPConnector(ssl=self._context(trust.anchors), limit=256)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
                auto_decompress=False,
            )
            self._anchors = key
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(
        self, trust: TrustState, hub_id: str, endpoint: str, path: str
    ) -> aiohttp.ClientResponse:
        """GET ``path`` from hub ``hub_id`` at ``endpoint``; the caller releases the response.

        Raises TransportError when the hub cannot be reached and VerificationError when the
        server is not ``hub_id``.
        """
        url = f"https://{endpoint}{path}"
        try:
            response = await self.session(trust).get(url, allow_redirects=False)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportError(f"peer hub {hub_id}: {exc!r}", reason=Reason.CONNECT) from exc
        try:
            self._check_server(trust, hub_id, response)
        except BaseException:
            response.release()
            raise
        return response

    async def get_json(self, trust: TrustState, hub_id: str, endpoint: str, path: str) -> Any:
        """GET a JSON document from a peer hub (bounded by the client timeout)."""
        async with asyncio.timeout(self._timeout):
            response = await self.open(trust, hub_id, endpoint, path)
            try:
                if response.status != 200:
                    raise TransportError(
                        f"peer hub {hub_id} answered {response.status}", reason=Reason.STATUS
                    )
                return await response.json()
            finally:
                response.release()

    @staticmethod
    def _check_server(trust: TrustState, hub_id: str, response: aiohttp.ClientResponse) -> None:
        connection = response.connection
        transport = connection.transport if connection is not None else None
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        leaf = peer_certificate(ssl_object)
        # The chain was checked in the handshake; the identifier is checked here, at the
        # trust store's validation time (PROTOCOL.md section 1).
        try:
            trust.verify_node(leaf, hub_id)
        except VerificationError as exc:
            raise VerificationError(
                f"peer at the endpoint is not hub {hub_id}", reason=exc.reason
            ) from exc
