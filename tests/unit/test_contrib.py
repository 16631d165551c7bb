"""The systemd units in contrib/ and shell completion.

Each unit names a real `roost` command with options that exist, carries the hardening
options docs/OPERATIONS.md promises, and passes `systemd-analyze verify` when that tool is
installed (with `roost` replaced by an executable stub, since verify checks the binary).
Completion is click's own (`_ROOST_COMPLETE`), run as a real process.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from roost.cli.main import _register, cli

_register()
UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
    "RestrictSUIDSGID": "yes",
}


def unit_keys(path: Path) -> dict[str, list[str]]:
    """Every key of a unit file with all its values (systemd allows repeats)."""
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def services() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


def test_there_is_a_unit_for_each_daemon() -> None:
    names = {p.name for p in services()}
    assert {"roost-hub@.service", "roost-device@.service", "roost-broker.service"} <= names
    assert "roost-ca-serve.service" in names and (UNITS / "roost-ca-tick.timer").exists()


@pytest.mark.parametrize("unit", services(), ids=lambda p: p.name)
def test_units_are_hardened_and_run_real_commands(unit: Path) -> None:
    keys = unit_keys(unit)
    for key, value in HARDENING.items():
        assert keys.get(key) == [value], f"{unit.name}: {key}"
    (exec_start,) = keys["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/bin/roost"
    command: click.Command = cli
    words = argv[1:]
    ctx = click.Context(cli)
    while isinstance(command, click.Group):
        sub = command.get_command(ctx, words[0])
        assert sub is not None, f"{unit.name}: no command {words[0]!r}"
        command, words = sub, words[1:]
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for word in words:
        if word.startswith("--"):
            assert word in options, f"{unit.name}: {command.name} has no {word}"


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the units were parsed above")
    stub = tmp_path / "roost"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copies = []
    for unit in sorted(UNITS.iterdir()):
        copy = tmp_path / unit.name.replace("@.", "@test.")
        copy.write_text(unit.read_text().replace("/usr/bin/roost", str(stub)))
        copies.append(str(copy))
    done = subprocess.run(
        [analyze, "verify", "--man=no", *copies], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_bash_completion_lists_the_groups() -> None:
    env = {
        **os.environ,
        "_ROOST_COMPLETE": "bash_complete",
        "COMP_WORDS": "roost ",
        "COMP_CWORD": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "roost"], env=env, capture_output=True, text=True, timeout=60
    )
    words = {line.split(",", 1)[-1] for line in done.stdout.splitlines()}
    assert {"ca", "trust", "hub", "device", "user", "broker", "init"} <= words, done.stdout
    source = subprocess.run(
        [sys.executable, "-m", "roost"],
        env={**os.environ, "_ROOST_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "_ROOST_COMPLETE" in source.stdout and "complete " in source.stdout
