"""STATE_DIR/run.json: what a running hub reports about the ports it bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roost.errors import StateError
from roost.hub.runfile import HubRunState, read_run_file, remove_run_file, write_run_file
from roost.reasons import Reason


def test_the_run_state_reads_back_with_and_without_a_remote_entrance() -> None:
    full = HubRunState(
        4242, ("127.0.0.1", 40001), ("127.0.0.1", 40001), ("::1", 40002), ("0.0.0.0", 40003)
    )
    doc = json.loads(full.to_json())
    assert doc == {
        "pid": 4242,
        "listen": "127.0.0.1:40001",
        "advertise": "127.0.0.1:40001",
        "api": "[::1]:40002",
        "remote": "0.0.0.0:40003",
        "dashboard": None,
    }
    assert HubRunState.from_json(full.to_json()) == full
    bare = HubRunState(7, ("127.0.0.1", 1), ("10.0.0.2", 2), ("127.0.0.1", 3))
    assert json.loads(bare.to_json())["remote"] is None
    assert HubRunState.from_json(bare.to_json()) == bare


def test_the_run_state_names_the_dashboard_url() -> None:
    state = HubRunState(
        9, ("127.0.0.1", 1), ("127.0.0.1", 1), ("127.0.0.1", 2), None, ("127.0.0.1", 8443)
    )
    assert json.loads(state.to_json())["dashboard"] == "https://127.0.0.1:8443/"
    assert HubRunState.from_json(state.to_json()) == state
    plain = HubRunState(9, ("::1", 1), ("::1", 1), ("::1", 2), None, ("::1", 80), "http")
    assert json.loads(plain.to_json())["dashboard"] == "http://[::1]:80/"
    assert HubRunState.from_json(plain.to_json()) == plain


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"listen": "127.0.0.1:1"}',
        b'{"pid": 1, "listen": "127.0.0.1:1", "advertise": "127.0.0.1:1", "api": 3}',
        b'{"pid": 1, "listen": "nowhere", "advertise": "127.0.0.1:1", "api": "127.0.0.1:2"}',
    ],
)
def test_anything_else_is_corrupt(data: bytes) -> None:
    with pytest.raises(StateError) as raised:
        HubRunState.from_json(data)
    assert raised.value.reason == Reason.CORRUPT


def test_written_read_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "hub" / "run.json"
    with pytest.raises(StateError) as raised:
        read_run_file(path)
    assert raised.value.reason == Reason.NOT_RUNNING
    state = HubRunState(1, ("127.0.0.1", 5), ("127.0.0.1", 5), ("127.0.0.1", 6))
    write_run_file(path, state)
    assert read_run_file(path) == state
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temporary left
    remove_run_file(path)
    assert not path.exists()
    remove_run_file(path)  # already gone: nothing to do
