"""Shared CLI plumbing: time options, JSON output, and the one way a command fails
(roost.cli.exitcodes: one line on standard error, the exit code of the error's class)."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from roost.cli.exitcodes import ExitCode, debugging_requested, failure_line

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "DEBUG_META",
    "Failure",
    "RoostGroup",
    "as_failure",
    "at_option",
    "console",
    "echo_json",
    "fail_cleanly",
    "fail_with",
    "failing_cleanly",
    "now_utc",
    "parse_at",
]

# Where the root group's --debug flag is kept (click's meta is shared by every context).
DEBUG_META = "roost.debug"

# Made on first use by ``__getattr__`` below; declared here for the type checker.
console: Console
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


class Failure(click.ClickException):
    """A command's end as one line on standard error, ``roost: <message>``, with its code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        # Click declares exit_code a class variable; each Failure carries its own.
        setattr(self, "exit_code", int(code))  # noqa: B010

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"roost: {self.format_message()}", file=file, err=file is None)


def _debugging() -> bool:
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().meta.get(DEBUG_META):
        return True
    return debugging_requested()


def as_failure(error: Exception, roost_errors: ExitCode | None = None) -> Failure:
    """The one line and exit code (roost.cli.exitcodes) for an error that ended a command;
    ``roost_errors`` overrides the code of every Roost error (a documented contract)."""
    message, code = failure_line(error, roost_errors, debugging=_debugging())
    return Failure(message, code)


# Click's own ways out: usage errors print the usage, ``Exit`` and ``Abort`` carry their
# code, ``EOFError`` becomes click's "Aborted!"; a Failure is already converted.
_PASS_THROUGH = (Failure, click.UsageError, click.exceptions.Exit, click.Abort, EOFError)


@contextlib.contextmanager
def failing_cleanly(roost_errors: ExitCode | None = None) -> Iterator[None]:
    """Turn whatever ends a command into a :class:`Failure`: one line, the mapped code."""
    try:
        yield
    except _PASS_THROUGH:
        raise
    except click.ClickException as error:
        # A command's own "cannot go on": the same line, and its code (1 unless it set one).
        raise Failure(error.format_message(), error.exit_code) from error
    except Exception as error:
        if _debugging():
            traceback.print_exception(error, file=sys.stderr)
        raise as_failure(error, roost_errors) from error


def fail_cleanly(func: Callable[P, R]) -> Callable[P, R]:
    """Report whatever ends the command as one clear line with its mapped exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with failing_cleanly():
            return func(*args, **kwargs)

    return wrapper


def fail_with(code: ExitCode) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Like :func:`fail_cleanly`, but every Roost error exits ``code``: for a command whose
    documented contract predates the table (`roost trust update`: 1 on any error)."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with failing_cleanly(roost_errors=code):
                return func(*args, **kwargs)

        return wrapper

    return decorate


class RoostGroup(click.Group):
    """A command group whose every command goes through :func:`failing_cleanly`, so no
    command can end in a traceback even if it forgot the decorator."""

    group_class = type

    def invoke(self, ctx: click.Context) -> Any:
        with failing_cleanly():
            return super().invoke(ctx)


@functools.cache
def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def __getattr__(name: str) -> Console:
    # ``console`` (rich) is made on first use: only the demo prints with it, and a device
    # agent should not load rich to never print (docs/BENCHMARKS.md, "Soak and footprint").
    if name == "console":
        return _console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
