"""Usage authentication (PROTOCOL.md §6): password, then n of N challenge/response pairs.

Pure cores, one per side; the codecs live in :mod:`roost.guard.messages` and are
re-exported here. Four messages::

    client -> server  Hello      user id, password, client nonce, offered suites
    server -> client  Challenge  suite, server nonce, counter, server time, KDF cost,
                                 n labels with their salts
    client -> server  Proof      per pair: ClientKey_i XOR HMAC(StoredKey_i, transcript)
    server -> client  Accept     server signature (mutual)  |  Reject (no detail)

The transcript hash covers the Hello (without the password), the Challenge bytes and an
optional channel binding, and every MAC input starts with the suite name; so a replayed
proof, a stripped suite offer or a swapped suite fails verification on both sides.

Server-first (docs/guard.md, "Server-first login"): on a brokered session whose password the
hub has just checked (a :class:`PasswordGrant`), the server sends the Challenge for the
granted user first (:meth:`ServerHandshake.challenge_first_steps`, which consumes the
grant); the client takes it (:meth:`LoginClient.receive_challenge_first`), then sends its
Hello and Proof together. The Hello must name the challenged user and carry the checked
password; the transcript is the same hash under its own label.

The server answers each message in steps (:meth:`ServerHandshake.hello_steps`,
:meth:`ServerHandshake.proof_steps`): a generator that yields a :class:`LoginWork` item
whenever it needs the password KDF (tens of milliseconds) or the user directory, and takes
the item's result back. An adapter runs those items on a worker thread and everything else
(parsing, challenge selection, proof checks) where it likes; :func:`run_inline` runs them
in place, which is what :meth:`ServerHandshake.receive_hello` and ``receive_proof`` do.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TypeVar, cast

from roost.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    RoostError,
    StateError,
    VerificationError,
)
from roost.guard.messages import (
    MAX_MESSAGE_SIZE,
    MAX_PAIRS_ASKED,
    NONCE_SIZE,
    PROOF_SIZE,
    REJECT_TYPE,
    Accept,
    Challenge,
    ChallengeEntry,
    Hello,
    Proof,
    Reject,
    decode_accept,
    decode_challenge,
    decode_hello,
    decode_proof,
    decode_reject,
    encode_accept,
    encode_challenge,
    encode_hello,
    encode_proof,
    encode_reject,
)
from roost.guard.suites import (
    SUITES,
    KdfParams,
    RandomBytes,
    Suite,
    get_suite,
    hkdf,
    hkdf_expand,
    mac,
    mac_input,
    scrypt,
)
from roost.guard.userstore import (
    SALT_SIZE,
    LockoutPolicy,
    PasswordGrant,
    UserDirectory,
    UserRecord,
    after_failure,
    check_password_digest,
    client_keys_for_code,
    is_locked,
    password_secret,
)
from roost.reasons import RejectionCounter

__all__ = [
    "MAX_MESSAGE_SIZE",
    "NONCE_SIZE",
    "SESSION_ID_SIZE",
    "Accept",
    "AuthConfig",
    "Challenge",
    "ChallengeEntry",
    "Hello",
    "LoginClient",
    "LoginResult",
    "LoginServer",
    "LoginSteps",
    "LoginWork",
    "PasswordKdf",
    "Proof",
    "Reject",
    "ServerHandshake",
    "StoreAccess",
    "decode_accept",
    "decode_challenge",
    "decode_hello",
    "decode_proof",
    "decode_reject",
    "encode_accept",
    "encode_challenge",
    "encode_hello",
    "encode_proof",
    "encode_reject",
    "run_inline",
]

SESSION_ID_SIZE = 16
_REJECT = REJECT_TYPE


# --- Shared derivations --------------------------------------------------------------------


# The transcript's label: the Hello-first login, and the server-first one, whose Challenge
# was sent before the Hello (docs/guard.md): the same inputs, kept apart by the label.
_TRANSCRIPT = "transcript"
_SERVER_FIRST_TRANSCRIPT = "server-first transcript"


def _transcript_hash(
    suite: Suite, hello: Hello, challenge_bytes: bytes, binding: bytes, label: str = _TRANSCRIPT
) -> bytes:
    # The password stays out of the transcript: the hash must not become an offline
    # password oracle if it ever leaks.
    return suite.hash(
        mac_input(
            suite.name,
            label,
            encode_hello(hello, include_password=False),
            challenge_bytes,
            binding,
        )
    )


def _proof_mask(suite: Suite, stored_key: bytes, index: int, transcript: bytes) -> bytes:
    data = mac_input(suite.name, "client proof", bytes([index]), transcript)
    return mac(suite, stored_key, data)[:PROOF_SIZE]


def _server_signature(suite: Suite, server_keys: list[bytes], transcript: bytes) -> bytes:
    combined = suite.hash(mac_input(suite.name, "server keys", *server_keys))
    return mac(suite, combined, mac_input(suite.name, "server proof", transcript))


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


@dataclass(frozen=True, slots=True)
class LoginResult:
    """What both sides hold after a successful login; the session is built from it."""

    user_id: str
    suite: Suite
    session_id: bytes
    root_key: bytes = field(repr=False)
    counter: int


def _login_result(
    suite: Suite, user_id: str, transcript: bytes, client_keys: list[bytes], counter: int
) -> LoginResult:
    # root = HKDF(salt = H(transcript), ikm = CK_1 | ... | CK_n) (PROTOCOL.md §6).
    root = hkdf(
        suite,
        salt=transcript,
        ikm=b"".join(client_keys),
        info=mac_input(suite.name, "session root"),
        length=suite.digest_size,
    )
    session_id = hkdf_expand(
        suite, prk=root, info=mac_input(suite.name, "session id"), length=SESSION_ID_SIZE
    )
    return LoginResult(user_id, suite, session_id, root, counter)


# --- Configuration -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Bounds and policy for both cores (one frozen config per component, STYLE.md)."""

    suites: tuple[str, ...] = tuple(SUITES)
    min_pairs: int = 3
    max_pairs: int = 5
    challenge_ttl_s: float = 120.0
    lockout: LockoutPolicy = field(default_factory=LockoutPolicy)

    def __post_init__(self) -> None:
        if not 1 <= self.min_pairs <= self.max_pairs <= MAX_PAIRS_ASKED:
            raise LocalProtocolError("need 1 <= min_pairs <= max_pairs <= 16")
        for name in self.suites:
            get_suite(name)


def _random_below(bound: int, random_bytes: RandomBytes) -> int:
    # Rejection sampling over 32-bit draws keeps every choice unbiased.
    limit = (1 << 32) - ((1 << 32) % bound)
    while True:
        value = int.from_bytes(random_bytes(4), "big")
        if value < limit:
            return value % bound


# --- Client core ---------------------------------------------------------------------------


class _ClientState(enum.Enum):
    START = "start"
    SENT_HELLO = "sent-hello"
    # Server-first: the Challenge came before our Hello, which goes next.
    GOT_CHALLENGE_FIRST = "got-challenge-first"
    GOT_CHALLENGE = "got-challenge"
    SENT_PROOF = "sent-proof"
    DONE = "done"
    FAILED = "failed"


class LoginClient:
    """Client half. ``hello()`` → send; ``receive_challenge()`` → show labels;
    ``answer(codes)`` → send; ``receive_result()`` → a :class:`LoginResult` or an error.

    Server-first: ``receive_challenge_first()`` → show labels; ``hello()`` → send;
    ``answer(codes)`` → send; ``receive_result()``."""

    def __init__(
        self,
        user_id: str,
        password: str,
        *,
        config: AuthConfig | None = None,
        channel_binding: bytes = b"",
        min_counter: int = 0,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._config = config or AuthConfig()
        self._hello = Hello(user_id, password, random_bytes(NONCE_SIZE), self._config.suites)
        self._binding = channel_binding
        self._min_counter = min_counter
        self._state = _ClientState.START
        self._challenge: Challenge | None = None
        self._suite: Suite | None = None
        self._transcript = b""
        self._client_keys: list[bytes] = []
        self._server_keys: list[bytes] = []
        self._pending: LoginResult | None = None
        self._server_first = False

    @property
    def server_first(self) -> bool:
        """True once a server-first Challenge was taken (:meth:`receive_challenge_first`)."""
        return self._server_first

    def hello(self) -> bytes:
        """The Hello: first (Hello-first), or right after a server-first Challenge."""
        if self._state is _ClientState.GOT_CHALLENGE_FIRST:
            self._state = _ClientState.GOT_CHALLENGE
            return encode_hello(self._hello)
        self._require(_ClientState.START)
        self._state = _ClientState.SENT_HELLO
        return encode_hello(self._hello)

    def receive_challenge(self, data: bytes) -> tuple[str, ...]:
        """Return the labels whose codes the user must type, in order."""
        self._require(_ClientState.SENT_HELLO)
        self._take_challenge(data, _TRANSCRIPT)
        self._state = _ClientState.GOT_CHALLENGE
        return self._labels()

    def receive_challenge_first(self, data: bytes) -> tuple[str, ...]:
        """Take the Challenge a server sent before our Hello (docs/guard.md, "Server-first
        login") and return its labels; :meth:`hello` goes next, then :meth:`answer`. The
        same checks as :meth:`receive_challenge`: a Reject, a suite we do not offer or a
        counter below ``min_counter`` raise; a second Challenge finds the client past it."""
        self._require(_ClientState.START)
        self._take_challenge(data, _SERVER_FIRST_TRANSCRIPT)
        self._server_first = True
        self._state = _ClientState.GOT_CHALLENGE_FIRST
        return self._labels()

    def _take_challenge(self, data: bytes, label: str) -> None:
        self._state = _ClientState.FAILED
        if data[:1] == bytes([_REJECT]):
            decode_reject(data)
            raise VerificationError("server refused the login", reason="refused")
        challenge = decode_challenge(data)
        if challenge.suite not in self._config.suites:
            raise VerificationError("server chose a suite we did not offer", reason="downgrade")
        suite = get_suite(challenge.suite)
        if challenge.counter < self._min_counter:
            raise VerificationError("server counter went backwards", reason="stale-counter")
        self._challenge, self._suite = challenge, suite
        # The Hello (our nonce and offered suites) is fixed since __init__, so a
        # server-first transcript is known now although the Hello leaves after it.
        self._transcript = _transcript_hash(suite, self._hello, data, self._binding, label)

    def _labels(self) -> tuple[str, ...]:
        assert self._challenge is not None
        return tuple(entry.label for entry in self._challenge.entries)

    def answer(self, codes: list[str] | tuple[str, ...]) -> bytes:
        self._require(_ClientState.GOT_CHALLENGE)
        assert self._challenge is not None and self._suite is not None
        if len(codes) != len(self._challenge.entries):
            raise LocalProtocolError("one code per challenge label")
        proofs = []
        for index, (entry, code) in enumerate(zip(self._challenge.entries, codes, strict=True)):
            client_key, stored_key, server_key = client_keys_for_code(
                code, entry.salt, self._challenge.kdf
            )
            mask = _proof_mask(self._suite, stored_key, index, self._transcript)
            proofs.append(_xor(client_key, mask))
            self._client_keys.append(client_key)
            self._server_keys.append(server_key)
        self._state = _ClientState.SENT_PROOF
        # The session the proof opens if the server accepts it: known now, so a client may
        # send its first sealed call with the proof (docs/guard.md, "Remote calls"); only
        # a server holding the pairs' verifiers can derive these keys.
        self._pending = _login_result(
            self._suite,
            self._hello.user_id,
            self._transcript,
            self._client_keys,
            self._challenge.counter + 1,
        )
        self._client_keys = []
        return encode_proof(Proof(tuple(proofs)))

    @property
    def pending_result(self) -> LoginResult:
        """The session material the sent proof opens once the server accepts it; the
        server is authenticated only by :meth:`receive_result`."""
        self._require(_ClientState.SENT_PROOF)
        assert self._pending is not None
        return self._pending

    def receive_result(self, data: bytes) -> LoginResult:
        self._require(_ClientState.SENT_PROOF)
        assert self._challenge is not None and self._suite is not None
        self._state = _ClientState.FAILED
        if data[:1] == bytes([_REJECT]):
            decode_reject(data)
            raise VerificationError("server refused the proof", reason="refused")
        accept = decode_accept(data)
        expected = _server_signature(self._suite, self._server_keys, self._transcript)
        if not hmac.compare_digest(expected, accept.server_signature):
            raise VerificationError("server proof is wrong", reason="bad-server-proof")
        self._state = _ClientState.DONE
        result, self._pending = self._pending, None
        assert result is not None
        return result

    def _require(self, state: _ClientState) -> None:
        if self._state is not state:
            raise LocalProtocolError(f"login client is {self._state.value}, not {state.value}")


# --- Server work items ---------------------------------------------------------------------

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class LoginWork:
    """Something a login step needs done off the event loop; ``run()`` gives the result
    the step takes back."""

    def run(self) -> object:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class PasswordKdf(LoginWork):
    """The password KDF (scrypt, about 30 ms at the default cost): the one CPU-heavy part of
    a server login."""

    secret: bytes = field(repr=False)
    salt: bytes
    params: KdfParams

    def run(self) -> bytes:
        return scrypt(self.secret, self.salt, self.params)


@dataclass(frozen=True, slots=True)
class StoreAccess(LoginWork):
    """A read or write of the user directory (``load``, ``record-failure``,
    ``record-success``). SQLite connections belong to the thread that opened them, so an
    adapter runs these where it opened the store."""

    what: str
    operation: Callable[[], object] = field(repr=False)

    def run(self) -> object:
        return self.operation()


# A login step: yields work items, takes each result back, returns the reply.
LoginSteps = Generator[LoginWork, object, _T]


def run_inline(steps: LoginSteps[_T]) -> _T:
    """Run every work item of ``steps`` in place and return the step's result."""
    result: object = None
    try:
        while True:
            result = steps.send(result).run()
    except StopIteration as done:
        return cast(_T, done.value)


# --- Server core ---------------------------------------------------------------------------


class LoginServer:
    """Server half: holds config, the user directory and the rejection counter; makes one
    :class:`ServerHandshake` per connection."""

    def __init__(
        self,
        directory: UserDirectory,
        *,
        config: AuthConfig | None = None,
        random_bytes: RandomBytes = os.urandom,
        counter: RejectionCounter | None = None,
    ) -> None:
        self.config = config or AuthConfig()
        self.directory = directory
        self.random_bytes = random_bytes
        self.rejections = counter or RejectionCounter()

    def handshake(
        self, channel_binding: bytes = b"", password_grant: PasswordGrant | None = None
    ) -> ServerHandshake:
        """One login attempt; ``password_grant`` (single use) may stand in for the KDF."""
        return ServerHandshake(self, channel_binding, password_grant)


class _ServerState(enum.Enum):
    AWAIT_HELLO = "await-hello"
    # Server-first: the Challenge for the granted user is out; its Hello comes next.
    AWAIT_LATE_HELLO = "await-late-hello"
    AWAIT_PROOF = "await-proof"
    DONE = "done"
    FAILED = "failed"


class ServerHandshake:
    """One login attempt. Errors are raised after being counted; the adapter then sends
    :func:`encode_reject` (no detail) and closes."""

    def __init__(
        self,
        server: LoginServer,
        channel_binding: bytes,
        password_grant: PasswordGrant | None = None,
    ) -> None:
        self._server = server
        self._binding = channel_binding
        self._grant = password_grant
        # True once a Hello was admitted by the grant instead of the KDF.
        self.used_grant = False
        self._state = _ServerState.AWAIT_HELLO
        self._hello: Hello | None = None
        self._challenge: Challenge | None = None
        self._challenge_bytes = b""
        # Server-first: the grant the Challenge was made under and the user's record as
        # it was read then, for the late Hello's password.
        self._challenged: PasswordGrant | None = None
        self._record: UserRecord | None = None
        self._pair_keys: list[tuple[bytes, bytes]] = []
        self._transcript = b""
        self._suite: Suite | None = None
        self._deadline = 0.0

    def receive_hello(self, data: bytes, *, now: float, wall_ms: int) -> bytes:
        """Check the password and return the Challenge bytes to send."""
        return run_inline(self.hello_steps(data, now=now, wall_ms=wall_ms))

    def receive_proof(self, data: bytes, *, now: float, wall_ms: int) -> tuple[bytes, LoginResult]:
        """Verify all n proofs; return the Accept bytes and the session material."""
        return run_inline(self.proof_steps(data, now=now, wall_ms=wall_ms))

    def hello_steps(self, data: bytes, *, now: float, wall_ms: int) -> LoginSteps[bytes]:
        """:meth:`receive_hello` as steps: yields the user lookup, the password KDF and, on a
        wrong password, the failure record. After a server-first Challenge it checks the
        late Hello and returns ``b""`` (nothing to send)."""
        if self._state is _ServerState.AWAIT_LATE_HELLO:
            return self._counted(self._receive_late_hello(data, now, wall_ms))
        return self._counted(self._receive_hello(data, now, wall_ms))

    def open_challenge(self, *, now: float, wall_ms: int) -> bytes:
        """:meth:`challenge_first_steps` run in place: the server-first Challenge bytes."""
        return run_inline(self.challenge_first_steps(now=now, wall_ms=wall_ms))

    def challenge_first_steps(self, *, now: float, wall_ms: int) -> LoginSteps[bytes]:
        """The server-first Challenge (docs/guard.md, "Server-first login"), before any
        Hello, for the user of this handshake's password grant, which it consumes: yields
        the user lookup and returns the Challenge bytes. Without a grant still valid at
        ``now`` for the user's current verifier it raises ``no-grant``; a locked-out user
        ``locked-out``. The Hello that follows must name that user and carry the password
        the grant checked (:meth:`hello_steps`)."""
        return self._counted(self._open_challenge(now, wall_ms))

    def proof_steps(
        self, data: bytes, *, now: float, wall_ms: int
    ) -> LoginSteps[tuple[bytes, LoginResult]]:
        """:meth:`receive_proof` as steps: yields the user lookup and the failure or
        success record."""
        return self._counted(self._receive_proof(data, now, wall_ms))

    def _counted(self, steps: LoginSteps[_T]) -> LoginSteps[_T]:
        try:
            return (yield from steps)
        except RoostError as error:
            self._fail(error)
            raise

    def _fail(self, error: RoostError) -> None:
        self._state = _ServerState.FAILED
        self._pair_keys = []
        self._server.rejections.count(error)

    def _load(self, user_id: str) -> LoginSteps[UserRecord | None]:
        directory = self._server.directory
        record = yield StoreAccess("load", functools.partial(directory.load, user_id))
        return cast(UserRecord | None, record)

    def _record_failure(self, record: UserRecord, wall_ms: int) -> LoginSteps[None]:
        failed = after_failure(record, wall_ms, self._server.config.lockout)
        operation = functools.partial(
            self._server.directory.record_failure,
            record.user_id,
            failed.failures,
            failed.locked_until_ms,
        )
        yield StoreAccess("record-failure", operation)

    def _check_password(
        self, record: UserRecord, hello: Hello, granted: bool, wall_ms: int
    ) -> LoginSteps[None]:
        """The Hello's password: admitted by the session's grant, else by the full KDF; a
        wrong one is recorded towards lock-out."""
        if granted:
            self.used_grant = True
            return
        verifier = record.password
        candidate = yield from self._kdf(
            password_secret(hello.password), verifier.salt, verifier.kdf
        )
        try:
            check_password_digest(verifier, candidate)
        except VerificationError as wrong:
            yield from self._record_failure(record, wall_ms)
            raise wrong

    def _kdf(self, secret: bytes, salt: bytes, params: KdfParams) -> LoginSteps[bytes]:
        digest = yield PasswordKdf(secret, salt, params)
        return cast(bytes, digest)

    def _receive_hello(self, data: bytes, now: float, wall_ms: int) -> LoginSteps[bytes]:
        if self._state is not _ServerState.AWAIT_HELLO:
            raise RemoteProtocolError("hello out of order", reason="unexpected-message")
        self._state = _ServerState.FAILED
        config = self._server.config
        hello = decode_hello(data)
        # The first of our suites that the client offers; a client offering none of
        # them is refused rather than served with something weaker.
        chosen = next((name for name in config.suites if name in hello.suites), None)
        if chosen is None:
            raise VerificationError("no common suite", reason="suite-not-allowed")
        record = yield from self._load(hello.user_id)
        if record is None:
            # Spend the same KDF time as for a real user, so timing does not reveal
            # which user ids exist.
            yield from self._kdf(b"", b"\0" * SALT_SIZE, KdfParams(log2_n=14))
            raise VerificationError("unknown user", reason="unknown-user")
        if is_locked(record, wall_ms):
            raise VerificationError("user locked out", reason="locked-out")
        verifier = record.password
        grant, self._grant = self._grant, None
        # The same password for the same verifier passed the full KDF moments ago in this
        # session's brokered request (PasswordGrant); the codes are still asked.
        granted = grant is not None and grant.admits(hello.user_id, verifier, hello.password, now)
        yield from self._check_password(record, hello, granted, wall_ms)
        encoded = self._new_challenge(record, chosen, now, wall_ms)
        self._hello = hello
        assert self._suite is not None
        self._transcript = _transcript_hash(self._suite, hello, encoded, self._binding)
        self._state = _ServerState.AWAIT_PROOF
        return encoded

    def _new_challenge(self, record: UserRecord, suite: str, now: float, wall_ms: int) -> bytes:
        """Pick the pairs and make the Challenge (single use, ``challenge_ttl_s``)."""
        config = self._server.config
        if len(record.pairs) < config.min_pairs:
            raise StateError("user has too few registered pairs", reason="too-few-pairs")
        # n is itself random within the configured bounds (PROTOCOL.md §6).
        random_bytes = self._server.random_bytes
        span = min(config.max_pairs, len(record.pairs)) - config.min_pairs + 1
        count = config.min_pairs + _random_below(span, random_bytes)
        remaining = list(record.pairs)
        chosen_pairs = [
            remaining.pop(_random_below(len(remaining), random_bytes)) for _ in range(count)
        ]
        challenge = Challenge(
            suite=suite,
            server_nonce=random_bytes(NONCE_SIZE),
            counter=record.counter,
            server_time_ms=wall_ms,
            kdf=record.pair_kdf,
            entries=tuple(ChallengeEntry(p.label, p.salt) for p in chosen_pairs),
        )
        encoded = encode_challenge(challenge)
        self._suite = get_suite(suite)
        self._challenge, self._challenge_bytes = challenge, encoded
        self._pair_keys = [(p.stored_key, p.server_key) for p in chosen_pairs]
        self._deadline = now + config.challenge_ttl_s
        return encoded

    def _open_challenge(self, now: float, wall_ms: int) -> LoginSteps[bytes]:
        if self._state is not _ServerState.AWAIT_HELLO:
            # One Challenge per handshake: a second one, or one after a Hello, is refused.
            reason = "challenge-reused" if self._challenge is not None else "unexpected-message"
            raise LocalProtocolError("the login already started", reason=reason)
        self._state = _ServerState.FAILED
        # Single use: whatever happens next, this grant makes no other Challenge or Hello.
        grant, self._grant = self._grant, None
        if grant is None or now > grant.expires_at:
            raise StateError("no password grant for a server-first login", reason="no-grant")
        record = yield from self._load(grant.user_id)
        if record is None:
            raise StateError("the granted user is gone", reason="unknown-user")
        if is_locked(record, wall_ms):
            raise VerificationError("user locked out", reason="locked-out")
        if not grant.holds(record.user_id, record.password, now):
            # The password changed since the brokered check: the grant is void.
            raise StateError("the password grant is void", reason="no-grant")
        # No Hello to choose from yet: our first suite; a client that does not offer it
        # refuses (downgrade) and this server refuses a Hello without it.
        encoded = self._new_challenge(record, self._server.config.suites[0], now, wall_ms)
        self._challenged, self._record = grant, record
        self._state = _ServerState.AWAIT_LATE_HELLO
        return encoded

    def _receive_late_hello(self, data: bytes, now: float, wall_ms: int) -> LoginSteps[bytes]:
        self._state = _ServerState.FAILED
        grant, self._challenged = self._challenged, None
        record, self._record = self._record, None
        assert grant is not None and record is not None
        assert self._challenge is not None and self._suite is not None
        if now > self._deadline:
            raise VerificationError("challenge expired", reason="challenge-expired")
        hello = decode_hello(data)
        if hello.user_id != grant.user_id:
            # The Challenge was made for the granted user's pairs and counter only.
            raise VerificationError("hello names another user", reason="user-mismatch")
        if self._challenge.suite not in hello.suites:
            raise VerificationError("hello does not offer the suite", reason="suite-not-allowed")
        # The record as read for the Challenge: lock-out and the grant (deadline, the
        # verifier it matched) were checked then, as a Hello-first login checks them at
        # its Hello, and the proof step reads the directory again; the Challenge's TTL
        # bounds the rest. The password the grant checked: no second KDF.
        yield from self._check_password(record, hello, grant.matches(hello.password), wall_ms)
        self._hello = hello
        self._transcript = _transcript_hash(
            self._suite, hello, self._challenge_bytes, self._binding, _SERVER_FIRST_TRANSCRIPT
        )
        self._state = _ServerState.AWAIT_PROOF
        return b""

    def _receive_proof(
        self, data: bytes, now: float, wall_ms: int
    ) -> LoginSteps[tuple[bytes, LoginResult]]:
        if self._state is not _ServerState.AWAIT_PROOF:
            # A challenge set is single use: once answered (rightly or not), a second
            # proof for it is refused.
            answered = self._challenge is not None and self._state is not (
                _ServerState.AWAIT_LATE_HELLO
            )
            reason = "challenge-reused" if answered else "unexpected-message"
            raise VerificationError("no open challenge", reason=reason)
        self._state = _ServerState.FAILED
        assert self._hello is not None and self._challenge is not None
        assert self._suite is not None
        if now > self._deadline:
            raise VerificationError("challenge expired", reason="challenge-expired")
        proof = decode_proof(data)
        user_id = self._hello.user_id
        ok = len(proof.proofs) == len(self._pair_keys)
        client_keys = []
        for index, ((stored_key, _), item) in enumerate(
            zip(self._pair_keys, proof.proofs, strict=False)
        ):
            client_key = _xor(item, _proof_mask(self._suite, stored_key, index, self._transcript))
            # Every pair is checked even after a mismatch so timing does not say which.
            ok &= hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)
            client_keys.append(client_key)
        record = yield from self._load(user_id)
        if record is None:
            raise StateError("user vanished during login", reason="unknown-user")
        if not ok:
            yield from self._record_failure(record, wall_ms)
            raise VerificationError("wrong response codes", reason="bad-proof")
        # The counter advances only on success, and only from the value we sent.
        success = functools.partial(
            self._server.directory.record_success, user_id, self._challenge.counter
        )
        if not (yield StoreAccess("record-success", success)):
            raise VerificationError("counter moved during login", reason="stale-counter")
        signature = _server_signature(
            self._suite, [server_key for _, server_key in self._pair_keys], self._transcript
        )
        self._pair_keys = []
        self._state = _ServerState.DONE
        result = _login_result(
            self._suite, user_id, self._transcript, client_keys, self._challenge.counter + 1
        )
        return encode_accept(Accept(signature)), result
