"""A real `roost ca roll` killed with SIGKILL while it writes the new generation: the
authority stays consistent and the next roll succeeds (PROTOCOL.md section 2, persistence).

The kill points come from watching the directory, not from hooks in the product: the
process is killed as soon as its staging directory appears, once it holds a given number
of entries, or once the renamed ``gen-N`` appears before authority.json lists it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from roost.cli.main import _register, cli
from roost.pki.authority import Authority
from tests.helpers.authority import generation_entries, recorded_generations_are_whole

_register()
AT = "2026-02-01T00:00:00"
# (staging entries to wait for, or None to wait for the unrecorded gen-N), in turn.
TRIGGERS: list[int | None] = [0, 1, 2, 3, 4, 5, None]
ATTEMPTS = 14
POLL_BUDGET = 60.0


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def _last_json(output: str) -> dict[str, object]:
    value = json.loads(output.strip().splitlines()[-1])
    assert isinstance(value, dict)
    return value


def _triggered(directory: Path, next_generation: int, trigger: int | None) -> bool:
    names = generation_entries(directory)
    if trigger is None:
        return f"gen-{next_generation}" in names
    for name in names:
        if name.startswith(f".gen-{next_generation}.tmp-"):
            try:
                return len(os.listdir(directory / name)) >= trigger
            except FileNotFoundError:
                return False  # Renamed into place between the two looks.
    return False


def _roll_and_kill(directory: Path, next_generation: int, trigger: int | None) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "roost", "ca", "roll", str(directory), "--at", AT],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + POLL_BUDGET
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if _triggered(directory, next_generation, trigger):
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _debris(directory: Path, authority: Authority) -> list[str]:
    recorded = {f"gen-{record.generation}" for record in authority.settings.generations}
    return [name for name in generation_entries(directory) if name not in recorded]


@pytest.mark.slow
def test_a_roll_killed_midway_leaves_a_consistent_authority(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    code, _ = _cli("ca", "init", str(directory), "--publish-url", "https://127.0.0.1:1/ca")
    assert code == 0
    interrupted = 0
    for attempt in range(ATTEMPTS):
        before = recorded_generations_are_whole(directory).settings.newest
        _roll_and_kill(directory, before + 1, TRIGGERS[attempt % len(TRIGGERS)])
        # Whatever the kill left, readers see whole generations only.
        authority = recorded_generations_are_whole(directory)
        assert authority.settings.newest in (before, before + 1)
        status = _last_json(_cli("ca", "status", str(directory), "--json")[1])
        assert status["newest"] == authority.settings.newest
        if authority.settings.newest == before and _debris(directory, authority):
            interrupted += 1
        # The next roll succeeds and clears the debris.
        code, out = _cli("ca", "roll", str(directory), "--at", AT)
        assert code == 0, out
        rolled = _last_json(out)["generation"]
        assert rolled == authority.settings.newest + 1
        after = recorded_generations_are_whole(directory)
        assert after.settings.newest == rolled and _debris(directory, after) == []
        code, out = _cli(
            "ca",
            "inspect",
            str(directory / f"gen-{rolled}" / "ca-info.bin"),
            "--prev",
            str(directory / f"gen-{rolled - 1}" / "ca-info.bin"),
            "--json",
        )
        assert code == 0 and _last_json(out)["valid_successor"] is True
    # The kills must have landed inside the write at least once, or nothing was tested.
    assert interrupted > 0
