"""`roost user`: manage Guard users in the hub's state directory (PROTOCOL.md §6).

The card of response codes is printed exactly once, at ``add``; the store keeps only
salts and verifiers, so a lost card means ``add --replace`` with a new one.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from contextlib import closing
from pathlib import Path

import click

from roost.cli.common import RoostGroup, echo_json, fail_cleanly
from roost.cli.human import print_table, relative
from roost.errors import StateError
from roost.guard.card import format_card, generate_card
from roost.guard.suites import DEFAULT_PAIR_KDF, DEFAULT_PASSWORD_KDF, KdfParams
from roost.guard.userstore import SqliteUserStore, make_user
from roost.reasons import Reason

__all__ = ["user"]

_STATE = click.argument("state", type=click.Path(file_okay=False, path_type=Path))


def _open_store(state: Path) -> SqliteUserStore:
    """The hub's user store, refusing a path that is not a hub's state directory.

    A mistyped path must not silently become a new, empty user database: the directory has
    to exist and hold the hub's trust store (``trust/trust-store.json``, written by
    ``roost init``) or the user database already.
    """
    database = state / SqliteUserStore.FILENAME
    trust_store = state / "trust" / "trust-store.json"
    if not state.is_dir() or not (database.is_file() or trust_store.is_file()):
        raise StateError(
            f"{state} is not a hub's state directory (no {SqliteUserStore.FILENAME} and no"
            " trust/trust-store.json); give the hub config's state_dir, such as hub-1",
            reason=Reason.NOT_STATE_DIR,
        )
    return SqliteUserStore.in_state_dir(state)


def _read_password() -> str:
    """Twice from a terminal (hidden), or two matching lines from a pipe for scripts."""
    if sys.stdin.isatty():
        password: str = click.prompt(
            "Password", hide_input=True, confirmation_prompt=True, err=True
        )
    else:
        first = sys.stdin.readline().rstrip("\r\n")
        second = sys.stdin.readline().rstrip("\r\n")
        if first != second:
            raise click.ClickException("the two passwords on standard input differ")
        password = first
    if not password:
        raise click.ClickException("the password is empty")
    return password


@click.group(cls=RoostGroup)
def user() -> None:
    """Guard users: password plus a card of random response codes."""


@user.command("add")
@_STATE
@click.argument("user_id", metavar="USER")
@click.option("--replace", is_flag=True, help="Replace an existing user (new password, new card).")
@click.option("--pairs", default=20, show_default=True, type=click.IntRange(3, 99))
@click.option(
    "--card-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the card to this file (mode 0600) instead of printing it.",
)
@click.option(
    "--password-cost",
    default=DEFAULT_PASSWORD_KDF.log2_n,
    show_default=True,
    type=click.IntRange(1, KdfParams.MAX_LOG2_N),
    help="scrypt log2(N) for the password.",
)
@click.option(
    "--code-cost",
    default=DEFAULT_PAIR_KDF.log2_n,
    show_default=True,
    type=click.IntRange(1, KdfParams.MAX_LOG2_N),
    help="scrypt log2(N) for each response code.",
)
@fail_cleanly
def add(
    state: Path,
    user_id: str,
    replace: bool,
    pairs: int,
    card_file: Path | None,
    password_cost: int,
    code_cost: int,
) -> None:
    """Register USER: ask for the password twice, then issue and show the card once."""
    if not 1 <= len(user_id.encode("utf-8")) <= 64:
        raise click.BadParameter("user ids are 1 to 64 bytes", param_hint="USER")
    with closing(_open_store(state)) as store:
        if store.load(user_id) is not None and not replace:
            raise StateError(
                f"user {user_id!r} exists; use --replace to re-issue", reason=Reason.USER_EXISTS
            )
        password = _read_password()
        card = generate_card(pairs)
        record = make_user(
            user_id,
            password,
            card,
            password_kdf=KdfParams(password_cost),
            pair_kdf=KdfParams(code_cost),
        )
        store.add(record, replace_existing=replace)
    text = format_card(user_id, card)
    if card_file is None:
        click.echo(text, nl=False)
    else:
        fd = os.open(card_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        click.echo(f"user {user_id} added; card written to {card_file}")


@user.command("list")
@_STATE
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@fail_cleanly
def list_users(state: Path, as_json: bool) -> None:
    """Show users with their pair count, access counter, failures and lock-out."""
    with closing(_open_store(state)) as store:
        rows = store.list_users()
    now_ms = time.time_ns() // 1_000_000
    if as_json:
        echo_json(
            [
                {
                    "user": user_id,
                    "pairs": pair_count,
                    "counter": counter,
                    "failures": failures,
                    "locked_until": (
                        dt.datetime.fromtimestamp(locked / 1000, dt.UTC).isoformat()
                        if locked and locked > now_ms
                        else None
                    ),
                }
                for user_id, pair_count, counter, failures, locked in rows
            ]
        )
        return
    if not rows:
        click.echo(f"no users in {state} (add one with `roost user add {state} NAME`)")
        return
    table = []
    for user_id, pair_count, counter, failures, locked in rows:
        lock = relative(locked / 1000, now_ms / 1000) if locked and locked > now_ms else "-"
        table.append(
            (
                user_id,
                pair_count,
                counter,
                failures,
                f"locked, opens {lock}" if lock != "-" else "no",
            )
        )
    print_table(f"Users of {state}", ("user", "card pairs", "logins", "failures", "locked"), table)


@user.command("remove")
@_STATE
@click.argument("user_id", metavar="USER")
@fail_cleanly
def remove(state: Path, user_id: str) -> None:
    """Delete USER and all its verifiers."""
    with closing(_open_store(state)) as store:
        store.remove(user_id)
    click.echo(f"user {user_id} removed")


@user.command("reset-counter")
@_STATE
@click.argument("user_id", metavar="USER")
@fail_cleanly
def reset_counter(state: Path, user_id: str) -> None:
    """Clear USER's failure counter and lock-out (the access counter only moves forward)."""
    with closing(_open_store(state)) as store:
        store.reset_failures(user_id)
    click.echo(f"user {user_id}: failures cleared")
