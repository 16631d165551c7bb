"""asyncio client of a guard session (docs/guard.md, "Remote calls").

:meth:`GuardClient.over_stream` logs in on any stream already open, given the channel
binding both ends agree on; :meth:`GuardClient.connect` opens TLS, checks the hub's
certificate and binds the login to it (RFC 5929 ``tls-server-end-point``). Records are cut
by :class:`roost.framing.RecordFramer` from chunked reads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from roost.errors import RemoteProtocolError, StateError, TransportError, VerificationError
from roost.framing import RecordFramer, encode_record
from roost.guard.calls import (
    CONSISTENCY_METHOD,
    RECEIPT_METHOD,
    RemoteClientCore,
    Response,
    receipt_from_response,
    tls_server_end_point,
)
from roost.guard.challenge import AuthConfig
from roost.guard.log import Checkpoint, Receipt, decode_checkpoint_document, verify_receipt
from roost.guard.session import SessionLimits
from roost.guard.streams import READ_CHUNK, STREAM_ERRORS, ByteStreamReader, ByteStreamWriter
from roost.pki.tls import peer_certificate

__all__ = ["AnswerCodes", "GuardClient"]

AnswerCodes = Callable[[tuple[str, ...]], Awaitable[Sequence[str]] | Sequence[str]]


class GuardClient:
    """A logged-in remote session: :meth:`call` sends one request and waits for its
    response, :meth:`call_stream` iterates over a streamed answer; :meth:`receipt` fetches
    and verifies the log receipt of a response's request. Create with :meth:`connect`
    (TLS) or :meth:`over_stream` (any stream already open)."""

    def __init__(
        self,
        core: RemoteClientCore,
        reader: ByteStreamReader,
        writer: ByteStreamWriter,
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
        self._framer = RecordFramer(core.max_record, what="guard record")
        self._inbox: collections.deque[bytes] = collections.deque()

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
        """Open TLS, check the server certificate, log in bound to it.

        TLS only proves the certificate chains to a trusted CA, which devices' certificates
        also do: ``check_server`` must confirm it is the expected hub (role, identifier)
        before the password leaves, and raise otherwise.
        """
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ssl_context), timeout_s
            )
        except (*STREAM_ERRORS, TimeoutError) as exc:
            raise TransportError(f"cannot reach {host}:{port}: {exc}", reason="connect") from exc
        try:
            leaf = peer_certificate(writer.get_extra_info("ssl_object"))
            if check_server is not None:
                check_server(leaf)
        except BaseException:
            writer.close()
            raise
        return await cls.over_stream(
            reader,
            writer,
            channel_binding=tls_server_end_point(leaf.public_bytes(Encoding.DER)),
            user_id=user_id,
            password=password,
            answer=answer,
            limits=limits,
            config=config,
            min_counter=min_counter,
            timeout_s=timeout_s,
            clock=clock,
        )

    @classmethod
    async def over_stream(
        cls,
        reader: ByteStreamReader,
        writer: ByteStreamWriter,
        *,
        channel_binding: bytes,
        user_id: str,
        password: str,
        answer: AnswerCodes,
        limits: SessionLimits | None = None,
        config: AuthConfig | None = None,
        min_counter: int = 0,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        pipeline: bool = False,
        server_first: bool = False,
    ) -> GuardClient:
        """Log in on a stream already open to the server; the stream is closed if the login
        fails. ``channel_binding`` must be what the server binds the same stream to.

        ``pipeline`` returns once the proof is sent, without waiting for the server's
        Accept: the first call goes out at once and the Accept is read and verified
        before its response (one round trip less; a refused login then raises from that
        first call, and ``counter`` is known only after it).

        ``server_first`` takes the server's Challenge as the stream's first record instead
        of sending a Hello for it (the login stream a hub opens on a brokered QUIC session,
        docs/guard.md, "Server-first login"): the Hello goes out as soon as the Challenge
        is taken, the proof behind it; with ``pipeline`` the login costs no round trip of
        its own."""
        core = RemoteClientCore(
            user_id,
            password,
            config=config,
            limits=limits,
            channel_binding=channel_binding,
            min_counter=min_counter,
        )
        client = cls(core, reader, writer, clock=clock, timeout_s=timeout_s)
        try:
            if server_first:
                labels = core.receive_challenge_first(await client._next_record())
                # The Hello leaves before the codes are asked: the server checks the
                # password while they are typed.
                client._write(core.hello())
            else:
                labels = core.receive_challenge(await client._exchange(core.hello()))
            codes = answer(labels)
            if not isinstance(codes, Sequence):
                codes = await codes
            proof = core.answer(codes)
            if pipeline:
                client._write(proof)
                core.open_early(now=clock())
                return client
            core.receive_result(await client._exchange(proof), now=clock())
            return client
        except BaseException:
            writer.close()
            raise

    def _write(self, body: bytes) -> None:
        try:
            self._writer.write(encode_record(body))
        except STREAM_ERRORS as exc:
            raise TransportError(f"guard stream failed: {exc}", reason="stream") from exc

    async def _exchange(self, body: bytes) -> bytes:
        self._write(body)
        try:
            await self._writer.drain()
        except STREAM_ERRORS as exc:
            raise TransportError(f"guard stream failed: {exc}", reason="stream") from exc
        if self._core.awaiting_accept:
            # A pipelined login: the server's Accept precedes the first response.
            try:
                self._core.receive_result(await self._next_record(), now=self._clock())
            except BaseException:
                self._writer.close()
                raise
        return await self._next_record()

    async def _next_record(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout_s):
                while not self._inbox:
                    # Sealed frames may be larger than login messages: the bound follows
                    # the core (docs/guard.md, "Remote calls").
                    self._framer.max_body = self._core.max_record
                    data = await self._reader.read(READ_CHUNK)
                    if not data:
                        try:
                            self._framer.end_of_stream()
                        except RemoteProtocolError as exc:
                            raise TransportError(
                                "stream ended inside a record", reason="truncated"
                            ) from exc
                        raise TransportError("server closed the stream", reason="closed")
                    self._inbox.extend(self._framer.feed(data))
        except (*STREAM_ERRORS, TimeoutError) as exc:
            raise TransportError(f"guard stream failed: {exc}", reason="stream") from exc
        return self._inbox.popleft()

    async def call(self, method: str, *args: bytes) -> Response:
        """One call and its one answer (a method that streams needs :meth:`call_stream`)."""
        async with self._lock:
            frame = self._core.request(method, args, now=self._clock())
            response = self._core.receive_response(await self._exchange(frame), now=self._clock())
            if response.more or response.end:
                self._abandon()
                raise RemoteProtocolError(
                    f"{method} streams its answer; use call_stream", reason="unexpected-message"
                )
            return response

    async def call_stream(self, method: str, *args: bytes) -> AsyncIterator[Response]:
        """Every response of one call: each ``more`` item as it arrives, or the one ``ok``
        or ``error`` answer of a method that does not stream. Leaving the loop before the
        end closes the session (there is no cancel message)."""
        async with self._lock:
            frame = self._core.request(method, args, now=self._clock())
            record = await self._exchange(frame)
            try:
                while True:
                    response = self._core.receive_response(record, now=self._clock())
                    if response.end:
                        return
                    yield response
                    if not response.more:
                        return
                    record = await self._next_record()
            finally:
                if self._core.in_flight:
                    self._abandon()

    def _abandon(self) -> None:
        # Records of the unfinished answer are still on their way: the stream is no longer
        # in step with the session, so both end.
        if self._core.session is not None:
            self._core.session.close("closed")
        self._writer.close()

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
        with contextlib.suppress(*STREAM_ERRORS):
            await self._writer.wait_closed()
