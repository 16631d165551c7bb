"""Every way a `roost` command fails ends in one line on stderr and its class's exit code
(docs/exit-codes.md), driven through the real command tree with click's runner."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from roost.cli.common import RoostGroup
from roost.cli.exitcodes import DESCRIPTIONS, ExitCode, exit_code_for
from roost.cli.main import _register, cli
from roost.config import to_toml
from roost.errors import (
    ConfigError,
    LocalProtocolError,
    RefusedError,
    RemoteProtocolError,
    RoostError,
    StateError,
    TransportError,
    VerificationError,
)
from roost.pki.truststore import STATE_FILE
from tests.helpers.net import free_port

_register()


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def one_line(result: Result) -> str:
    """The single stderr line a failure prints (and no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("roost: ") and "Traceback" not in result.output
    return lines[0]


def _hub_config(tmp_path: Path, **overrides: object) -> Path:
    doc: dict[str, object] = {
        "name": "hub-1",
        "state_dir": "hub-1",
        "cert": "hub-1/cert.pem",
        "key": "hub-1/key.pem",
        "listen": "127.0.0.1:1",
    }
    doc.update(overrides)
    path = tmp_path / "hub-1.toml"
    path.write_text(to_toml(doc))
    return path


def test_the_table_has_one_code_per_class_and_help_lists_them() -> None:
    assert len({int(code) for code in ExitCode}) == len(ExitCode)
    assert set(DESCRIPTIONS) == set(ExitCode)
    shown = run("--help")
    assert shown.exit_code == ExitCode.OK
    for code in ExitCode:
        assert f"{int(code):>2}  {DESCRIPTIONS[code]}" in shown.output


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("x"), ExitCode.CONFIG),
        (StateError("x"), ExitCode.STATE),
        (VerificationError("x", reason="chain"), ExitCode.VERIFICATION),
        (RefusedError("x", reason="busy"), ExitCode.REFUSED),
        # The peer's bare refusal is a refusal whatever class the client raised it as.
        (VerificationError("server refused the login", reason="refused"), ExitCode.REFUSED),
        (TransportError("hub closed the channel", reason="refused"), ExitCode.REFUSED),
        (TransportError("x", reason="connect"), ExitCode.UNREACHABLE),
        # roost connect: the broker's answers that need another remedy than a plain no.
        (RefusedError("wrong password", reason="bad-password"), ExitCode.REFUSED),
        (RefusedError("unknown hub", reason="unknown-target"), ExitCode.UNKNOWN_HUB),
        (RefusedError("hub offline", reason="target-offline"), ExitCode.HUB_OFFLINE),
        (RefusedError("hub offline", reason="wake-timeout"), ExitCode.HUB_OFFLINE),
        (RefusedError("relay limit", reason="relay-limit"), ExitCode.RELAY_LIMIT),
        (RefusedError("relay limit", reason="relay-expired"), ExitCode.RELAY_LIMIT),
        (RemoteProtocolError("x"), ExitCode.PROTOCOL),
        (LocalProtocolError("x"), ExitCode.PROTOCOL),
        (RoostError("x"), ExitCode.FAILED),
        (FileNotFoundError(2, "gone"), ExitCode.STATE),
        (PermissionError(13, "no"), ExitCode.STATE),
        (ConnectionRefusedError(111, "refused"), ExitCode.UNREACHABLE),
        (TimeoutError(), ExitCode.UNREACHABLE),
        (OSError(98, "Address already in use"), ExitCode.ADDRESS_IN_USE),
        (OSError(28, "No space left on device"), ExitCode.FAILED),
        (ZeroDivisionError(), ExitCode.INTERNAL),
        (KeyError("k"), ExitCode.INTERNAL),
    ],
)
def test_the_class_decides_the_code(error: BaseException, code: ExitCode) -> None:
    assert exit_code_for(error) is code


def test_every_group_maps_its_commands_errors() -> None:
    # A command cannot end in a traceback: every group routes through the one mapping.
    def groups(group: click.Group) -> list[click.Group]:
        found = [group]
        for command in group.commands.values():
            if isinstance(command, click.Group):
                found.extend(groups(command))
        return found

    every = groups(cli)
    assert len(every) >= 8 and all(isinstance(group, RoostGroup) for group in every)


def test_invalid_and_missing_configuration_is_the_configuration_code(tmp_path: Path) -> None:
    bad = _hub_config(tmp_path, announce={"hold_down": "soon"})
    result = run("hub", "status", "--config", str(bad))
    assert result.exit_code == ExitCode.CONFIG
    line = one_line(result)
    assert str(bad) in line and "announce.hold_down" in line and "[bad-config]" in line
    missing = run("hub", "status", "--config", str(tmp_path / "absent.toml"))
    assert missing.exit_code == ExitCode.CONFIG and "[missing]" in one_line(missing)


def test_a_corrupt_trust_store_is_the_state_code(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / STATE_FILE).write_text("{half a store")
    result = run("trust", "status", str(tmp_path / "dev"))
    assert result.exit_code == ExitCode.STATE and "[corrupt]" in one_line(result)
    # --debug (or ROOST_DEBUG=1) adds the traceback; the code stays the class's.
    debug = run("--debug", "trust", "status", str(tmp_path / "dev"))
    assert debug.exit_code == ExitCode.STATE and "Traceback" in debug.stderr
    by_env = run("trust", "status", str(tmp_path / "dev"), env={"ROOST_DEBUG": "1"})
    assert by_env.exit_code == ExitCode.STATE and "Traceback" in by_env.stderr


def test_a_corrupt_device_status_file_is_the_state_code(tmp_path: Path) -> None:
    config = tmp_path / "device-1.toml"
    config.write_text(
        to_toml({"state_dir": "device-1", "cert": "c.pem", "key": "k.pem", "name": "device-1"})
    )
    (tmp_path / "device-1").mkdir()
    (tmp_path / "device-1" / "status.json").write_text("[1, 2")
    result = run("device", "status", "--config", str(config))
    assert result.exit_code == ExitCode.STATE and "[corrupt]" in one_line(result)


def test_a_certificate_from_another_ca_is_the_verification_code(tmp_path: Path) -> None:
    for name in ("ca", "rogue"):
        assert run("ca", "init", str(tmp_path / name), "--publish-url", "https://h/").exit_code == 0
        issued = run(
            "ca", "issue", str(tmp_path / name), "--role", "hub", "--out", str(tmp_path / name[0])
        )
        assert issued.exit_code == ExitCode.OK, issued.output
    info = str(tmp_path / "c" / "ca-info.bin")
    assert run("trust", "init", str(tmp_path / "dev"), "--ca-info", info).exit_code == 0
    check = ("trust", "check", str(tmp_path / "dev"), "--no-fetch", "--cert")
    assert run(*check, str(tmp_path / "c" / "cert.pem")).exit_code == ExitCode.OK
    result = run(*check, str(tmp_path / "r" / "cert.pem"))
    assert result.exit_code == ExitCode.VERIFICATION and "does not verify" in one_line(result)


def test_trust_update_keeps_its_documented_codes(tmp_path: Path) -> None:
    # README: "0 stored, 3 not published, 1 error"; here nothing serves the CA information.
    ca = str(tmp_path / "ca")
    url = f"https://127.0.0.1:{free_port()}/ca/"
    assert run("ca", "init", ca, "--publish-url", url).exit_code == ExitCode.OK
    assert run("ca", "issue", ca, "--role", "device", "--out", str(tmp_path / "d")).exit_code == 0
    info = str(tmp_path / "d" / "ca-info.bin")
    assert run("trust", "init", str(tmp_path / "dev"), "--ca-info", info).exit_code == 0
    result = run("trust", "update", str(tmp_path / "dev"))
    assert result.exit_code == ExitCode.FAILED and "[fetch]" in one_line(result)


def test_a_hub_that_does_not_answer_is_the_unreachable_code(tmp_path: Path) -> None:
    config = _hub_config(tmp_path, api=f"127.0.0.1:{free_port()}")
    result = run("hub", "status", "--config", str(config))
    assert result.exit_code == ExitCode.UNREACHABLE
    assert "not answering" in one_line(result)


def test_bad_arguments_are_clicks_usage_code(tmp_path: Path) -> None:
    assert run("trust", "check", str(tmp_path)).exit_code == ExitCode.USAGE
    result = run("remote", "call", "no-port", "status", "--user", "u", "--trust", str(tmp_path))
    assert result.exit_code == ExitCode.USAGE and "HOST:PORT" in result.stderr


def _probe() -> RoostGroup:
    # A group of our own class with one command that hits a bug: the way any command would.
    @click.group(cls=RoostGroup)
    def probe() -> None:
        """Probe."""

    @probe.command()
    def divide() -> None:
        click.echo(str(1 // len("")))

    @probe.command()
    def stop() -> None:
        raise click.ClickException("cannot go on")

    return probe


def test_an_internal_error_is_one_line_without_traceback_unless_debugging() -> None:
    result = CliRunner().invoke(_probe(), ["divide"], env={"ROOST_DEBUG": ""})
    assert result.exit_code == ExitCode.INTERNAL
    line = one_line(result)
    assert "internal error: ZeroDivisionError" in line and "ROOST_DEBUG=1" in line
    debug = CliRunner().invoke(_probe(), ["divide"], env={"ROOST_DEBUG": "1"})
    assert debug.exit_code == ExitCode.INTERNAL and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("roost: internal error")


def test_a_commands_own_refusal_is_one_line_and_the_failed_code() -> None:
    result = CliRunner().invoke(_probe(), ["stop"])
    assert result.exit_code == ExitCode.FAILED and one_line(result) == "roost: cannot go on"


def test_failures_write_nothing_to_stdout(tmp_path: Path) -> None:
    result = run("hub", "status", "--config", str(tmp_path / "absent.toml"))
    assert result.exit_code == ExitCode.CONFIG and result.stdout == ""


def test_discover_refuses_an_interface_that_is_not_an_ipv4_address() -> None:
    # Rejected before any socket is opened: nothing is sent anywhere.
    result = run("discover", "--interface", "eth0", "--timeout", "0.5")
    assert result.exit_code == 2 and "--interface" in result.output
