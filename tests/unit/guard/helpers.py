"""Shared fixtures for the guard tests: cheap KDF costs, fixed randomness, paired cores."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from roost.guard.card import Card, generate_card
from roost.guard.challenge import AuthConfig, LoginClient, LoginResult, LoginServer, ServerHandshake
from roost.guard.suites import KdfParams
from roost.guard.userstore import MemoryUserStore, UserDirectory, make_user

# Tests use a tiny scrypt cost; the production defaults are measured in bench/guard.py.
FAST_KDF = KdfParams(log2_n=4, r=1, p=1)
PASSWORD = "correct horse battery staple"


class FixedRandom:
    """Deterministic ``random_bytes``: SHA-256 counter stream from a seed."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._buffer += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def new_user(
    store: MemoryUserStore, user_id: str = "alice", pairs: int = 20, seed: bytes = b"card"
) -> Card:
    random = FixedRandom(seed)
    card = generate_card(pairs, random_bytes=random)
    store.add(
        make_user(
            user_id, PASSWORD, card, password_kdf=FAST_KDF, pair_kdf=FAST_KDF, random_bytes=random
        )
    )
    return card


@dataclass
class Pair:
    client: LoginClient
    handshake: ServerHandshake
    server: LoginServer
    challenge: bytes = b""
    labels: tuple[str, ...] = ()


def start_login(
    server: LoginServer,
    user_id: str = "alice",
    password: str = PASSWORD,
    *,
    config: AuthConfig | None = None,
    now: float = 0.0,
    wall_ms: int = 1_700_000_000_000,
) -> Pair:
    client = LoginClient(user_id, password, config=config)
    handshake = server.handshake()
    pair = Pair(client, handshake, server)
    pair.challenge = handshake.receive_hello(client.hello(), now=now, wall_ms=wall_ms)
    pair.labels = client.receive_challenge(pair.challenge)
    return pair


def login(
    server: LoginServer, card: Card, *, now: float = 0.0, wall_ms: int = 1_700_000_000_000
) -> tuple[LoginResult, LoginResult]:
    """Run a whole login; return ``(client result, server result)``."""
    pair = start_login(server, now=now, wall_ms=wall_ms)
    proof = pair.client.answer([card.code_for(label) for label in pair.labels])
    accept, server_result = pair.handshake.receive_proof(proof, now=now, wall_ms=wall_ms)
    return pair.client.receive_result(accept), server_result


def directory_counter(directory: UserDirectory, user_id: str = "alice") -> int:
    record = directory.load(user_id)
    assert record is not None
    return record.counter
