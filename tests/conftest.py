"""Suite-wide rules (docs/testing.md).

Under ``CI=true`` a test marked ``real`` or ``netns`` must run: if what it needs is missing
it skips everywhere else, but in CI that skip is reported as a failure, whichever way the
test skipped (a helper from `tests.helpers.tools`, `pytest.skip`, or a fixture).
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.helpers.tools import ci_forbids_skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    markers = {mark.name for mark in item.iter_markers()}
    if report.skipped and not hasattr(report, "wasxfail") and ci_forbids_skip(markers):
        longrepr = report.longrepr
        reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"CI=true requires this test to run, but it skipped: {reason}"
    return report
