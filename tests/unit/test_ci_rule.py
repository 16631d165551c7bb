"""The CI rule in tests/conftest.py: under CI=true a `real` or `netns` test may not skip."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

_ROOT = Path(__file__).resolve().parents[2]

_TESTS = """
import pytest

from tests.helpers.tools import require_tool


@pytest.mark.real
def test_needs_a_tool_nobody_has():
    require_tool("roost-no-such-tool-anywhere")


@pytest.mark.netns
def test_skips_in_a_fixture(unavailable):
    pass


def test_unmarked_may_skip():
    pytest.skip("not a real or netns test")


@pytest.mark.real
@pytest.mark.xfail(reason="an expected failure is not a skip")
def test_expected_failure():
    raise AssertionError


@pytest.fixture
def unavailable():
    pytest.skip("namespaces are not available")
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> object:
    pytester.makeconftest("from tests.conftest import pytest_runtest_makereport  # noqa: F401")
    pytester.makepyfile(test_rule=_TESTS)
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "markers =\n    real: r\n    netns: n\n"
    )
    monkeypatch.syspath_prepend(str(_ROOT))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest("-p", "no:cacheprovider")


def test_outside_ci_a_missing_tool_skips(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, None)
    result.assert_outcomes(skipped=3, xfailed=1)  # type: ignore[attr-defined]


def test_under_ci_a_real_or_netns_skip_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, "true")
    # The two marked skips fail (one in the test, one in its fixture); the unmarked test
    # still skips and the expected failure stays expected.
    result.assert_outcomes(failed=1, errors=1, skipped=1, xfailed=1)  # type: ignore[attr-defined]
    result.stdout.fnmatch_lines(["*CI=true requires this test to run*roost-no-such-tool*"])  # type: ignore[attr-defined]
