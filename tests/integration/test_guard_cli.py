"""`roost user` and `roost log` through click's runner and one real subprocess."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from roost.cli.exitcodes import ExitCode
from roost.cli.log import log
from roost.cli.user import user
from roost.guard.card import ALPHABET
from roost.guard.challenge import LoginClient, LoginServer
from roost.guard.log import SqliteMerkleLog
from roost.guard.userstore import SqliteUserStore
from roost.pki.authority import Authority
from roost.pki.cainfo import decode_cainfo
from roost.pki.trust import TrustState
from roost.pki.truststore import save_state

FAST = ["--password-cost", "4", "--code-cost", "4"]
CA_T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CODE = re.compile(r"(\d\d): ([" + ALPHABET + r"]{4})-([" + ALPHABET + r"]{4})")


@pytest.fixture(scope="module")
def ca_info(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    authority = Authority.init(
        tmp_path_factory.mktemp("ca") / "ca", "https://127.0.0.1:1/ca/", CA_T0
    )
    return authority.ca_info_bytes(1)


@pytest.fixture(autouse=True)
def hub_state_dir(tmp_path: Path, ca_info: bytes) -> Path:
    """`roost user` works on a hub's state directory, which holds the hub's trust store."""
    save_state(tmp_path / "trust", TrustState.provision(decode_cainfo(ca_info)))
    return tmp_path


def _card(text: str) -> dict[str, str]:
    return {label: a + b for label, a, b in CODE.findall(text)}


def test_user_add_prints_the_card_once_and_it_logs_in(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(user, ["add", str(tmp_path), "alice", *FAST], input="s3cret\ns3cret\n")
    assert result.exit_code == 0, result.output
    card = _card(result.output)
    assert len(card) == 20 and all(len(code) == 8 for code in card.values())
    # The card drives a real login against the stored verifiers.
    store = SqliteUserStore.in_state_dir(tmp_path)
    client = LoginClient("alice", "s3cret")
    handshake = LoginServer(store).handshake()
    labels = client.receive_challenge(handshake.receive_hello(client.hello(), now=0, wall_ms=0))
    accept, _ = handshake.receive_proof(
        client.answer([card[label] for label in labels]), now=0, wall_ms=0
    )
    client.receive_result(accept)
    store.close()
    raw = (tmp_path / "users.sqlite3").read_bytes()
    assert b"s3cret" not in raw and not any(code.encode() in raw for code in card.values())

    listed = runner.invoke(user, ["list", str(tmp_path), "--json"])
    assert listed.exit_code == 0
    assert json.loads(listed.output) == [
        {"user": "alice", "pairs": 20, "counter": 1, "failures": 0, "locked_until": None}
    ]
    human = runner.invoke(user, ["list", str(tmp_path)])
    assert re.search(r"alice\W+20\W+1\W+0\W+no", human.output), human.output


def test_user_add_refuses_existing_and_mismatched_passwords(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(user, ["add", str(tmp_path), "bob", *FAST], input="a\na\n").exit_code == 0
    again = runner.invoke(user, ["add", str(tmp_path), "bob", *FAST], input="a\na\n")
    assert again.exit_code == ExitCode.STATE and "exists" in again.output
    mismatch = runner.invoke(user, ["add", str(tmp_path), "carol", *FAST], input="a\nb\n")
    assert mismatch.exit_code == ExitCode.FAILED and "differ" in mismatch.output
    card_file = tmp_path / "bob.card"
    replaced = runner.invoke(
        user,
        [
            "add",
            str(tmp_path),
            "bob",
            "--replace",
            "--pairs",
            "5",
            "--card-file",
            str(card_file),
            *FAST,
        ],
        input="b\nb\n",
    )
    assert replaced.exit_code == 0, replaced.output
    assert len(_card(card_file.read_text())) == 5 and not _card(replaced.output)
    assert oct(card_file.stat().st_mode & 0o777) == "0o600"


def test_user_reset_counter_and_remove(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(user, ["add", str(tmp_path), "dave", *FAST], input="p\np\n")
    store = SqliteUserStore.in_state_dir(tmp_path)
    store.record_failure("dave", 7, 10**15)
    store.close()
    assert runner.invoke(user, ["reset-counter", str(tmp_path), "dave"]).exit_code == 0
    store = SqliteUserStore.in_state_dir(tmp_path)
    record = store.load("dave")
    store.close()
    assert record is not None and record.failures == 0 and record.locked_until_ms == 0
    assert runner.invoke(user, ["remove", str(tmp_path), "dave"]).exit_code == 0
    missing = runner.invoke(user, ["remove", str(tmp_path), "dave"])
    assert missing.exit_code == ExitCode.STATE and "no user" in missing.output


def _fill_log(state: Path, count: int) -> None:
    merkle_log = SqliteMerkleLog.in_state_dir(state)
    for i in range(merkle_log.size, merkle_log.size + count):
        merkle_log.append(hashlib.sha256(b"message %d" % i).digest())
    merkle_log.close()


def test_log_checkpoint_receipt_and_offline_verify(tmp_path: Path) -> None:
    runner = CliRunner()
    state = tmp_path / "state"
    _fill_log(state, 6)
    first = runner.invoke(log, ["checkpoint", str(state)])
    assert first.exit_code == 0, first.output
    checkpoint = json.loads(first.output)
    assert checkpoint["size"] == 6 and len(checkpoint["key_id"]) == 16
    assert oct((state / "log-key.pem").stat().st_mode & 0o777) == "0o600"
    receipt_file = tmp_path / "receipt.json"
    assert (
        runner.invoke(log, ["receipt", str(state), "4", "--out", str(receipt_file)]).exit_code == 0
    )
    ok = runner.invoke(log, ["verify", str(receipt_file)])
    assert ok.exit_code == 0 and ok.output.startswith("valid")

    _fill_log(state, 5)
    later = runner.invoke(log, ["checkpoint", str(state), "--consistency-from", "6"])
    assert later.exit_code == 0 and json.loads(later.output)["size"] == 11
    later_file = tmp_path / "later.json"
    later_file.write_text(later.output)
    consistent = runner.invoke(log, ["verify", str(receipt_file), "--checkpoint", str(later_file)])
    assert consistent.exit_code == 0, consistent.output
    assert "consistent" in consistent.output

    # A flipped proof byte makes the receipt invalid, with a clear message and exit 1.
    document = json.loads(receipt_file.read_text())
    document["proof"][0] = document["proof"][1]
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(document))
    bad = runner.invoke(log, ["verify", str(bad_file)])
    assert bad.exit_code == ExitCode.FAILED and "invalid receipt (bad-proof)" in bad.output
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\xff")
    assert runner.invoke(log, ["verify", str(garbage)]).exit_code == ExitCode.FAILED


def test_roost_entry_point_runs_user_add_from_a_pipe(tmp_path: Path) -> None:
    code = "from roost.cli.main import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "user", "add", str(tmp_path), "erin", *FAST, "--pairs", "3"],
        input=b"pw\npw\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(_card(result.stdout.decode())) == 3
