"""The reason catalogue (roost.reasons): complete, documented, and used everywhere.

A reason that is raised but missing from the catalogue would be counted under a name no
document explains; these tests make that impossible to merge.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from roost.errors import RemoteProtocolError, RoostError
from roost.reasons import DESCRIPTIONS, Reason, RejectionCounter, log_rejection

_SRC = Path(__file__).resolve().parents[3] / "src" / "roost"
_ARCHITECTURE = Path(__file__).resolve().parents[3] / "docs" / "architecture.md"


def _trees() -> list[tuple[Path, ast.Module]]:
    return [
        (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for path in sorted(_SRC.rglob("*.py"))
    ]


def _reason_positions(trees: list[tuple[Path, ast.Module]]) -> dict[str, int]:
    """Functions of src that take a ``reason`` parameter, with its positional index."""
    positions: dict[str, int] = {}
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [arg.arg for arg in node.args.posonlyargs + node.args.args]
                if "reason" in names:
                    offset = 1 if names and names[0] in ("self", "cls") else 0
                    positions[node.name] = names.index("reason") - offset
    return positions


def _is_default_reason(node: ast.AST) -> bool:
    return isinstance(node, ast.Assign) and any(
        isinstance(target, ast.Name) and target.id == "default_reason" for target in node.targets
    )


def _reason_values(node: ast.AST, positions: dict[str, int]) -> list[ast.expr]:
    """The expressions ``node`` passes as a reason, if any."""
    if isinstance(node, ast.keyword):
        return [node.value] if node.arg == "reason" else []
    if _is_default_reason(node):
        assert isinstance(node, ast.Assign)
        return [node.value]
    if isinstance(node, ast.Call):
        callee = node.func
        name = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", "")
        index = positions.get(name)
        if index is not None and 0 <= index < len(node.args):
            return [node.args[index]]
    return []


def _reason_literals() -> dict[str, list[str]]:
    """Every string literal given as a reason in src: ``reason=…``, ``default_reason = …``,
    or the positional ``reason`` argument of a src function that takes one."""
    trees = _trees()
    positions = _reason_positions(trees)
    found: dict[str, list[str]] = {}
    for path, tree in trees:
        for node in ast.walk(tree):
            values = _reason_values(node, positions)
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    where = f"{path.relative_to(_SRC)}:{getattr(value, 'lineno', 0)}"
                    found.setdefault(value.value, []).append(where)
    return found


def test_every_reason_has_a_description() -> None:
    assert set(DESCRIPTIONS) == set(Reason)
    assert all(text and not text.endswith(".") for text in DESCRIPTIONS.values())


def test_every_reason_raised_in_src_is_in_the_catalogue() -> None:
    literals = _reason_literals()
    assert len(literals) > 50  # the scan itself works
    unknown = {value: where for value, where in literals.items() if value not in set(Reason)}
    assert not unknown, f"reasons missing from roost.reasons.Reason: {unknown}"


def test_architecture_doc_lists_every_reason() -> None:
    if not _ARCHITECTURE.exists():
        pytest.fail("docs/architecture.md is missing")
    text = _ARCHITECTURE.read_text(encoding="utf-8")
    missing = [reason.value for reason in Reason if f"`{reason.value}`" not in text]
    assert not missing, f"docs/architecture.md does not list: {missing}"


def test_counter_counts_every_refusal_and_logs_once_per_source_per_interval() -> None:
    counter = RejectionCounter(log_interval=10.0, max_sources=2)
    error = RemoteProtocolError("bad", reason="malformed")
    assert counter.count(error, source="a", now=0.0) == 0  # first line from a
    assert counter.count(error, source="a", now=1.0) is None
    assert counter.count("rate-limited", source="a", now=9.9) is None
    assert counter.count(error, source="b", now=2.0) == 0  # b has its own interval
    assert counter.count(error, source="a", now=10.0) == 2  # two were silent since
    assert counter.count(error, source="a", now=11.0) is None
    assert counter["malformed"] == 5 and counter["rate-limited"] == 1
    assert counter.total() == 6
    assert counter.as_dict() == {"malformed": 5, "rate-limited": 1}


def test_counter_without_source_only_counts() -> None:
    counter = RejectionCounter()
    assert counter.count(RoostError("x", reason="busy")) is None
    assert counter["busy"] == 1


def test_source_table_is_bounded() -> None:
    counter = RejectionCounter(log_interval=100.0, max_sources=3)
    for index in range(50):
        assert counter.count("malformed", source=f"s{index}", now=float(index)) == 0
    # The oldest sources were forgotten, so s0 is logged again at once.
    assert counter.count("malformed", source="s0", now=51.0) == 0
    assert counter.count("malformed", source="s49", now=52.0) is None


def test_log_rejection_writes_one_line_per_source_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("roost.test-reasons")
    counter = RejectionCounter(log_interval=10.0)
    error = RemoteProtocolError("bad bytes from 10.0.0.1 with details", reason="malformed")
    with caplog.at_level(logging.INFO, logger=logger.name):
        for now in (0.0, 1.0, 2.0):
            log_rejection(logger, counter, error, source="10.0.0.1", now=now)
        # A bare reason serves where the failure is an OSError with no reason of its own.
        log_rejection(logger, counter, "disconnected", source="10.0.0.1", now=10.0)
    assert [r.getMessage() for r in caplog.records] == [
        "refused 10.0.0.1: malformed",
        "refused 10.0.0.1: disconnected (2 more since the last line)",
    ]
    assert counter["malformed"] == 3 and counter["disconnected"] == 1
