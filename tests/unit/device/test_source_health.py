"""The camera source's health core under a fake clock: open, stall, fail, back off, recover."""

from __future__ import annotations

import random

import pytest

from roost.device.source_health import (
    CloseSource,
    HealthChanged,
    OpenSource,
    SourceEvent,
    SourceHealth,
    SourceHealthConfig,
    SourceState,
)
from roost.errors import ConfigError
from roost.reasons import Reason

# No jitter: the waits are exact, so every deadline below is the documented one.
EXACT = SourceHealthConfig(
    retry_initial=0.5, retry_max=4.0, retry_jitter=(1.0, 1.0), stall_timeout=3.0, stable_after=10.0
)


def _events(core: SourceHealth) -> list[SourceEvent]:
    out = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


def _started(config: SourceHealthConfig = EXACT) -> SourceHealth:
    core = SourceHealth(config, random.Random(7))
    core.start(100.0)
    assert _events(core) == [OpenSource(1)]
    return core


def test_first_frame_makes_the_source_ok_and_arms_the_stall_deadline() -> None:
    core = _started()
    assert core.state is SourceState.STARTING and core.get_timer() == 103.0
    core.frame_received(1, 101.0)
    assert _events(core) == [HealthChanged(SourceState.OK, None)]
    assert core.get_timer() == 104.0
    view = core.view()
    assert (view.frames, view.last_frame_at, view.since, view.retries) == (1, 101.0, 101.0, 0)


def test_failures_back_off_doubling_up_to_the_maximum_then_recover() -> None:
    core = _started()
    now = 100.0
    waits = []
    for attempt in range(1, 7):
        core.attempt_failed(attempt, Reason.SOURCE_UNAVAILABLE, now)
        events = _events(core)
        assert events == (
            [HealthChanged(SourceState.FAILING, "source-unavailable")] if attempt == 1 else []
        )
        retry_at = core.get_timer()
        assert retry_at is not None
        waits.append(retry_at - now)
        core.handle_timer(retry_at - 0.001)
        assert _events(core) == []  # not due yet
        now = retry_at
        core.handle_timer(now)
        assert _events(core) == [OpenSource(attempt + 1)]
        assert core.state is SourceState.FAILING
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    view = core.view()
    assert view.retries == 6 and view.failures == {"source-unavailable": 6}
    assert view.since == 100.0  # failing since the first failure, not the last
    core.frame_received(7, now + 0.2)
    assert _events(core) == [HealthChanged(SourceState.OK, None)]
    assert core.view().since == now + 0.2


def test_a_silent_attempt_is_abandoned_as_stalled() -> None:
    core = _started()
    core.frame_received(1, 101.0)
    _events(core)
    core.frame_received(1, 102.5)  # each frame pushes the deadline
    core.handle_timer(105.4)
    assert _events(core) == []
    core.handle_timer(105.5)
    assert _events(core) == [
        CloseSource(1, "source-stalled"),
        HealthChanged(SourceState.FAILING, "source-stalled"),
    ]
    assert core.get_timer() == 106.0  # the first retry


def test_an_attempt_that_never_delivers_stalls_too() -> None:
    core = _started()
    core.handle_timer(103.0)
    assert [type(e) for e in _events(core)] == [CloseSource, HealthChanged]
    assert core.view().reason == "source-stalled"


def test_late_reports_of_an_abandoned_attempt_are_ignored() -> None:
    core = _started()
    core.handle_timer(103.0)  # attempt 1 stalls and is abandoned
    _events(core)
    core.handle_timer(103.5)
    assert _events(core) == [OpenSource(2)]
    core.frame_received(1, 103.6)  # the old thread's last frame
    core.attempt_failed(1, Reason.SOURCE_LOST, 103.7)
    assert _events(core) == [] and core.state is SourceState.FAILING
    assert core.view().failures == {"source-stalled": 1}


def test_the_back_off_resets_only_after_frames_flowed_for_stable_after() -> None:
    core = _started()
    core.attempt_failed(1, Reason.SOURCE_LOST, 100.0)
    core.handle_timer(100.5)
    core.frame_received(2, 101.0)
    core.attempt_failed(2, Reason.SOURCE_LOST, 101.5)  # flapping: one frame, then gone
    assert core.get_timer() == pytest.approx(102.5)  # 1.0 s, not back to 0.5
    core.handle_timer(102.5)
    core.frame_received(3, 103.0)
    for t in (105.0, 107.0, 109.0, 111.0, 113.0):
        core.frame_received(3, t)
    core.attempt_failed(3, Reason.SOURCE_LOST, 113.5)
    assert core.get_timer() == pytest.approx(114.0)  # stable for 10 s: reset to 0.5


def test_jitter_stays_within_its_bounds() -> None:
    config = SourceHealthConfig(retry_initial=1.0, retry_max=1.0, retry_jitter=(0.8, 1.2))
    core = SourceHealth(config, random.Random(3))
    core.start(0.0)
    now = 0.0
    for attempt in range(1, 50):
        core.attempt_failed(attempt, Reason.SOURCE_LOST, now)
        retry_at = core.get_timer()
        assert retry_at is not None and 0.8 <= retry_at - now <= 1.2
        now = retry_at
        core.handle_timer(now)


def test_stop_closes_the_open_attempt_and_ends_every_decision() -> None:
    core = _started()
    core.stop()
    assert _events(core) == [
        CloseSource(1, "not-running"),
        HealthChanged(SourceState.STOPPED, None),
    ]
    assert core.get_timer() is None and core.view().reason is None
    core.frame_received(1, 101.0)
    core.handle_timer(200.0)
    assert _events(core) == [] and core.state is SourceState.STOPPED


@pytest.mark.parametrize(
    "arguments",
    [
        {"retry_initial": -1.0},
        {"retry_initial": 5.0, "retry_max": 1.0},
        {"stall_timeout": 0.0},
        {"retry_jitter": (0.0, 1.0)},
        {"retry_max": float("inf")},
    ],
)
def test_invalid_timers_are_config_errors(arguments: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SourceHealthConfig(**arguments)  # type: ignore[arg-type]
