"""The server-first login (docs/guard.md, "Server-first login"): the hub's Challenge for the
user of a brokered session's password grant goes out before any Hello; the client's Hello
and Proof follow it. Only with a valid grant, once, bound as tightly as the Hello-first
login: another user, a second Challenge, a stray Challenge, replays and tampering fail."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.errors import LocalProtocolError, RemoteProtocolError, RoostError, VerificationError
from roost.framing import RecordFramer, encode_record
from roost.guard.card import Card
from roost.guard.challenge import (
    AuthConfig,
    LoginClient,
    LoginServer,
    PasswordKdf,
    ServerHandshake,
    StoreAccess,
    decode_challenge,
)
from roost.guard.remote import (
    CallReceived,
    CloseCause,
    LoggedIn,
    RemoteClientCore,
    RemoteEvent,
    RemoteServerCore,
    StreamClosed,
    WorkRequested,
)
from roost.guard.suites import SUITES
from roost.guard.userstore import MemoryUserStore, PasswordGrant, hash_password

from .helpers import FAST_KDF, PASSWORD, FixedRandom, directory_counter, new_user

WALL_MS = 1_700_000_000_000
SHA256, SHA512 = list(SUITES)
REJECT = bytes([5])


def _grant(
    store: MemoryUserStore, user: str = "alice", *, now: float = 0.0, ttl_s: float = 20.0
) -> PasswordGrant:
    record = store.load(user)
    assert record is not None
    return PasswordGrant.issue(user, record.password, PASSWORD, now=now, ttl_s=ttl_s)


def _kinds(steps: object) -> tuple[list[str], object]:
    """Run a login step by hand: the kinds of its work items and its result."""
    kinds: list[str] = []
    result: object = None
    try:
        while True:
            item = steps.send(result)  # type: ignore[attr-defined]
            kinds.append(type(item).__name__ if not isinstance(item, StoreAccess) else item.what)
            result = item.run()
    except StopIteration as done:
        return kinds, done.value


@pytest.fixture
def store() -> MemoryUserStore:
    return MemoryUserStore()


def _server_first(
    handshake: ServerHandshake,
    card: Card,
    client: LoginClient,
    *,
    now: float = 1.0,
    codes: list[str] | None = None,
) -> tuple[bytes, bytes, bytes]:
    """Challenge → labels → Hello → Proof; returns (challenge, hello, proof) after the
    server took the Hello (not yet the proof)."""
    challenge = handshake.open_challenge(now=now, wall_ms=WALL_MS)
    labels = client.receive_challenge_first(challenge)
    hello = client.hello()
    assert handshake.receive_hello(hello, now=now, wall_ms=WALL_MS) == b""
    proof = client.answer(codes if codes is not None else [card.code_for(x) for x in labels])
    return challenge, hello, proof


# --- The flow -----------------------------------------------------------------------------


def test_a_server_first_login_needs_no_kdf_and_both_sides_agree(store: MemoryUserStore) -> None:
    card = new_user(store)
    server = LoginServer(store)
    handshake = server.handshake(b"binding", _grant(store))
    kinds, challenge = _kinds(handshake.challenge_first_steps(now=1.0, wall_ms=WALL_MS))
    # The Challenge costs one user lookup: no KDF, the grant stood for the password.
    assert kinds == ["load"] and isinstance(challenge, bytes)
    client = LoginClient("alice", PASSWORD, channel_binding=b"binding")
    labels = client.receive_challenge_first(challenge)
    assert client.server_first and len(labels) == len(decode_challenge(challenge).entries)
    kinds, reply = _kinds(handshake.hello_steps(client.hello(), now=1.0, wall_ms=WALL_MS))
    # The Hello needs no work at all: the record read for the Challenge serves it.
    assert kinds == [] and reply == b"" and handshake.used_grant
    accept, server_result = handshake.receive_proof(
        client.answer([card.code_for(x) for x in labels]), now=1.0, wall_ms=WALL_MS
    )
    client_result = client.receive_result(accept)
    assert client_result == server_result and client_result.user_id == "alice"
    assert client_result.counter == 1 and directory_counter(store) == 1
    assert server.rejections.total() == 0


def test_the_server_first_challenge_uses_the_servers_first_suite(store: MemoryUserStore) -> None:
    card = new_user(store)
    server = LoginServer(store, config=AuthConfig(suites=(SHA512, SHA256)))
    handshake = server.handshake(b"", _grant(store))
    client = LoginClient("alice", PASSWORD)
    _, _, proof = _server_first(handshake, card, client)
    accept, result = handshake.receive_proof(proof, now=1.0, wall_ms=WALL_MS)
    assert client.receive_result(accept).suite.name == SHA512 == result.suite.name


def test_a_client_that_does_not_offer_the_suite_refuses_it(store: MemoryUserStore) -> None:
    new_user(store)
    handshake = LoginServer(store).handshake(b"", _grant(store))
    challenge = handshake.open_challenge(now=1.0, wall_ms=WALL_MS)
    client = LoginClient("alice", PASSWORD, config=AuthConfig(suites=(SHA512,)))
    with pytest.raises(VerificationError) as caught:
        client.receive_challenge_first(challenge)
    assert caught.value.reason == "downgrade"


def test_a_hello_without_the_challenges_suite_is_refused(store: MemoryUserStore) -> None:
    new_user(store)
    server = LoginServer(store)
    handshake = server.handshake(b"", _grant(store))
    handshake.open_challenge(now=1.0, wall_ms=WALL_MS)
    hello = LoginClient("alice", PASSWORD, config=AuthConfig(suites=(SHA512,))).hello()
    with pytest.raises(VerificationError) as caught:
        handshake.receive_hello(hello, now=1.0, wall_ms=WALL_MS)
    assert caught.value.reason == "suite-not-allowed"
    assert server.rejections["suite-not-allowed"] == 1


# --- Only with a valid grant, once ---------------------------------------------------------


def test_no_challenge_without_a_grant(store: MemoryUserStore) -> None:
    new_user(store)
    server = LoginServer(store)
    handshake = server.handshake(b"")
    kinds: list[str] = []
    with pytest.raises(RoostError) as caught:
        kinds, _ = _kinds(handshake.challenge_first_steps(now=1.0, wall_ms=WALL_MS))
    # Refused before the user directory is even read.
    assert caught.value.reason == "no-grant" and kinds == []
    assert server.rejections["no-grant"] == 1


@pytest.mark.parametrize("what", ["expired", "password changed", "locked out", "removed"])
def test_no_challenge_for_a_grant_that_no_longer_holds(store: MemoryUserStore, what: str) -> None:
    new_user(store)
    grant = _grant(store, now=0.0, ttl_s=20.0)
    record = store.load("alice")
    assert record is not None
    now = 1.0
    expected = "no-grant"
    if what == "expired":
        now = 20.5
    elif what == "password changed":
        # The same password hashed again (changed meanwhile): a new verifier voids it.
        store.add(
            dataclasses.replace(record, password=hash_password(PASSWORD, FAST_KDF)),
            replace_existing=True,
        )
    elif what == "locked out":
        store.record_failure("alice", 5, WALL_MS + 60_000)
        expected = "locked-out"
    else:
        store = MemoryUserStore()  # the user was removed since the check
        expected = "unknown-user"
    handshake = LoginServer(store).handshake(b"", grant)
    with pytest.raises(RoostError) as caught:
        handshake.open_challenge(now=now, wall_ms=WALL_MS)
    assert caught.value.reason == expected


def test_the_grant_makes_one_challenge_and_nothing_else(store: MemoryUserStore) -> None:
    card = new_user(store)
    handshake = LoginServer(store).handshake(b"", _grant(store))
    handshake.open_challenge(now=1.0, wall_ms=WALL_MS)
    # A second Challenge on the same handshake is refused and ends the login.
    with pytest.raises(LocalProtocolError) as caught:
        handshake.open_challenge(now=1.0, wall_ms=WALL_MS)
    assert caught.value.reason == "challenge-reused"
    client = LoginClient("alice", PASSWORD)
    with pytest.raises(RoostError):
        handshake.receive_hello(client.hello(), now=1.0, wall_ms=WALL_MS)
    del card
    # Nor can a Hello-first login on a handshake whose grant made the Challenge reuse it.
    after_hello = LoginServer(store).handshake(b"", _grant(store))
    after_hello.receive_hello(LoginClient("alice", PASSWORD).hello(), now=1.0, wall_ms=WALL_MS)
    with pytest.raises(LocalProtocolError) as caught:
        after_hello.open_challenge(now=1.0, wall_ms=WALL_MS)
    assert caught.value.reason == "challenge-reused"


# --- The client's checks ------------------------------------------------------------------


def test_a_client_that_gets_a_challenge_for_another_user_fails(store: MemoryUserStore) -> None:
    alice_card = new_user(store)
    new_user(store, "bob", seed=b"bob")
    server = LoginServer(store)
    # The hub's grant is bob's; alice is the one connecting on this stream.
    handshake = server.handshake(b"", _grant(store, "bob"))
    challenge = handshake.open_challenge(now=1.0, wall_ms=WALL_MS)
    client = LoginClient("alice", PASSWORD)
    labels = client.receive_challenge_first(challenge)
    with pytest.raises(VerificationError) as caught:
        handshake.receive_hello(client.hello(), now=1.0, wall_ms=WALL_MS)
    assert caught.value.reason == "user-mismatch"
    # Nobody's lock-out moved and no password was checked for anyone.
    for user in ("alice", "bob"):
        record = store.load(user)
        assert record is not None and record.failures == 0 and record.counter == 0
    # Even a proof sent anyway is refused: the handshake is over.
    with pytest.raises(VerificationError):
        handshake.receive_proof(
            client.answer([alice_card.code_for(x) for x in labels]), now=1.0, wall_ms=WALL_MS
        )


def test_a_client_takes_one_challenge_only(store: MemoryUserStore) -> None:
    card = new_user(store)
    handshake = LoginServer(store).handshake(b"", _grant(store))
    challenge = handshake.open_challenge(now=1.0, wall_ms=WALL_MS)
    client = LoginClient("alice", PASSWORD)
    labels = client.receive_challenge_first(challenge)
    with pytest.raises(LocalProtocolError):
        client.receive_challenge_first(challenge)
    with pytest.raises(LocalProtocolError):
        client.receive_challenge(challenge)
    handshake.receive_hello(client.hello(), now=1.0, wall_ms=WALL_MS)
    client.answer([card.code_for(x) for x in labels])
    # A second Challenge where the Accept belongs is not an Accept.
    with pytest.raises(RemoteProtocolError):
        client.receive_result(challenge)


def test_a_hello_first_client_refuses_a_stray_challenge(store: MemoryUserStore) -> None:
    # A connection without a grant: the client did not take the server-first login, so a
    # Challenge before its Hello is out of order.
    new_user(store)
    challenge = (
        LoginServer(store).handshake(b"", _grant(store)).open_challenge(now=1.0, wall_ms=WALL_MS)
    )
    with pytest.raises(LocalProtocolError):
        LoginClient("alice", PASSWORD).receive_challenge(challenge)


def test_the_client_must_send_its_hello_before_its_proof(store: MemoryUserStore) -> None:
    card = new_user(store)
    handshake = LoginServer(store).handshake(b"", _grant(store))
    client = LoginClient("alice", PASSWORD)
    labels = client.receive_challenge_first(handshake.open_challenge(now=1.0, wall_ms=WALL_MS))
    with pytest.raises(LocalProtocolError):
        client.answer([card.code_for(x) for x in labels])


def test_a_server_first_reject_is_a_refusal(store: MemoryUserStore) -> None:
    with pytest.raises(VerificationError) as caught:
        LoginClient("alice", PASSWORD).receive_challenge_first(REJECT)
    assert caught.value.reason == "refused"


def test_a_counter_below_the_clients_last_is_refused(store: MemoryUserStore) -> None:
    new_user(store)
    challenge = (
        LoginServer(store).handshake(b"", _grant(store)).open_challenge(now=1.0, wall_ms=WALL_MS)
    )
    with pytest.raises(VerificationError) as caught:
        LoginClient("alice", PASSWORD, min_counter=3).receive_challenge_first(challenge)
    assert caught.value.reason == "stale-counter"


# --- The password is still checked, the codes still asked ----------------------------------


def test_a_wrong_password_in_the_late_hello_runs_the_kdf_and_counts(
    store: MemoryUserStore,
) -> None:
    new_user(store)
    server = LoginServer(store)
    handshake = server.handshake(b"", _grant(store))
    handshake.open_challenge(now=1.0, wall_ms=WALL_MS)
    client = LoginClient("alice", "a guess")
    steps = handshake.hello_steps(client.hello(), now=1.0, wall_ms=WALL_MS)
    with pytest.raises(VerificationError) as caught:
        _kinds(steps)
    assert caught.value.reason == "bad-password" and not handshake.used_grant
    record = store.load("alice")
    assert record is not None and record.failures == 1


def test_the_right_password_typed_after_the_grant_expired_still_logs_in(
    store: MemoryUserStore,
) -> None:
    # The grant's deadline is checked when the Challenge is made; codes typed slowly
    # afterwards are bounded by the Challenge's TTL only.
    card = new_user(store)
    handshake = LoginServer(store).handshake(b"", _grant(store, now=0.0, ttl_s=20.0))
    client = LoginClient("alice", PASSWORD)
    labels = client.receive_challenge_first(handshake.open_challenge(now=19.0, wall_ms=WALL_MS))
    kinds, _ = _kinds(handshake.hello_steps(client.hello(), now=60.0, wall_ms=WALL_MS))
    assert PasswordKdf.__name__ not in kinds and handshake.used_grant
    accept, _ = handshake.receive_proof(
        client.answer([card.code_for(x) for x in labels]), now=60.0, wall_ms=WALL_MS
    )
    client.receive_result(accept)


def test_a_late_hello_after_the_challenges_ttl_is_refused(store: MemoryUserStore) -> None:
    new_user(store)
    handshake = LoginServer(store).handshake(b"", _grant(store))
    client = LoginClient("alice", PASSWORD)
    client.receive_challenge_first(handshake.open_challenge(now=1.0, wall_ms=WALL_MS))
    with pytest.raises(VerificationError) as caught:
        handshake.receive_hello(client.hello(), now=122.0, wall_ms=WALL_MS)
    assert caught.value.reason == "challenge-expired"


def test_wrong_codes_fail_and_count(store: MemoryUserStore) -> None:
    new_user(store)
    handshake = LoginServer(store).handshake(b"", _grant(store))
    client = LoginClient("alice", PASSWORD)
    labels = client.receive_challenge_first(handshake.open_challenge(now=1.0, wall_ms=WALL_MS))
    handshake.receive_hello(client.hello(), now=1.0, wall_ms=WALL_MS)
    # The grant stands for the password only.
    with pytest.raises(VerificationError) as caught:
        handshake.receive_proof(client.answer(["22222222"] * len(labels)), now=1.0, wall_ms=WALL_MS)
    assert caught.value.reason == "bad-proof"
    record = store.load("alice")
    assert record is not None and record.counter == 0 and record.failures == 1


# --- Replay and binding --------------------------------------------------------------------


def test_a_recorded_hello_and_proof_do_not_open_a_new_challenge(store: MemoryUserStore) -> None:
    card = new_user(store)
    server = LoginServer(store)
    first = server.handshake(b"", _grant(store))
    client = LoginClient("alice", PASSWORD)
    _, hello, proof = _server_first(first, card, client)
    accept, _ = first.receive_proof(proof, now=1.0, wall_ms=WALL_MS)
    client.receive_result(accept)
    # The same proof again on the same handshake: the challenge set was used.
    with pytest.raises(VerificationError) as caught:
        first.receive_proof(proof, now=1.0, wall_ms=WALL_MS)
    assert caught.value.reason == "challenge-reused"
    # Replayed on a new server-first handshake (a new nonce, the counter moved on).
    second = server.handshake(b"", _grant(store))
    second.open_challenge(now=2.0, wall_ms=WALL_MS)
    second.receive_hello(hello, now=2.0, wall_ms=WALL_MS)
    with pytest.raises(VerificationError) as caught:
        second.receive_proof(proof, now=2.0, wall_ms=WALL_MS)
    assert caught.value.reason == "bad-proof"
    assert directory_counter(store) == 1


def test_a_replayed_challenge_gets_no_valid_accept(store: MemoryUserStore) -> None:
    # A Challenge recorded from one login and offered to a client of another: the client
    # answers, but the server holding the live handshake has another transcript.
    card = new_user(store)
    server = LoginServer(store)
    recorded = server.handshake(b"", _grant(store)).open_challenge(now=1.0, wall_ms=WALL_MS)
    live = server.handshake(b"", _grant(store))
    live.open_challenge(now=1.0, wall_ms=WALL_MS)
    client = LoginClient("alice", PASSWORD)
    labels = client.receive_challenge_first(recorded)
    live.receive_hello(client.hello(), now=1.0, wall_ms=WALL_MS)
    proof = client.answer([card.code_for(x) for x in labels])
    with pytest.raises(VerificationError):
        live.receive_proof(proof, now=1.0, wall_ms=WALL_MS)


def test_the_two_logins_have_distinct_transcripts(store: MemoryUserStore) -> None:
    # A client that takes the server-first Challenge as if it answered its Hello derives
    # the Hello-first transcript; the server's server-first one refuses its proof.
    card = new_user(store)
    handshake = LoginServer(store).handshake(b"", _grant(store))
    challenge = handshake.open_challenge(now=1.0, wall_ms=WALL_MS)
    client = LoginClient("alice", PASSWORD)
    hello = client.hello()
    labels = client.receive_challenge(challenge)
    handshake.receive_hello(hello, now=1.0, wall_ms=WALL_MS)
    with pytest.raises(VerificationError) as caught:
        handshake.receive_proof(
            client.answer([card.code_for(x) for x in labels]), now=1.0, wall_ms=WALL_MS
        )
    assert caught.value.reason == "bad-proof"


def test_the_channel_binding_is_in_the_transcript(store: MemoryUserStore) -> None:
    card = new_user(store)
    handshake = LoginServer(store).handshake(b"the hub's certificate", _grant(store))
    client = LoginClient("alice", PASSWORD, channel_binding=b"another certificate")
    _, _, proof = _server_first(handshake, card, client)
    with pytest.raises(VerificationError) as caught:
        handshake.receive_proof(proof, now=1.0, wall_ms=WALL_MS)
    assert caught.value.reason == "bad-proof"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_change_to_the_challenge_in_transit_fails_the_login(data: st.DataObject) -> None:
    store = MemoryUserStore()
    card = new_user(store)
    # A fixed random stream: the same Challenge (so the same length) for every example.
    server = LoginServer(store, random_bytes=FixedRandom(b"server-first"))
    handshake = server.handshake(b"cb", _grant(store))
    challenge = handshake.open_challenge(now=1.0, wall_ms=WALL_MS)
    index = data.draw(st.integers(0, len(challenge) - 1), label="byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    tampered = bytearray(challenge)
    tampered[index] ^= flip
    client = LoginClient("alice", PASSWORD, channel_binding=b"cb")
    try:
        labels = client.receive_challenge_first(bytes(tampered))
        handshake.receive_hello(client.hello(), now=1.0, wall_ms=WALL_MS)
        proof = client.answer([card.code_for(x) for x in labels])
        accept, _ = handshake.receive_proof(proof, now=1.0, wall_ms=WALL_MS)
        client.receive_result(accept)
    except (RoostError, KeyError, ValueError):
        pass
    else:
        pytest.fail(f"a Challenge changed at byte {index} still logged in")
    assert directory_counter(store) == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    user=st.sampled_from(["alice", "bob"]),
    password=st.sampled_from([PASSWORD, "not it"]),
    right_codes=st.booleans(),
    granted=st.booleans(),
)
def test_a_login_succeeds_exactly_with_grant_user_password_and_codes(
    user: str, password: str, right_codes: bool, granted: bool
) -> None:
    store = MemoryUserStore()
    cards = {"alice": new_user(store), "bob": new_user(store, "bob", seed=b"bob")}
    server = LoginServer(store)
    handshake = server.handshake(b"", _grant(store) if granted else None)
    client = LoginClient(user, password)
    logged_in = False
    try:
        labels = client.receive_challenge_first(handshake.open_challenge(now=1.0, wall_ms=WALL_MS))
        handshake.receive_hello(client.hello(), now=1.0, wall_ms=WALL_MS)
        codes = [cards[user].code_for(x) if right_codes else "22222222" for x in labels]
        accept, _ = handshake.receive_proof(client.answer(codes), now=1.0, wall_ms=WALL_MS)
        client.receive_result(accept)
        logged_in = True
    except RoostError:
        pass
    expected = granted and user == "alice" and password == PASSWORD and right_codes
    assert logged_in == expected
    assert directory_counter(store, "alice") == int(expected)
    assert directory_counter(store, "bob") == 0


# --- The server core: the Challenge before any record ---------------------------------------


class _Stream:
    """One server core (event API) and one client core joined by record framers."""

    def __init__(self, store: MemoryUserStore, grant: PasswordGrant | None) -> None:
        self.login_server = LoginServer(store)
        self.server = RemoteServerCore(self.login_server, password_grant=grant, now=0.0)
        self.client = RemoteClientCore("alice", PASSWORD)
        self.framer = RecordFramer(1 << 21)

    def run_work(self) -> list[RemoteEvent]:
        others: list[RemoteEvent] = []
        while (event := self.server.next_event()) is not None:
            if isinstance(event, WorkRequested):
                self.server.work_done(event.item, event.item.run(), now=1.0, wall_ms=WALL_MS)
            else:
                others.append(event)
        return others

    def replies(self) -> list[bytes]:
        return self.framer.feed(self.server.data_to_send())


def test_the_server_core_opens_the_login_and_takes_hello_proof_and_call_at_once(
    store: MemoryUserStore,
) -> None:
    card = new_user(store)
    stream = _Stream(store, _grant(store))
    stream.server.open_login(now=1.0, wall_ms=WALL_MS)
    assert stream.run_work() == []
    (challenge,) = stream.replies()
    labels = stream.client.receive_challenge_first(challenge)
    hello = stream.client.hello()
    proof = stream.client.answer([card.code_for(x) for x in labels])
    stream.client.open_early(now=1.0)
    call = stream.client.request("status", [], now=1.0)
    # One flight from the client: Hello, Proof and the first call together.
    stream.server.receive_data(
        b"".join(encode_record(r) for r in (hello, proof, call)), now=1.0, wall_ms=WALL_MS
    )
    events = stream.run_work()
    assert [type(e) for e in events] == [LoggedIn, CallReceived]
    assert stream.server.used_password_grant
    (accept,) = stream.replies()
    stream.client.receive_result(accept, now=1.0)
    assert stream.client.counter == 1


def test_the_server_core_sends_only_a_reject_without_a_grant(store: MemoryUserStore) -> None:
    new_user(store)
    stream = _Stream(store, None)
    stream.server.open_login(now=1.0, wall_ms=WALL_MS)
    assert stream.run_work() == [StreamClosed("no-grant", CloseCause.LOGIN_FAILED)]
    assert stream.replies() == [REJECT]
    assert stream.login_server.rejections["no-grant"] == 1


def test_the_server_core_opens_the_login_only_before_the_first_record(
    store: MemoryUserStore,
) -> None:
    new_user(store)
    stream = _Stream(store, _grant(store))
    stream.server.receive_data(encode_record(stream.client.hello()), now=1.0, wall_ms=WALL_MS)
    with pytest.raises(LocalProtocolError):
        stream.server.open_login(now=1.0, wall_ms=WALL_MS)
