"""Dashboard sessions: the pure core behind the web app's cookie (docs/dashboard.md, "Login").

A session is opened only after a complete guard login (password, then challenge codes from
the owner's card, PROTOCOL.md section 6), run by ``roost.hub.weblogin`` through the guard's
own login cores. This module only keeps what a browser holds afterwards: a random token
(the cookie) and a CSRF token, with an idle and an absolute limit. The table keeps the
SHA-256 of each token, never the token itself, so a memory dump of the hub does not hand
out live cookies. Time is an argument (``now``, monotonic seconds); nothing here reads a
clock, a socket or a file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from roost.errors import VerificationError
from roost.reasons import Reason

__all__ = ["SessionTable", "WebSession", "WebSessionConfig"]

_TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class WebSessionConfig:
    """Limits of dashboard sessions (one frozen config per component, STYLE.md)."""

    # A session unused this long ends (the owner walked away from the screen).
    idle_s: float = 15 * 60.0
    # However busy, a session ends this long after its login: the card is asked again.
    absolute_s: float = 12 * 3600.0
    # Sessions kept at once; the least recently used goes first past the bound.
    max_sessions: int = 64
    cookie_name: str = "roost_session"


@dataclass(frozen=True, slots=True)
class WebSession:
    """One logged-in browser: who, the CSRF token its page sends back, and its times."""

    user_id: str
    csrf: str
    opened_at: float
    last_used: float


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


class SessionTable:
    """Open, check and close dashboard sessions; ``now`` is monotonic seconds."""

    def __init__(
        self,
        config: WebSessionConfig | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config or WebSessionConfig()
        self._random = random_bytes
        self._sessions: dict[bytes, WebSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, user_id: str, now: float) -> tuple[str, WebSession]:
        """A new session for ``user_id`` after a successful login: (cookie token, session)."""
        self.expire(now)
        while len(self._sessions) >= self.config.max_sessions:
            oldest = min(self._sessions, key=lambda key: self._sessions[key].last_used)
            del self._sessions[oldest]
        token = self._random(_TOKEN_BYTES).hex()
        session = WebSession(user_id, self._random(_TOKEN_BYTES).hex(), now, now)
        self._sessions[_digest(token)] = session
        return token, session

    def check(self, token: str | None, now: float) -> WebSession:
        """The session ``token`` names, its idle timer restarted; raises VerificationError
        (``no-session``, ``session-idle-expired``,
        ``session-lifetime-expired``) otherwise."""
        if not token:
            raise VerificationError("no session cookie", reason=Reason.NO_SESSION)
        key = _digest(token)
        session = self._sessions.get(key)
        if session is None:
            raise VerificationError("unknown session", reason=Reason.NO_SESSION)
        if now - session.opened_at > self.config.absolute_s:
            del self._sessions[key]
            raise VerificationError("session too old", reason=Reason.SESSION_LIFETIME_EXPIRED)
        if now - session.last_used > self.config.idle_s:
            del self._sessions[key]
            raise VerificationError("session idle too long", reason=Reason.SESSION_IDLE_EXPIRED)
        session = replace(session, last_used=now)
        self._sessions[key] = session
        return session

    def alive(self, token: str | None, now: float) -> bool:
        """Whether ``token`` names a session within its limits, without using it (a push
        stream that stays open does not keep an idle session alive)."""
        session = self._sessions.get(_digest(token)) if token else None
        return session is not None and not self._expired(session, now)

    def check_csrf(self, session: WebSession, offered: str | None) -> None:
        """Raise VerificationError (``bad-csrf``) unless ``offered`` is the session's token."""
        if not offered or not hmac.compare_digest(offered.encode(), session.csrf.encode()):
            raise VerificationError("CSRF token missing or wrong", reason=Reason.BAD_CSRF)

    def close(self, token: str | None) -> None:
        """End the session ``token`` names (logout); unknown tokens are ignored."""
        if token:
            self._sessions.pop(_digest(token), None)

    def expire(self, now: float) -> int:
        """Drop every expired session; returns how many went."""
        gone = [key for key, session in self._sessions.items() if self._expired(session, now)]
        for key in gone:
            del self._sessions[key]
        return len(gone)

    def _expired(self, session: WebSession, now: float) -> bool:
        return (
            now - session.last_used > self.config.idle_s
            or now - session.opened_at > self.config.absolute_s
        )
