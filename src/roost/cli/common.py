"""Shared CLI plumbing: time options, JSON output, and turning our errors into exit codes."""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import click
from rich.console import Console

from roost.errors import RoostError

__all__ = ["at_option", "console", "echo_json", "fail_cleanly", "now_utc", "parse_at"]

console = Console(highlight=False)
P = ParamSpec("P")
R = TypeVar("R")


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def parse_at(value: str | None) -> dt.datetime:
    """`--at` as ISO-8601 (UTC when no zone is given), or the wall clock."""
    if value is None:
        return now_utc()
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def at_option(func: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "--at",
        "at",
        default=None,
        metavar="ISO-8601",
        help="Act as if the time were this (default: now).",
    )(func)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, sort_keys=False, default=str))


def fail_cleanly(func: Callable[P, R]) -> Callable[P, R]:
    """Report our errors as one clear line and exit 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except RoostError as exc:
            raise click.ClickException(f"{exc} [{exc.reason}]") from exc
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper
