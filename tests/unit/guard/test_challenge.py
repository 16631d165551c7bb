"""Usage authentication: paired client and server cores in memory (PROTOCOL.md §6)."""

from __future__ import annotations

import sqlite3

import pytest

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from roost.guard.card import ALPHABET, generate_card
from roost.guard.challenge import (
    AuthConfig,
    Challenge,
    LoginClient,
    LoginServer,
    decode_challenge,
    decode_hello,
    encode_challenge,
    encode_hello,
    encode_reject,
)
from roost.guard.suites import SUITES
from roost.guard.userstore import (
    LockoutPolicy,
    MemoryUserStore,
    SqliteUserStore,
    make_user,
)

from .helpers import (
    FAST_KDF,
    PASSWORD,
    FixedRandom,
    directory_counter,
    login,
    new_user,
    start_login,
)

SHA256, SHA512 = list(SUITES)


@pytest.fixture
def store() -> MemoryUserStore:
    return MemoryUserStore()


def test_login_succeeds_with_the_right_codes_and_both_sides_agree(store: MemoryUserStore) -> None:
    card = new_user(store)
    server = LoginServer(store)
    client_result, server_result = login(server, card)
    assert client_result.session_id == server_result.session_id
    assert client_result.root_key == server_result.root_key
    assert client_result.suite.name == SHA256
    assert directory_counter(store) == 1
    assert server.rejections.total() == 0


def test_n_is_random_within_bounds_and_labels_are_distinct(store: MemoryUserStore) -> None:
    new_user(store)
    server = LoginServer(store, config=AuthConfig(min_pairs=3, max_pairs=6))
    sizes = set()
    for _ in range(40):
        pair = start_login(server)
        assert 3 <= len(pair.labels) <= 6
        assert len(set(pair.labels)) == len(pair.labels)
        sizes.add(len(pair.labels))
    assert len(sizes) > 1


@pytest.mark.parametrize("wrong_index", [0, 1, 2])
def test_any_single_wrong_code_fails(store: MemoryUserStore, wrong_index: int) -> None:
    card = new_user(store)
    server = LoginServer(store)
    pair = start_login(server)
    codes = [card.code_for(label) for label in pair.labels]
    codes[wrong_index] = "22222222" if codes[wrong_index] != "22222222" else "33333333"
    proof = pair.client.answer(codes)
    with pytest.raises(VerificationError) as caught:
        pair.handshake.receive_proof(proof, now=1.0, wall_ms=1)
    assert caught.value.reason == "bad-proof"
    assert server.rejections["bad-proof"] == 1
    assert directory_counter(store) == 0  # the counter advances only on success


def test_codes_are_accepted_in_lower_case_with_separators(store: MemoryUserStore) -> None:
    card = new_user(store)
    server = LoginServer(store)
    pair = start_login(server)
    codes = [f"{c[:4].lower()}-{c[4:].lower()}" for c in map(card.code_for, pair.labels)]
    accept, _ = pair.handshake.receive_proof(pair.client.answer(codes), now=0, wall_ms=0)
    pair.client.receive_result(accept)


def test_wrong_password_is_refused_and_counted(store: MemoryUserStore) -> None:
    new_user(store)
    server = LoginServer(store)
    client = LoginClient("alice", "not the password")
    with pytest.raises(VerificationError) as caught:
        server.handshake().receive_hello(client.hello(), now=0, wall_ms=0)
    assert caught.value.reason == "bad-password"
    assert server.rejections["bad-password"] == 1
    record = store.load("alice")
    assert record is not None and record.failures == 1


def test_unknown_user_is_refused(store: MemoryUserStore) -> None:
    server = LoginServer(store)
    with pytest.raises(VerificationError) as caught:
        server.handshake().receive_hello(LoginClient("bob", "x").hello(), now=0, wall_ms=0)
    assert caught.value.reason == "unknown-user"


def test_replayed_login_transcript_is_rejected(store: MemoryUserStore) -> None:
    card = new_user(store)
    server = LoginServer(store)
    recorded = start_login(server)
    proof = recorded.client.answer([card.code_for(label) for label in recorded.labels])
    recorded.handshake.receive_proof(proof, now=0, wall_ms=0)
    # An eavesdropper replays the recorded Hello and Proof on a new connection: the
    # server's fresh nonce changes the transcript, so the old proof no longer verifies.
    fresh = server.handshake()
    hello = encode_hello(recorded.client._hello)
    fresh.receive_hello(hello, now=1, wall_ms=1)
    with pytest.raises(VerificationError) as caught:
        fresh.receive_proof(proof, now=1, wall_ms=1)
    assert caught.value.reason == "bad-proof"
    assert server.rejections["bad-proof"] == 1
    assert directory_counter(store) == 1


def test_reused_challenge_set_is_rejected(store: MemoryUserStore) -> None:
    card = new_user(store)
    server = LoginServer(store)
    pair = start_login(server)
    proof = pair.client.answer([card.code_for(label) for label in pair.labels])
    pair.handshake.receive_proof(proof, now=0, wall_ms=0)
    with pytest.raises(VerificationError) as caught:
        pair.handshake.receive_proof(proof, now=0, wall_ms=0)
    assert caught.value.reason == "challenge-reused"
    assert server.rejections["challenge-reused"] == 1
    assert directory_counter(store) == 1


def test_challenge_expires(store: MemoryUserStore) -> None:
    card = new_user(store)
    server = LoginServer(store, config=AuthConfig(challenge_ttl_s=30))
    pair = start_login(server, now=100.0)
    proof = pair.client.answer([card.code_for(label) for label in pair.labels])
    with pytest.raises(VerificationError) as caught:
        pair.handshake.receive_proof(proof, now=131.0, wall_ms=0)
    assert caught.value.reason == "challenge-expired"


def test_stripped_suite_offer_is_detected_as_downgrade(store: MemoryUserStore) -> None:
    card = new_user(store)
    server = LoginServer(store, config=AuthConfig(suites=(SHA512, SHA256)))
    client = LoginClient("alice", PASSWORD, config=AuthConfig(suites=(SHA512, SHA256)))
    hello = decode_hello(client.hello())
    # A man in the middle removes the strong suite from the offer.
    tampered = encode_hello(
        type(hello)(hello.user_id, hello.password, hello.client_nonce, (SHA256,))
    )
    handshake = server.handshake()
    challenge = handshake.receive_hello(tampered, now=0, wall_ms=0)
    assert decode_challenge(challenge).suite == SHA256
    labels = client.receive_challenge(challenge)
    proof = client.answer([card.code_for(label) for label in labels])
    with pytest.raises(VerificationError) as caught:
        handshake.receive_proof(proof, now=0, wall_ms=0)
    assert caught.value.reason == "bad-proof"
    assert server.rejections["bad-proof"] == 1


def test_swapped_suite_in_challenge_fails_server_proof(store: MemoryUserStore) -> None:
    card = new_user(store)
    server = LoginServer(store, config=AuthConfig(suites=(SHA512, SHA256)))
    client = LoginClient("alice", PASSWORD, config=AuthConfig(suites=(SHA512, SHA256)))
    handshake = server.handshake()
    original = decode_challenge(handshake.receive_hello(client.hello(), now=0, wall_ms=0))
    fields = {f: getattr(original, f) for f in Challenge.__dataclass_fields__}
    swapped = encode_challenge(Challenge(**{**fields, "suite": SHA256}))
    labels = client.receive_challenge(swapped)
    proof = client.answer([card.code_for(label) for label in labels])
    with pytest.raises(VerificationError):
        handshake.receive_proof(proof, now=0, wall_ms=0)


def test_client_refuses_a_suite_it_did_not_offer(store: MemoryUserStore) -> None:
    new_user(store)
    server = LoginServer(store, config=AuthConfig(suites=(SHA256,)))
    client = LoginClient("alice", PASSWORD, config=AuthConfig(suites=(SHA512,)))
    with pytest.raises(VerificationError) as caught:
        server.handshake().receive_hello(client.hello(), now=0, wall_ms=0)
    assert caught.value.reason == "suite-not-allowed"
    # And a challenge naming an unlisted suite is refused by the client.
    other = LoginClient("alice", PASSWORD, config=AuthConfig(suites=(SHA512,)))
    other.hello()
    forged = Challenge(
        SHA256,
        b"\0" * 32,
        0,
        0,
        FAST_KDF,
        decode_challenge(start_login(LoginServer(store)).challenge).entries,
    )
    with pytest.raises(VerificationError) as caught:
        other.receive_challenge(encode_challenge(forged))
    assert caught.value.reason == "downgrade"


def test_server_proof_is_checked_by_the_client(store: MemoryUserStore) -> None:
    card = new_user(store)
    server = LoginServer(store)
    pair = start_login(server)
    pair.handshake.receive_proof(
        pair.client.answer([card.code_for(label) for label in pair.labels]), now=0, wall_ms=0
    )
    from roost.guard.challenge import Accept, encode_accept

    with pytest.raises(VerificationError) as caught:
        pair.client.receive_result(encode_accept(Accept(b"\x42" * 32)))
    assert caught.value.reason == "bad-server-proof"


def test_client_sees_reject_without_detail(store: MemoryUserStore) -> None:
    client = LoginClient("alice", PASSWORD)
    client.hello()
    with pytest.raises(VerificationError) as caught:
        client.receive_challenge(encode_reject())
    assert caught.value.reason == "refused"
    assert encode_reject() == b"\x05"


def test_lockout_after_repeated_failures_with_backoff(store: MemoryUserStore) -> None:
    card = new_user(store)
    policy = LockoutPolicy(max_failures=3, base_lock_ms=1000, max_lock_ms=10_000)
    server = LoginServer(store, config=AuthConfig(lockout=policy))
    for attempt in range(3):
        with pytest.raises(VerificationError):
            server.handshake().receive_hello(
                LoginClient("alice", "wrong").hello(), now=0, wall_ms=attempt
            )
    record = store.load("alice")
    assert record is not None and record.failures == 3 and record.locked_until_ms == 2 + 1000
    # Even the right password is refused while locked out.
    with pytest.raises(VerificationError) as caught:
        start_login(server, wall_ms=500)
    assert caught.value.reason == "locked-out"
    assert server.rejections["locked-out"] == 1
    # After the lock, one more failure doubles the back-off.
    with pytest.raises(VerificationError):
        server.handshake().receive_hello(LoginClient("alice", "wrong").hello(), now=0, wall_ms=2000)
    record = store.load("alice")
    assert record is not None and record.locked_until_ms == 2000 + 2000
    # Once it passes, the right codes succeed and clear the failures.
    login(server, card, wall_ms=5000)
    record = store.load("alice")
    assert record is not None and record.failures == 0 and record.counter == 1


def test_client_checks_counter_does_not_go_back(store: MemoryUserStore) -> None:
    new_user(store)
    server = LoginServer(store)
    client = LoginClient("alice", PASSWORD, min_counter=5)
    challenge = server.handshake().receive_hello(client.hello(), now=0, wall_ms=0)
    with pytest.raises(VerificationError) as caught:
        client.receive_challenge(challenge)
    assert caught.value.reason == "stale-counter"


def test_client_state_machine_refuses_out_of_order_calls() -> None:
    client = LoginClient("alice", PASSWORD)
    with pytest.raises(LocalProtocolError):
        client.answer(["x"])
    client.hello()
    with pytest.raises(LocalProtocolError):
        client.hello()


def test_malformed_hello_is_counted(store: MemoryUserStore) -> None:
    server = LoginServer(store)
    with pytest.raises(RemoteProtocolError):
        server.handshake().receive_hello(b"\x01\x00", now=0, wall_ms=0)
    assert server.rejections["truncated"] + server.rejections["malformed"] == 1


def test_sqlite_store_holds_no_response_text_and_no_password(tmp_path) -> None:  # type: ignore[no-untyped-def]
    random = FixedRandom(b"db")
    card = generate_card(20, random_bytes=random)
    password = PASSWORD
    path = tmp_path / "users.sqlite3"
    store = SqliteUserStore(path)
    store.add(make_user("alice", password, card, password_kdf=FAST_KDF, pair_kdf=FAST_KDF))
    # A full login through the SQLite store works and advances the counter there.
    client_result, server_result = login(LoginServer(store), card)
    assert client_result.session_id == server_result.session_id
    store.close()
    raw = path.read_bytes()
    for wal in tmp_path.glob("users.sqlite3-*"):
        raw += wal.read_bytes()
    assert password.encode() not in raw
    for _, code in card.entries:
        assert code.encode() not in raw
        assert code.lower().encode() not in raw
        assert code.encode("utf-16-le") not in raw
    assert all(ch in ALPHABET for _, code in card.entries for ch in code)
    with sqlite3.connect(path) as db:
        (counter,) = db.execute("SELECT access_counter FROM users").fetchone()
    assert counter == 1
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_card_codes_carry_enough_entropy() -> None:
    card = generate_card()
    assert len(card.entries) == 20
    assert all(len(code) >= 8 for _, code in card.entries)
    # 32 symbols = 5 bits; any 3 codes of 8 symbols carry 120 >= 64 bits.
    assert len(set(ALPHABET)) == 32 and not set("01IO") & set(ALPHABET)
    assert 3 * 8 * 5 >= 64
