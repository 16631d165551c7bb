"""Every fuzz target for 10 seconds under atheris, two at a time: zero crashes (CI's run).

The long runs are ``bench/fuzz.py``'s (docs/testing.md, "Fuzzing"); this one keeps each
decoder's contract checked on every change, from the committed seeds outward.
"""

from __future__ import annotations

import concurrent.futures

import pytest

from tests.fuzz.runner import run_target, target_names

SECONDS_PER_TARGET = 10
PARALLEL = 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_target_fuzzes_for_ten_seconds_without_a_crash() -> None:
    names = target_names()
    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = list(
            pool.map(lambda name: run_target(name, runs=None, seconds=SECONDS_PER_TARGET), names)
        )
    crashed = [result for result in results if result.crashes]
    assert not crashed, "\n\n".join(f"{r.target}: {r.crash_files}\n{r.tail}" for r in crashed)
    for result in results:
        # A target that never got going (import error, bad flag) is a failure, not a pass.
        assert result.executions > 100, (result.target, result.tail)
        assert result.coverage_end > 0, (result.target, result.tail)
