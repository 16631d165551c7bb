"""The broker killed (SIGKILL) and restarted: the hub's agent registers again by itself and
`roost connect` succeeds afterwards (docs/testing.md, "Faults"); loopback processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.waits import scaled, wait_until
from tests.integration.test_connect import Site, _site, _summary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from _site(tmp_path)


def test_broker_killed_and_restarted_is_rejoined_and_connect_works(site: Site) -> None:
    assert site.broker is not None
    site.broker.kill()
    site.broker.wait(timeout=10)
    # While the broker is down a connect fails cleanly (unreachable), never hangs.
    down = site.connect(None, "--frames", "1", "--out", "down")
    assert down.returncode != 0 and "Traceback" not in down.stderr
    site.start_broker()
    # A fresh broker process knows no registration: the agent's next registration (its
    # interval, or its re-enrolment when the broker refuses the key) puts the hub back.
    # Re-enrolment backs off (5 s doubling up to 8×, ±20 %: docs/broker-scale.md), so the
    # bound leaves room for the longest wait plus a loaded machine.
    wait_until(
        lambda: ((site.broker_status() or {}).get("counters", {}).get("registrations", 0)) >= 1,
        scaled(120),
        what="the hub registered with the restarted broker",
    )
    summary = _summary(site.connect(None, "--frames", "2", "--out", "after"))
    assert summary["frames"] == 2
    assert summary["path"] in {"direct", "relay"}
