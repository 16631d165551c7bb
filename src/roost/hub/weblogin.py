"""The dashboard's login (adapter): the guard's own login cores, driven for a browser.

A browser cannot speak the guard's binary login (PROTOCOL.md section 6), so the hub plays
its client half on the browser's behalf: the password the owner types becomes the
``Hello`` of a :class:`~roost.guard.challenge.LoginClient`, the hub's
:class:`~roost.guard.challenge.LoginServer` (the same class, user store and lock-out policy
as the remote entrance) answers with a ``Challenge``, the page shows its labels, and the
codes typed from the card become the ``Proof``. Only when the server core accepts the proof
and the client core has checked the server's signature is the login complete. There is no
second verification path: a wrong password, a wrong code, a locked-out user or an expired
challenge fail exactly as they do for ``roost remote``, and count the same failures.

The password travels only inside the dashboard's TLS connection and lives in memory only
until the hello has been answered. SQLite connections belong to the thread that opened
them, so every user-store access and the password KDF run on one worker thread, where the
store is opened (as ``roost.guard.aio.GuardServer`` does).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar, cast

from roost.clock import wall_ms_now
from roost.errors import RoostError, VerificationError
from roost.guard.challenge import (
    AuthConfig,
    LoginClient,
    LoginResult,
    LoginServer,
    LoginSteps,
    ServerHandshake,
)
from roost.guard.userstore import UserDirectory
from roost.reasons import Reason, RejectionCounter

__all__ = ["LoginAttempt", "WebLogin"]

_T = TypeVar("_T")
# Attempts between password and codes kept at once; the oldest is dropped past this.
_MAX_PENDING = 32


@dataclass(eq=False)
class LoginAttempt:
    """A login between its password step and its codes step."""

    attempt_id: str
    user_id: str
    labels: tuple[str, ...]
    client: LoginClient
    handshake: ServerHandshake
    deadline: float


class WebLogin:
    """Password then codes, through the guard's cores; ``start()`` opens the user store."""

    def __init__(
        self,
        open_directory: Callable[[], UserDirectory],
        config: AuthConfig | None = None,
        rejections: RejectionCounter | None = None,
    ) -> None:
        self.config = config or AuthConfig()
        self.rejections = rejections or RejectionCounter()
        self._open_directory = open_directory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-login")
        self._server: LoginServer | None = None
        self._pending: OrderedDict[str, LoginAttempt] = OrderedDict()
        self.logins_ok = 0
        self.logins_failed = 0

    async def start(self) -> None:
        """Open the user store on the login thread."""
        loop = asyncio.get_running_loop()
        directory = await loop.run_in_executor(self._executor, self._open_directory)
        self._server = LoginServer(directory, config=self.config, counter=self.rejections)

    def stop(self) -> None:
        """Drop pending attempts and stop the login thread."""
        self._pending.clear()
        self._executor.shutdown(wait=True)

    async def begin(self, user_id: str, password: str) -> LoginAttempt:
        """Check the password; return the attempt whose labels the page must ask for.

        Raises VerificationError (a wrong password, an unknown or locked-out user) with the
        guard's reason; the caller shows one message for all of them.
        """
        loop = asyncio.get_running_loop()
        if self._server is None:
            raise VerificationError("logins are not open", reason=Reason.NOT_RUNNING)
        client = LoginClient(user_id, password, config=self.config)
        handshake = self._server.handshake()
        now = loop.time()
        try:
            challenge = await self._run(
                handshake.hello_steps(client.hello(), now=now, wall_ms=wall_ms_now())
            )
            labels = client.receive_challenge(challenge)
        except RoostError:
            self.logins_failed += 1
            raise
        attempt = LoginAttempt(
            secrets.token_urlsafe(24),
            user_id,
            labels,
            client,
            handshake,
            now + self.config.challenge_ttl_s,
        )
        self._pending[attempt.attempt_id] = attempt
        while len(self._pending) > _MAX_PENDING:
            self._pending.popitem(last=False)
        return attempt

    def pending(self, attempt_id: str) -> LoginAttempt:
        """The open attempt ``attempt_id``; VerificationError (``no-login-attempt``) if none."""
        attempt = self._pending.get(attempt_id)
        if attempt is None or asyncio.get_running_loop().time() > attempt.deadline:
            self._pending.pop(attempt_id, None)
            raise VerificationError("no such login attempt", reason=Reason.NO_LOGIN_ATTEMPT)
        return attempt

    async def finish(self, attempt_id: str, codes: list[str]) -> LoginResult:
        """Check the codes of an attempt (single use: right or wrong, it is over)."""
        attempt = self.pending(attempt_id)
        del self._pending[attempt_id]
        loop = asyncio.get_running_loop()
        try:
            if len(codes) != len(attempt.labels):
                raise VerificationError("one code per label", reason=Reason.BAD_PROOF)
            proof = attempt.client.answer(codes)
            accept, _ = await self._run(
                attempt.handshake.proof_steps(proof, now=loop.time(), wall_ms=wall_ms_now())
            )
            result = attempt.client.receive_result(accept)
        except RoostError:
            self.logins_failed += 1
            raise
        self.logins_ok += 1
        return result

    async def _run(self, steps: LoginSteps[_T]) -> _T:
        # Each work item (store access, KDF) runs on the login thread; the cores' pure
        # steps run here on the event loop, as in the guard's stream adapter.
        loop = asyncio.get_running_loop()
        result: object = None
        try:
            while True:
                item = steps.send(result)
                result = await loop.run_in_executor(self._executor, item.run)
        except StopIteration as done:
            return cast(_T, done.value)
