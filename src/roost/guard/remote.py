"""Remote calls over a guard session on any byte stream (docs/guard.md, "Remote calls"), pure.

PROTOCOL.md §6 runs inside an already secure stream (TLS). On that stream every record is
``u32 length | body``. The first records are the login messages (Hello, Challenge, Proof,
then Accept or Reject); after Accept every record is a sealed §6 frame whose plaintext is
a field record (:func:`roost.guard.session.encode_fields`):

    request  = method | argument ...
    response = "ok" | u64 leaf index of the request | result ...
             | "error" | u64 leaf index of the request | reason

The leaf index is where the server's Merkle log holds the request's digest
(``NO_LEAF`` when the server keeps no log), so a client can ask for a receipt of exactly
the message it sent (method ``receipt``, argument u64 index) and check the receipt's
digest against its own copy of the frame; method ``consistency`` (argument u64 earlier
size) returns the current checkpoint with a consistency proof from that size, so a client
holding an old receipt learns whether the log was rewritten since. Nothing here reads a
clock or touches a socket; the adapter in :mod:`roost.guard.aio` moves the bytes.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from roost.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    RoostError,
    StateError,
    VerificationError,
)
from roost.guard.challenge import AuthConfig, LoginClient, LoginServer, encode_reject
from roost.guard.log import Receipt, decode_receipt
from roost.guard.messages import MAX_MESSAGE_SIZE
from roost.guard.session import GuardSession, Role, SessionLimits, frame_digest
from roost.wire import Reader

__all__ = [
    "CONSISTENCY_METHOD",
    "NO_LEAF",
    "RECEIPT_METHOD",
    "CallHandler",
    "ReceiptIssuer",
    "RemoteClientCore",
    "RemoteServerCore",
    "Response",
    "receipt_from_response",
    "tls_server_end_point",
]

NO_LEAF = (1 << 64) - 1
RECEIPT_METHOD = "receipt"
CONSISTENCY_METHOD = "consistency"
MAX_METHOD_LENGTH = 64
_OK, _ERROR = b"ok", b"error"


def tls_server_end_point(server_certificate_der: bytes) -> bytes:
    """Channel binding for the login (RFC 5929 ``tls-server-end-point``: the hash of the
    server's certificate; SHA-256, the hash of its ECDSA-SHA256 signature).

    Both ends know the certificate the server presented, so a login relayed through a TLS
    endpoint holding another certificate produces another transcript and fails.
    """
    return b"tls-server-end-point:" + hashlib.sha256(server_certificate_der).digest()


def _leaf_bytes(index: int | None) -> bytes:
    return struct.pack(">Q", NO_LEAF if index is None else index)


def _decode_index(data: bytes, what: str) -> int:
    reader = Reader(data, what)
    value = reader.u64()
    reader.expect_end()
    return value


def _method_name(data: bytes) -> str:
    if not 0 < len(data) <= MAX_METHOD_LENGTH:
        raise RemoteProtocolError("method name length", reason="malformed")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError("method name is not ASCII", reason="malformed") from None


# A handler answers one call: method name, arguments → result fields. It raises a
# RoostError (for instance ``LocalProtocolError(reason="unknown-method")``) to refuse;
# the reason goes back to the client, the message stays on the server.
CallHandler = Callable[[str, tuple[bytes, ...]], Sequence[bytes]]


class ReceiptIssuer(Protocol):
    """The server's Merkle log as the core sees it (``roost.guard.aio.LogReceipts``)."""

    def record(self, digest: bytes) -> int: ...

    def receipt(self, index: int, wall_ms: int) -> bytes: ...

    def consistency(self, from_size: int, wall_ms: int) -> bytes: ...


class _Phase(enum.Enum):
    AWAIT_HELLO = "await-hello"
    AWAIT_PROOF = "await-proof"
    OPEN = "open"
    CLOSED = "closed"


class RemoteServerCore:
    """Server side of one stream: login, then calls. ``receive`` returns the record bodies
    to send (each already the body, without the length prefix); after it sets
    :attr:`closed` the adapter sends them and closes the stream."""

    def __init__(
        self,
        login_server: LoginServer,
        handler: CallHandler,
        *,
        limits: SessionLimits | None = None,
        receipts: ReceiptIssuer | None = None,
        channel_binding: bytes = b"",
    ) -> None:
        self._handshake = login_server.handshake(channel_binding)
        self._rejections = login_server.rejections
        self._handler = handler
        self._limits = limits or SessionLimits()
        self._receipts = receipts
        self._phase = _Phase.AWAIT_HELLO
        self.session: GuardSession | None = None
        self.closed_reason: str | None = None
        self.calls = 0

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def max_record(self) -> int:
        """Largest body the next record may have."""
        return MAX_MESSAGE_SIZE if self._phase is not _Phase.OPEN else self._limits.max_frame

    def next_deadline(self) -> float | None:
        return self.session.next_deadline() if self.session is not None else None

    def handle_timer(self, now: float) -> None:
        if self.session is not None:
            self.session.handle_timer(now)
            if not self.session.is_open:
                self._close(self.session.closed_reason or "closed")

    def close(self, reason: str) -> None:
        if self.session is not None:
            self.session.close(reason)
        self._close(reason)

    def receive(self, body: bytes, *, now: float, wall_ms: int) -> list[bytes]:
        if self._phase is _Phase.AWAIT_HELLO:
            return self._login_step(lambda: self._hello(body, now, wall_ms))
        if self._phase is _Phase.AWAIT_PROOF:
            return self._login_step(lambda: self._proof(body, now, wall_ms))
        if self._phase is _Phase.OPEN:
            return self._call(body, now, wall_ms)
        raise LocalProtocolError("stream is closed", reason="session-closed")

    # -- login -----------------------------------------------------------------------------

    def _login_step(self, step: Callable[[], bytes]) -> list[bytes]:
        try:
            return [step()]
        except RoostError as error:
            # Counted by the handshake; the peer learns nothing but Reject (docs/guard.md).
            self._close(error.reason)
            return [encode_reject()]

    def _hello(self, body: bytes, now: float, wall_ms: int) -> bytes:
        challenge = self._handshake.receive_hello(body, now=now, wall_ms=wall_ms)
        self._phase = _Phase.AWAIT_PROOF
        return challenge

    def _proof(self, body: bytes, now: float, wall_ms: int) -> bytes:
        accept, result = self._handshake.receive_proof(body, now=now, wall_ms=wall_ms)
        recorder = self._receipts.record if self._receipts is not None else None
        self.session = GuardSession(
            result,
            Role.SERVER,
            now=now,
            limits=self._limits,
            counter=self._rejections,
            recorder=recorder,
        )
        self._phase = _Phase.OPEN
        return accept

    # -- calls -----------------------------------------------------------------------------

    def _call(self, body: bytes, now: float, wall_ms: int) -> list[bytes]:
        session = self.session
        assert session is not None
        try:
            fields = session.open_fields(body, now=now)
        except RoostError as error:
            # A frame that fails inside TLS is an attack or a bug: end the session.
            self.close(error.reason)
            raise
        request_leaf = _leaf_bytes(session.last_leaf_index)
        self.calls += 1
        try:
            if not fields:
                raise RemoteProtocolError("empty request", reason="malformed")
            method = _method_name(fields[0])
            results = self._dispatch(method, fields[1:], wall_ms)
            reply = [_OK, request_leaf, *results]
        except RoostError as error:
            self._rejections.count(error)
            reply = [_ERROR, request_leaf, error.reason.encode("ascii", "replace")]
        try:
            return [bytes(session.seal_fields(reply, now=now))]
        except RoostError as error:
            self.close(error.reason)
            raise

    def _dispatch(self, method: str, args: tuple[bytes, ...], wall_ms: int) -> Sequence[bytes]:
        if method in (RECEIPT_METHOD, CONSISTENCY_METHOD):
            if self._receipts is None:
                raise StateError("this server keeps no log", reason="no-log")
            if len(args) != 1:
                raise RemoteProtocolError(f"{method} takes one number", reason="malformed")
            number = _decode_index(args[0], method)
            if method == RECEIPT_METHOD:
                return [self._receipts.receipt(number, wall_ms)]
            return [self._receipts.consistency(number, wall_ms)]
        return self._handler(method, args)

    def _close(self, reason: str) -> None:
        if self._phase is not _Phase.CLOSED:
            self._phase = _Phase.CLOSED
            self.closed_reason = reason


@dataclass(frozen=True, slots=True)
class Response:
    """One answered call. ``request_digest`` is the log leaf data of the request as the
    client sent it; a receipt for ``leaf_index`` must carry the same digest."""

    ok: bool
    leaf_index: int | None
    results: tuple[bytes, ...]
    request_digest: bytes

    @property
    def reason(self) -> str:
        return self.results[0].decode("ascii", "replace") if not self.ok and self.results else ""


class RemoteClientCore:
    """Client side: ``hello()``, ``receive_challenge()`` → labels to answer,
    ``answer(codes)``, ``receive_result()``; then ``request()`` / ``receive_response()``
    alternately (one call in flight)."""

    def __init__(
        self,
        user_id: str,
        password: str,
        *,
        config: AuthConfig | None = None,
        limits: SessionLimits | None = None,
        channel_binding: bytes = b"",
        min_counter: int = 0,
    ) -> None:
        self._login = LoginClient(
            user_id,
            password,
            config=config,
            channel_binding=channel_binding,
            min_counter=min_counter,
        )
        self._limits = limits or SessionLimits()
        self.session: GuardSession | None = None
        self.counter = 0
        self._pending_digest: bytes | None = None

    @property
    def max_record(self) -> int:
        return MAX_MESSAGE_SIZE if self.session is None else self._limits.max_frame

    def hello(self) -> bytes:
        return self._login.hello()

    def receive_challenge(self, body: bytes) -> tuple[str, ...]:
        return self._login.receive_challenge(body)

    def answer(self, codes: Sequence[str]) -> bytes:
        return self._login.answer(list(codes))

    def receive_result(self, body: bytes, *, now: float) -> None:
        result = self._login.receive_result(body)
        self.counter = result.counter
        self.session = GuardSession(result, Role.CLIENT, now=now, limits=self._limits)

    def request(self, method: str, args: Sequence[bytes], *, now: float) -> bytes:
        session = self._open_session()
        if self._pending_digest is not None:
            raise LocalProtocolError("a call is already in flight", reason="call-in-flight")
        frame = bytes(session.seal_fields([method.encode("ascii"), *args], now=now))
        self._pending_digest = frame_digest(session.session_id, frame)
        return frame

    def receive_response(self, body: bytes, *, now: float) -> Response:
        session = self._open_session()
        digest = self._pending_digest
        if digest is None:
            raise RemoteProtocolError("response without a request", reason="unexpected-message")
        fields = session.open_fields(body, now=now)
        self._pending_digest = None
        if len(fields) < 2 or fields[0] not in (_OK, _ERROR):
            raise RemoteProtocolError("response status", reason="malformed")
        index = _decode_index(fields[1], "leaf index")
        return Response(
            ok=fields[0] == _OK,
            leaf_index=None if index == NO_LEAF else index,
            results=fields[2:],
            request_digest=digest,
        )

    def _open_session(self) -> GuardSession:
        if self.session is None:
            raise LocalProtocolError("not logged in", reason="not-logged-in")
        return self.session


def receipt_from_response(response: Response, expected_digest: bytes) -> Receipt:
    """Decode the receipt a ``receipt`` call returned and check it is for our message.

    The caller still verifies the signature and proof (``verify_receipt``) and pins the
    log key it expects.
    """
    if not response.ok:
        raise VerificationError(
            f"server refused the receipt: {response.reason}", reason="receipt-refused"
        )
    if len(response.results) != 1:
        raise RemoteProtocolError("receipt response", reason="malformed")
    receipt = decode_receipt(response.results[0])
    if receipt.message_digest != expected_digest:
        raise VerificationError("receipt is for another message", reason="receipt-mismatch")
    return receipt
