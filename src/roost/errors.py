"""The one error tree of Roost (STYLE.md, "Data and errors").

Every rejection carries a short machine-readable ``reason`` (a member of
:class:`roost.reasons.Reason`, the catalogue in docs/architecture.md) that metrics count by,
and a human message for logs. Errors sent to a peer carry the reason only, never internal
detail.

Whose fault it is decides the class: ``RemoteProtocolError`` when the peer broke a wire rule,
``LocalProtocolError`` when we were asked to send something the protocol forbids,
``RefusedError`` when one of our limits turned well-formed work away, ``ConfigError`` when
the operator's configuration is invalid. Cores convert at their receive boundary (h11's
rule), so a decoder's error reaches the adapter already classified.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

__all__ = [
    "ConfigError",
    "LocalProtocolError",
    "ProtocolError",
    "RefusedError",
    "RemoteProtocolError",
    "RoostError",
    "StateError",
    "TransportError",
    "VerificationError",
    "as_remote",
    "listening",
    "peer_input",
]


class RoostError(Exception):
    """Base of every error Roost raises on purpose."""

    default_reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason


class ProtocolError(RoostError):
    """A wire rule was broken."""

    default_reason = "protocol"


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow."""

    default_reason = "local-protocol"


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that do not follow the protocol (malformed, oversized, truncated)."""

    default_reason = "malformed"


class VerificationError(RoostError):
    """Well-formed data that fails a trust check (signature, chain, generation, freshness)."""

    default_reason = "verification"


class TransportError(RoostError):
    """The network failed us (refused, reset, timed out, bad status)."""

    default_reason = "transport"


class StateError(RoostError):
    """Persisted state is missing, corrupt, or the requested change would lose data."""

    default_reason = "state"


class RefusedError(RoostError):
    """A limit of ours turned the work away (rate, capacity, busy): nobody broke a rule."""

    default_reason = "refused"


class ConfigError(RoostError):
    """The operator's configuration is invalid (type, range, unknown key, missing file)."""

    default_reason = "bad-config"


def as_remote(error: LocalProtocolError) -> RemoteProtocolError:
    """The same refusal, blamed on the peer (same reason and message)."""
    remote = RemoteProtocolError(str(error), reason=error.reason)
    remote.__cause__ = error
    return remote


@contextlib.contextmanager
def peer_input() -> Iterator[None]:
    """A core's receive boundary (h11's rule): while it handles the peer's bytes, a
    ``LocalProtocolError`` raised by a shared helper (a ``Writer`` re-encoding a field, a
    bound check) is the peer's fault and leaves as ``RemoteProtocolError``. Hot paths may
    write the same ``try``/``except LocalProtocolError: raise as_remote(...)`` inline."""
    try:
        yield
    except LocalProtocolError as error:
        raise as_remote(error) from error


# The errno values a listener's bind fails with when the address is taken or not ours.
_BIND_PROBLEMS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "address not available on this machine",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


@contextlib.contextmanager
def listening(what: str, host: str, port: int) -> Iterator[None]:
    """Bind ``what`` (a listener's name) at ``host:port``: a failed bind leaves as one
    :class:`TransportError` naming the address (reason ``address-in-use``, exit code 14)
    instead of the socket library's wording."""
    try:
        yield
    except OSError as exc:
        problem = _BIND_PROBLEMS.get(exc.errno or 0)
        if problem is None:
            raise
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise TransportError(
            f"cannot listen on {where} for the {what}: {problem}", reason="address-in-use"
        ) from exc
