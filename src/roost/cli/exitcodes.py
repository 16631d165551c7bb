"""The exit codes of the `roost` command, defined once (docs/exit-codes.md).

A script driving Roost needs to know what to do next without parsing English: fix the
configuration, repair or initialise state, investigate a trust failure, retry later. So the
class of the error decides the code, the same rule that decides whom a refusal blames
(roost.errors), and the error's ``reason`` is printed next to the message for the detail.
"""

from __future__ import annotations

import enum
import errno
import os
import socket
from collections.abc import Mapping

from roost.errors import (
    ConfigError,
    ProtocolError,
    RefusedError,
    RoostError,
    StateError,
    TransportError,
    VerificationError,
)
from roost.reasons import Reason

__all__ = [
    "DESCRIPTIONS",
    "ExitCode",
    "debugging_requested",
    "epilog",
    "exit_code_for",
    "failure_line",
]


class ExitCode(enum.IntEnum):
    """What a `roost` command's exit status means."""

    OK = 0
    # The command stopped and said why (its own check or the system's, not one of the
    # classes below), or a negative result a command documents as 1 (`roost log verify`).
    FAILED = 1
    # Click's own code for a bad option or argument.
    USAGE = 2
    # `roost trust update` only: the successor generation is not published yet.
    NOT_PUBLISHED = 3
    CONFIG = 4
    STATE = 5
    VERIFICATION = 6
    REFUSED = 7
    UNREACHABLE = 8
    PROTOCOL = 9
    INTERNAL = 10
    # `roost connect`: outcomes of a brokered connection the classes cannot tell apart.
    UNKNOWN_HUB = 11
    HUB_OFFLINE = 12
    RELAY_LIMIT = 13
    # A listener's address is taken (or not this machine's): another instance, or another
    # program, holds the port (docs/exit-codes.md).
    ADDRESS_IN_USE = 14


DESCRIPTIONS: Mapping[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the command failed and said why (roost log verify: receipt invalid)",
    ExitCode.USAGE: "bad option or argument (click)",
    ExitCode.NOT_PUBLISHED: "roost trust update: the next generation is not published yet",
    ExitCode.CONFIG: "invalid or missing configuration file (ConfigError)",
    ExitCode.STATE: "persisted state missing, corrupt or in the way (StateError)",
    ExitCode.VERIFICATION: "a trust check failed: certificate, CA, signature (VerificationError)",
    ExitCode.REFUSED: "the peer answered and refused, or a limit said no (RefusedError)",
    ExitCode.UNREACHABLE: "nothing answered: connect failed, reset, timed out (TransportError)",
    ExitCode.PROTOCOL: "bytes that break the wire or file format (ProtocolError)",
    ExitCode.INTERNAL: "a bug: any other exception (--debug or ROOST_DEBUG=1 for the traceback)",
    ExitCode.UNKNOWN_HUB: "roost connect: the broker knows no hub of that identifier",
    ExitCode.HUB_OFFLINE: "roost connect: the hub is not registered or did not answer its wake-up",
    ExitCode.RELAY_LIMIT: "roost connect: the broker's relay limit (sessions, bytes, time)",
    ExitCode.ADDRESS_IN_USE: "a daemon cannot listen: its address is in use or not this machine's",
}

# Refusals of the broker whose remedy differs from a plain "no" (issue 9, "Clear
# failures"): the reason decides before the class does.
_BY_REASON: Mapping[str, ExitCode] = {
    Reason.UNKNOWN_TARGET: ExitCode.UNKNOWN_HUB,
    Reason.TARGET_OFFLINE: ExitCode.HUB_OFFLINE,
    Reason.WAKE_TIMEOUT: ExitCode.HUB_OFFLINE,
    Reason.ANSWER_TIMEOUT: ExitCode.HUB_OFFLINE,
    Reason.ACCEPT_TIMEOUT: ExitCode.HUB_OFFLINE,
    Reason.RELAY_LIMIT: ExitCode.RELAY_LIMIT,
    Reason.RELAY_EXPIRED: ExitCode.RELAY_LIMIT,
    Reason.ADDRESS_IN_USE: ExitCode.ADDRESS_IN_USE,
}

# The error classes are siblings under RoostError, so the order only has to put nothing
# before a superclass of it.
_BY_CLASS: tuple[tuple[type[RoostError], ExitCode], ...] = (
    (ConfigError, ExitCode.CONFIG),
    (StateError, ExitCode.STATE),
    (VerificationError, ExitCode.VERIFICATION),
    (RefusedError, ExitCode.REFUSED),
    (TransportError, ExitCode.UNREACHABLE),
    (ProtocolError, ExitCode.PROTOCOL),
)

# Files the command needed and could not use: state that is missing or in the way.
_STATE_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
# The network gave no answer (a socket error our adapters did not wrap).
_UNREACHABLE_OS_ERRORS = (ConnectionError, TimeoutError, socket.gaierror)


def exit_code_for(error: BaseException) -> ExitCode:
    """The one mapping from an exception to the exit code of the command it ended."""
    if isinstance(error, RoostError):
        # A bare "refused" is the peer's whole answer (PROTOCOL.md section 6: a refused
        # login carries no detail), whichever class the client raised it as.
        if error.reason == Reason.REFUSED:
            return ExitCode.REFUSED
        by_reason = _BY_REASON.get(error.reason)
        if by_reason is not None:
            return by_reason
        for cls, code in _BY_CLASS:
            if isinstance(error, cls):
                return code
        return ExitCode.FAILED
    if isinstance(error, _STATE_OS_ERRORS):
        return ExitCode.STATE
    if isinstance(error, _UNREACHABLE_OS_ERRORS):
        return ExitCode.UNREACHABLE
    if isinstance(error, OSError) and error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        # A listener no adapter wrapped (roost.errors.listening) still gets its code.
        return ExitCode.ADDRESS_IN_USE
    if isinstance(error, OSError):
        # The system said why (address in use, disk full): not a bug, no better class.
        return ExitCode.FAILED
    return ExitCode.INTERNAL


def debugging_requested() -> bool:
    """ROOST_DEBUG is set (to anything but 0): a failing command prints its traceback."""
    return os.environ.get("ROOST_DEBUG", "") not in ("", "0")


def failure_line(
    error: Exception, roost_errors: ExitCode | None = None, *, debugging: bool = False
) -> tuple[str, ExitCode]:
    """The one line (after ``roost: ``) and the exit code for an error that ended a
    command; ``roost_errors`` overrides the code of every Roost error (a documented
    contract); ``debugging`` drops the hint that the traceback is one flag away."""
    code = exit_code_for(error)
    if isinstance(error, RoostError):
        return f"{error} [{error.reason}]", roost_errors if roost_errors is not None else code
    if code is ExitCode.INTERNAL:
        hint = "" if debugging else " (run with --debug or ROOST_DEBUG=1 for the traceback)"
        return f"internal error: {type(error).__name__}: {error}{hint}", code
    return str(error), code


def epilog() -> str:
    """The exit-code table for `roost --help` (click keeps ``\\b`` paragraphs unwrapped)."""
    rows = [f"  {int(code):>2}  {DESCRIPTIONS[code]}" for code in ExitCode]
    return "\b\nExit codes (docs/exit-codes.md):\n" + "\n".join(rows)
