"""`roost device run` without click (roost.cli.entry, roost.cli.daemons): which command
lines take the short way, and that it ends like the click command, with the same line and
exit code, without loading click."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roost.cli.daemons import device_run_arguments
from roost.cli.exitcodes import ExitCode


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["device", "run", "--config", "d.toml"], ("d.toml", "info", "text", False)),
        (["device", "run", "--config=d.toml", "-v"], ("d.toml", "info", "text", True)),
        (
            ["device", "run", "--log-level", "debug", "--config", "d.toml", "--log-format=json"],
            ("d.toml", "debug", "json", False),
        ),
        (
            ["device", "run", "--verbose", "--config", "x/y.toml"],
            ("x/y.toml", "info", "text", True),
        ),
    ],
)
def test_plain_device_run_lines_take_the_short_way(
    argv: list[str], expected: tuple[str, str, str, bool]
) -> None:
    found = device_run_arguments(argv)
    assert found is not None
    config, level, fmt, verbose = expected
    assert (found.config_file, found.log_level, found.log_format, found.verbose) == (
        Path(config),
        level,
        fmt,
        verbose,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["device", "run"],  # --config is required: click says so
        ["device", "run", "--config"],
        ["device", "run", "--config", "d.toml", "--help"],
        ["device", "run", "--config", "d.toml", "--log-level", "loud"],
        ["device", "run", "--config", "d.toml", "--log-format", "xml"],
        ["device", "run", "--config", "d.toml", "--colour"],
        ["device", "status", "--config", "d.toml"],
        ["hub", "run", "--config", "d.toml"],
        ["--debug", "device", "run", "--config", "d.toml"],
    ],
)
def test_anything_else_is_left_to_click(argv: list[str]) -> None:
    assert device_run_arguments(argv) is None


def test_the_environment_defaults_are_the_click_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_LOG_LEVEL", "warning")
    monkeypatch.setenv("ROOST_LOG_FORMAT", "json")
    found = device_run_arguments(["device", "run", "--config", "d.toml"])
    assert found is not None and (found.log_level, found.log_format) == ("warning", "json")
    monkeypatch.setenv("ROOST_LOG_LEVEL", "loud")
    assert device_run_arguments(["device", "run", "--config", "d.toml"]) is None


def _run(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60
    )


def test_a_failure_ends_with_the_click_commands_line_and_code(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    short = _run(
        "import sys; from roost.cli.entry import main; main()",
        "device", "run", "--config", missing,
    )  # fmt: skip
    through_click = _run(
        "from roost.cli.main import main; main()", "device", "run", "--config", missing
    )
    assert short.returncode == through_click.returncode == ExitCode.CONFIG
    assert short.stderr == through_click.stderr
    assert short.stderr.startswith("roost: ") and short.stderr.count("\n") == 1


def test_the_short_way_loads_no_click(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from roost.cli.entry import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as done:\n"
        "    print(done.code, 'click' in sys.modules)\n"
    )
    done = _run(probe, "device", "run", "--config", str(tmp_path / "missing.toml"))
    assert done.stdout.split() == [str(int(ExitCode.CONFIG)), "False"], done.stderr
