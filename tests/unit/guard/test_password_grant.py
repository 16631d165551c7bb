"""A brokered request's password check standing in, once, for the login's KDF: which Hello
it admits, that it is single use and short-lived, and that the codes are still needed."""

from __future__ import annotations

import dataclasses

import pytest

from roost.errors import VerificationError
from roost.guard.card import Card
from roost.guard.challenge import LoginClient, LoginServer, PasswordKdf, ServerHandshake
from roost.guard.userstore import MemoryUserStore, PasswordGrant, hash_password

from .helpers import FAST_KDF, PASSWORD, new_user

WALL_MS = 1_700_000_000_000


@pytest.fixture
def store() -> MemoryUserStore:
    return MemoryUserStore()


def _grant(store: MemoryUserStore, *, now: float = 0.0, ttl_s: float = 20.0) -> PasswordGrant:
    record = store.load("alice")
    assert record is not None
    return PasswordGrant.issue("alice", record.password, PASSWORD, now=now, ttl_s=ttl_s)


def _hello(
    handshake: ServerHandshake, user: str = "alice", password: str = PASSWORD, now: float = 1.0
) -> tuple[LoginClient, bytes, list[str]]:
    """Run the Hello step by hand; return the client, the reply and the work items' kinds."""
    client = LoginClient(user, password)
    steps = handshake.hello_steps(client.hello(), now=now, wall_ms=WALL_MS)
    kinds: list[str] = []
    result: object = None
    try:
        while True:
            item = steps.send(result)
            kinds.append(type(item).__name__)
            result = item.run()
    except StopIteration as done:
        return client, done.value, kinds


def test_the_checked_password_skips_the_kdf_once_and_the_codes_are_still_asked(
    store: MemoryUserStore,
) -> None:
    card: Card = new_user(store)
    server = LoginServer(store)
    handshake = server.handshake(password_grant=_grant(store))
    client, challenge, kinds = _hello(handshake)
    assert PasswordKdf.__name__ not in kinds and handshake.used_grant
    labels = client.receive_challenge(challenge)
    # Wrong codes still fail: the grant stands for the password only.
    bad = client.answer(["0000"] * len(labels))
    with pytest.raises(VerificationError):
        handshake.receive_proof(bad, now=1.0, wall_ms=WALL_MS)
    # Right codes on a fresh handshake with its own grant log in.
    again = server.handshake(password_grant=_grant(store))
    client, challenge, _ = _hello(again)
    labels = client.receive_challenge(challenge)
    accept, _result = again.receive_proof(
        client.answer([card.code_for(label) for label in labels]), now=1.0, wall_ms=WALL_MS
    )
    client.receive_result(accept)


@pytest.mark.parametrize(
    ("user", "password", "now", "what"),
    [
        ("alice", "another password", 1.0, "another password"),
        ("bob", PASSWORD, 1.0, "another user"),
        ("alice", PASSWORD, 25.0, "expired"),
    ],
)
def test_anything_else_runs_the_kdf(
    store: MemoryUserStore, user: str, password: str, now: float, what: str
) -> None:
    new_user(store)
    new_user(store, "bob", seed=b"bob")
    handshake = LoginServer(store).handshake(password_grant=_grant(store))
    try:
        _client, _challenge, kinds = _hello(handshake, user, password, now)
    except VerificationError:
        kinds = ["refused"]
    assert not handshake.used_grant, what
    assert "refused" in kinds or PasswordKdf.__name__ in kinds, what


def test_a_password_changed_since_the_check_voids_the_grant(store: MemoryUserStore) -> None:
    new_user(store)
    grant = _grant(store)
    record = store.load("alice")
    assert record is not None
    # The same password hashed again (a `roost user passwd` meanwhile): a new verifier.
    store.add(
        dataclasses.replace(record, password=hash_password(PASSWORD, FAST_KDF)),
        replace_existing=True,
    )
    handshake = LoginServer(store).handshake(password_grant=grant)
    _client, _challenge, kinds = _hello(handshake)
    assert PasswordKdf.__name__ in kinds and not handshake.used_grant


def test_the_grant_holds_no_password_and_hides_its_secrets(store: MemoryUserStore) -> None:
    new_user(store)
    grant = _grant(store)
    assert PASSWORD.encode() not in b"".join((grant.tag, grant.key, grant.digest))
    assert repr(grant).count("=") == 2  # user_id and expires_at only
