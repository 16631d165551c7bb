"""Operating mistakes as a person makes them, through real `roost` processes.

Each mistake ends in one line on standard error (`roost: …` or click's usage error), the
documented exit code (docs/exit-codes.md), no traceback, and the state exactly as before
(a hash of the whole directory). Status commands print a human table by default and JSON
with --json.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from roost.cli.exitcodes import ExitCode
from roost.cli.home import free_loopback_ports
from roost.pki.authority import Authority
from roost.pki.cainfo import decode_cainfo
from roost.pki.trust import TrustState
from roost.pki.truststore import load_state, save_state

pytestmark = pytest.mark.slow

URL = "https://127.0.0.1:9/ca/"
T0 = "2026-01-01T00:00:00"


def roost(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roost", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    if not directory.exists():
        return "absent"
    for path in sorted(directory.rglob("*")):
        digest.update(str(path.relative_to(directory)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def assert_one_line_failure(done: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if code == ExitCode.USAGE:
        # A usage mistake is one line too, naming the command and where its help is.
        assert len(lines) == 1 and words in lines[0] and "--help" in lines[0], done.stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("roost: "), done.stderr
        assert words in lines[0], done.stderr


def assert_human(text: str) -> None:
    assert text.strip() and "None" not in text
    assert not re.search(r"\b1[0-9]{12}\b", text), text  # no millisecond epochs


@pytest.fixture
def authority(tmp_path: Path) -> Path:
    ca = tmp_path / "ca"
    assert roost("ca", "init", str(ca), "--publish-url", URL, "--at", T0).returncode == 0
    return ca


def test_tick_long_after_expiry_works_and_later_ticks_too(authority: Path) -> None:
    for at in ("2071-03-01T00:00:00", "2090-06-01T00:00:00"):
        done = roost("ca", "tick", str(authority), "--at", at, "--json")
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        json.loads(done.stdout)
        status = json.loads(roost("ca", "status", str(authority), "--json", "--at", at).stdout)
        assert status["problems"] == []
        issued = roost(
            "ca",
            "issue",
            str(authority),
            "--role",
            "hub",
            "--out",
            str(authority.parent / f"hub-{at[:4]}"),
            "--ip",
            "127.0.0.1",
            "--at",
            at,
        )
        assert issued.returncode == 0, issued.stderr


MISTAKES = [
    (("ca", "roll", "{ca}", "--at", "2050-01-01T00:00:00"), ExitCode.STATE, "expired"),
    (("ca", "tick", "{ca}", "--at", "9999-06-01T00:00:00"), ExitCode.STATE, "9999"),
    (("ca", "roll", "{ca}", "--rotate-dl-keys", "1", "--at", T0), ExitCode.STATE, "rotate"),
    (
        (
            "ca",
            "issue",
            "{ca}",
            "--role",
            "hub",
            "--out",
            "{tmp}/h",
            "--ip",
            "127.0.0.1",
            "--at",
            "2050-01-01T00:00:00",
        ),
        ExitCode.STATE,
        "expired",
    ),
    (("ca", "tick", "{ca}", "--at", "tomorrow"), ExitCode.USAGE, "ISO-8601"),
    (("init", "{tmp}/home", "--devices", "-1"), ExitCode.USAGE, "--devices"),
    (("init", "{tmp}/home", "--hubs", "0"), ExitCode.USAGE, "--hubs"),
    (("user", "add", "{tmp}/hub-1-typo", "owner"), ExitCode.STATE, "not a hub's state"),
    (("user", "list", "{tmp}/hub-1-typo"), ExitCode.STATE, "not a hub's state"),
]


def test_mistakes_are_one_line_with_their_code_and_change_nothing(
    authority: Path, tmp_path: Path
) -> None:
    for args, code, words in MISTAKES:
        before = tree_digest(tmp_path)
        argv = [a.format(ca=authority, tmp=tmp_path) for a in args]
        assert_one_line_failure(roost(*argv, stdin="pw\npw\n"), code, words)
        assert tree_digest(tmp_path) == before, argv


def test_repair_finishes_what_the_old_tick_left(authority: Path) -> None:
    (authority / ".gen-2.tmp-31337").mkdir()
    (authority / ".gen-2.tmp-31337" / "ca-key.pem").write_bytes(b"partial")
    (authority / "gen-5").mkdir()
    human = roost("ca", "status", str(authority))
    assert human.returncode == 0 and "roost ca repair" in human.stdout
    repaired = roost("ca", "repair", str(authority))
    assert repaired.returncode == 0 and "removed" in repaired.stdout, repaired.stderr
    assert not (authority / "gen-5").exists()
    assert json.loads(roost("ca", "repair", str(authority), "--json").stdout)["removed"] == []


def flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def test_trust_init_refuses_flipped_bytes_and_explains(authority: Path, tmp_path: Path) -> None:
    raw = (authority / "gen-1" / "ca-info.bin").read_bytes()
    info = decode_cainfo(raw)
    url = info.body.next_url.encode()
    url_at = raw.index(url)
    key_at = raw.index(info.body.dl_keys[0], url_at)
    cert_at = raw.index(info.body.ca_cert_der)
    places = {
        "signature": len(raw) - 5,
        "next_url path": url_at + len(url) - 2,
        "generation": 8,
    }
    # Every other field is flipped in-process by tests/unit/cli/test_trust_init_checks.py.
    assert key_at > url_at and cert_at > 0
    for what, offset in places.items():
        bad = tmp_path / f"bad-{what.replace(' ', '-')}.bin"
        bad.write_bytes(flipped(raw, offset))
        store = tmp_path / f"store-{what.replace(' ', '-')}"
        done = roost("trust", "init", str(store), "--ca-info", str(bad))
        assert done.returncode in (ExitCode.VERIFICATION, ExitCode.PROTOCOL), (what, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not (store / "trust-store.json").exists(), what
    good = roost(
        "trust",
        "init",
        str(tmp_path / "good"),
        "--ca-info",
        str(authority / "gen-1" / "ca-info.bin"),
    )
    assert good.returncode == 0 and "fingerprint" in good.stdout
    assert_human(good.stdout)
    status = json.loads(roost("ca", "status", str(authority), "--json").stdout)
    shown = re.sub(r"\s", "", good.stdout.split("fingerprint", 1)[1].splitlines()[0]).lower()
    assert shown == status["generations"][0]["fingerprint"]


def test_trust_check_after_revocation_names_the_generations(
    authority: Path, tmp_path: Path
) -> None:
    hub = tmp_path / "hub"
    assert (
        roost(
            "ca",
            "issue",
            str(authority),
            "--role",
            "hub",
            "--out",
            str(hub),
            "--ip",
            "127.0.0.1",
            "--at",
            T0,
        ).returncode
        == 0
    )
    assert roost("ca", "roll", str(authority), "--at", "2027-01-01T00:00:00").returncode == 0
    assert (
        roost(
            "ca", "roll", str(authority), "--revoke-current", "--at", "2028-01-01T00:00:00"
        ).returncode
        == 0
    )
    ca = Authority.load(authority)
    store = tmp_path / "dev"
    state = TrustState.provision(ca.ca_info(1)).accept(ca.ca_info(2)).accept(ca.ca_info(3))
    save_state(store, state)
    before = tree_digest(store)
    done = roost("trust", "check", str(store), "--cert", str(hub / "cert.pem"), "--no-fetch")
    assert_one_line_failure(
        done, ExitCode.VERIFICATION, "issued by generation 1, which generation 3 revoked"
    )
    assert "[revoked]" in done.stderr
    assert tree_digest(store) == before and load_state(store).revoked_by == [3]
    human = roost("trust", "status", str(store))
    assert human.returncode == 0 and "generation 3" in human.stdout
    assert_human(human.stdout)


def test_status_commands_human_and_json(authority: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    made = roost("init", str(home), "--hubs", "1", "--devices", "1", "--loopback")
    assert made.returncode == 0, made.stderr
    assert_human(made.stdout)
    assert "roost hub run --config hub-1.toml" in made.stdout and "roost ca serve" in made.stdout
    assert "hcsp:" in made.stdout and "device-1" in made.stdout
    as_json = roost("init", str(tmp_path / "home2"), "--hubs", "1", "--devices", "0", "--json")
    assert len(json.loads(as_json.stdout)["hubs"]) == 1
    assert (
        roost(
            "user",
            "add",
            str(home / "hub-1"),
            "owner",
            "--password-cost",
            "4",
            "--code-cost",
            "4",
            stdin="pw\npw\n",
        ).returncode
        == 0
    )
    commands = [
        ("ca", "status", str(home / "ca")),
        ("trust", "status", str(home / "device-1" / "trust")),
        ("user", "list", str(home / "hub-1")),
    ]
    for command in commands:
        human = roost(*command)
        assert human.returncode == 0, (command, human.stderr)
        assert_human(human.stdout)
        scripted = roost(*command, "--json")
        assert scripted.returncode == 0, (command, scripted.stderr)
        json.loads(scripted.stdout)
    assert "owner" in roost("user", "list", str(home / "hub-1")).stdout
    ca_human = roost("ca", "status", str(authority)).stdout
    assert "prepare generation 2" in ca_human and "ago" in ca_human


def test_a_fresh_home_download_server_serves_not_published_and_logs_requests(
    tmp_path: Path,
) -> None:
    (port,) = free_loopback_ports(1)
    ca, dev = tmp_path / "ca", tmp_path / "dev"
    assert (
        roost("ca", "init", str(ca), "--publish-url", f"https://127.0.0.1:{port}/ca/").returncode
        == 0
    )
    assert (
        roost("trust", "init", str(dev), "--ca-info", str(ca / "gen-1" / "ca-info.bin")).returncode
        == 0
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "roost", "ca", "serve", str(ca), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stderr is not None
        assert "serving" in server.stdout.readline()
        # Nothing is published yet: "not published" (3), not a failure to connect (1).
        assert roost("trust", "update", str(dev)).returncode == ExitCode.NOT_PUBLISHED
        assert roost("ca", "roll", str(ca)).returncode == 0
        # The server re-reads the table: generation 2 is served under the same certificate.
        stored = roost("trust", "update", str(dev))
        assert stored.returncode == 0, stored.stderr
        assert json.loads(stored.stdout)["prepared"] == 2
    finally:
        server.terminate()
        _, log = server.communicate(timeout=20)
    requests = [line for line in log.splitlines() if "roost.pki.download" in line]
    assert any("/ca/2.rcai -> 404" in line for line in requests), log
    assert any("/ca/2.rcai -> 200" in line for line in requests), log
    assert "Traceback" not in log
