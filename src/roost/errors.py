"""The one error tree of Roost (STYLE.md, "Data and errors").

Every rejection carries a short machine-readable ``reason`` that metrics count by, and a
human message for logs. Errors sent to a peer carry the reason only, never internal detail.
"""

from __future__ import annotations

__all__ = [
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "RoostError",
    "StateError",
    "TransportError",
    "VerificationError",
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
