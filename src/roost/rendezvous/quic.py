"""The session of a brokered connection: QUIC over any datagram path (PROTOCOL.md section 5).

aioquic's ``QuicConnection`` is sans-I/O; this adapter feeds it the datagrams of one
``DatagramPath`` (direct UDP, the broker's relay, or the one switching between them) and
sends what it wants sent, with one ``loop.call_at`` for its next deadline (STYLE.md,
adapters). aioquic's own asyncio ``connect``/``serve`` are not used: they own a socket,
and the session must share the party's one UDP socket or run inside relay records.

Trust (section 5, step 9). The target hub is the QUIC server with its own hub certificate
and key (ECDSA P-256); QUIC always runs TLS 1.3 (RFC 9001 section 4.2; aioquic implements
nothing older). The client sets aioquic's ``verify_mode`` to ``CERT_NONE`` because
aioquic's verifier checks validity dates against the wall clock, which PROTOCOL.md
section 1 forbids for clockless nodes; aioquic still checks the CertificateVerify
signature with the presented certificate's key and the Finished MAC, so the server holds
that certificate's key. Right after the handshake, before any stream is handed out, the
caller's ``verify_server(certificate)`` decides: chain to the trust store at its time floor
and the target identifier (``verify_target`` builds that check from ``roost.pki.verify``).
A refusal closes the connection and raises its VerificationError.

Paths. aioquic is always given one constant network address, so it never sees a path
change and never runs path validation: which path carries the datagrams is ours to
choose. A direct path is only taken after the puncher's nonce exchange proved the peer
answers there, and every QUIC packet is authenticated by the connection's keys, so a
datagram accepted from either path cannot inject anything. ``switch_path`` sends on the
new path from then on and keeps receiving from the old one until the session closes.

Tuning (docs/BENCHMARKS.md, "Remote session"): aioquic is CPU-bound in CPython, so the
session spends fewer packets per byte where that is safe. Once the handshake is done the
receiver acknowledges after ``_ACK_DELAY_S`` instead of aioquic's 1 ms (well under the
25 ms ``max_ack_delay`` it advertises, RFC 9000 section 13.2.1), which sends several
times fewer ACK-only packets; the handshake itself keeps prompt ACKs. Inside relay records
the datagrams are not bound by a path MTU (the broker's TLS connections carry them), so
the session sends ``MAX_RELAY_PAYLOAD``-byte datagrams there; a direct path stays at
1200 bytes, the size every IPv4 and IPv6 path carries (RFC 9000 section 14), since
aioquic does no path MTU discovery.

A stream is exposed as the guard's ``ByteStreamReader``/``ByteStreamWriter``
(``roost.guard.streams``): ``read(n)`` returns ``b""`` at the stream's end, ``close`` ends
both directions.

Server-first login (docs/guard.md, "Server-first login"; PROTOCOL.md section 6). A hub
holding a brokered session's password grant serves with ``login=``: it prefers ALPN
``roost/1-server-first`` to ``roost/1`` and opens the login stream itself (stream 1,
the first server-initiated bidirectional stream, RFC 9000 section 2.1) before the client's
first Initial arrives; what the guard writes on it is held until the client's ClientHello
has chosen that ALPN and then leaves in the server's first flight as 0.5-RTT data (1-RTT
packets sent before the handshake completes, RFC 9001 section 4.1.1). So the Challenge is
on the client's side when its handshake completes, instead of a round trip after its
Hello. A client that chose plain ``roost/1`` never sees the stream (it is ended unsent)
and logs in on a stream of its own. The client offers both by default; once
``server_first`` is true, ``login_stream()`` is the hub's stream, otherwise a new one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence

from aioquic._buffer import Buffer  # aioquic.buffer re-exports it without __all__.
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    PingAcknowledged,
    ProtocolNegotiated,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from roost.errors import RoostError, TransportError, VerificationError
from roost.pki.verify import verify_node
from roost.reasons import Reason
from roost.rendezvous.control import MAX_RELAY_PAYLOAD
from roost.rendezvous.paths import DatagramPath, RelayPath, SwitchingPath
from roost.timer import CoreTimer

__all__ = [
    "ALPN",
    "SERVER_FIRST_ALPN",
    "QuicSession",
    "QuicStream",
    "quic_connect",
    "quic_serve",
    "verify_target",
]

_log = logging.getLogger(__name__)

ALPN = "roost/1"
# roost/1 whose login the hub opens (see the module docstring).
SERVER_FIRST_ALPN = "roost/1-server-first"
# The hub's login stream: the first server-initiated bidirectional stream (RFC 9000 2.1).
_LOGIN_STREAM_ID = 1
# The one address aioquic sees for every path (see the module docstring).
_PATH_ADDRESS = ("0.0.0.0", 0)
# Application error code of a close after our certificate check refused the server.
_VERIFICATION_FAILED = 0x100
# Streams the peer may open before one is accepted; aioquic's stream limit bounds the rest.
_MAX_PENDING_STREAMS = 8
# Bytes one stream may hold unread before it is reset: a peer cannot make us buffer more.
_MAX_UNREAD = 4 * 1024 * 1024
_MIN_INITIAL = 1200
# Unacknowledged bytes of one stream above which ``drain`` waits: aioquic's default stream
# flow-control window, so drain never stops a sender that QUIC itself would let through
# (256 kB is one 40 ms round trip at 6.5 MB/s, so it could hold a sender below the path).
_HIGH_WATER = 1024 * 1024
# The receiver's ACK delay after the handshake (see the module docstring).
_ACK_DELAY_S = 0.005


def verify_target(
    anchors: Sequence[x509.Certificate], time_floor: dt.datetime, identifier: str
) -> Callable[[x509.Certificate], None]:
    """The issuer's check of the target's certificate: chains to ``anchors`` at the trust
    store's time floor (no wall clock, section 1) and carries ``identifier`` in its SAN
    URI; raises VerificationError ("chain", "wrong-id")."""

    def check(certificate: x509.Certificate) -> None:
        verify_node(certificate, anchors, time_floor, expected_identifier=identifier)

    return check


class QuicStream:
    """One bidirectional QUIC stream as a guard stream (reader and writer at once)."""

    def __init__(self, session: QuicSession, stream_id: int) -> None:
        self._session = session
        self.stream_id = stream_id
        self._inbox = bytearray()
        self._eof = False
        self._closing = False
        self._ready = asyncio.Event()

    def _feed(self, data: bytes, end: bool) -> None:
        if self._eof:
            return
        self._inbox += data
        if len(self._inbox) > _MAX_UNREAD:
            self._session._reset(self.stream_id)
            end = True
        if end:
            self._eof = True
        self._ready.set()

    def _end(self) -> None:
        self._eof = True
        self._ready.set()

    def _refuse(self) -> None:
        # Never to be sent (the client did not choose a server-first login): reads end,
        # writes raise, and closing sends nothing.
        self._closing = True
        self._end()

    async def read(self, n: int) -> bytes:
        """At most ``n`` bytes as they arrive; ``b""`` at the end of the stream."""
        while not self._inbox and not self._eof:
            self._ready.clear()
            await self._ready.wait()
        data = bytes(self._inbox[:n])
        del self._inbox[:n]
        return data

    def write(self, data: bytes) -> None:
        """Queue ``data`` on the stream; ConnectionResetError once closed."""
        if self._closing or self._session.closed:
            raise ConnectionResetError("QUIC stream is closed")
        if data:
            self._session._send(self.stream_id, data, end=False)

    async def drain(self) -> None:
        """Wait while more than ``_HIGH_WATER`` bytes of this stream are unacknowledged (a
        slow relay must not make us buffer a whole video); ConnectionResetError if the
        session ends meanwhile (the idle timeout bounds the wait)."""
        while True:
            if self._session.closed:
                raise ConnectionResetError("QUIC session is closed")
            if self._session._unacknowledged(self.stream_id) <= _HIGH_WATER:
                break
            await self._session._wait_progress()
        await asyncio.sleep(0)

    def close(self) -> None:
        """End the stream both ways: a FIN to the peer and ``b""`` to our reader."""
        if self._closing:
            return
        self._closing = True
        if not self._session.closed:
            self._session._send(self.stream_id, b"", end=True)
        self._end()

    async def wait_closed(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self._closing or self._session.closed


class QuicSession:
    """One QUIC connection over a datagram path; built by ``quic_serve``/``quic_connect``."""

    def __init__(
        self,
        path: DatagramPath,
        configuration: QuicConfiguration,
        *,
        keepalive_s: float | None = None,
        login: bool = False,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._configuration = configuration
        self.is_client = configuration.is_client
        self._path = path if isinstance(path, SwitchingPath) else SwitchingPath(path)
        self._quic: QuicConnection | None = None
        if self.is_client:
            self._quic = QuicConnection(configuration=configuration)
        self._timer = CoreTimer(self._loop, self._on_timer)
        self._keepalive_s = keepalive_s
        self._last_sent = self._loop.time()
        self._streams: dict[int, QuicStream] = {}
        self._incoming: deque[QuicStream] = deque()
        self._incoming_ready = asyncio.Event()
        self._progress = asyncio.Event()
        self._handshake = self._loop.create_future()
        self._terminated = self._loop.create_future()
        self._ping_uid = 0
        self._pings: dict[int, tuple[float, asyncio.Future[float]]] = {}
        self.server_certificate_der = b""
        # The negotiated ALPN once the ClientHello was processed (None before).
        self.alpn: str | None = None
        # The hub's login stream (server-first), and its writes held until the ALPN is known.
        self._login: QuicStream | None = None
        self._login_taken = False
        self._held: list[tuple[bytes, bool]] = []
        if login and not self.is_client:
            # Before the receiver is set: the path may already hold the client's Initial.
            self._login = QuicStream(self, _LOGIN_STREAM_ID)
            self._streams[_LOGIN_STREAM_ID] = self._login
        self.closed = False
        self.close_reason = ""
        self.bytes_sent = 0
        self.bytes_received = 0
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self._path.set_receiver(self._on_datagram)

    # ------------------------------------------------------------------ datagrams in

    def _on_datagram(self, data: bytes) -> None:
        self.datagram_received(data, self._loop.time())

    def datagram_received(self, data: bytes, now: float) -> None:
        """One datagram of this session from any of its paths."""
        if self.closed:
            return
        self.datagrams_received += 1
        self.bytes_received += len(data)
        if self._quic is None and not self._accept_initial(data):
            return
        assert self._quic is not None
        self._quic.receive_datagram(data, _PATH_ADDRESS, now)
        self._process_events()
        self.transmit()
        self._progress.set()

    def _accept_initial(self, data: bytes) -> bool:
        """The server's connection starts with the client's first Initial (RFC 9000
        section 14.1: padded to 1200 bytes at least); anything else before it is dropped."""
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._configuration.connection_id_length
            )
        except ValueError:
            return False
        if (
            header.packet_type != QuicPacketType.INITIAL
            or header.version not in self._configuration.supported_versions
            or len(data) < _MIN_INITIAL
        ):
            return False
        self._quic = QuicConnection(
            configuration=self._configuration,
            original_destination_connection_id=header.destination_cid,
        )
        return True

    def _process_events(self) -> None:
        assert self._quic is not None
        while (event := self._quic.next_event()) is not None:
            if isinstance(event, ProtocolNegotiated):
                self._negotiated(event.alpn_protocol)
            elif isinstance(event, HandshakeCompleted):
                # aioquic keeps both knobs on the connection without a public setter.
                if hasattr(self._quic, "_ack_delay"):
                    self._quic._ack_delay = _ACK_DELAY_S
                self._fit_datagram_size()
                if not self._handshake.done():
                    self._handshake.set_result(event.alpn_protocol)
            elif isinstance(event, StreamDataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is None:
                    stream = self._peer_stream(event.stream_id)
                if stream is not None:
                    stream._feed(event.data, event.end_stream)
            elif isinstance(event, StreamReset):
                reset = self._streams.get(event.stream_id)
                if reset is not None:
                    reset._end()
            elif isinstance(event, PingAcknowledged):
                sent_at, waiter = self._pings.pop(event.uid, (0.0, None))
                if waiter is not None and not waiter.done():
                    waiter.set_result((self._loop.time() - sent_at) * 1000.0)
            elif isinstance(event, ConnectionTerminated):
                self._terminate(event.reason_phrase or f"error {event.error_code}")

    def _negotiated(self, alpn: str | None) -> None:
        """The ClientHello chose ``alpn``: a server's login stream is released into this
        flight or ended unsent; a client knows the hub's stream 1 is its login stream."""
        self.alpn = alpn
        login = self._login
        if self.is_client:
            if alpn == SERVER_FIRST_ALPN and login is None:
                # Known before its first bytes, so the login may wait on it at once.
                self._login = QuicStream(self, _LOGIN_STREAM_ID)
                self._streams[_LOGIN_STREAM_ID] = self._login
            return
        if login is None:
            return
        held, self._held = self._held, []
        if alpn != SERVER_FIRST_ALPN:
            login._refuse()
            return
        assert self._quic is not None
        for data, end in held:
            # 0.5-RTT: the server holds its 1-RTT keys once its Finished is written.
            self._quic.send_stream_data(_LOGIN_STREAM_ID, data, end_stream=end)

    def _fit_datagram_size(self) -> None:
        # Relay records carry up to MAX_RELAY_PAYLOAD bytes whatever the path MTU; a
        # direct path gets the configured size (1200, RFC 9000 section 14).
        quic = self._quic
        if quic is None or not hasattr(quic, "_max_datagram_size"):
            return
        relayed = isinstance(self._path.current, RelayPath)
        quic._max_datagram_size = (
            MAX_RELAY_PAYLOAD if relayed else self._configuration.max_datagram_size
        )

    def _peer_stream(self, stream_id: int) -> QuicStream | None:
        # Client-initiated bidirectional streams have ids 0, 4, 8... (RFC 9000 section
        # 2.1); the client accepts nothing the server opens, and the queue is bounded.
        if self.is_client or stream_id % 4 != 0 or len(self._incoming) >= _MAX_PENDING_STREAMS:
            self._reset(stream_id)
            return None
        stream = QuicStream(self, stream_id)
        self._streams[stream_id] = stream
        self._incoming.append(stream)
        self._incoming_ready.set()
        return stream

    def _unacknowledged(self, stream_id: int) -> int:
        # aioquic keeps a stream's sent-but-unacknowledged bytes in its sender's buffer and
        # offers no public accessor; without it (another aioquic) drain does not wait.
        streams = getattr(self._quic, "_streams", {})
        sender = getattr(streams.get(stream_id), "sender", None)
        return len(getattr(sender, "_buffer", b""))

    async def _wait_progress(self) -> None:
        self._progress.clear()
        await self._progress.wait()

    def _terminate(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._progress.set()
        self.close_reason = reason
        for stream in self._streams.values():
            stream._end()
        self._incoming_ready.set()
        error = TransportError(f"QUIC session ended: {reason}", reason=Reason.CLOSED)
        for future in (self._handshake, self._terminated):
            if not future.done():
                if future is self._handshake:
                    future.set_exception(error)
                else:
                    future.set_result(None)
        for _, waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._pings.clear()
        self._timer.cancel()
        self._path.close()

    # ------------------------------------------------------------------ datagrams out

    def _send(self, stream_id: int, data: bytes, *, end: bool) -> None:
        if self._quic is None or (not self.is_client and self.alpn is None):
            # Only the server's login stream exists before the ClientHello chose the ALPN.
            self._held.append((data, end))
            return
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end)
        except ValueError as exc:  # a stream aioquic does not (or no longer) know
            raise ConnectionResetError(f"QUIC stream {stream_id}: {exc}") from exc
        self.transmit()

    def _reset(self, stream_id: int) -> None:
        assert self._quic is not None
        try:
            self._quic.reset_stream(stream_id, 0)
            self._quic.stop_stream(stream_id, 0)
        except ValueError:
            pass

    def transmit(self) -> None:
        """Send what the connection wants sent and re-arm the one timer."""
        quic = self._quic
        if quic is None:
            return
        now = self._loop.time()
        for data, _ in quic.datagrams_to_send(now):
            self.datagrams_sent += 1
            self.bytes_sent += len(data)
            self._last_sent = now
            try:
                self._path.send(data)
            except (RoostError, OSError) as exc:
                # A lost datagram: QUIC's loss recovery sends the content again.
                _log.debug("QUIC datagram not sent: %s", exc)
        deadline = quic.get_timer()
        if self._keepalive_s is not None and self._handshake.done():
            keepalive_at = self._last_sent + self._keepalive_s
            deadline = keepalive_at if deadline is None else min(deadline, keepalive_at)
        self._timer.arm(None if self.closed else deadline)

    def _on_timer(self) -> None:
        quic = self._quic
        if quic is None or self.closed:
            return
        now = self._loop.time()
        if self._keepalive_s is not None and now >= self._last_sent + self._keepalive_s:
            self._ping_uid += 1
            quic.send_ping(self._ping_uid)
        timer = quic.get_timer()
        if timer is not None and now >= timer:
            quic.handle_timer(now)
        self._process_events()
        self.transmit()

    # ------------------------------------------------------------------ public

    async def wait_handshake(self, timeout_s: float) -> str | None:
        """The negotiated ALPN once the handshake completed; TransportError on timeout."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._handshake), timeout_s)
        except TimeoutError as exc:
            raise TransportError(
                "QUIC handshake timed out", reason=Reason.HANDSHAKE_TIMEOUT
            ) from exc

    def stream(self) -> tuple[QuicStream, QuicStream]:
        """Open a new bidirectional stream (client side): ``(reader, writer)``."""
        if self.closed or self._quic is None:
            raise TransportError("QUIC session is closed", reason=Reason.CLOSED)
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=False)
        stream = QuicStream(self, stream_id)
        self._streams[stream_id] = stream
        return stream, stream

    @property
    def server_first(self) -> bool:
        """True when the ClientHello chose the server-first login (the hub opens it)."""
        return self.alpn == SERVER_FIRST_ALPN

    def open_login_stream(self) -> QuicStream:
        """The server's login stream (server-first) of a session made with ``login=True``,
        which exists before the client's first Initial: writes are held until the
        ClientHello chose ``SERVER_FIRST_ALPN`` and then leave in the server's first flight
        (or at once, when it was chosen already); with plain ``roost/1`` it ends unsent."""
        if self.is_client or self._login is None or self._login_taken:
            raise TransportError("a server session made with login=True has one login stream")
        self._login_taken = True
        return self._login

    def login_stream(self) -> tuple[QuicStream, QuicStream]:
        """The client's login stream: the hub's own (stream 1) once the handshake chose the
        server-first login, whose Challenge then is the stream's first record; otherwise a
        new stream, on which the client's Hello goes first."""
        if self.is_client and self._login is not None and not self._login_taken:
            self._login_taken = True
            return self._login, self._login
        return self.stream()

    async def accept_stream(self) -> tuple[QuicStream, QuicStream]:
        """The next stream the peer opened (server side); TransportError once closed.
        A stream becomes known with its first bytes."""
        while not self._incoming:
            if self.closed:
                raise TransportError("QUIC session is closed", reason=Reason.CLOSED)
            self._incoming_ready.clear()
            await self._incoming_ready.wait()
        stream = self._incoming.popleft()
        return stream, stream

    @property
    def path(self) -> SwitchingPath:
        """The session's paths; ``path.current`` is the one sent on."""
        return self._path

    def add_path(self, path: DatagramPath) -> None:
        """Accept the session's datagrams from ``path`` as well, still sending on the
        current one (the peer may switch to a direct path before we do)."""
        self._path.add(path)

    def switch_path(self, path: DatagramPath) -> None:
        """Send on ``path`` from now on (relay -> direct takeover); keep receiving on the
        old one. A PING goes out at once so the new path carries traffic and refreshes
        the round-trip estimate."""
        self._path.switch_to(path)
        if self._handshake.done():
            self._fit_datagram_size()
        if self._quic is not None and not self.closed:
            self._ping_uid += 1
            self._quic.send_ping(self._ping_uid)
            self.transmit()

    async def ping(self, timeout_s: float = 5.0) -> float:
        """One PING's round trip in milliseconds."""
        if self._quic is None or self.closed:
            raise TransportError("QUIC session is closed", reason=Reason.CLOSED)
        self._ping_uid += 1
        waiter: asyncio.Future[float] = self._loop.create_future()
        self._pings[self._ping_uid] = (self._loop.time(), waiter)
        self._quic.send_ping(self._ping_uid)
        self.transmit()
        return await asyncio.wait_for(waiter, timeout_s)

    @property
    def rtt_ms(self) -> float | None:
        """aioquic's smoothed round-trip estimate in milliseconds (None before a sample).
        aioquic keeps it on its recovery object without a public accessor."""
        quic = self._quic
        recovery = getattr(quic, "_loss", None) if quic is not None else None
        if recovery is None or not getattr(recovery, "_rtt_initialized", False):
            return None
        return float(recovery._rtt_smoothed) * 1000.0

    def close(self, reason: str = "") -> None:
        """Close the connection (CONNECTION_CLOSE to the peer), every stream and path."""
        if self.closed:
            return
        if self._quic is not None:
            self._quic.close(reason_phrase=reason)
            self.transmit()
        self._terminate(reason or "closed")

    async def wait_closed(self) -> None:
        """Until the connection ended, by either side or the idle timeout."""
        await asyncio.shield(self._terminated)


def _configuration(
    *, is_client: bool, alpns: list[str], idle_timeout_s: float
) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=alpns,
        idle_timeout=idle_timeout_s,
        verify_mode=ssl.CERT_NONE,
    )


def _peer_certificate(quic: QuicConnection) -> x509.Certificate:
    # aioquic keeps the presented leaf on its TLS context; there is no public accessor.
    certificate = getattr(quic.tls, "_peer_certificate", None)
    if not isinstance(certificate, x509.Certificate):
        raise VerificationError("server presented no certificate", reason=Reason.NO_PEER_CERT)
    return certificate


async def quic_serve(
    path: DatagramPath,
    *,
    certificate_der: bytes,
    private_key: ec.EllipticCurvePrivateKey,
    alpn: str = ALPN,
    idle_timeout_s: float = 60.0,
    timeout_s: float = 10.0,
    keepalive_s: float | None = None,
    login: Callable[[QuicStream], object] | None = None,
) -> QuicSession:
    """Be the QUIC server on ``path`` with the hub's certificate and key; returns once the
    handshake completed. TransportError("handshake-timeout") after ``timeout_s``.

    ``login`` offers the server-first login (module docstring): it is called at once, before
    the client's first Initial, with the login stream (``open_login_stream``), and should
    start the guard on it; the stream ends unsent if the client chose plain ``alpn``."""
    alpns = [SERVER_FIRST_ALPN, alpn] if login is not None else [alpn]
    configuration = _configuration(is_client=False, alpns=alpns, idle_timeout_s=idle_timeout_s)
    configuration.certificate = x509.load_der_x509_certificate(certificate_der)
    configuration.private_key = private_key
    session = QuicSession(path, configuration, keepalive_s=keepalive_s, login=login is not None)
    session.server_certificate_der = certificate_der
    try:
        if login is not None:
            login(session.open_login_stream())
        negotiated = await session.wait_handshake(timeout_s)
        if negotiated not in alpns:
            raise TransportError(f"ALPN {negotiated!r}", reason=Reason.BAD_ALPN)
    except BaseException as exc:
        # The peer learns the reason only (STYLE.md), never our message.
        session.close(exc.reason if isinstance(exc, RoostError) else Reason.ERROR)
        raise
    return session


async def quic_connect(
    path: DatagramPath,
    *,
    verify_server: Callable[[x509.Certificate], None],
    alpn: str = ALPN,
    idle_timeout_s: float = 60.0,
    timeout_s: float = 10.0,
    keepalive_s: float | None = None,
    server_first: bool = True,
) -> QuicSession:
    """Be the QUIC client on ``path``; returns once the handshake completed and
    ``verify_server`` accepted the server certificate (its VerificationError is raised
    after the connection is closed). ``server_first`` also offers the server-first login
    (module docstring): ``session.server_first`` then says whether the hub took it, and
    ``session.login_stream()`` is the stream to log in on either way."""
    alpns = [SERVER_FIRST_ALPN, alpn] if server_first else [alpn]
    configuration = _configuration(is_client=True, alpns=alpns, idle_timeout_s=idle_timeout_s)
    session = QuicSession(path, configuration, keepalive_s=keepalive_s)
    quic = session._quic
    assert quic is not None
    quic.connect(_PATH_ADDRESS, now=asyncio.get_running_loop().time())
    session.transmit()
    try:
        negotiated = await session.wait_handshake(timeout_s)
        if negotiated not in alpns:
            raise TransportError(f"ALPN {negotiated!r}", reason=Reason.BAD_ALPN)
        certificate = _peer_certificate(quic)
        verify_server(certificate)
    except VerificationError as exc:
        quic.close(error_code=_VERIFICATION_FAILED, reason_phrase=exc.reason)
        session.transmit()
        session.close()
        raise
    except BaseException as exc:
        # The peer learns the reason only (STYLE.md), never our message.
        session.close(exc.reason if isinstance(exc, RoostError) else Reason.ERROR)
        raise
    session.server_certificate_der = certificate.public_bytes(serialization.Encoding.DER)
    return session
