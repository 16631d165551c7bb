"""Human output for status commands: tables with names, relative times, no ``None``.

Every status command prints this by default and its JSON document with ``--json`` (for
scripts). Times are shown relative to now ("3 s ago", "in 29 years") next to the date when
it matters; an absent value is "-", never ``None``; a millisecond epoch never reaches a
person.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

__all__ = ["absolute", "fingerprint", "print_fields", "print_table", "relative", "show"]

# Piped output is not cut at 80 columns: scripts and tests read whole rows.
_console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

_UNITS = (
    (365 * 86400, "year", "years"),
    (30 * 86400, "month", "months"),
    (86400, "day", "days"),
    (3600, "h", "h"),
    (60, "min", "min"),
    (1, "s", "s"),
)


def relative(then: dt.datetime | float | None, now: dt.datetime | float) -> str:
    """``then`` relative to ``now``: "3 s ago", "in 29 years", "now"; "-" when absent.

    Either both are datetimes or both are Unix seconds.
    """
    if then is None:
        return "-"
    if isinstance(then, dt.datetime) and isinstance(now, dt.datetime):
        seconds = (then - now).total_seconds()
    elif isinstance(then, (int, float)) and isinstance(now, (int, float)):
        seconds = float(then) - float(now)
    else:
        raise TypeError("relative() needs two datetimes or two Unix times")
    span = abs(seconds)
    if span < 1:
        return "now"
    for size, one, many in _UNITS:
        if span >= size:
            count = int(span // size)
            text = f"{count} {one if count == 1 else many}"
            return f"in {text}" if seconds > 0 else f"{text} ago"
    return "now"  # pragma: no cover - the loop always returns


def absolute(at: dt.datetime | None) -> str:
    """A date and time in UTC, to the minute; "-" when absent."""
    if at is None:
        return "-"
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def fingerprint(digest: bytes) -> str:
    """A SHA-256 digest the way a person compares it: 16 groups of 4 hex digits."""
    text = digest.hex().upper()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def show(value: object) -> str:
    """One cell: "-" for None or empty, yes/no for booleans, the text otherwise."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(show(v) for v in value)
    return str(value)


def print_table(
    title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]
) -> None:
    """A rich table on standard output (plain when not a terminal)."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(show(cell) for cell in row))
    _console.print(table)


def print_fields(title: str | None, fields: Iterable[tuple[str, object]]) -> None:
    """Aligned ``name: value`` lines under an optional title."""
    pairs = [(name, show(value)) for name, value in fields]
    if title:
        _console.print(title, markup=False)
    width = max((len(name) for name, _ in pairs), default=0)
    for name, value in pairs:
        _console.print(f"  {name:<{width}}  {value}", markup=False)
