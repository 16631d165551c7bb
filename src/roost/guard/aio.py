"""asyncio adapter for remote calls over a guard session (docs/guard.md, "Remote calls").

Moves bytes between a stream and the pure cores of :mod:`roost.guard.remote`. Any stream
with ``read``/``write``/``drain``/``close`` will do (:class:`ByteStreamReader`,
:class:`ByteStreamWriter`; asyncio's streams are such): :meth:`GuardServer.serve_stream`
and :meth:`GuardClient.over_stream` take one already open with its channel binding, and
the TLS listener and :meth:`GuardClient.connect` are thin wrappers that open TLS and bind
to the hub's certificate. Only the login's work items (the password KDF, tens of
milliseconds, and the user store's reads and writes) run on one worker thread, which owns
the store's SQLite connection; parsing, proof checks, calls and the Merkle log stay on the
event loop. Time comes from the injected ``clock`` (monotonic, for limits) and ``wall_ms``
(for checkpoints and lock-out).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from roost.admission import Admission, Ticket, TlsListener
from roost.errors import (
    RefusedError,
    RoostError,
    StateError,
    VerificationError,
    listening,
)
from roost.guard.aio_client import GuardClient
from roost.guard.challenge import AuthConfig, LoginServer
from roost.guard.log import (
    SqliteMerkleLog,
    checkpoint_document,
    covering_checkpoint,
    encode_receipt,
)
from roost.guard.remote import (
    CallHandler,
    CallReceived,
    CloseCause,
    LoggedIn,
    RemoteEvent,
    RemoteServerCore,
    StreamClosed,
    WorkRequested,
    tls_server_end_point,
)
from roost.guard.session import SessionLimits
from roost.guard.streams import READ_CHUNK, STREAM_ERRORS, ByteStreamReader, ByteStreamWriter
from roost.guard.suites import KdfParams
from roost.guard.userstore import (
    SALT_SIZE,
    PasswordGrant,
    PasswordVerifier,
    UserDirectory,
    after_failure,
    is_locked,
    verify_password,
)
from roost.ratelimit import SourceRateLimiter
from roost.reasons import RejectionCounter, log_rejection
from roost.timer import CoreTimer

__all__ = [
    "ByteStreamReader",
    "ByteStreamWriter",
    "GuardClient",
    "GuardServer",
    "GuardServerConfig",
    "GuardServerCounters",
    "LogReceipts",
]


log = logging.getLogger("roost.guard")


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class LogReceipts:
    """The server's Merkle log for :class:`RemoteServerCore`: records every message digest,
    answers receipts and consistency proofs, signing a new checkpoint only when the latest
    one does not yet cover what was asked."""

    def __init__(self, log: SqliteMerkleLog, key: Ed25519PrivateKey) -> None:
        self.log = log
        self._key = key

    def record(self, digest: bytes) -> int:
        return self.log.append(digest)

    def receipt(self, index: int, wall_ms: int) -> bytes:
        if not 0 <= index < self.log.size:
            raise StateError("no such leaf in the log", reason="unknown-leaf")
        checkpoint = covering_checkpoint(
            self.log, self._key, size_at_least=index + 1, timestamp_ms=wall_ms
        )
        return encode_receipt(self.log.receipt(index, checkpoint))

    def consistency(self, from_size: int, wall_ms: int) -> bytes:
        checkpoint = covering_checkpoint(
            self.log, self._key, size_at_least=self.log.size, timestamp_ms=wall_ms
        )
        document = checkpoint_document(self.log, checkpoint, from_size)
        return json.dumps(document, sort_keys=True).encode("utf-8")

    def commit(self) -> None:
        self.log.commit()


@dataclass(frozen=True, slots=True)
class GuardServerConfig:
    """Bounds for the remote listener (one frozen config per component, STYLE.md)."""

    limits: SessionLimits = field(default_factory=SessionLimits)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # Hello to Accept must fit in this, so a silent or slow peer cannot hold a slot.
    login_timeout_s: float = 60.0
    max_connections: int = 64
    # Per source address: connections at once, and new connections as a token bucket
    # (each may cost a password KDF on the single login worker).
    max_connections_per_source: int = 8
    connect_rate_per_source: float = 0.5
    connect_burst_per_source: float = 10.0
    max_sources: int = 4096
    # A brokered request's password check is good, once, for the login of the same
    # session during this long (PasswordGrant: the KDF is not run twice).
    password_grant_ttl_s: float = 20.0
    # Refused and failed streams are logged at most once per source per this many seconds
    # (PROTOCOL.md preamble); every one is still counted.
    refusal_log_interval: float = 60.0


@dataclass(slots=True)
class GuardServerCounters:
    connections: int = 0
    refused_busy: int = 0
    refused_rate: int = 0
    logins_ok: int = 0
    # Of logins_ok: those whose password a brokered request's check had just verified.
    logins_granted: int = 0
    logins_failed: int = 0
    calls: int = 0
    sessions_expired: int = 0
    stream_errors: int = 0


class GuardServer:
    """Runs guard sessions: each stream logs in (password, then the challenge codes), then
    makes calls answered by ``handler``; every message goes to the log when one is given.

    :meth:`start` listens on TLS; :meth:`serve_stream` runs one session on any stream
    already open (a relayed or QUIC stream) after :meth:`open`. ``open_user_store`` is
    called once, on the login worker thread, and must return the user directory
    (``SqliteUserStore.in_state_dir(...)``); the store is used only on that thread, and
    only the login's work items (the password KDF and the directory reads and writes) run
    there. Everything else runs on the event loop.
    """

    def __init__(
        self,
        open_user_store: Callable[[], UserDirectory],
        handler: CallHandler,
        *,
        server_certificate_der: bytes | None = None,
        config: GuardServerConfig | None = None,
        receipts: LogReceipts | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.config = config or GuardServerConfig()
        self._open_user_store = open_user_store
        self._handler = handler
        self._binding = (
            tls_server_end_point(server_certificate_der)
            if server_certificate_der is not None
            else None
        )
        self._receipts = receipts
        self._clock = clock
        self._wall_ms = wall_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-login")
        self._login_server: LoginServer | None = None
        self._server: asyncio.Server | TlsListener | None = None
        self._tasks: dict[asyncio.Task[None], _ServerStream] = {}
        self.rejections = RejectionCounter(self.config.refusal_log_interval)
        # The logging rule for sessions that end in a refusal the cores already counted
        # in ``rejections`` (a failed login, a peer's broken record): this one only keeps
        # the per-source interval, so nothing is counted twice.
        self._session_log = RejectionCounter(self.config.refusal_log_interval)
        self.counters = GuardServerCounters()
        self._per_source: collections.Counter[str] = collections.Counter()
        self._connect_limit = SourceRateLimiter(
            self.config.connect_rate_per_source,
            self.config.connect_burst_per_source,
            self.config.max_sources,
        )

    async def open(self) -> None:
        """Open the user store on the login worker (once; :meth:`start` does it)."""
        if self._login_server is None:
            loop = asyncio.get_running_loop()
            self._login_server = await loop.run_in_executor(self._executor, self._make_login_server)

    async def start(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        admission: Admission | None = None,
    ) -> None:
        """Listen on TLS; each connection's channel binding is ``tls-server-end-point``.

        With ``admission`` (the hub's, docs/limits.md) a connection is admitted under the
        daemon's unauthenticated caps and its handshake runs under their deadline before
        the per-source limits below see it."""
        if self._binding is None:
            raise StateError("a TLS listener needs server_certificate_der", reason="bad-config")
        await self.open()
        with listening("remote entrance", host, port):
            if admission is None:
                self._server = await asyncio.start_server(
                    self._accept_tls, host, port, ssl=ssl_context
                )
                return

            async def admitted(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ticket: Ticket
            ) -> None:
                # TLS done: from here the guard's own per-source limits and login deadline
                # hold the connection, so the daemon's unauthenticated slot is free again.
                ticket.release()
                await self._accept_tls(reader, writer)

            self._server = await admission.start_tls_server(
                admitted, host, port, ssl_context, what="remote entrance"
            )

    def _make_login_server(self) -> LoginServer:
        directory = self._open_user_store()
        return LoginServer(
            directory,
            config=self.config.auth,
            counter=self.rejections,
        )

    async def check_password(self, user_id: str, password: str) -> PasswordGrant:
        """Check one user's password the way a login's hello does (PROTOCOL.md section 5,
        step 5: a brokered request is checked before anything is punched), on the login
        worker: VerificationError ``unknown-user``, ``locked-out`` or ``bad-password``
        (counted toward the user's lock-out, like a failed login). The grant it returns
        lets the login of the same session skip the KDF once (``serve_stream``)."""
        await self.open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._check_password, user_id, password)

    def _check_password(self, user_id: str, password: str) -> PasswordGrant:
        assert self._login_server is not None
        directory = self._login_server.directory
        wall_ms = self._wall_ms()
        record = directory.load(user_id)
        if record is None:
            # The same KDF time as for a real user, so timing does not tell who exists.
            with contextlib.suppress(VerificationError):
                verify_password(PasswordVerifier(b"\0" * SALT_SIZE, b"", KdfParams(14)), "")
            raise VerificationError("unknown user", reason="unknown-user")
        if is_locked(record, wall_ms):
            raise VerificationError("user locked out", reason="locked-out")
        try:
            verify_password(record.password, password)
        except VerificationError:
            failed = after_failure(record, wall_ms, self._login_server.config.lockout)
            directory.record_failure(user_id, failed.failures, failed.locked_until_ms)
            self.counters.logins_failed += 1
            raise
        return PasswordGrant.issue(
            user_id,
            record.password,
            password,
            now=self._clock(),
            ttl_s=self.config.password_grant_ttl_s,
        )

    @property
    def bound_port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise StateError("guard server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Ending each stream ends its task at its next read (and any streamed answer at
        # once); cancelling the task instead would leave asyncio's stream callback to
        # report the cancelled task.
        for stream in list(self._tasks.values()):
            stream.abort("closed")
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        if self._receipts is not None:
            self._receipts.commit()
        self._executor.shutdown(wait=True)

    async def _accept_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._binding is not None
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) else "?"
        await self.serve_stream(reader, writer, peer=source, channel_binding=self._binding)

    async def serve_stream(
        self,
        reader: ByteStreamReader,
        writer: ByteStreamWriter,
        *,
        peer: str,
        channel_binding: bytes,
        password_grant: PasswordGrant | None = None,
        server_first: bool = False,
    ) -> None:
        """Run one guard session on an open stream until it ends, then close the stream.

        ``peer`` is the source the per-source limits count (an address); ``channel_binding``
        is what both ends bind the login to (docs/guard.md, "Binding and server check").
        ``password_grant`` (from :meth:`check_password`, for a stream of the same brokered
        session only) admits that password once without the KDF. ``server_first`` sends
        the Challenge for the grant's user at once, before the client's Hello (the login
        stream a hub opens on a brokered QUIC session, docs/guard.md, "Server-first
        login"); without a valid grant that login is refused (``no-grant``).
        """
        if self._login_server is None:
            raise StateError("open() the guard server first", reason="not-running")
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(self._tasks) >= self.config.max_connections:
                raise RefusedError("every remote slot is taken", reason="busy")
            if self._per_source[peer] >= self.config.max_connections_per_source:
                raise RefusedError(f"{peer} holds too many streams", reason="source-busy")
            self._connect_limit.take(peer, self._clock())
        except RefusedError as error:
            if error.reason in ("busy", "source-busy"):
                self.counters.refused_busy += 1
            else:  # the source's bucket or the source table
                self.counters.refused_rate += 1
            # The reason and the source only: never a user id or anything the peer sent.
            log_rejection(
                log,
                self.rejections,
                error,
                source=peer,
                now=self._clock(),
                what="remote stream from",
            )
            writer.close()
            return
        core = RemoteServerCore(
            self._login_server,
            limits=self.config.limits,
            receipts=self._receipts,
            channel_binding=channel_binding,
            login_timeout_s=self.config.login_timeout_s,
            now=self._clock(),
            password_grant=password_grant,
        )
        stream = _ServerStream(self, core, reader, writer, peer, server_first=server_first)
        self._tasks[task] = stream
        self._per_source[peer] += 1
        self.counters.connections += 1
        try:
            await stream.run()
        finally:
            self._tasks.pop(task, None)
            self._per_source[peer] -= 1
            if not self._per_source[peer]:
                del self._per_source[peer]
            if self._receipts is not None:
                self._receipts.commit()
            writer.close()
            with contextlib.suppress(*STREAM_ERRORS, asyncio.CancelledError):
                await writer.wait_closed()


class _ServerStream:
    """Moves one stream's bytes through its :class:`RemoteServerCore`: reads in chunks,
    runs the core's work items on the login worker and its calls through the handler,
    flushes in :meth:`_transmit`, and keeps ONE timer armed for ``core.get_timer()``."""

    def __init__(
        self,
        server: GuardServer,
        core: RemoteServerCore,
        reader: ByteStreamReader,
        writer: ByteStreamWriter,
        peer: str,
        *,
        server_first: bool = False,
    ) -> None:
        self._server = server
        self._peer = peer
        self._server_first = server_first
        self._core = core
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        # A session's deadline only moves later: an armed timer that fires early finds
        # nothing due and re-arms, so a call costs no timer work (roost.timer).
        self._timer = CoreTimer(self._loop, self._on_timer, keep_earlier=True)
        self._calls_seen = 0
        self._streaming: asyncio.Task[None] | None = None

    def abort(self, reason: str) -> None:
        """End the stream now (shutdown): the core closes, the stream is closed and a
        streamed answer in progress stops waiting for its next item."""
        self._core.close(reason)
        self._transmit()

    async def run(self) -> None:
        core, server = self._core, self._server
        try:
            self._transmit()  # arms the login deadline
            if self._server_first:
                # The Challenge goes out before anything is read (docs/guard.md).
                core.open_login(now=server._clock(), wall_ms=server._wall_ms())
                await self._handle_events()
                self._transmit()
                await self._writer.drain()
            while not core.closed:
                data = await self._reader.read(READ_CHUNK)
                if core.closed:
                    break  # the timer ended the stream under the read
                if data:
                    core.receive_data(data, now=server._clock(), wall_ms=server._wall_ms())
                else:
                    core.receive_eof()
                await self._handle_events()
                self._transmit()
                await self._writer.drain()
        except STREAM_ERRORS:
            if not core.closed:
                server.counters.stream_errors += 1
                core.close("stream")
        finally:
            self._timer.cancel()
            # Whatever is left is bookkeeping (the close); no more work or calls run.
            while (event := core.next_event()) is not None:
                self._count(event)

    async def _handle_events(self) -> None:
        core, server = self._core, self._server
        while (event := core.next_event()) is not None:
            if isinstance(event, WorkRequested):
                # The one thing that leaves the loop: the KDF or a user-store access, on
                # the single worker that owns the store's SQLite connection.
                try:
                    result = await self._loop.run_in_executor(server._executor, event.item.run)
                except RoostError as error:
                    core.work_failed(
                        event.item, error, now=server._clock(), wall_ms=server._wall_ms()
                    )
                else:
                    core.work_done(
                        event.item, result, now=server._clock(), wall_ms=server._wall_ms()
                    )
            elif isinstance(event, CallReceived):
                await self._call(event)
            else:
                self._count(event)

    async def _call(self, event: CallReceived) -> None:
        core, server = self._core, self._server
        try:
            result = server._handler(event.method, event.args)
            if isinstance(result, AsyncIterator):
                # Its own task, so that an end of the stream (timer, stop) interrupts a
                # handler waiting for its next item (a camera that sends nothing).
                self._streaming = asyncio.create_task(self._stream(event.call_id, result))
                try:
                    await self._streaming
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # this stream's own task is being cancelled
                finally:
                    self._streaming = None
                return
            if inspect.isawaitable(result):
                result = await result
        except RoostError as error:
            core.refuse(event.call_id, error, now=server._clock(), wall_ms=server._wall_ms())
            return
        core.answer(event.call_id, result, now=server._clock(), wall_ms=server._wall_ms())

    async def _stream(self, call_id: int, items: AsyncIterator[Sequence[bytes]]) -> None:
        # Each item is sealed and written as its own "more" record as soon as it exists,
        # with the stream's back-pressure (drain) between items (docs/guard.md).
        core, server = self._core, self._server
        try:
            async for item in items:
                if core.closed:
                    return
                core.send_item(call_id, item, now=server._clock())
                self._transmit()
                await self._writer.drain()
        finally:
            close = getattr(items, "aclose", None)
            if close is not None:
                await close()
        core.end_stream(call_id, now=server._clock(), wall_ms=server._wall_ms())

    def _count(self, event: RemoteEvent) -> None:
        counters = self._server.counters
        if isinstance(event, LoggedIn):
            counters.logins_ok += 1
            counters.logins_granted += int(self._core.used_password_grant)
            # The source only: the user id stays out of logs like everything the peer sent.
            log.info(
                "remote login accepted from %s",
                self._peer,
                extra={"event": "login-accepted", "source": self._peer},
            )
        elif isinstance(event, StreamClosed):
            if event.cause in (CloseCause.LOGIN_FAILED, CloseCause.LOGIN_TIMEOUT):
                counters.logins_failed += 1
                self._log_refusal(event.reason, "remote login refused from")
            elif event.cause is CloseCause.SESSION_ENDED:
                counters.sessions_expired += 1
            elif event.cause is CloseCause.PEER_ERROR:
                counters.stream_errors += 1
                self._log_refusal(event.reason)

    def _log_refusal(self, reason: str, what: str = "remote session from") -> None:
        """A line for a refused session when the rule allows (PROTOCOL.md preamble): the
        reason and the source only, never the user id or what the peer sent."""
        server = self._server
        log_rejection(
            log,
            server._session_log,
            reason,
            source=self._peer,
            now=server._clock(),
            what=what,
        )

    def _transmit(self) -> None:
        """Write what the core wants sent and re-arm the one timer (STYLE.md adapters)."""
        core = self._core
        counters = self._server.counters
        counters.calls += core.calls - self._calls_seen
        self._calls_seen = core.calls
        data = core.data_to_send()
        if data and not self._writer.is_closing():
            receipts = self._server._receipts
            if receipts is not None and core.session is not None:
                # Durable before the answer leaves: a receipt can be asked for at once.
                receipts.commit()
            self._writer.write(data)
        self._arm_timer()
        if core.closed:
            self._writer.close()
            if self._streaming is not None:
                self._streaming.cancel()

    def _arm_timer(self) -> None:
        self._timer.arm(self._core.get_timer(), now=self._server._clock())

    def _on_timer(self) -> None:
        self._core.handle_timer(self._server._clock())
        self._transmit()
