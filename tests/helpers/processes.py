"""Roost processes a test starts and stops itself, each writing to a log beside its config.

The command is this interpreter with `-m roost`, so a child runs the same source as the
test (the worktree on ``PYTHONPATH``), optionally inside a network namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers.waits import scaled

__all__ = ["end_process", "roost_command", "roost_succeeds", "run_roost", "stop_processes"]


def roost_command(*args: str, namespace: str | None = None) -> list[str]:
    """The command that runs `roost ARGS`, inside `namespace` when one is given."""
    command = [sys.executable, "-m", "roost", *args]
    return command if namespace is None else ["ip", "netns", "exec", namespace, *command]


def roost_succeeds(*args: str, stdin: str = "", timeout: float = 60) -> None:
    """Run `roost ARGS` to its end (`timeout` in units); fails the test with its stderr
    unless it exits 0."""
    done = subprocess.run(
        roost_command(*args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
    )
    assert done.returncode == 0, done.stderr


def run_roost(
    folder: Path, kind: str, name: str, *options: str, namespace: str | None = None
) -> subprocess.Popen[bytes]:
    """`roost KIND run --config FOLDER/NAME.toml OPTIONS`, its output in FOLDER/NAME.log."""
    with (folder / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            roost_command(
                kind, "run", "--config", str(folder / f"{name}.toml"), *options, namespace=namespace
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """Ask every process to end, then wait for each; one that does not end is killed."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=scaled(10))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def end_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Send `sig` and wait for the process to end; one that does not end is killed."""
    process.send_signal(sig)
    try:
        process.wait(timeout=scaled(10))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
