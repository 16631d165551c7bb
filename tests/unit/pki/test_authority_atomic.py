"""A CA generation appears whole or not at all (PROTOCOL.md section 2, persistence): the
debris an interrupted roll can leave is ignored by readers and cleared by the next roll."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from roost.pki.authority import Authority
from tests.helpers.authority import generation_entries, recorded_generations_are_whole

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)


def _assert_consistent(directory: Path) -> Authority:
    """Whole recorded generations and nothing else: no staging, no unrecorded gen-N."""
    authority = recorded_generations_are_whole(directory)
    numbers = [record.generation for record in authority.settings.generations]
    assert generation_entries(directory) == sorted(f"gen-{n}" for n in numbers)
    return authority


def test_a_roll_leaves_no_staging_behind(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path, "https://127.0.0.1:1/ca/", T0)
    authority.roll(T0 + YEAR)
    authority.roll(T0 + YEAR, revoke_current=True)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert _assert_consistent(tmp_path).settings.active == 3


def test_a_half_written_staging_directory_is_cleared_by_the_next_roll(tmp_path: Path) -> None:
    Authority.init(tmp_path, "https://127.0.0.1:1/ca/", T0)
    staging = tmp_path / ".gen-2.tmp-4242"
    staging.mkdir()
    (staging / "ca-key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    (staging / ".ca-cert.pem.tmp-4242").write_bytes(b"half")
    # Readers never look at it.
    assert Authority.load(tmp_path).status()["newest"] == 1
    info = Authority.load(tmp_path).roll(T0 + YEAR)
    assert info.generation == 2 and not staging.exists()
    _assert_consistent(tmp_path)


def test_a_renamed_but_unrecorded_generation_is_replaced(tmp_path: Path) -> None:
    # The crash between the rename and the commit: gen-2 is whole but authority.json,
    # saved before the roll, does not list it.
    authority = Authority.init(tmp_path, "https://127.0.0.1:1/ca/", T0)
    settings_before = (tmp_path / "authority.json").read_bytes()
    orphan = authority.roll(T0 + YEAR)
    (tmp_path / "authority.json").write_bytes(settings_before)
    status = Authority.load(tmp_path).status()
    generations = status["generations"]
    assert status["newest"] == 1 and isinstance(generations, list) and len(generations) == 1
    info = Authority.load(tmp_path).roll(T0 + YEAR)
    assert info.generation == 2 and info.digest != orphan.digest
    again = _assert_consistent(tmp_path)
    assert again.ca_info(2).digest == info.digest


def test_a_discard_interrupted_midway_is_finished(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path, "https://127.0.0.1:1/ca/", T0)
    settings_before = (tmp_path / "authority.json").read_bytes()
    authority.roll(T0 + YEAR)
    (tmp_path / "authority.json").write_bytes(settings_before)
    # A previous clean-up renamed one orphan aside and died; another orphan is in place.
    shutil.copytree(tmp_path / "gen-2", tmp_path / ".gen-2.discard")
    (tmp_path / ".gen-2.discard" / "ca-cert.pem").unlink()
    assert Authority.load(tmp_path).roll(T0 + YEAR).generation == 2
    assert Authority.load(tmp_path).roll(T0 + YEAR).generation == 3
    _assert_consistent(tmp_path)
