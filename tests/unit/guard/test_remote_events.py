"""The server core's event API in memory under a fake clock: the login deadline on the
core's timer, the login's work items, streamed answers, and peer errors as events."""

from __future__ import annotations

import pytest

from roost.errors import LocalProtocolError, RemoteProtocolError, StateError
from roost.framing import RecordFramer, encode_record
from roost.guard.card import Card
from roost.guard.challenge import LoginServer, PasswordKdf, StoreAccess
from roost.guard.messages import MAX_MESSAGE_SIZE
from roost.guard.remote import (
    MAX_QUEUED_RECORDS,
    CallReceived,
    CloseCause,
    LoggedIn,
    RemoteClientCore,
    RemoteEvent,
    RemoteServerCore,
    Response,
    StreamClosed,
    WorkRequested,
)
from roost.guard.session import SessionLimits
from roost.guard.userstore import MemoryUserStore

from .helpers import FAST_KDF, PASSWORD, new_user

WALL_MS = 1_700_000_000_000
REJECT = bytes([5])


class Pair:
    """One server core driven through its event API and one client core, joined by
    record framers the way an adapter joins them to a stream."""

    def __init__(
        self,
        *,
        login_timeout_s: float = 60.0,
        now: float = 100.0,
        limits: SessionLimits | None = None,
        password: str = PASSWORD,
    ) -> None:
        self.store = MemoryUserStore()
        self.card: Card = new_user(self.store)
        self.login_server = LoginServer(self.store)
        self.server = RemoteServerCore(
            self.login_server, limits=limits, login_timeout_s=login_timeout_s, now=now
        )
        self.client = RemoteClientCore("alice", password, limits=limits)
        self.framer = RecordFramer(1 << 21)

    def send(self, body: bytes, now: float) -> None:
        self.server.receive_data(encode_record(body), now=now, wall_ms=WALL_MS)

    def events(self) -> list[RemoteEvent]:
        out = []
        while (event := self.server.next_event()) is not None:
            out.append(event)
        return out

    def replies(self) -> list[bytes]:
        return self.framer.feed(self.server.data_to_send())

    def run_work(self, now: float) -> list[RemoteEvent]:
        """Run every requested work item (as the adapter would on its worker) and return
        the events that are not work requests."""
        others: list[RemoteEvent] = []
        while True:
            events = self.events()
            work = [e for e in events if isinstance(e, WorkRequested)]
            others += [e for e in events if not isinstance(e, WorkRequested)]
            if not work:
                return others
            for event in work:
                result = event.item.run()
                self.server.work_done(event.item, result, now=now, wall_ms=WALL_MS)

    def log_in(self, now: float) -> None:
        self.send(self.client.hello(), now)
        self.run_work(now)
        (challenge,) = self.replies()
        labels = self.client.receive_challenge(challenge)
        self.send(self.client.answer([self.card.code_for(x) for x in labels]), now)
        events = self.run_work(now)
        assert [type(e) for e in events] == [LoggedIn]
        (accept,) = self.replies()
        self.client.receive_result(accept, now=now)

    def request(self, method: str, *args: bytes, now: float) -> CallReceived:
        self.send(self.client.request(method, list(args), now=now), now)
        (event,) = self.events()
        assert isinstance(event, CallReceived)
        return event

    def responses(self, now: float) -> list[Response]:
        return [self.client.receive_response(body, now=now) for body in self.replies()]


# --- The login deadline lives on the core's timer -----------------------------------------


def test_login_deadline_is_the_cores_timer_and_closes_a_silent_stream() -> None:
    pair = Pair(login_timeout_s=5.0, now=100.0)
    assert pair.server.get_timer() == 105.0
    pair.server.handle_timer(104.9)
    assert not pair.server.closed and pair.events() == []
    pair.server.handle_timer(105.0)
    assert pair.server.closed and pair.server.closed_reason == "login-timeout"
    assert pair.events() == [StreamClosed("login-timeout", CloseCause.LOGIN_TIMEOUT)]
    assert pair.login_server.rejections["login-timeout"] == 1
    assert pair.server.get_timer() is None and pair.server.data_to_send() == b""


def test_login_deadline_holds_while_a_work_item_runs_and_drops_its_result() -> None:
    pair = Pair(login_timeout_s=5.0, now=0.0)
    pair.send(pair.client.hello(), 1.0)
    (event,) = pair.events()
    assert isinstance(event, WorkRequested)
    # The worker is slow; the deadline passes first.
    pair.server.handle_timer(5.0)
    assert pair.server.closed
    assert [e.cause for e in pair.events() if isinstance(e, StreamClosed)] == [
        CloseCause.LOGIN_TIMEOUT
    ]
    pair.server.work_done(event.item, event.item.run(), now=6.0, wall_ms=WALL_MS)
    assert pair.events() == [] and pair.server.data_to_send() == b""


def test_after_accept_the_timer_is_the_sessions_idle_limit() -> None:
    pair = Pair(login_timeout_s=5.0, now=0.0, limits=SessionLimits(idle_s=30.0))
    pair.log_in(now=2.0)
    assert pair.server.get_timer() == 32.0  # the login deadline (5.0) no longer applies
    pair.server.handle_timer(10.0)
    assert not pair.server.closed
    pair.server.handle_timer(32.0)
    assert pair.events() == [StreamClosed("session-idle-expired", CloseCause.SESSION_ENDED)]


# --- Only the KDF and the user store leave the loop ----------------------------------------


def test_a_login_asks_for_the_store_and_the_password_kdf_as_work_items() -> None:
    pair = Pair()
    record = pair.store.load("alice")
    assert record is not None
    pair.send(pair.client.hello(), 100.0)
    (load,) = pair.events()
    assert isinstance(load, WorkRequested) and isinstance(load.item, StoreAccess)
    assert load.item.what == "load" and pair.server.data_to_send() == b""
    pair.server.work_done(load.item, load.item.run(), now=100.0, wall_ms=WALL_MS)
    (kdf,) = pair.events()
    assert isinstance(kdf, WorkRequested) and isinstance(kdf.item, PasswordKdf)
    assert kdf.item.salt == record.password.salt and kdf.item.params == FAST_KDF
    assert pair.server.data_to_send() == b""  # nothing is answered before the KDF is back
    pair.server.work_done(kdf.item, kdf.item.run(), now=100.0, wall_ms=WALL_MS)
    assert pair.events() == []
    (challenge,) = pair.replies()
    labels = pair.client.receive_challenge(challenge)
    pair.send(pair.client.answer([pair.card.code_for(x) for x in labels]), 100.0)
    asked = []
    while (event := pair.server.next_event()) is not None:
        if isinstance(event, WorkRequested):
            assert isinstance(event.item, StoreAccess)  # the proof needs no KDF on the server
            asked.append(event.item.what)
            pair.server.work_done(event.item, event.item.run(), now=100.0, wall_ms=WALL_MS)
    assert asked == ["load", "record-success"]
    (accept,) = pair.replies()
    pair.client.receive_result(accept, now=100.0)
    assert pair.client.counter == 1 and pair.store.load("alice").counter == 1  # type: ignore[union-attr]


def test_wrong_password_records_the_failure_through_the_store_then_rejects() -> None:
    pair = Pair(password="not the password")
    pair.send(pair.client.hello(), 100.0)
    asked = []
    while (event := pair.server.next_event()) is not None:
        if isinstance(event, WorkRequested):
            asked.append(type(event.item).__name__ + ":" + getattr(event.item, "what", "kdf"))
            pair.server.work_done(event.item, event.item.run(), now=100.0, wall_ms=WALL_MS)
        else:
            assert event == StreamClosed("bad-password", CloseCause.LOGIN_FAILED)
    assert asked == ["StoreAccess:load", "PasswordKdf:kdf", "StoreAccess:record-failure"]
    assert pair.replies() == [REJECT]
    assert pair.store.load("alice").failures == 1  # type: ignore[union-attr]


def test_unknown_user_still_costs_a_kdf_the_core_does_not_run_itself() -> None:
    pair = Pair()
    pair.client = RemoteClientCore("mallory", PASSWORD)
    pair.send(pair.client.hello(), 100.0)
    (load,) = pair.events()
    assert isinstance(load, WorkRequested)
    pair.server.work_done(load.item, None, now=100.0, wall_ms=WALL_MS)
    (kdf,) = pair.events()
    assert isinstance(kdf, WorkRequested) and isinstance(kdf.item, PasswordKdf)
    assert kdf.item.params.log2_n == 14  # the default password cost, as for a real user
    pair.server.work_done(kdf.item, b"\0" * 32, now=100.0, wall_ms=WALL_MS)
    assert pair.events() == [StreamClosed("unknown-user", CloseCause.LOGIN_FAILED)]
    assert pair.replies() == [REJECT]
    assert pair.login_server.rejections["unknown-user"] == 1


def test_a_failed_work_item_fails_the_login_and_a_foreign_one_is_refused() -> None:
    pair = Pair()
    pair.send(pair.client.hello(), 100.0)
    (load,) = pair.events()
    assert isinstance(load, WorkRequested)
    with pytest.raises(LocalProtocolError):
        pair.server.work_done(PasswordKdf(b"", b"", FAST_KDF), b"", now=100.0, wall_ms=WALL_MS)
    broken = StateError("user store is corrupt", reason="corrupt")
    pair.server.work_failed(load.item, broken, now=100.0, wall_ms=WALL_MS)
    assert pair.events() == [StreamClosed("corrupt", CloseCause.LOGIN_FAILED)]
    assert pair.replies() == [REJECT] and pair.login_server.rejections["corrupt"] == 1


# --- Streamed answers --------------------------------------------------------------------


def test_a_streamed_answer_is_several_more_records_then_end() -> None:
    pair = Pair()
    pair.log_in(now=100.0)
    call = pair.request("watch", b"camera", now=101.0)
    assert (call.method, call.args) == ("watch", (b"camera",))
    for n in range(3):
        pair.server.send_item(call.call_id, [b"frame %d" % n], now=101.0 + n)
        (item,) = pair.responses(now=101.0 + n)
        assert item.ok and item.more and item.results == (b"frame %d" % n,)
        assert pair.client.in_flight
    pair.server.end_stream(call.call_id, now=104.0, wall_ms=WALL_MS)
    (last,) = pair.responses(now=104.0)
    assert last.ok and last.end and not last.more and last.results == ()
    assert not pair.client.in_flight
    # Each record of the stream names the same request.
    assert item.request_digest == last.request_digest
    # The session goes on: the next call is answered whole.
    call = pair.request("status", now=105.0)
    pair.server.answer(call.call_id, [b"{}"], now=105.0, wall_ms=WALL_MS)
    (single,) = pair.responses(now=105.0)
    assert single.ok and not single.more and single.results == (b"{}",)


def test_a_refusal_mid_stream_ends_it_with_the_reason_only() -> None:
    pair = Pair()
    pair.log_in(now=100.0)
    call = pair.request("watch", b"camera", now=101.0)
    pair.server.send_item(call.call_id, [b"one"], now=101.0)
    no_frame = StateError("no frame from camera within 10 s", reason="no-frame")
    pair.server.refuse(call.call_id, no_frame, now=102.0, wall_ms=WALL_MS)
    first, last = pair.responses(now=102.0)
    assert first.more and not last.ok and last.reason == "no-frame"
    assert last.results == (b"no-frame",) and not pair.client.in_flight
    assert pair.login_server.rejections["no-frame"] == 1
    with pytest.raises(LocalProtocolError):
        pair.server.send_item(call.call_id, [b"late"], now=103.0)


def test_a_request_sent_ahead_waits_until_the_call_in_flight_is_answered() -> None:
    pair = Pair()
    pair.log_in(now=100.0)
    first = pair.client.request("one", [], now=101.0)
    session = pair.client.session
    assert session is not None
    # A client that does not wait (one call in flight is the rule) sends a second one.
    second = bytes(session.seal_fields([b"two"], now=101.0))
    pair.server.receive_data(encode_record(first) + encode_record(second), now=101.0, wall_ms=0)
    (call,) = pair.events()
    assert isinstance(call, CallReceived) and call.method == "one"
    pair.server.answer(call.call_id, [], now=102.0, wall_ms=WALL_MS)
    (queued,) = pair.events()
    assert isinstance(queued, CallReceived) and queued.method == "two"


def test_too_many_records_ahead_end_the_stream_as_the_peers_fault() -> None:
    pair = Pair()
    pair.log_in(now=100.0)
    flood = encode_record(b"x") * (MAX_QUEUED_RECORDS + 1)
    pair.server.receive_data(flood, now=101.0, wall_ms=WALL_MS)
    (closed,) = pair.events()
    assert isinstance(closed, StreamClosed) and closed.cause is CloseCause.PEER_ERROR
    assert isinstance(closed.error, RemoteProtocolError) and closed.reason == "call-in-flight"


# --- Framing through the core --------------------------------------------------------------


def test_an_oversized_login_record_is_refused_from_its_header() -> None:
    pair = Pair()
    pair.server.receive_data((MAX_MESSAGE_SIZE + 1).to_bytes(4, "big"), now=100.0, wall_ms=0)
    (closed,) = pair.events()
    assert isinstance(closed, StreamClosed) and closed.reason == "oversized"
    assert isinstance(closed.error, RemoteProtocolError)
    assert pair.login_server.rejections["oversized"] == 1
    with pytest.raises(LocalProtocolError):
        pair.server.receive_data(b"more", now=100.0, wall_ms=0)


def test_records_may_arrive_in_any_pieces() -> None:
    pair = Pair()
    data = encode_record(pair.client.hello())
    for i in range(len(data)):
        pair.server.receive_data(data[i : i + 1], now=100.0, wall_ms=WALL_MS)
    pair.run_work(100.0)
    (challenge,) = pair.replies()
    assert pair.client.receive_challenge(challenge)


def test_end_of_stream_inside_a_record_is_truncation_and_between_records_a_close() -> None:
    cut = Pair()
    cut.server.receive_data(encode_record(cut.client.hello())[:10], now=100.0, wall_ms=0)
    cut.server.receive_eof()
    (closed,) = cut.events()
    assert isinstance(closed, StreamClosed) and closed.reason == "truncated"
    assert closed.cause is CloseCause.PEER_ERROR
    clean = Pair()
    clean.server.receive_eof()
    assert clean.events() == [StreamClosed("closed", CloseCause.PEER_CLOSED)]
