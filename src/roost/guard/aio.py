"""asyncio adapter for remote calls over a guard session (docs/guard.md, "Remote calls").

Moves ``u32 length | body`` records between a TLS stream and the pure cores of
:mod:`roost.guard.remote`. The login steps run scrypt (tens of milliseconds), so they run
on one worker thread that also owns the user store's SQLite connection; calls and the
Merkle log stay on the event loop. Time comes from the injected ``clock`` (monotonic, for
limits) and ``wall_ms`` (for checkpoints and lock-out).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from roost.errors import (
    RefusedError,
    RoostError,
    StateError,
    TransportError,
    VerificationError,
)
from roost.framing import RECORD_HEADER_SIZE, encode_record, record_length
from roost.guard.challenge import AuthConfig, LoginServer
from roost.guard.log import (
    Checkpoint,
    Receipt,
    SqliteMerkleLog,
    checkpoint_document,
    covering_checkpoint,
    decode_checkpoint_document,
    encode_receipt,
    verify_receipt,
)
from roost.guard.remote import (
    CONSISTENCY_METHOD,
    RECEIPT_METHOD,
    CallHandler,
    RemoteClientCore,
    RemoteServerCore,
    Response,
    receipt_from_response,
    tls_server_end_point,
)
from roost.guard.session import SessionLimits
from roost.guard.userstore import UserDirectory
from roost.pki.tls import peer_certificate
from roost.ratelimit import SourceRateLimiter
from roost.reasons import RejectionCounter

__all__ = ["GuardClient", "GuardServer", "GuardServerConfig", "LogReceipts"]


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


async def _read_record(reader: asyncio.StreamReader, max_body: int) -> bytes | None:
    """The next record body, or None at a clean end of stream between records."""
    try:
        header = await reader.readexactly(RECORD_HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise TransportError("stream ended inside a record", reason="truncated") from None
    length = record_length(header, max_body)
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise TransportError("stream ended inside a record", reason="truncated") from None


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


@dataclass(slots=True)
class GuardServerCounters:
    connections: int = 0
    refused_busy: int = 0
    refused_rate: int = 0
    logins_ok: int = 0
    logins_failed: int = 0
    calls: int = 0
    sessions_expired: int = 0
    stream_errors: int = 0


class GuardServer:
    """TLS listener: each connection logs in (password, then the challenge codes), then
    makes calls answered by ``handler``; every message goes to the log when one is given.

    ``open_user_store`` is called once, on the login worker thread, and must return the
    user directory (``SqliteUserStore.in_state_dir(...)``); the store is used only there.
    """

    def __init__(
        self,
        open_user_store: Callable[[], UserDirectory],
        handler: CallHandler,
        *,
        server_certificate_der: bytes,
        config: GuardServerConfig | None = None,
        receipts: LogReceipts | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.config = config or GuardServerConfig()
        self._open_user_store = open_user_store
        self._handler = handler
        self._binding = tls_server_end_point(server_certificate_der)
        self._receipts = receipts
        self._clock = clock
        self._wall_ms = wall_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-login")
        self._login_server: LoginServer | None = None
        self._server: asyncio.Server | None = None
        self._tasks: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.rejections = RejectionCounter()
        self.counters = GuardServerCounters()
        self._per_source: collections.Counter[str] = collections.Counter()
        self._connect_limit = SourceRateLimiter(
            self.config.connect_rate_per_source,
            self.config.connect_burst_per_source,
            self.config.max_sources,
        )

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        self._login_server = await loop.run_in_executor(self._executor, self._make_login_server)
        self._server = await asyncio.start_server(self._accept, host, port, ssl=ssl_context)

    def _make_login_server(self) -> LoginServer:
        directory = self._open_user_store()
        return LoginServer(
            directory,
            config=self.config.auth,
            counter=self.rejections,
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
        # Closing each stream ends its handler at its next read; cancelling instead would
        # leave asyncio's stream callback to report the cancelled task.
        for writer in self._tasks.values():
            writer.close()
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) else "?"
        try:
            if len(self._tasks) >= self.config.max_connections:
                raise RefusedError("every remote slot is taken", reason="busy")
            if self._per_source[source] >= self.config.max_connections_per_source:
                raise RefusedError(f"{source} holds too many streams", reason="source-busy")
            self._connect_limit.take(source, self._clock())
        except RefusedError as error:
            if error.reason in ("busy", "source-busy"):
                self.counters.refused_busy += 1
            else:  # the source's bucket or the source table
                self.counters.refused_rate += 1
            self.rejections.count(error)
            writer.close()
            return
        self._tasks[task] = writer
        self._per_source[source] += 1
        self.counters.connections += 1
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.pop(task, None)
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]
            if self._receipts is not None:
                self._receipts.commit()
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._login_server is not None
        core = RemoteServerCore(
            self._login_server,
            self._handler,
            limits=self.config.limits,
            receipts=self._receipts,
            channel_binding=self._binding,
        )
        loop = asyncio.get_running_loop()
        login_deadline = self._clock() + self.config.login_timeout_s
        timer: asyncio.TimerHandle
        # Login steps run on the worker thread, so until one returns with a session the
        # timer only looks at these loop-side flags and never touches the core.
        logged_in = timed_out = False

        def on_timer() -> None:
            # One timer per stream, re-armed when it fires (a session's deadline only moves
            # later) and once at login, so a call costs no timer work (aioquic's pattern).
            nonlocal timer, timed_out
            now = self._clock()
            if not logged_in:
                if now < login_deadline:
                    timer = loop.call_later(login_deadline - now, on_timer)
                    return
                timed_out = True
                self.counters.logins_failed += 1
                self.rejections.count(StateError("login timed out", reason="login-timeout"))
            else:
                core.handle_timer(now)
                deadline = core.next_deadline()
                if not core.closed and deadline is not None:
                    timer = loop.call_later(max(deadline - now, 0.0), on_timer)
                    return
                self.counters.sessions_expired += 1
            writer.close()

        timer = loop.call_later(self.config.login_timeout_s, on_timer)
        try:
            while not core.closed and not timed_out:
                body = await _read_record(reader, core.max_record)
                if body is None or core.closed or timed_out:
                    return
                if not logged_in:
                    step = functools.partial(
                        core.receive, body, now=self._clock(), wall_ms=self._wall_ms()
                    )
                    replies = await loop.run_in_executor(self._executor, step)
                    if timed_out:
                        return
                    if core.closed:
                        self.counters.logins_failed += 1
                    elif core.session is not None:
                        logged_in = True
                        self.counters.logins_ok += 1
                        # The session's limits replace the login timeout (earlier or later).
                        timer.cancel()
                        deadline = core.next_deadline()
                        assert deadline is not None
                        timer = loop.call_later(max(deadline - self._clock(), 0.0), on_timer)
                else:
                    replies = core.receive(body, now=self._clock(), wall_ms=self._wall_ms())
                    self.counters.calls += 1
                    if self._receipts is not None:
                        # Durable before the answer leaves: a receipt can be asked for at once.
                        self._receipts.commit()
                for reply in replies:
                    writer.write(encode_record(reply))
                await writer.drain()
        except RoostError as error:
            if core.closed or timed_out:
                return  # the timer closed the stream under the read, or already counted
            # Counted where it arose when it is a session rejection; framing errors here.
            self.counters.stream_errors += 1
            self.rejections.count(error)
            core.close(error.reason)
        except (OSError, ssl.SSLError):
            if not core.closed and not timed_out:
                self.counters.stream_errors += 1
                core.close("stream-error")
        finally:
            timer.cancel()


AnswerCodes = Callable[[tuple[str, ...]], Awaitable[Sequence[str]] | Sequence[str]]


class GuardClient:
    """A logged-in remote session: :meth:`call` sends one request and waits for its
    response; :meth:`receipt` fetches and verifies the log receipt of a response's
    request. Create with :meth:`connect`."""

    def __init__(
        self,
        core: RemoteClientCore,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        clock: Callable[[], float],
        timeout_s: float,
    ) -> None:
        self._core = core
        self._reader = reader
        self._writer = writer
        self._clock = clock
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()

    @property
    def counter(self) -> int:
        """The access counter after this login (the seed's access count)."""
        return self._core.counter

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        user_id: str,
        password: str,
        answer: AnswerCodes,
        limits: SessionLimits | None = None,
        config: AuthConfig | None = None,
        min_counter: int = 0,
        check_server: Callable[[x509.Certificate], object] | None = None,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> GuardClient:
        """Open TLS, check the server certificate, log in.

        TLS only proves the certificate chains to a trusted CA, which devices' certificates
        also do: ``check_server`` must confirm it is the expected hub (role, identifier)
        before the password leaves, and raise otherwise.
        """
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ssl_context), timeout_s
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise TransportError(f"cannot reach {host}:{port}: {exc}", reason="connect") from exc
        try:
            leaf = peer_certificate(writer.get_extra_info("ssl_object"))
            der = leaf.public_bytes(Encoding.DER)
            if check_server is not None:
                check_server(leaf)
            core = RemoteClientCore(
                user_id,
                password,
                config=config,
                limits=limits,
                channel_binding=tls_server_end_point(der),
                min_counter=min_counter,
            )
            client = cls(core, reader, writer, clock=clock, timeout_s=timeout_s)
            labels = core.receive_challenge(await client._exchange(core.hello()))
            codes = answer(labels)
            if not isinstance(codes, Sequence):
                codes = await codes
            core.receive_result(await client._exchange(core.answer(codes)), now=clock())
            return client
        except BaseException:
            writer.close()
            raise

    async def _exchange(self, body: bytes) -> bytes:
        try:
            self._writer.write(encode_record(body))
            await self._writer.drain()
            async with asyncio.timeout(self._timeout_s):
                reply = await _read_record(self._reader, self._core.max_record)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise TransportError(f"guard stream failed: {exc}", reason="stream") from exc
        if reply is None:
            raise TransportError("server closed the stream", reason="closed")
        return reply

    async def call(self, method: str, *args: bytes) -> Response:
        async with self._lock:
            frame = self._core.request(method, args, now=self._clock())
            return self._core.receive_response(await self._exchange(frame), now=self._clock())

    async def receipt(self, response: Response, *, log_key: bytes | None = None) -> Receipt:
        """The verified receipt for ``response``'s request; pin ``log_key`` (raw Ed25519
        public key) when it is known out of band."""
        if response.leaf_index is None:
            raise StateError("the server keeps no log", reason="no-log")
        answer = await self.call(RECEIPT_METHOD, response.leaf_index.to_bytes(8, "big"))
        receipt = receipt_from_response(answer, response.request_digest)
        if receipt.leaf_index != response.leaf_index:
            raise VerificationError("receipt is for another leaf", reason="receipt-mismatch")
        verify_receipt(receipt)
        if log_key is not None and receipt.checkpoint.public_key != log_key:
            raise VerificationError("receipt signed by another log key", reason="wrong-log-key")
        return receipt

    async def log_extends(self, receipt: Receipt) -> Checkpoint:
        """Check the server's log still contains everything ``receipt`` was issued against:
        its current checkpoint, signed by the same key, with a consistency proof from the
        receipt's size (RFC 9162 §2.1.4). Returns the newer checkpoint; raises
        VerificationError when the log was rewritten or forked."""
        size = receipt.checkpoint.size
        answer = await self.call(CONSISTENCY_METHOD, size.to_bytes(8, "big"))
        if not answer.ok or len(answer.results) != 1:
            raise VerificationError(
                f"server refused a consistency proof: {answer.reason}", reason="no-consistency"
            )
        verify_receipt(receipt, later=answer.results[0])
        newer, _ = decode_checkpoint_document(answer.results[0])
        return newer

    async def close(self) -> None:
        if self._core.session is not None:
            self._core.session.close("closed")
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()
