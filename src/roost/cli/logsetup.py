"""How every daemon logs: the standard `logging` module, to standard error, one line per
meaningful event (docs/operating.md, "Logs").

``--log-level`` (default ``info``) and ``--log-format text|json`` (also ``ROOST_LOG_LEVEL``
and ``ROOST_LOG_FORMAT``, handy under systemd) are the same on `roost hub run`, `roost
device run`, `roost broker run` and `roost ca serve`. At ``info`` a quiet home logs its
start, its listeners, devices arriving and leaving, elections, redirects, failovers, trust
changes, remote logins and refusals (each refusal once per source per interval,
roost.reasons.RejectionCounter); libraries log only their warnings. A line carries an
``event`` name when it is one of those events (``extra={"event": "listening"}``), which
the JSON format puts in its own field. Nothing secret is logged: no key, password, token
or frame, only identifiers, addresses, reasons and counts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["LEVELS", "JsonFormatter", "configure_logging", "log_options"]

P = ParamSpec("P")
R = TypeVar("R")

LEVELS = ("debug", "info", "warning", "error")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries whose INFO lines are not the operator's business (aiohttp's access log is off).
_QUIET = ("asyncio", "aiohttp", "aioquic", "quic")
# Attributes every LogRecord has; anything else was passed through ``extra``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``event``, ``message``, and
    the fields given through ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None),
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in doc:
                doc[name] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(doc, sort_keys=False)


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(fmt=_TEXT_FORMAT)

    def formatException(self, ei: object) -> str:
        # One line per event: a traceback only with --log-level debug.
        text = super().formatException(ei)  # type: ignore[arg-type]
        if logging.getLogger("roost").isEnabledFor(logging.DEBUG):
            return text
        return "  " + text.splitlines()[-1]


def configure_logging(level: str = "info", fmt: str = "text", *, verbose: bool = False) -> None:
    """Send every log line to standard error in ``fmt`` at ``level`` (replacing any
    earlier set-up, so a test or a second call gets what it asked for). ``verbose`` is the
    older ``-v``: at least ``info``, which is now the default anyway."""
    if verbose and level not in ("debug", "info"):
        level = "info"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper())
    root.setLevel(numeric)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def log_options(func: Callable[P, R]) -> Callable[P, R]:
    """``--log-level``, ``--log-format`` and the older ``-v`` (same as the default, info)."""
    # Imported here: `roost device run` configures logging without click (roost.cli.daemons).
    import click

    func = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        envvar="ROOST_LOG_FORMAT",
        help="Log lines as text or as one JSON object each.",
    )(func)
    func = click.option(
        "--log-level",
        type=click.Choice(LEVELS),
        default="info",
        show_default=True,
        envvar="ROOST_LOG_LEVEL",
        help="Least important level logged (to standard error).",
    )(func)
    return click.option("-v", "--verbose", is_flag=True, hidden=True)(func)
