"""The trust store's file adapter: round trip, atomic replacement, refusal of a corrupt or
hand-forged file (PROTOCOL.md section 2, persistence)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from roost.errors import StateError
from roost.pki.trust import TrustState
from roost.pki.truststore import STATE_FILE, load_state, save_state
from tests.helpers.dlkeys import Chain


def test_persistence_round_trip_and_atomic_file(tmp_path: Path) -> None:
    chain = Chain(2)
    state = TrustState.provision(chain.infos[0]).accept(chain.infos[1])
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]


def test_corrupt_or_forged_state_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError):
        load_state(tmp_path)
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(StateError):
        load_state(tmp_path)
    # A hand-edited prepared slot that is not a valid successor is refused on load.
    chain, other = Chain(2), Chain(2)
    save_state(tmp_path, TrustState.provision(chain.infos[0]).accept(chain.infos[1]))
    doc = json.loads((tmp_path / STATE_FILE).read_text())
    doc["prepared"] = base64.b64encode(other.infos[1].raw).decode()
    (tmp_path / STATE_FILE).write_text(json.dumps(doc))
    with pytest.raises(StateError):
        load_state(tmp_path)


def test_state_file_permissions_and_no_temp_left(tmp_path: Path) -> None:
    chain = Chain(1)
    save_state(tmp_path, TrustState.provision(chain.infos[0]))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert os.stat(tmp_path / STATE_FILE).st_size > 0


def test_retired_list_persists(tmp_path: Path) -> None:
    chain = Chain(2)
    state = TrustState.provision(chain.infos[0]).accept(chain.infos[1]).promote()
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
