"""Loopback helpers: free ports; the test time unit lives in `tests.helpers.waits`."""

from __future__ import annotations

import socket

from tests.helpers.tools import in_ci
from tests.helpers.waits import time_unit

__all__ = ["free_port", "require_in_ci", "time_unit"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_in_ci(what: str) -> str:
    """Reason string for a skip that is forbidden in CI (CI=true must run everything).

    Prefer marking the test ``real`` or ``netns`` and calling `tests.helpers.tools`; this
    stays for tests that skip for a reason no marker describes.
    """
    if in_ci():
        raise AssertionError(f"{what} is required in CI")
    return f"{what} is not available here"
