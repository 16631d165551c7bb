"""The NAT matrix expectations (tools/nat_matrix.py): the rule, its symmetry, the counts,
and that docs/NAT-MATRIX.md is what the renderer makes (issue 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.nat_matrix import (
    CELLS,
    DEFAULT_OUTPUT,
    DEFAULT_RESULTS,
    NOT_RUN,
    Filtering,
    Mapping,
    NatType,
    expected_path,
    load_results,
    main,
    render,
)


def test_every_cell_is_expected_direct_or_relay() -> None:
    assert len(CELLS) == 25
    assert {expected_path(a, b) for a, b in CELLS} == {"direct", "relay"}


@pytest.mark.parametrize(("a", "b"), CELLS, ids=[f"{a.value}-{b.value}" for a, b in CELLS])
def test_the_rule_does_not_care_which_side_is_which(a: NatType, b: NatType) -> None:
    assert expected_path(a, b) == expected_path(b, a)


def test_the_cells_that_need_the_relay() -> None:
    relay = {frozenset((a, b)) for a, b in CELLS if expected_path(a, b) == "relay"}
    blocked = {frozenset((NatType.UDP_BLOCKED, other)) for other in NatType}
    assert relay == blocked | {
        frozenset((NatType.SYMMETRIC,)),
        frozenset((NatType.SYMMETRIC, NatType.PORT_RESTRICTED)),
    }
    assert sum(1 for a, b in CELLS if expected_path(a, b) == "direct") == 13


def test_declared_behaviour_follows_rfc_4787() -> None:
    assert NatType.PUBLIC.filtering is Filtering.ENDPOINT_INDEPENDENT
    assert NatType.FULL_CONE.mapping is Mapping.ENDPOINT_INDEPENDENT
    assert NatType.FULL_CONE.filtering is Filtering.ENDPOINT_INDEPENDENT
    assert NatType.PORT_RESTRICTED.mapping is Mapping.ENDPOINT_INDEPENDENT
    assert NatType.PORT_RESTRICTED.filtering is Filtering.ADDRESS_AND_PORT_DEPENDENT
    assert NatType.SYMMETRIC.mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT
    assert NatType.UDP_BLOCKED.mapping is None and not NatType.UDP_BLOCKED.udp_passes
    assert all(kind.udp_passes for kind in NatType if kind is not NatType.UDP_BLOCKED)


def test_the_committed_doc_is_the_rendered_one() -> None:
    observed = load_results(DEFAULT_RESULTS) if DEFAULT_RESULTS.exists() else None
    assert DEFAULT_OUTPUT.read_text() == render(observed), "run tools/nat_matrix.py"
    assert main(["--check"]) == 0


def test_results_fill_the_observed_column_and_show_a_mismatch(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    cells = [
        {"a": a.value, "b": b.value, "observed": expected_path(a, b)}
        for a, b in CELLS
        if (a, b) != (NatType.SYMMETRIC, NatType.SYMMETRIC)
    ]
    cells.append({"a": "symmetric", "b": "symmetric", "observed": "direct"})
    results.write_text(json.dumps({"cells": cells}))
    text = render(load_results(results))
    assert NOT_RUN not in text
    assert text.count("(ok)") == 24
    assert text.count("relay / direct (**MISMATCH**)") == 1
    output = tmp_path / "matrix.md"
    assert main(["--results", str(results), "--output", str(output)]) == 0
    assert output.read_text() == text
    assert main(["--results", str(results), "--output", str(output), "--check"]) == 0


def test_a_results_file_with_an_unknown_path_is_refused(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"cells": [{"a": "public", "b": "public", "observed": "p2p"}]}))
    with pytest.raises(ValueError, match="not one of"):
        load_results(results)
