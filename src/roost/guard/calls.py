"""The call records of a guard session and the client core, pure (docs/guard.md, "Remote calls").

After the login every record on the stream is a sealed §6 frame whose plaintext is a field
record (:func:`roost.guard.session.encode_fields`):

    request  = method | argument ...
    response = "ok"    | u64 leaf index of the request | result ...
             | "more"  | u64 leaf index of the request | item ...     (a streamed answer)
             | "end"   | u64 leaf index of the request                (its last record)
             | "error" | u64 leaf index of the request | reason

The server core is :class:`roost.guard.remote.RemoteServerCore`; this module holds what
both sides share and :class:`RemoteClientCore`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError, as_remote
from roost.guard.challenge import AuthConfig, LoginClient
from roost.guard.log import Receipt, decode_receipt
from roost.guard.messages import MAX_MESSAGE_SIZE
from roost.guard.session import GuardSession, Role, SessionLimits, frame_digest
from roost.wire import Reader

__all__ = [
    "CONSISTENCY_METHOD",
    "MAX_METHOD_LENGTH",
    "NO_LEAF",
    "RECEIPT_METHOD",
    "STATUS_END",
    "STATUS_ERROR",
    "STATUS_MORE",
    "STATUS_OK",
    "RemoteClientCore",
    "Response",
    "decode_index",
    "leaf_bytes",
    "method_name",
    "receipt_from_response",
    "tls_server_end_point",
]

NO_LEAF = (1 << 64) - 1
RECEIPT_METHOD = "receipt"
CONSISTENCY_METHOD = "consistency"
MAX_METHOD_LENGTH = 64
# The response statuses (docs/guard.md, "Remote calls").
STATUS_OK, STATUS_ERROR, STATUS_MORE, STATUS_END = b"ok", b"error", b"more", b"end"


def tls_server_end_point(server_certificate_der: bytes) -> bytes:
    """Channel binding for the login (RFC 5929 ``tls-server-end-point``: the hash of the
    server's certificate; SHA-256, the hash of its ECDSA-SHA256 signature).

    Both ends know the certificate the server presented, so a login relayed through a TLS
    endpoint holding another certificate produces another transcript and fails.
    """
    return b"tls-server-end-point:" + hashlib.sha256(server_certificate_der).digest()


def leaf_bytes(index: int | None) -> bytes:
    """The u64 leaf index field of a response (``NO_LEAF`` when no log holds it)."""
    return struct.pack(">Q", NO_LEAF if index is None else index)


def decode_index(data: bytes, what: str) -> int:
    """A u64 argument or field, exactly eight bytes."""
    reader = Reader(data, what)
    value = reader.u64()
    reader.expect_end()
    return value


def method_name(data: bytes) -> str:
    """A request's method name: 1 to 64 ASCII bytes."""
    if not 0 < len(data) <= MAX_METHOD_LENGTH:
        raise RemoteProtocolError("method name length", reason="malformed")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError("method name is not ASCII", reason="malformed") from None


@dataclass(frozen=True, slots=True)
class Response:
    """One answered call. ``request_digest`` is the log leaf data of the request as the
    client sent it; a receipt for ``leaf_index`` must carry the same digest."""

    ok: bool
    leaf_index: int | None
    results: tuple[bytes, ...]
    request_digest: bytes
    # A streamed answer: ``more`` marks one item (more records follow), ``end`` its last
    # record (no results).
    more: bool = False
    end: bool = False

    @property
    def reason(self) -> str:
        return self.results[0].decode("ascii", "replace") if not self.ok and self.results else ""


class RemoteClientCore:
    """Client side: ``hello()``, ``receive_challenge()`` → labels to answer,
    ``answer(codes)``, ``receive_result()`` (server-first: ``receive_challenge_first()``,
    then ``hello()``, ``answer(codes)``, ``receive_result()``); then ``request()`` /
    ``receive_response()`` alternately (one call in flight). A streamed answer is several
    responses to one request: the call stays in flight until a response that is not
    ``more``."""

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
        # True between open_early() and the server's Accept.
        self._early = False

    @property
    def max_record(self) -> int:
        return MAX_MESSAGE_SIZE if self.session is None else self._limits.max_frame

    def hello(self) -> bytes:
        return self._login.hello()

    def receive_challenge(self, body: bytes) -> tuple[str, ...]:
        return self._login.receive_challenge(body)

    def receive_challenge_first(self, body: bytes) -> tuple[str, ...]:
        """A server-first login (docs/guard.md): the server's Challenge before our Hello;
        then ``hello()`` and ``answer(codes)``, sent in that order."""
        return self._login.receive_challenge_first(body)

    def answer(self, codes: Sequence[str]) -> bytes:
        return self._login.answer(list(codes))

    def open_early(self, *, now: float) -> None:
        """Open the session the sent proof will open, before the server's Accept, so the
        first call goes out with the proof and the login costs one round trip less. The
        Accept must still come (``receive_result``) before any response is taken; the
        server holds the early call until it has accepted the proof (docs/guard.md)."""
        pending = self._login.pending_result
        self.session = GuardSession(pending, Role.CLIENT, now=now, limits=self._limits)
        self._early = True

    @property
    def awaiting_accept(self) -> bool:
        """True while the session was opened early and the server's Accept is still due."""
        return self._early

    def receive_result(self, body: bytes, *, now: float) -> None:
        try:
            result = self._login.receive_result(body)
        except BaseException:
            if self._early and self.session is not None:
                self.session.close("refused")
                self.session = None
            self._early = False
            raise
        self.counter = result.counter
        if not self._early:
            self.session = GuardSession(result, Role.CLIENT, now=now, limits=self._limits)
        self._early = False

    def request(self, method: str, args: Sequence[bytes], *, now: float) -> bytes:
        session = self._open_session()
        if self._pending_digest is not None:
            raise LocalProtocolError("a call is already in flight", reason="call-in-flight")
        frame = bytes(session.seal_fields([method.encode("ascii"), *args], now=now))
        self._pending_digest = frame_digest(session.session_id, frame)
        return frame

    def receive_response(self, body: bytes, *, now: float) -> Response:
        if self._early:
            raise LocalProtocolError("the server's Accept comes first", reason="not-logged-in")
        session = self._open_session()
        digest = self._pending_digest
        if digest is None:
            raise RemoteProtocolError("response without a request", reason="unexpected-message")
        # The receive boundary (roost.errors.peer_input), inline: this runs once per call.
        try:
            fields = session.open_fields(body, now=now)
            if len(fields) < 2 or fields[0] not in (
                STATUS_OK,
                STATUS_ERROR,
                STATUS_MORE,
                STATUS_END,
            ):
                raise RemoteProtocolError("response status", reason="malformed")
            if fields[0] == STATUS_END and len(fields) != 2:
                raise RemoteProtocolError("end of a stream carries no results", reason="malformed")
            index = decode_index(fields[1], "leaf index")
        except LocalProtocolError as error:
            raise as_remote(error) from error
        more = fields[0] == STATUS_MORE
        if not more:
            self._pending_digest = None
        return Response(
            ok=fields[0] != STATUS_ERROR,
            leaf_index=None if index == NO_LEAF else index,
            results=fields[2:],
            request_digest=digest,
            more=more,
            end=fields[0] == STATUS_END,
        )

    @property
    def in_flight(self) -> bool:
        """True while a request waits for its (last) response."""
        return self._pending_digest is not None

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
