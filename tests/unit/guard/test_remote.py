"""Remote calls over a guard session: paired client and server cores in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from roost.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    RoostError,
    VerificationError,
)
from roost.framing import encode_record, record_length
from roost.guard.aio import LogReceipts
from roost.guard.card import Card
from roost.guard.challenge import LoginServer
from roost.guard.log import SqliteMerkleLog, verify_receipt
from roost.guard.messages import MAX_MESSAGE_SIZE
from roost.guard.remote import (
    CONSISTENCY_METHOD,
    NO_LEAF,
    RECEIPT_METHOD,
    RemoteClientCore,
    RemoteServerCore,
    Response,
    receipt_from_response,
    tls_server_end_point,
)
from roost.guard.session import SessionLimits
from roost.guard.userstore import MemoryUserStore

from .helpers import PASSWORD, new_user

WALL_MS = 1_700_000_000_000


def echo_handler(method: str, args: tuple[bytes, ...]) -> list[bytes]:
    if method == "echo":
        return list(args)
    raise LocalProtocolError(f"no method {method}", reason="unknown-method")


class Home:
    """A user store, a login server, one server core and one client core."""

    def __init__(
        self,
        tmp_path: Path | None = None,
        *,
        limits: SessionLimits | None = None,
        server_binding: bytes = b"",
        client_binding: bytes = b"",
    ) -> None:
        self.store = MemoryUserStore()
        self.card: Card = new_user(self.store)
        self.login_server = LoginServer(self.store)
        self.receipts: LogReceipts | None = None
        if tmp_path is not None:
            tmp_path.mkdir(parents=True, exist_ok=True)
            self.log_key = Ed25519PrivateKey.generate()
            self.receipts = LogReceipts(SqliteMerkleLog(tmp_path / "log.sqlite3"), self.log_key)
        self.server = RemoteServerCore(
            self.login_server,
            echo_handler,
            limits=limits,
            receipts=self.receipts,
            channel_binding=server_binding,
        )
        self.client = RemoteClientCore(
            "alice", PASSWORD, limits=limits, channel_binding=client_binding
        )

    def exchange(self, body: bytes, now: float = 0.0) -> bytes:
        replies = self.server.receive(body, now=now, wall_ms=WALL_MS)
        assert len(replies) == 1
        return replies[0]

    def log_in(self, codes: list[str] | None = None, now: float = 0.0) -> None:
        labels = self.client.receive_challenge(self.exchange(self.client.hello(), now))
        answer = codes if codes is not None else [self.card.code_for(x) for x in labels]
        self.client.receive_result(self.exchange(self.client.answer(answer), now), now=now)

    def call(self, method: str, *args: bytes, now: float = 1.0) -> Response:
        frame = self.client.request(method, list(args), now=now)
        return self.client.receive_response(self.exchange(frame, now), now=now)


def test_login_then_calls_in_both_directions() -> None:
    home = Home()
    home.log_in()
    assert home.client.counter == 1
    response = home.call("echo", b"one", b"two")
    assert response.ok and response.results == (b"one", b"two")
    assert response.leaf_index is None  # this server keeps no log
    assert home.server.calls == 1


def test_unknown_method_is_answered_with_its_reason_and_counted() -> None:
    home = Home()
    home.log_in()
    response = home.call("format-disk")
    assert not response.ok and response.reason == "unknown-method"
    assert home.login_server.rejections["unknown-method"] == 1
    assert home.call("echo", b"still open").ok


def test_wrong_code_gets_reject_and_closes_the_stream() -> None:
    home = Home()
    labels = home.client.receive_challenge(home.exchange(home.client.hello()))
    reply = home.exchange(home.client.answer(["AAAAAAAA"] * len(labels)))
    assert home.server.closed and home.server.closed_reason == "bad-proof"
    with pytest.raises(VerificationError) as refused:
        home.client.receive_result(reply, now=0.0)
    assert refused.value.reason == "refused"
    with pytest.raises(LocalProtocolError):
        home.server.receive(b"anything", now=0.0, wall_ms=WALL_MS)


def test_wrong_password_gets_reject() -> None:
    home = Home()
    home.client = RemoteClientCore("alice", "not the password")
    reply = home.exchange(home.client.hello())
    assert reply == bytes([5]) and home.server.closed_reason == "bad-password"


def test_channel_binding_mismatch_fails_the_login() -> None:
    # The client saw another certificate than the server holds: a relaying TLS endpoint.
    home = Home(
        server_binding=tls_server_end_point(b"hub certificate"),
        client_binding=tls_server_end_point(b"interceptor certificate"),
    )
    labels = home.client.receive_challenge(home.exchange(home.client.hello()))
    reply = home.exchange(home.client.answer([home.card.code_for(x) for x in labels]))
    assert home.server.closed and reply == bytes([5])


def test_tampered_frame_ends_the_session() -> None:
    home = Home()
    home.log_in()
    frame = bytearray(home.client.request("echo", [b"x"], now=1.0))
    frame[-1] ^= 1
    with pytest.raises(VerificationError) as bad:
        home.server.receive(bytes(frame), now=1.0, wall_ms=WALL_MS)
    assert bad.value.reason == "bad-tag" and home.server.closed
    assert home.login_server.rejections["bad-tag"] == 1


def test_replayed_request_is_rejected() -> None:
    home = Home()
    home.log_in()
    frame = home.client.request("echo", [b"x"], now=1.0)
    home.client.receive_response(home.exchange(frame), now=1.0)
    with pytest.raises(VerificationError) as replay:
        home.server.receive(frame, now=1.0, wall_ms=WALL_MS)
    assert replay.value.reason == "replay"


def test_idle_limit_closes_the_session_on_the_timer() -> None:
    home = Home(limits=SessionLimits(idle_s=10.0))
    home.log_in(now=0.0)
    assert home.call("echo", b"a", now=5.0).ok
    assert home.server.next_deadline() == 15.0
    home.server.handle_timer(14.9)
    assert not home.server.closed
    home.server.handle_timer(15.0)
    assert home.server.closed and home.server.closed_reason == "session-idle-expired"


def test_one_call_in_flight_and_no_call_before_login() -> None:
    home = Home()
    with pytest.raises(LocalProtocolError) as early:
        home.client.request("echo", [], now=0.0)
    assert early.value.reason == "not-logged-in"
    home.log_in()
    home.client.request("echo", [], now=1.0)
    with pytest.raises(LocalProtocolError) as twice:
        home.client.request("echo", [], now=1.0)
    assert twice.value.reason == "call-in-flight"


def test_receipt_covers_the_exact_request_and_verifies(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.log_in()
    first = home.call("echo", b"record this")
    assert first.ok and first.leaf_index == 0  # request is leaf 0, its response leaf 1
    second = home.call("echo", b"and this")
    assert second.leaf_index == 2
    answer = home.call(RECEIPT_METHOD, (0).to_bytes(8, "big"))
    receipt = receipt_from_response(answer, first.request_digest)
    verify_receipt(receipt)
    assert receipt.leaf_index == 0 and receipt.checkpoint.size >= 4
    # The same receipt does not pass for the other request.
    with pytest.raises(VerificationError) as mismatch:
        receipt_from_response(answer, second.request_digest)
    assert mismatch.value.reason == "receipt-mismatch"
    document = json.loads(answer.results[0])
    assert document["leaf_index"] == 0


def test_receipt_for_a_leaf_not_in_the_log_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.log_in()
    answer = home.call(RECEIPT_METHOD, (99).to_bytes(8, "big"))
    assert not answer.ok and answer.reason == "unknown-leaf"
    with pytest.raises(VerificationError):
        receipt_from_response(answer, b"\0" * 32)
    malformed = home.call(RECEIPT_METHOD, b"\x01")
    assert not malformed.ok and malformed.reason == "truncated"


def test_receipt_without_a_log_is_refused() -> None:
    home = Home()
    home.log_in()
    answer = home.call(RECEIPT_METHOD, (0).to_bytes(8, "big"))
    assert not answer.ok and answer.reason == "no-log"


def test_record_header_bounds() -> None:
    assert record_length(encode_record(b"abc")[:4], 3) == 3
    with pytest.raises(RemoteProtocolError) as big:
        record_length((MAX_MESSAGE_SIZE + 1).to_bytes(4, "big"), MAX_MESSAGE_SIZE)
    assert big.value.reason == "oversized"
    with pytest.raises(RemoteProtocolError):
        record_length(b"\0\0", 10)
    assert NO_LEAF == (1 << 64) - 1


@given(st.binary(max_size=2048))
def test_server_core_survives_any_first_record(data: bytes) -> None:
    home = Home()
    replies = home.server.receive(data, now=0.0, wall_ms=WALL_MS)
    # Anything but a well-formed Hello of a known user with the right password is refused.
    assert replies == [bytes([5])] and home.server.closed


@given(st.binary(max_size=256))
def test_client_core_rejects_any_forged_response(data: bytes) -> None:
    home = Home()
    home.log_in()
    home.client.request("echo", [b"x"], now=1.0)
    with pytest.raises(RoostError):
        home.client.receive_response(data, now=1.0)


def test_consistency_proof_shows_the_log_only_grew(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.log_in()
    first = home.call("echo", b"keep a receipt of this")
    receipt = receipt_from_response(
        home.call(RECEIPT_METHOD, (0).to_bytes(8, "big")), first.request_digest
    )
    for i in range(5):
        home.call("echo", b"later %d" % i)
    answer = home.call(CONSISTENCY_METHOD, receipt.checkpoint.size.to_bytes(8, "big"))
    assert answer.ok
    verify_receipt(receipt, later=answer.results[0])
    newer = json.loads(answer.results[0])
    assert newer["size"] > receipt.checkpoint.size
    assert newer["consistency"]["from_size"] == receipt.checkpoint.size
    beyond = home.call(CONSISTENCY_METHOD, (10_000).to_bytes(8, "big"))
    assert not beyond.ok and beyond.reason == "beyond-checkpoint"


def test_a_rewritten_log_fails_the_consistency_check(tmp_path: Path) -> None:
    home = Home(tmp_path / "a")
    home.log_in()
    first = home.call("echo", b"the original history")
    receipt = receipt_from_response(
        home.call(RECEIPT_METHOD, (0).to_bytes(8, "big")), first.request_digest
    )
    # The operator replaces the log with another history, signed with the same key.
    forged = Home(tmp_path / "b")
    assert forged.receipts is not None
    forged.receipts = LogReceipts(forged.receipts.log, home.log_key)
    forged.server = RemoteServerCore(forged.login_server, echo_handler, receipts=forged.receipts)
    forged.log_in()
    for i in range(4):
        forged.call("echo", b"another history %d" % i)
    answer = forged.call(CONSISTENCY_METHOD, receipt.checkpoint.size.to_bytes(8, "big"))
    assert answer.ok
    with pytest.raises(VerificationError):
        verify_receipt(receipt, later=answer.results[0])


def _pipelined(home: Home, wrong: bool = False) -> list[bytes]:
    """Hello, then the proof and the first call in one flight; the server's replies."""
    labels = home.client.receive_challenge(home.exchange(home.client.hello()))
    answer = ["0000" if wrong else home.card.code_for(x) for x in labels]
    proof = home.client.answer(answer)
    home.client.open_early(now=0.5)
    call = home.client.request("echo", [b"early"], now=0.5)
    home.server.receive_data(encode_record(proof) + encode_record(call), now=0.5, wall_ms=WALL_MS)
    home.server.run_inline(now=0.5, wall_ms=WALL_MS)
    return home.server.records_to_send()


def test_a_call_sent_with_the_proof_is_answered_after_the_accept() -> None:
    home = Home()
    accept, answer = _pipelined(home)
    # A response before the Accept is not taken: the server is not authenticated yet.
    with pytest.raises(LocalProtocolError):
        home.client.receive_response(answer, now=0.6)
    home.client.receive_result(accept, now=0.6)
    response = home.client.receive_response(answer, now=0.6)
    assert response.ok and response.results == (b"early",)
    assert home.client.counter == 1 and home.server.calls == 1
    assert home.call("echo", b"next").ok


def test_a_call_sent_with_wrong_codes_is_never_run() -> None:
    home = Home()
    (reject,) = _pipelined(home, wrong=True)
    assert home.server.closed and home.server.calls == 0
    with pytest.raises(VerificationError):
        home.client.receive_result(reject, now=0.6)
    assert home.client.session is None and not home.client.awaiting_accept
