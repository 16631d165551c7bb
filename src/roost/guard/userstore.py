"""Users, their password verifier and their challenge/response verifiers.

The seed stored the response codes in the clear; stealing the database gave full
impersonation (research note, weakness 1). Here the server keeps, per pair, only a salt
and SCRAM-style ``StoredKey``/``ServerKey`` (PROTOCOL.md §6), and for the password a
salted scrypt digest. The pure functions at the top compute verifiers and lock-out
decisions; :class:`SqliteUserStore` and :class:`MemoryUserStore` only persist them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from roost.errors import StateError, VerificationError
from roost.guard.card import Card, normalize_code
from roost.guard.suites import (
    DEFAULT_PAIR_KDF,
    DEFAULT_PASSWORD_KDF,
    KdfParams,
    RandomBytes,
    scrypt,
)

__all__ = [
    "LockoutPolicy",
    "MemoryUserStore",
    "PairVerifier",
    "PasswordGrant",
    "PasswordVerifier",
    "SqliteUserStore",
    "UserDirectory",
    "UserRecord",
    "after_failure",
    "check_password_digest",
    "client_keys_for_code",
    "hash_password",
    "is_locked",
    "make_user",
    "password_secret",
    "verify_password",
]

SALT_SIZE = 16


@dataclass(frozen=True, slots=True)
class PasswordVerifier:
    salt: bytes
    digest: bytes
    kdf: KdfParams


@dataclass(frozen=True, slots=True)
class PairVerifier:
    """What the server keeps for one card entry: never the code itself."""

    label: str
    salt: bytes
    stored_key: bytes
    server_key: bytes


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    password: PasswordVerifier
    pair_kdf: KdfParams
    pairs: tuple[PairVerifier, ...]
    counter: int = 0
    failures: int = 0
    locked_until_ms: int = 0


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """After ``max_failures`` failures in a row the user is locked for a back-off that
    doubles with every further failure, capped at ``max_lock_ms``."""

    max_failures: int = 5
    base_lock_ms: int = 60_000
    max_lock_ms: int = 3_600_000


def password_secret(password: str) -> bytes:
    """The bytes the password KDF takes: NFC-normalised UTF-8, so the same password typed
    on two keyboards derives the same key."""
    return unicodedata.normalize("NFC", password).encode("utf-8")


def hash_password(
    password: str, kdf: KdfParams = DEFAULT_PASSWORD_KDF, random_bytes: RandomBytes = os.urandom
) -> PasswordVerifier:
    salt = random_bytes(SALT_SIZE)
    return PasswordVerifier(salt, scrypt(password_secret(password), salt, kdf), kdf)


def verify_password(verifier: PasswordVerifier, password: str) -> None:
    """Raise ``VerificationError`` unless ``password`` matches; constant-time compare."""
    check_password_digest(verifier, scrypt(password_secret(password), verifier.salt, verifier.kdf))


def check_password_digest(verifier: PasswordVerifier, candidate: bytes) -> None:
    """Raise ``VerificationError`` unless ``candidate`` (the KDF of the offered password,
    computed elsewhere) is the stored digest; constant-time compare."""
    if not hmac.compare_digest(candidate, verifier.digest):
        raise VerificationError("wrong password", reason="bad-password")


_GRANT_KEY_SIZE = 32


@dataclass(frozen=True, slots=True)
class PasswordGrant:
    """A password the hub has just checked with the full KDF, usable ONCE in place of the
    KDF by the login of the same brokered session (PROTOCOL.md section 5: the target checks
    the sealed password before punching; section 6: the login checks it again).

    It holds no password: a keyed hash of it under a random key that never leaves memory,
    the verifier digest it matched, and a deadline. A Hello is admitted without the KDF only
    when it names the same user, carries the same password (constant-time compare of the
    keyed hash), the user's stored verifier is still the one that matched (a password
    changed meanwhile voids it) and the deadline has not passed. Anything else takes the
    normal path with the KDF; lock-out and the challenge codes apply either way. A
    server-first login (docs/guard.md) spends it on its Challenge instead (``holds``, then
    ``matches`` for the Hello that follows).
    """

    user_id: str
    digest: bytes = field(repr=False)
    tag: bytes = field(repr=False)
    key: bytes = field(repr=False)
    expires_at: float

    @classmethod
    def issue(
        cls,
        user_id: str,
        verifier: PasswordVerifier,
        password: str,
        *,
        now: float,
        ttl_s: float,
        random_bytes: RandomBytes = os.urandom,
    ) -> PasswordGrant:
        """The grant for ``password``, which the caller has just verified for ``user_id``
        against ``verifier`` (``now`` is monotonic seconds)."""
        key = random_bytes(_GRANT_KEY_SIZE)
        tag = hmac.new(key, password_secret(password), hashlib.sha256).digest()
        return cls(user_id, verifier.digest, tag, key, now + ttl_s)

    def admits(self, user_id: str, verifier: PasswordVerifier, password: str, now: float) -> bool:
        """True when this Hello's user and password are the ones checked, still valid."""
        same_password = self.matches(password)
        return self.holds(user_id, verifier, now) and same_password

    def holds(self, user_id: str, verifier: PasswordVerifier, now: float) -> bool:
        """True while the grant stands for ``user_id`` whose stored verifier is still the
        one that matched (a server-first login's Challenge is made only then)."""
        same_verifier = hmac.compare_digest(verifier.digest, self.digest)
        return same_verifier and user_id == self.user_id and now <= self.expires_at

    def matches(self, password: str) -> bool:
        """True when ``password`` is the one checked (constant-time compare of the keyed
        hash); says nothing about the user, the verifier or the deadline."""
        tag = hmac.new(self.key, password_secret(password), hashlib.sha256).digest()
        return hmac.compare_digest(tag, self.tag)


def client_keys_for_code(code: str, salt: bytes, kdf: KdfParams) -> tuple[bytes, bytes, bytes]:
    """Return ``(ClientKey, StoredKey, ServerKey)`` for one code (SCRAM, RFC 5802 §3).

    Verifiers always use SHA-256 whatever suite a login picks, so one registration
    serves every allow-listed suite; the suite governs the proofs built on top.
    """
    salted = scrypt(normalize_code(code), salt, kdf)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return client_key, hashlib.sha256(client_key).digest(), server_key


def make_user(
    user_id: str,
    password: str,
    card: Card,
    *,
    password_kdf: KdfParams = DEFAULT_PASSWORD_KDF,
    pair_kdf: KdfParams = DEFAULT_PAIR_KDF,
    random_bytes: RandomBytes = os.urandom,
) -> UserRecord:
    """Build the record to store; the caller shows ``card`` once and then drops it."""
    pairs = []
    for label, code in card.entries:
        salt = random_bytes(SALT_SIZE)
        _, stored_key, server_key = client_keys_for_code(code, salt, pair_kdf)
        pairs.append(PairVerifier(label, salt, stored_key, server_key))
    return UserRecord(
        user_id=user_id,
        password=hash_password(password, password_kdf, random_bytes),
        pair_kdf=pair_kdf,
        pairs=tuple(pairs),
    )


def is_locked(record: UserRecord, wall_ms: int) -> bool:
    return wall_ms < record.locked_until_ms


def after_failure(record: UserRecord, wall_ms: int, policy: LockoutPolicy) -> UserRecord:
    """The record after one more failure: lock-out with doubling back-off past the limit."""
    failures = record.failures + 1
    locked_until = record.locked_until_ms
    if failures >= policy.max_failures:
        extra = min(failures - policy.max_failures, 30)
        locked_until = wall_ms + min(policy.base_lock_ms << extra, policy.max_lock_ms)
    return replace(record, failures=failures, locked_until_ms=locked_until)


class UserDirectory(Protocol):
    """The store the server core reads users from and writes counters to."""

    def load(self, user_id: str) -> UserRecord | None: ...

    def record_failure(self, user_id: str, failures: int, locked_until_ms: int) -> None: ...

    def record_success(self, user_id: str, expected_counter: int) -> bool:
        """Advance the access counter by one if it still equals ``expected_counter``."""
        ...


class MemoryUserStore:
    """In-memory directory for tests and benchmarks."""

    def __init__(self) -> None:
        self._users: dict[str, UserRecord] = {}

    def add(self, record: UserRecord, *, replace_existing: bool = False) -> None:
        if record.user_id in self._users and not replace_existing:
            raise StateError(f"user {record.user_id!r} exists", reason="user-exists")
        self._users[record.user_id] = record

    def load(self, user_id: str) -> UserRecord | None:
        return self._users.get(user_id)

    def record_failure(self, user_id: str, failures: int, locked_until_ms: int) -> None:
        record = self._users[user_id]
        self._users[user_id] = replace(record, failures=failures, locked_until_ms=locked_until_ms)

    def record_success(self, user_id: str, expected_counter: int) -> bool:
        record = self._users[user_id]
        if record.counter != expected_counter:
            return False
        self._users[user_id] = replace(
            record, counter=expected_counter + 1, failures=0, locked_until_ms=0
        )
        return True


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    password_salt BLOB NOT NULL,
    password_digest BLOB NOT NULL,
    password_log2_n INTEGER NOT NULL,
    password_r INTEGER NOT NULL,
    password_p INTEGER NOT NULL,
    pair_log2_n INTEGER NOT NULL,
    pair_r INTEGER NOT NULL,
    pair_p INTEGER NOT NULL,
    access_counter INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pairs (
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    label TEXT NOT NULL,
    salt BLOB NOT NULL,
    stored_key BLOB NOT NULL,
    server_key BLOB NOT NULL,
    PRIMARY KEY (user_id, position)
);
"""


class SqliteUserStore:
    """The user database in the hub's state directory (``STATE/users.sqlite3``)."""

    FILENAME = "users.sqlite3"

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        try:
            self._db = sqlite3.connect(self._path)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open user store {self._path}: {exc}") from exc
        os.chmod(self._path, 0o600)

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> SqliteUserStore:
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory / cls.FILENAME)

    def close(self) -> None:
        self._db.close()

    def add(self, record: UserRecord, *, replace_existing: bool = False) -> None:
        with self._db:
            exists = self._db.execute(
                "SELECT 1 FROM users WHERE user_id = ?", (record.user_id,)
            ).fetchone()
            if exists and not replace_existing:
                raise StateError(f"user {record.user_id!r} exists", reason="user-exists")
            self._db.execute("DELETE FROM users WHERE user_id = ?", (record.user_id,))
            pw, kdf = record.password, record.pair_kdf
            self._db.execute(
                "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.user_id,
                    pw.salt,
                    pw.digest,
                    pw.kdf.log2_n,
                    pw.kdf.r,
                    pw.kdf.p,
                    kdf.log2_n,
                    kdf.r,
                    kdf.p,
                    record.counter,
                    record.failures,
                    record.locked_until_ms,
                ),
            )
            self._db.executemany(
                "INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (record.user_id, i, p.label, p.salt, p.stored_key, p.server_key)
                    for i, p in enumerate(record.pairs)
                ],
            )

    def load(self, user_id: str) -> UserRecord | None:
        row = self._db.execute(
            "SELECT password_salt, password_digest, password_log2_n, password_r, password_p,"
            " pair_log2_n, pair_r, pair_p, access_counter, failures, locked_until_ms"
            " FROM users WHERE user_id = ?",
            (user_id,),
        ).fetchone()
        if row is None:
            return None
        pairs = tuple(
            PairVerifier(label, salt, stored, server)
            for label, salt, stored, server in self._db.execute(
                "SELECT label, salt, stored_key, server_key FROM pairs"
                " WHERE user_id = ? ORDER BY position",
                (user_id,),
            )
        )
        return UserRecord(
            user_id=user_id,
            password=PasswordVerifier(row[0], row[1], KdfParams(row[2], row[3], row[4])),
            pair_kdf=KdfParams(row[5], row[6], row[7]),
            pairs=pairs,
            counter=row[8],
            failures=row[9],
            locked_until_ms=row[10],
        )

    def list_users(self) -> list[tuple[str, int, int, int, int]]:
        """``(user, pairs, access counter, failures, locked until ms)`` per user."""
        return [
            (row[0], row[1], row[2], row[3], row[4])
            for row in self._db.execute(
                "SELECT u.user_id, COUNT(p.position), u.access_counter, u.failures,"
                " u.locked_until_ms FROM users u LEFT JOIN pairs p USING (user_id)"
                " GROUP BY u.user_id ORDER BY u.user_id"
            )
        ]

    def remove(self, user_id: str) -> None:
        with self._db:
            cursor = self._db.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
        if cursor.rowcount == 0:
            raise StateError(f"no user {user_id!r}", reason="no-such-user")

    def reset_failures(self, user_id: str) -> None:
        """Clear the failure counter and any lock-out; the access counter never goes back."""
        with self._db:
            cursor = self._db.execute(
                "UPDATE users SET failures = 0, locked_until_ms = 0 WHERE user_id = ?",
                (user_id,),
            )
        if cursor.rowcount == 0:
            raise StateError(f"no user {user_id!r}", reason="no-such-user")

    def record_failure(self, user_id: str, failures: int, locked_until_ms: int) -> None:
        with self._db:
            self._db.execute(
                "UPDATE users SET failures = ?, locked_until_ms = ? WHERE user_id = ?",
                (failures, locked_until_ms, user_id),
            )

    def record_success(self, user_id: str, expected_counter: int) -> bool:
        # Compare-and-set, so two logins racing on one challenge counter cannot both win.
        with self._db:
            cursor = self._db.execute(
                "UPDATE users SET access_counter = access_counter + 1, failures = 0,"
                " locked_until_ms = 0 WHERE user_id = ? AND access_counter = ?",
                (user_id, expected_counter),
            )
        return cursor.rowcount == 1
