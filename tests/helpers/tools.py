"""External tools and privileges some tests need, and the one rule for when they are missing.

A test that needs a real program (openssl, curl, chromium, redis, coturn, ffmpeg) is marked
``real``; one that needs root and network namespaces is marked ``netns``. When the need is
not met the test skips with the reason, except under ``CI=true``: there every test must run,
so `tests/conftest.py` turns the skip of a ``real`` or ``netns`` test into a failure
(`ci_forbids_skip`).
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["CI_MARKERS", "ci_forbids_skip", "in_ci", "require_netns", "require_tool"]

# The markers whose needs CI must provide (registered in pyproject.toml).
CI_MARKERS = ("real", "netns")


def in_ci() -> bool:
    """True when the run is the project's CI (``CI=true``), where nothing may be skipped."""
    return os.environ.get("CI") == "true"


def ci_forbids_skip(marker_names: set[str]) -> bool:
    """Whether a skip of a test carrying these markers must count as a failure."""
    return in_ci() and any(name in marker_names for name in CI_MARKERS)


def require_tool(name: str, *alternatives: str) -> str:
    """The path of the first of `name`, `alternatives` on PATH, or skip the test."""
    for candidate in (name, *alternatives):
        path = shutil.which(candidate)
        if path is not None:
            return path
    pytest.skip(f"{name} is not installed; this test needs the real tool (make system-deps)")


def require_netns() -> None:
    """Skip the test unless this process can create network namespaces."""
    # Imported here so a collection that never runs a namespace test does not need it.
    from tests.helpers.netns import netns_available

    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
