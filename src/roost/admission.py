"""Admission of unauthenticated connections: the pure core, and the adapter every TLS and
HTTP listener of the hub and the broker runs behind (docs/limits.md).

In the manner of OpenSSH's ``MaxStartups`` and nginx's ``limit_conn``: a connection that has
not yet proved who it is holds one of at most ``max_unauthenticated`` slots of the daemon,
and at most ``max_unauthenticated_per_source`` of them per source address (IPv6 by its
/64, every port of the daemon together), so one host cannot take the slots a real device
needs. Each TLS handshake is run explicitly, under ``handshake_timeout_s``, once a slot is
held; the listener's handler releases the slot when the peer is authenticated (a verified
client certificate, or the end of the handshake where the guard's login follows).

Every refusal, at every layer, is counted under a reason of ``roost.reasons`` in the
daemon's counter and logged once per source per interval (PROTOCOL.md preamble).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from roost.errors import RefusedError, RoostError
from roost.ratelimit import source_key
from roost.reasons import Reason, RejectionCounter, log_rejection

if TYPE_CHECKING:
    import ctypes

__all__ = [
    "Admission",
    "AdmissionConfig",
    "AdmissionCore",
    "Ticket",
    "TlsHandler",
    "TlsListener",
    "classify_tls_failure",
    "return_connection_buffers",
    "source_key",
]

# glibc's mallopt parameter for the size above which an allocation gets its own mapping.
_M_MMAP_THRESHOLD = -3
_CONNECTION_BUFFER_THRESHOLD = 128 * 1024


# A burst of at least this many unauthenticated connections at once is followed, once all
# have ended, by one malloc_trim after this delay.
_TRIM_AFTER_BURST = 32
_TRIM_DELAY_S = 1.0


def _libc() -> ctypes.CDLL | None:
    # Imported here: the config loaders read AdmissionConfig from this module, and a camera
    # agent, which has no listener, need not load ctypes for it (its footprint, issue 13).
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _malloc_trim() -> None:
    # The OpenSSL state of hundreds of handshakes is small blocks spread over the heap;
    # once they are all free, glibc keeps their pages until asked to give them back.
    import ctypes

    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim(0)


def return_connection_buffers() -> bool:
    """Make the allocator give each connection's large buffers back when it ends (glibc).

    Every TLS connection allocates a 256 KiB buffer (asyncio's and uvloop's SSL protocol)
    and OpenSSL's own, and frees them when the connection ends. glibc serves such a block
    from its own mapping, returned at once on free, but after the first such free it raises
    its mapping threshold above the block, so later buffers come from the heap, which a
    flood of half-open handshakes then leaves fragmented: the hub grew by about 2 MiB per
    round of 300 half-open connections and never came back. Fixing the threshold keeps
    every connection buffer in its own mapping. Called by the daemons' composition root;
    returns False where the C library is not glibc.
    """
    import ctypes

    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _CONNECTION_BUFFER_THRESHOLD))


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Limits of a daemon's listeners (``[admission]`` in hub and broker config files)."""

    # Connections not yet authenticated, in total and per source address (all ports).
    max_unauthenticated: int = 256
    max_unauthenticated_per_source: int = 32
    # The TLS handshake must complete within this many seconds.
    handshake_timeout_s: float = 5.0
    # HTTP APIs: request headers must arrive within header_timeout_s of the request's first
    # byte (or of the connection); a connection that sends nothing for idle_timeout_s ends.
    http_header_timeout_s: float = 10.0
    http_idle_timeout_s: float = 15.0
    http_max_line_size: int = 8190
    http_max_field_size: int = 8190
    http_max_headers: int = 64
    http_max_body_bytes: int = 1024 * 1024
    # A device may replace its own channel (a new hello for the same device) at this rate.
    replace_rate_per_device: float = 0.2
    replace_burst_per_device: float = 5.0
    # IPv6 sources are counted by this prefix (a host has a /64 of addresses).
    ipv6_prefix: int = 64
    # Refusals are logged at most once per source per this many seconds.
    refusal_log_interval: float = 60.0
    max_sources: int = 4096

    def __post_init__(self) -> None:
        if self.max_unauthenticated < 1 or self.max_unauthenticated_per_source < 1:
            raise ValueError("the unauthenticated caps must be at least 1")
        if min(self.handshake_timeout_s, self.http_header_timeout_s, self.http_idle_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        if min(self.http_max_line_size, self.http_max_field_size, self.http_max_headers) < 1:
            raise ValueError("HTTP header limits must be positive")
        if self.http_max_body_bytes < 0 or not 0 <= self.ipv6_prefix <= 128:
            raise ValueError("body limit >= 0 and 0 <= ipv6_prefix <= 128 are required")
        if self.replace_rate_per_device <= 0 or self.replace_burst_per_device < 1:
            raise ValueError("replace rate > 0 and burst >= 1 are required")


class AdmissionCore:
    """Counts unauthenticated connections per source and in total (pure)."""

    __slots__ = ("_config", "_per_source", "_total")

    def __init__(self, config: AdmissionConfig) -> None:
        self._config = config
        self._per_source: collections.Counter[str] = collections.Counter()
        self._total = 0

    @property
    def unauthenticated(self) -> int:
        """Slots held now."""
        return self._total

    def held_by(self, source: str) -> int:
        """Slots ``source`` holds now."""
        return self._per_source[source]

    def admit(self, source: str) -> None:
        """Take a slot for ``source``; RefusedError ``unauthenticated-full`` or
        ``source-unauthenticated-full`` when none is left for it."""
        if self._total >= self._config.max_unauthenticated:
            raise RefusedError(
                "every unauthenticated slot is taken", reason=Reason.UNAUTHENTICATED_FULL
            )
        if self._per_source[source] >= self._config.max_unauthenticated_per_source:
            raise RefusedError(
                f"{source} holds its unauthenticated slots",
                reason=Reason.SOURCE_UNAUTHENTICATED_FULL,
            )
        self._per_source[source] += 1
        self._total += 1

    def release(self, source: str) -> None:
        """Give back one slot of ``source``."""
        held = self._per_source[source]
        if held <= 0:
            return
        if held == 1:
            del self._per_source[source]
        else:
            self._per_source[source] = held - 1
        self._total -= 1


# OpenSSL's reason names (ssl.SSLError.reason) for bytes that are not a TLS ClientHello.
_NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "HTTPS_PROXY_REQUEST",
        "UNKNOWN_PROTOCOL",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "UNSUPPORTED_PROTOCOL",
        "RECORD_LENGTH_MISMATCH",
        "BAD_PACKET_LENGTH",
        "LENGTH_MISMATCH",
        "BAD_RECORD_TYPE",
        "UNEXPECTED_RECORD",
        "WRONG_SSL_VERSION",
        "DECRYPTION_FAILED_OR_BAD_RECORD_MAC",
    }
)


def classify_tls_failure(error: BaseException) -> str:
    """The reason a failed server-side TLS handshake is counted under."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return Reason.CLIENT_CERT_UNTRUSTED
    if isinstance(error, ssl.SSLError):
        name = str(getattr(error, "reason", "") or "")
        if name == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return Reason.CLIENT_CERT_REQUIRED
        if name in ("CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA"):
            return Reason.CLIENT_CERT_UNTRUSTED
        if name in _NOT_TLS or "VERSION" in name:
            return Reason.NOT_TLS
        if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return Reason.CLOSED_IN_HANDSHAKE
        return Reason.TLS_FAILED
    if isinstance(error, TimeoutError) or "longer than" in str(error):
        # asyncio's own handshake timeout aborts with ConnectionAbortedError("... is taking
        # longer than N seconds ..."); the outer deadline raises TimeoutError.
        return Reason.TLS_HANDSHAKE_TIMEOUT
    return Reason.CLOSED_IN_HANDSHAKE


class Ticket:
    """One held slot; :meth:`release` (idempotent) gives it back once the peer is known."""

    __slots__ = ("_core", "_on_release", "_released", "source")

    def __init__(
        self,
        core: AdmissionCore,
        source: str,
        on_release: Callable[[], None] | None = None,
    ) -> None:
        self._core = core
        self.source = source
        self._on_release = on_release
        self._released = False

    def release(self) -> None:
        """The peer is authenticated (or gone): its slot is free again."""
        if not self._released:
            self._released = True
            self._core.release(self.source)
            if self._on_release is not None:
                self._on_release()


TlsHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Ticket], Awaitable[None]]


class Admission:
    """The adapter one daemon shares across its listeners: admission, the explicit TLS
    handshake with its deadline, and counted, rate-logged refusals.

    ``counts`` is the daemon's counter of refused connections by reason (its status and
    ``/metrics`` read it); ``logger`` is the daemon's.
    """

    def __init__(
        self,
        config: AdmissionConfig,
        counts: collections.Counter[str],
        logger: logging.Logger,
    ) -> None:
        self.config = config
        self.core = AdmissionCore(config)
        self.counts = counts
        self._log = logger
        self._rule = RejectionCounter(config.refusal_log_interval, config.max_sources)
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshaking: set[asyncio.Task[Any]] = set()
        self._high_water = 0
        self._trim: asyncio.TimerHandle | None = None

    def source_of(self, peername: Any) -> str:
        """The source key of a transport's ``peername``."""
        host = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        return source_key(host, self.config.ipv6_prefix)

    def refuse(self, error: RoostError | str, source: str, what: str) -> None:
        """Count one refusal under its reason and log it when the rule allows."""
        reason = error if isinstance(error, str) else error.reason
        self.counts[reason] += 1
        log_rejection(
            self._log, self._rule, reason, source=source, now=_loop_now(), what=f"{what} from"
        )

    def try_admit(self, source: str, what: str) -> Ticket | None:
        """A slot for ``source``, or None (the refusal counted and logged)."""
        try:
            self.core.admit(source)
        except RefusedError as error:
            self.refuse(error, source, what)
            return None
        self._high_water = max(self._high_water, self.core.unauthenticated)
        return Ticket(self.core, source, self._released)

    def _released(self) -> None:
        """Once a burst of unauthenticated connections has ended, hand the heap pages their
        TLS state left free back to the system, once per burst (the large buffers need no
        help: :func:`return_connection_buffers`)."""
        if self.core.unauthenticated or self._high_water < _TRIM_AFTER_BURST:
            return
        self._high_water = 0
        if self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(_TRIM_DELAY_S, self._trim_heap)

    def _trim_heap(self) -> None:
        self._trim = None
        _malloc_trim()

    async def start_tls_server(
        self,
        handler: TlsHandler,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        what: str,
        limit: int = 64 * 1024,
        backlog: int = 128,
        reuse_port: bool | None = None,
    ) -> TlsListener:
        """Listen on host:port; each connection is admitted, then its TLS handshake runs
        under the deadline, then ``handler(reader, writer, ticket)`` runs. ``reuse_port``:
        several processes share the port (SO_REUSEPORT, the broker's workers)."""
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        listener = TlsListener(self, sock, handler, context, what, limit)
        listener.start()
        return listener

    def close(self) -> None:
        """End every connection still in its handshake (the daemon is stopping)."""
        for task in list(self._handshaking):
            task.cancel()
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        # The loop keeps only weak references to tasks: hold each until it ends.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tls(
        self,
        connection: socket.socket,
        ticket: Ticket,
        handler: TlsHandler,
        context: ssl.SSLContext,
        what: str,
        limit: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        timeout = self.config.handshake_timeout_s
        task = asyncio.current_task()
        if task is not None:
            self._handshaking.add(task)
        try:
            try:
                # The socket becomes a TLS transport before a byte is read from it, so the
                # handshake's first record can never be taken by a plain protocol.
                async with asyncio.timeout(timeout + 0.5):
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: protocol,
                        connection,
                        ssl=context,
                        ssl_handshake_timeout=timeout,
                    )
            except (OSError, ssl.SSLError, EOFError) as error:
                reason = classify_tls_failure(error)
                del error  # its traceback holds the handshake's frames and buffers
                self.refuse(reason, ticket.source, what)
                # The loop closed (and detached) the socket already unless it never took it.
                connection.close()
                return
            finally:
                self._handshaking.discard(task)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            try:
                await handler(reader, writer, ticket)
            finally:
                writer.close()
        finally:
            ticket.release()


class TlsListener:
    """A listening socket whose accepted connections are admitted before anything is read
    from them; shaped like the ``asyncio.Server`` it replaces (``sockets``, ``close``,
    ``wait_closed``)."""

    def __init__(
        self,
        admission: Admission,
        sock: socket.socket,
        handler: TlsHandler,
        context: ssl.SSLContext,
        what: str,
        limit: int,
    ) -> None:
        self._admission = admission
        self._sock = sock
        self._handler = handler
        self._context = context
        self._what = what
        self._limit = limit
        self._accepting: asyncio.Task[None] | None = None

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening socket (empty once closed)."""
        return () if self._sock.fileno() < 0 else (self._sock,)

    def start(self) -> None:
        """Begin accepting (on the running loop)."""
        self._accepting = asyncio.ensure_future(self._accept_loop())

    def close(self) -> None:
        """Stop accepting; connections already served run on."""
        if self._accepting is not None:
            self._accepting.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        """Wait for the accept loop to end."""
        if self._accepting is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        admission = self._admission
        while True:
            try:
                connection, peer = await loop.sock_accept(self._sock)
            except OSError as error:
                if self._sock.fileno() < 0:
                    return
                # Out of descriptors (EMFILE, ENFILE) or a connection reset before accept:
                # back off briefly rather than spin.
                log = admission._log
                log.warning("accept failed on %s: %s", self._what, error.strerror)
                await asyncio.sleep(0.1)
                continue
            source = admission.source_of(peer)
            ticket = admission.try_admit(source, self._what)
            if ticket is None:
                connection.close()
                continue
            connection.setblocking(False)
            admission._spawn(
                admission._serve_tls(
                    connection, ticket, self._handler, self._context, self._what, self._limit
                )
            )


def _loop_now() -> float:
    return asyncio.get_running_loop().time()
