"""Replay every committed corpus file through its target, without atheris (milliseconds).

A crash the fuzzer once found is kept as ``crash-<name>`` in the target's corpus folder
together with a unit test next to the fixed decoder; this replay keeps all of them fixed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.guides import GUIDES
from tests.fuzz.make_corpus import seeds
from tests.fuzz.runner import target_names
from tests.fuzz.targets import CORPUS, TARGETS


def test_every_target_has_seeds_guides_and_a_corpus_folder() -> None:
    assert set(TARGETS) == set(GUIDES) == set(seeds()) == set(target_names())
    for name in TARGETS:
        assert any((CORPUS / name).iterdir()), name


def _corpus_files() -> list[Path]:
    return sorted(path for folder in CORPUS.iterdir() for path in folder.iterdir())


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_file_keeps_the_contract(path: Path) -> None:
    TARGETS[path.parent.name].run(path.read_bytes())


def test_seeds_are_the_committed_ones() -> None:
    # make_corpus.py writes each seed under the first 16 hex digits of its SHA-256.
    import hashlib

    for name, inputs in seeds().items():
        for data in inputs:
            assert (CORPUS / name / hashlib.sha256(data).hexdigest()[:16]).is_file(), name
