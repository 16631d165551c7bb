"""Checks that an authority directory is whole: what tests of interrupted rolls assert."""

from __future__ import annotations

from pathlib import Path

from roost.pki.authority import Authority
from roost.pki.cainfo import accept_successor

__all__ = ["generation_entries", "recorded_generations_are_whole"]

GENERATION_FILES = frozenset({"ca-key.pem", "ca-cert.pem", "ca-info.bin"})
DOWNLOAD_FILES = frozenset({"download-cert.pem", "download-key.pem"})


def generation_entries(directory: Path) -> list[str]:
    """Names of generation directories and staging debris, sorted."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(("gen-", ".gen-")))


def recorded_generations_are_whole(directory: Path) -> Authority:
    """Load the authority and assert that the generations authority.json lists are numbered
    1..n without a gap, each complete on disk and each a valid successor of the one before
    (PROTOCOL.md section 2). Debris beside them is not checked here."""
    authority = Authority.load(directory)
    numbers = [record.generation for record in authority.settings.generations]
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    assert 1 <= authority.settings.active <= numbers[-1]
    for number in numbers:
        expected = GENERATION_FILES | (DOWNLOAD_FILES if number > 1 else frozenset())
        assert {p.name for p in (directory / f"gen-{number}").iterdir()} == expected, number
        assert authority.ca_info(number).generation == number
        if number > 1:
            accept_successor(authority.ca_info(number - 1), authority.ca_info(number))
    return authority
