"""Remote calls over a guard session on any byte stream (docs/guard.md, "Remote calls"), pure.

PROTOCOL.md §6 runs inside an already secure stream (TLS, or any stream with a channel
binding both ends agree on). On that stream every record is ``u32 length | body``. The
first records are the login messages (Hello, Challenge, Proof, then Accept or Reject);
after Accept every record is a sealed §6 frame whose plaintext is a field record
(:func:`roost.guard.session.encode_fields`):

    request  = method | argument ...
    response = "ok"    | u64 leaf index of the request | result ...
             | "more"  | u64 leaf index of the request | item ...     (a streamed answer)
             | "end"   | u64 leaf index of the request                (its last record)
             | "error" | u64 leaf index of the request | reason

The leaf index is where the server's Merkle log holds the request's digest
(``NO_LEAF`` when the server keeps no log), so a client can ask for a receipt of exactly
the message it sent (method ``receipt``, argument u64 index) and check the receipt's
digest against its own copy of the frame; method ``consistency`` (argument u64 earlier
size) returns the current checkpoint with a consistency proof from that size, so a client
holding an old receipt learns whether the log was rewritten since.

:class:`RemoteServerCore` has the aioquic shape: ``receive_data(data, now, wall_ms)``,
``next_event()``, ``data_to_send()``, ``get_timer()``/``handle_timer(now)``. It asks the
adapter for the slow parts of a login as :class:`WorkRequested` events (the password KDF
and the user directory, see :mod:`roost.guard.challenge`) and for every non-built-in call
as :class:`CallReceived`; the adapter answers with ``work_done``, ``answer``, ``refuse``,
``send_item``/``end_stream``. Nothing here reads a clock or touches a socket; the adapter
in :mod:`roost.guard.aio` moves the bytes.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from roost.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    RoostError,
    StateError,
    as_remote,
)
from roost.framing import RecordFramer, encode_record
from roost.guard.calls import (
    CONSISTENCY_METHOD,
    NO_LEAF,
    RECEIPT_METHOD,
    STATUS_END,
    STATUS_ERROR,
    STATUS_MORE,
    STATUS_OK,
    RemoteClientCore,
    Response,
    decode_index,
    leaf_bytes,
    method_name,
    receipt_from_response,
    tls_server_end_point,
)
from roost.guard.challenge import LoginResult, LoginServer, LoginSteps, LoginWork, encode_reject
from roost.guard.messages import MAX_MESSAGE_SIZE
from roost.guard.session import GuardSession, Role, SessionLimits
from roost.guard.userstore import PasswordGrant

__all__ = [
    "CONSISTENCY_METHOD",
    "MAX_QUEUED_RECORDS",
    "NO_LEAF",
    "RECEIPT_METHOD",
    "CallHandler",
    "CallReceived",
    "CallResult",
    "CloseCause",
    "LoggedIn",
    "ReceiptIssuer",
    "RemoteClientCore",
    "RemoteEvent",
    "RemoteServerCore",
    "Response",
    "StreamClosed",
    "WorkRequested",
    "receipt_from_response",
    "tls_server_end_point",
]

# Records a peer may send ahead of the answer it waits for (one call is in flight at a
# time, docs/guard.md); beyond this the stream is ended rather than buffered.
MAX_QUEUED_RECORDS = 8

# A handler answers one call: method name, arguments → result fields, an awaitable of
# them (a slow read off the event loop), or an async iterator of items, each sent as its
# own "more" record and followed by "end" (a live stream). It raises a RoostError (for
# instance ``RemoteProtocolError(reason="unknown-method")``) to refuse; the reason goes
# back to the client, the message stays on the server.
CallResult = Sequence[bytes] | Awaitable[Sequence[bytes]] | AsyncIterator[Sequence[bytes]]
CallHandler = Callable[[str, tuple[bytes, ...]], CallResult]


def _blame_peer(error: RoostError) -> RoostError:
    """The receive boundary (h11's rule, ``roost.errors.peer_input``) written inline for the
    per-call path: a ``LocalProtocolError`` raised while handling the peer's bytes is theirs.
    A ``with`` block costs a few microseconds a call; ``try`` costs nothing until it raises."""
    return as_remote(error) if isinstance(error, LocalProtocolError) else error


class ReceiptIssuer(Protocol):
    """The server's Merkle log as the core sees it (``roost.guard.aio.LogReceipts``)."""

    def record(self, digest: bytes) -> int: ...

    def receipt(self, index: int, wall_ms: int) -> bytes: ...

    def consistency(self, from_size: int, wall_ms: int) -> bytes: ...


# --- Events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemoteEvent:
    """Base of what :class:`RemoteServerCore` reports through ``next_event()``."""


@dataclass(frozen=True, slots=True)
class WorkRequested(RemoteEvent):
    """Run ``item.run()`` off the event loop, then call ``work_done(item, result, …)``."""

    item: LoginWork


@dataclass(frozen=True, slots=True)
class LoggedIn(RemoteEvent):
    user_id: str
    counter: int


@dataclass(frozen=True, slots=True)
class CallReceived(RemoteEvent):
    """A call for the handler; answer it with ``answer``, ``refuse`` or a stream."""

    call_id: int
    method: str
    args: tuple[bytes, ...]


class CloseCause(enum.Enum):
    LOGIN_FAILED = "login-failed"
    LOGIN_TIMEOUT = "login-timeout"
    SESSION_ENDED = "session-ended"  # idle, lifetime or message budget (docs/guard.md)
    PEER_ERROR = "peer-error"
    PEER_CLOSED = "peer-closed"
    CLOSED = "closed"  # the adapter called close()


@dataclass(frozen=True, slots=True)
class StreamClosed(RemoteEvent):
    """The core is done: send what ``data_to_send()`` still holds, then close the stream.
    ``error`` is the classified error when the peer broke a rule."""

    reason: str
    cause: CloseCause
    error: RoostError | None = None


# --- Server core ---------------------------------------------------------------------------


class _Phase(enum.Enum):
    AWAIT_HELLO = "await-hello"
    # Server-first (docs/guard.md): the Challenge for the granted user is being made, then
    # is out and the client's Hello is awaited.
    CHALLENGE_WORK = "challenge-work"
    AWAIT_LATE_HELLO = "await-late-hello"
    HELLO_WORK = "hello-work"
    AWAIT_PROOF = "await-proof"
    PROOF_WORK = "proof-work"
    OPEN = "open"
    CALLING = "calling"
    CLOSED = "closed"


# The one transition table of the server core (STYLE.md): a phase may only move to these.
_TRANSITIONS: Mapping[_Phase, frozenset[_Phase]] = {
    _Phase.AWAIT_HELLO: frozenset({_Phase.HELLO_WORK, _Phase.CHALLENGE_WORK, _Phase.CLOSED}),
    _Phase.CHALLENGE_WORK: frozenset({_Phase.AWAIT_LATE_HELLO, _Phase.CLOSED}),
    _Phase.AWAIT_LATE_HELLO: frozenset({_Phase.HELLO_WORK, _Phase.CLOSED}),
    _Phase.HELLO_WORK: frozenset({_Phase.AWAIT_PROOF, _Phase.CLOSED}),
    _Phase.AWAIT_PROOF: frozenset({_Phase.PROOF_WORK, _Phase.CLOSED}),
    _Phase.PROOF_WORK: frozenset({_Phase.OPEN, _Phase.CLOSED}),
    _Phase.OPEN: frozenset({_Phase.CALLING, _Phase.CLOSED}),
    _Phase.CALLING: frozenset({_Phase.OPEN, _Phase.CLOSED}),
    _Phase.CLOSED: frozenset(),
}
_TAKES_RECORDS = frozenset(
    {_Phase.AWAIT_HELLO, _Phase.AWAIT_LATE_HELLO, _Phase.AWAIT_PROOF, _Phase.OPEN}
)


class RemoteServerCore:
    """Server side of one stream: login within ``login_timeout_s`` of ``now``, then calls.

    Event API (adapters): ``receive_data``/``receive_eof`` take the peer's bytes,
    ``next_event()`` says what to do, ``data_to_send()`` is what to write, and
    ``get_timer()``/``handle_timer()`` carry both the login deadline and the session's idle
    and absolute limits. Peer errors never raise from these: the core counts them, ends
    the stream and reports :class:`StreamClosed` with the classified error.

    :meth:`receive` is the same core driven in place (work items run inline, calls go to
    ``handler``, which must answer synchronously), for in-memory use and tests; it returns
    the record bodies to send and raises the peer's error.

    :meth:`open_login` starts a server-first login (docs/guard.md, "Server-first login"):
    the Challenge for the user of ``password_grant`` goes out before any record arrives,
    and the client's Hello and Proof follow it.
    """

    def __init__(
        self,
        login_server: LoginServer,
        handler: CallHandler | None = None,
        *,
        limits: SessionLimits | None = None,
        receipts: ReceiptIssuer | None = None,
        channel_binding: bytes = b"",
        login_timeout_s: float = 60.0,
        now: float = 0.0,
        password_grant: PasswordGrant | None = None,
    ) -> None:
        self._handshake = login_server.handshake(channel_binding, password_grant)
        self._rejections = login_server.rejections
        self._handler = handler
        self._limits = limits or SessionLimits()
        self._receipts = receipts
        self._phase = _Phase.AWAIT_HELLO
        self._login_deadline = now + login_timeout_s
        self._framer = RecordFramer(MAX_MESSAGE_SIZE, what="guard record")
        self._inbox: collections.deque[bytes] = collections.deque()
        self._outgoing: list[bytes] = []
        self._events: collections.deque[RemoteEvent] = collections.deque()
        self._steps: LoginSteps[object] | None = None
        self._waiting: LoginWork | None = None
        self._call_id = 0
        self._call_leaf = b""
        self._error: RoostError | None = None
        self.session: GuardSession | None = None
        self.closed_reason: str | None = None
        self.calls = 0

    @property
    def used_password_grant(self) -> bool:
        """True when the login's password was admitted by a ``PasswordGrant``."""
        return self._handshake.used_grant

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def max_record(self) -> int:
        """Largest body the next record may have."""
        return self._framer.max_body

    # -- adapter input ---------------------------------------------------------------------

    def open_login(self, *, now: float, wall_ms: int) -> None:
        """Send the server-first Challenge for the grant's user before the client says
        anything (a brokered session's login stream, docs/guard.md); only before the first
        record. Without a valid grant the login fails at once (``no-grant``: a Reject, then
        :class:`StreamClosed`), so no Challenge leaves a stream that carries none."""
        self._require_not_closed()
        if self._phase is not _Phase.AWAIT_HELLO or self._inbox:
            raise LocalProtocolError("the login already started", reason="unexpected-message")
        self._move(_Phase.CHALLENGE_WORK)
        self._steps = self._handshake.challenge_first_steps(now=now, wall_ms=wall_ms)
        self._login_step(lambda started: started.send(None), now)
        self._advance(now, wall_ms)

    def receive_data(self, data: bytes, *, now: float, wall_ms: int) -> None:
        """Bytes the peer sent, as they came off the stream."""
        self._require_not_closed()
        try:
            self._inbox.extend(self._framer.feed(data))
            if len(self._inbox) > MAX_QUEUED_RECORDS:
                raise RemoteProtocolError(
                    "records sent ahead of the answer", reason="call-in-flight"
                )
        except RoostError as caught:
            error = _blame_peer(caught)
            self._rejections.count(error)
            self._end(error.reason, CloseCause.PEER_ERROR, error)
            return
        self._advance(now, wall_ms)

    def receive_eof(self) -> None:
        """The peer closed its side of the stream."""
        if self.closed:
            return
        try:
            self._framer.end_of_stream()
        except RemoteProtocolError as error:
            self._rejections.count(error)
            self._end(error.reason, CloseCause.PEER_ERROR, error)
            return
        self._end("closed", CloseCause.PEER_CLOSED)

    def work_done(self, item: LoginWork, result: object, *, now: float, wall_ms: int) -> None:
        """The result of the work item of the last :class:`WorkRequested`."""
        if self.closed:
            return  # timed out while the work ran; the result is dropped
        self._take_work(item)
        self._login_step(lambda steps: steps.send(result), now)
        self._advance(now, wall_ms)

    def work_failed(self, item: LoginWork, error: RoostError, *, now: float, wall_ms: int) -> None:
        """The work item raised ``error`` (a broken user store, say); the login fails."""
        if self.closed:
            return
        self._take_work(item)
        self._login_step(lambda steps: steps.throw(error), now)
        self._advance(now, wall_ms)

    def answer(self, call_id: int, results: Sequence[bytes], *, now: float, wall_ms: int) -> None:
        """The handler's whole answer to call ``call_id``."""
        if self._current_call(call_id):
            self._finish_call([STATUS_OK, self._call_leaf, *results], now, wall_ms)

    def refuse(self, call_id: int, error: RoostError, *, now: float, wall_ms: int) -> None:
        """The handler refused call ``call_id`` (also ends a stream): counted, and only the
        reason goes back."""
        if self._current_call(call_id):
            self._rejections.count(error)
            self._finish_call([STATUS_ERROR, self._call_leaf, _reason_bytes(error)], now, wall_ms)

    def send_item(self, call_id: int, results: Sequence[bytes], *, now: float) -> None:
        """One item of a streamed answer; more follow, then :meth:`end_stream`."""
        if self._current_call(call_id):
            self._seal([STATUS_MORE, self._call_leaf, *results], now)

    def end_stream(self, call_id: int, *, now: float, wall_ms: int) -> None:
        """The streamed answer to ``call_id`` is complete."""
        if self._current_call(call_id):
            self._finish_call([STATUS_END, self._call_leaf], now, wall_ms)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next run: the login deadline until Accept, then
        the session's idle or absolute limit (None once closed)."""
        if self.closed:
            return None
        if self.session is None:
            return self._login_deadline
        return self.session.next_deadline()

    next_deadline = get_timer

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self.session is None:
            if now >= self._login_deadline:
                self._rejections.count(StateError("login timed out", reason="login-timeout"))
                self._end("login-timeout", CloseCause.LOGIN_TIMEOUT)
            return
        self.session.handle_timer(now)
        if not self.session.is_open:
            self._end(self.session.closed_reason or "closed", CloseCause.SESSION_ENDED)

    def close(self, reason: str) -> None:
        """End the stream from our side (shutdown, a failed write)."""
        self._end(reason, CloseCause.CLOSED)

    # -- adapter output --------------------------------------------------------------------

    def next_event(self) -> RemoteEvent | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """The framed records to write, in order."""
        return b"".join(encode_record(body) for body in self.records_to_send())

    def records_to_send(self) -> list[bytes]:
        """The record bodies to write (without their length prefix)."""
        out, self._outgoing = self._outgoing, []
        return out

    # -- in place --------------------------------------------------------------------------

    def receive(self, body: bytes, *, now: float, wall_ms: int) -> list[bytes]:
        """Handle one record body in place; return the record bodies to send."""
        self._require_not_closed()
        self._error = None
        self._inbox.append(body)
        self._advance(now, wall_ms)
        self.run_inline(now=now, wall_ms=wall_ms)
        if self._error is not None:
            raise self._error
        return self.records_to_send()

    def run_inline(self, *, now: float, wall_ms: int) -> None:
        """Run every pending work item in place and answer every call with ``handler``;
        other events are dropped."""
        while (event := self.next_event()) is not None:
            if isinstance(event, WorkRequested):
                self.work_done(event.item, event.item.run(), now=now, wall_ms=wall_ms)
            elif isinstance(event, CallReceived):
                self._answer_inline(event, now, wall_ms)

    def _answer_inline(self, event: CallReceived, now: float, wall_ms: int) -> None:
        if self._handler is None:
            raise LocalProtocolError("no handler to answer calls in place")
        try:
            results = self._handler(event.method, event.args)
            if not isinstance(results, Sequence):
                raise LocalProtocolError("answering in place needs a synchronous handler")
        except RoostError as error:
            self.refuse(event.call_id, error, now=now, wall_ms=wall_ms)
            return
        self.answer(event.call_id, results, now=now, wall_ms=wall_ms)

    # -- internals -------------------------------------------------------------------------

    def _move(self, phase: _Phase) -> None:
        if phase not in _TRANSITIONS[self._phase]:
            raise LocalProtocolError(f"remote stream cannot go from {self._phase} to {phase}")
        self._phase = phase

    def _require_not_closed(self) -> None:
        if self.closed:
            raise LocalProtocolError("stream is closed", reason="session-closed")

    def _advance(self, now: float, wall_ms: int) -> None:
        # One record at a time: the next waits until the previous one is answered.
        while self._inbox and self._phase in _TAKES_RECORDS:
            body = self._inbox.popleft()
            if self._phase in (_Phase.AWAIT_HELLO, _Phase.AWAIT_LATE_HELLO):
                self._start_login(
                    self._handshake.hello_steps, _Phase.HELLO_WORK, body, now, wall_ms
                )
            elif self._phase is _Phase.AWAIT_PROOF:
                self._start_login(
                    self._handshake.proof_steps, _Phase.PROOF_WORK, body, now, wall_ms
                )
            else:
                self._receive_call(body, now, wall_ms)

    # -- login -----------------------------------------------------------------------------

    def _start_login(
        self,
        steps: Callable[..., LoginSteps[object]],
        phase: _Phase,
        body: bytes,
        now: float,
        wall_ms: int,
    ) -> None:
        self._move(phase)
        self._steps = steps(body, now=now, wall_ms=wall_ms)
        self._login_step(lambda started: started.send(None), now)

    def _take_work(self, item: LoginWork) -> None:
        if self._waiting is None or item is not self._waiting:
            raise LocalProtocolError("not the work item this stream waits for")
        self._waiting = None

    def _login_step(self, resume: Callable[[LoginSteps[object]], LoginWork], now: float) -> None:
        steps = self._steps
        assert steps is not None
        try:
            item = resume(steps)
        except StopIteration as done:
            self._steps = None
            self._login_reply(done.value, now)
            return
        except RoostError as error:
            # Counted by the handshake; the peer learns nothing but Reject (docs/guard.md),
            # so whose fault it was matters only to the count, which has the reason.
            self._steps = None
            self._outgoing.append(encode_reject())
            self._end(error.reason, CloseCause.LOGIN_FAILED)
            return
        self._waiting = item
        self._events.append(WorkRequested(item))

    def _login_reply(self, value: object, now: float) -> None:
        if self._phase is _Phase.CHALLENGE_WORK:
            assert isinstance(value, bytes)
            self._outgoing.append(value)
            self._move(_Phase.AWAIT_LATE_HELLO)
            return
        if self._phase is _Phase.HELLO_WORK:
            assert isinstance(value, bytes)
            if value:  # a late Hello (server-first) is answered by nothing
                self._outgoing.append(value)
            self._move(_Phase.AWAIT_PROOF)
            return
        accept, result = cast(tuple[bytes, LoginResult], value)
        recorder = self._receipts.record if self._receipts is not None else None
        self.session = GuardSession(
            result,
            Role.SERVER,
            now=now,
            limits=self._limits,
            counter=self._rejections,
            recorder=recorder,
        )
        self._outgoing.append(accept)
        # Sealed frames may be larger than login messages (docs/guard.md, "Remote calls").
        self._framer.max_body = self._limits.max_frame
        self._move(_Phase.OPEN)
        self._events.append(LoggedIn(result.user_id, result.counter))

    # -- calls -----------------------------------------------------------------------------

    def _receive_call(self, body: bytes, now: float, wall_ms: int) -> None:
        session = self.session
        assert session is not None
        try:
            fields = session.open_fields(body, now=now)
        except RoostError as caught:
            # A frame that fails inside the secure stream is an attack or a bug: end the
            # session (counted by the session).
            error = _blame_peer(caught)
            self._end(error.reason, CloseCause.PEER_ERROR, error)
            return
        self._call_leaf = leaf_bytes(session.last_leaf_index)
        self._call_id += 1
        self.calls += 1
        self._move(_Phase.CALLING)
        try:
            if not fields:
                raise RemoteProtocolError("empty request", reason="malformed")
            method = method_name(fields[0])
            args = fields[1:]
            if method in (RECEIPT_METHOD, CONSISTENCY_METHOD):
                results = self._log_call(method, args, wall_ms)
            else:
                self._events.append(CallReceived(self._call_id, method, args))
                return
        except RoostError as caught:
            self.refuse(self._call_id, _blame_peer(caught), now=now, wall_ms=wall_ms)
            return
        self.answer(self._call_id, results, now=now, wall_ms=wall_ms)

    def _log_call(self, method: str, args: tuple[bytes, ...], wall_ms: int) -> Sequence[bytes]:
        if self._receipts is None:
            raise StateError("this server keeps no log", reason="no-log")
        if len(args) != 1:
            raise RemoteProtocolError(f"{method} takes one number", reason="malformed")
        number = decode_index(args[0], method)
        if method == RECEIPT_METHOD:
            return [self._receipts.receipt(number, wall_ms)]
        return [self._receipts.consistency(number, wall_ms)]

    def _current_call(self, call_id: int) -> bool:
        if self.closed:
            return False  # the session ended under the handler; nothing more is sent
        if self._phase is not _Phase.CALLING or call_id != self._call_id:
            raise LocalProtocolError(f"call {call_id} is not the one in flight")
        return True

    def _finish_call(self, fields: list[bytes], now: float, wall_ms: int) -> None:
        if self._seal(fields, now):
            self._move(_Phase.OPEN)
            self._advance(now, wall_ms)

    def _seal(self, fields: list[bytes], now: float) -> bool:
        session = self.session
        assert session is not None
        try:
            self._outgoing.append(bytes(session.seal_fields(fields, now=now)))
        except RoostError as error:
            # Our limits (lifetime, message budget): counted by the session.
            self._end(error.reason, CloseCause.SESSION_ENDED)
            return False
        return True

    def _end(self, reason: str, cause: CloseCause, error: RoostError | None = None) -> None:
        if self.closed:
            return
        if self.session is not None:
            self.session.close(reason)
        if self._steps is not None:
            self._steps.close()
            self._steps = None
        self._waiting = None
        self._inbox.clear()
        self._phase = _Phase.CLOSED
        self.closed_reason = reason
        self._error = error
        self._events.append(StreamClosed(reason, cause, error))


def _reason_bytes(error: RoostError) -> bytes:
    return error.reason.encode("ascii", "replace")
