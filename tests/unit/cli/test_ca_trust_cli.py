"""`roost ca` and `roost trust` as an operator uses them: JSON out, clear errors, no loss."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from roost.cli.exitcodes import ExitCode
from roost.cli.main import _register, cli

_register()
AT = "2026-02-01T00:00:00"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def last_json(output: str) -> dict[str, object]:
    value = json.loads(output.strip().splitlines()[-1])
    assert isinstance(value, dict)
    return value


def test_init_issue_roll_activate_status(tmp_path: Path) -> None:
    ca = str(tmp_path / "ca")
    code, out = run("ca", "init", ca, "--publish-url", "https://127.0.0.1:1/ca", "--at", AT)
    assert code == 0 and last_json(out)["next_url"] == "https://127.0.0.1:1/ca/2.rcai"
    code, out = run(
        "ca", "issue", ca, "--role", "hub", "--out", str(tmp_path / "h"), "--ip", "127.0.0.1"
    )
    doc = last_json(out)
    assert code == 0 and str(doc["id"]).startswith("hcsp:") and doc["generation"] == 1
    assert {p.name for p in (tmp_path / "h").iterdir()} == {"cert.pem", "key.pem", "ca-info.bin"}
    code, out = run("ca", "issue", ca, "--role", "device", "--out", str(tmp_path / "d"))
    assert code == 0 and str(last_json(out)["id"]).startswith("ab:")
    code, out = run("ca", "roll", ca, "--at", AT)
    assert code == 0 and last_json(out) == {
        "generation": 2,
        "next_url": "https://127.0.0.1:1/ca/3.rcai",
        "revokes_previous": False,
        "active": 1,
    }
    assert last_json(run("ca", "activate", ca)[1]) == {"active": 2}
    status = last_json(run("ca", "status", ca, "--json")[1])
    assert status["active"] == 2 and status["issued"] == 3  # hub, device, download server
    code, out = run(
        "ca",
        "inspect",
        str(tmp_path / "ca/gen-2/ca-info.bin"),
        "--prev",
        str(tmp_path / "ca/gen-1/ca-info.bin"),
        "--json",
    )
    assert code == 0 and last_json(out)["valid_successor"] is True


def test_wrong_input_gets_clear_errors_and_loses_nothing(tmp_path: Path) -> None:
    ca = str(tmp_path / "ca")
    assert run("ca", "status", ca)[0] == ExitCode.STATE
    assert run("ca", "init", ca, "--publish-url", "https://h/")[0] == 0
    code, out = run("ca", "init", ca, "--publish-url", "https://h/")
    assert code == ExitCode.STATE and "already holds an authority" in out
    code, out = run("ca", "issue", ca, "--role", "toaster", "--out", str(tmp_path / "x"))
    assert code == 2 and "toaster" in out
    code, out = run("ca", "issue", ca, "--role", "broker", "--out", str(tmp_path / "b"))
    assert code == 2 and "DNS or IP" in out
    out_dir = str(tmp_path / "hub")
    assert run("ca", "issue", ca, "--role", "hub", "--out", out_dir)[0] == 0
    before = (tmp_path / "hub" / "key.pem").read_bytes()
    code, out = run("ca", "issue", ca, "--role", "hub", "--out", out_dir)
    assert code == ExitCode.STATE and "refusing to overwrite" in out
    assert (tmp_path / "hub" / "key.pem").read_bytes() == before
    (tmp_path / "ca" / "authority.json").write_text("{broken")
    code, out = run("ca", "roll", ca)
    assert code == ExitCode.STATE and "corrupt" in out


def test_trust_init_status_check(tmp_path: Path) -> None:
    ca = str(tmp_path / "ca")
    run("ca", "init", ca, "--publish-url", "https://127.0.0.1:1/ca/", "--at", AT)
    run("ca", "issue", ca, "--role", "hub", "--out", str(tmp_path / "h"), "--ip", "127.0.0.1")
    state = str(tmp_path / "dev")
    code, out = run(
        "trust", "init", state, "--ca-info", str(tmp_path / "h" / "ca-info.bin"), "--json"
    )
    assert code == 0 and last_json(out)["current"] == 1
    again = run("trust", "init", state, "--ca-info", str(tmp_path / "h" / "ca-info.bin"))
    assert again[0] == ExitCode.STATE
    code, out = run(
        "trust", "check", state, "--cert", str(tmp_path / "h" / "cert.pem"), "--no-fetch", "--json"
    )
    doc = last_json(out)
    assert code == 0 and doc["verified_by"] == "current" and doc["generation"] == 1
    # A certificate from a self-made CA fails verification and the store is unchanged.
    rogue = str(tmp_path / "rogue")
    run("ca", "init", rogue, "--publish-url", "https://127.0.0.1:1/ca/")
    run("ca", "issue", rogue, "--role", "hub", "--out", str(tmp_path / "r"), "--ip", "127.0.0.1")
    code, out = run(
        "trust", "check", state, "--cert", str(tmp_path / "r" / "cert.pem"), "--no-fetch"
    )
    assert code == ExitCode.VERIFICATION and "does not verify" in out
    status = last_json(run("trust", "status", state, "--json")[1])
    assert status["current"] == 1 and status["prepared"] is None
