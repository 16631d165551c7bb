"""Dashboard sessions (pure core): tokens, CSRF, idle and absolute limits, the bound."""

from __future__ import annotations

import itertools

import pytest

from roost.errors import VerificationError
from roost.hub.websession import SessionTable, WebSessionConfig
from roost.reasons import Reason


def _table(**limits: float) -> SessionTable:
    counter = itertools.count()
    # Deterministic "random" bytes: each draw differs, so tokens and CSRF tokens differ.
    return SessionTable(
        WebSessionConfig(**limits),  # type: ignore[arg-type]
        random_bytes=lambda n: next(counter).to_bytes(n, "big"),
    )


def _reason(table: SessionTable, token: str | None, now: float) -> str:
    with pytest.raises(VerificationError) as refused:
        table.check(token, now)
    return refused.value.reason


def test_a_session_is_found_by_its_token_and_names_its_user() -> None:
    table = _table()
    token, session = table.open("owner", 100.0)
    assert len(token) == 64 and session.csrf != token
    assert table.check(token, 101.0).user_id == "owner"
    assert _reason(table, None, 101.0) == Reason.NO_SESSION
    assert _reason(table, "", 101.0) == Reason.NO_SESSION
    assert _reason(table, token[:-1] + "f", 101.0) == Reason.NO_SESSION


def test_the_table_keeps_no_token_in_the_clear() -> None:
    table = _table()
    token, session = table.open("owner", 0.0)
    kept = repr(table.__dict__)
    assert token not in kept
    assert session.csrf in kept  # the CSRF token is no credential on its own


def test_use_restarts_the_idle_limit_but_not_the_absolute_one() -> None:
    table = _table(idle_s=10.0, absolute_s=25.0)
    token, _ = table.open("owner", 0.0)
    for now in (9.0, 18.0, 24.0):
        table.check(token, now)
    assert _reason(table, token, 26.0) == Reason.SESSION_LIFETIME_EXPIRED
    assert _reason(table, token, 27.0) == Reason.NO_SESSION  # gone for good


def test_an_idle_session_ends() -> None:
    table = _table(idle_s=10.0)
    token, _ = table.open("owner", 0.0)
    assert table.alive(token, 10.0)
    assert not table.alive(token, 10.5)
    assert _reason(table, token, 10.5) == Reason.SESSION_IDLE_EXPIRED


def test_alive_does_not_keep_a_session_from_idling_out() -> None:
    table = _table(idle_s=10.0)
    token, _ = table.open("owner", 0.0)
    for now in (5.0, 9.0):
        assert table.alive(token, now)
    assert not table.alive(token, 11.0)


def test_the_csrf_token_must_match_exactly() -> None:
    table = _table()
    _, session = table.open("owner", 0.0)
    table.check_csrf(session, session.csrf)
    for offered in (None, "", session.csrf[:-1], session.csrf.upper() + "x"):
        with pytest.raises(VerificationError) as refused:
            table.check_csrf(session, offered)
        assert refused.value.reason == Reason.BAD_CSRF


def test_logout_ends_the_session() -> None:
    table = _table()
    token, _ = table.open("owner", 0.0)
    table.close(token)
    table.close(token)  # twice is harmless
    table.close(None)
    assert _reason(table, token, 1.0) == Reason.NO_SESSION


def test_past_the_bound_the_least_recently_used_session_goes() -> None:
    table = _table(max_sessions=3)
    tokens = [table.open(f"u{i}", float(i))[0] for i in range(3)]
    table.check(tokens[0], 5.0)  # u0 used last; u1 is now the least recently used
    newest, _ = table.open("u3", 6.0)
    assert len(table) == 3
    assert _reason(table, tokens[1], 7.0) == Reason.NO_SESSION
    for token in (tokens[0], tokens[2], newest):
        table.check(token, 7.0)


def test_expire_drops_every_session_past_a_limit() -> None:
    table = _table(idle_s=10.0)
    table.open("a", 0.0)
    keep, _ = table.open("b", 8.0)
    assert table.expire(15.0) == 1
    assert len(table) == 1 and table.check(keep, 15.0).user_id == "b"
