"""Loopback helpers: free ports and the unit that scales every test timeout."""

from __future__ import annotations

import os
import socket


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def time_unit() -> float:
    """One timeout unit in seconds; ROOST_TEST_TIME_SCALE stretches it on slow machines."""
    return float(os.environ.get("ROOST_TEST_TIME_SCALE", "1")) * 1.0


def require_in_ci(what: str) -> str:
    """Reason string for a skip that is forbidden in CI (CI=true must run everything)."""
    if os.environ.get("CI") == "true":
        raise AssertionError(f"{what} is required in CI")
    return f"{what} is not available here"
