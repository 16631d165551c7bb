"""Coverage-guided fuzzing of every decoder (tests/fuzz), one subprocess per target.

Each target runs for ``--runs`` executions (default 1,000,000) or ``--seconds``, whichever
comes first, starting from its committed seeds (tests/fuzz/corpus/<target>/). The table
gives executions, executions per second, the coverage (edges of ``roost`` code) the seeds
reached and what fuzzing added, and crashes; crash inputs are copied into ``--artifacts``.
The physical bound a target is compared with is the harness itself: the same process
running an empty target (``--baseline``) shows what exec/s atheris allows on this machine.

    PYTHONPATH=src .venv/bin/python bench/fuzz.py --seconds 60
    PYTHONPATH=src .venv/bin/python bench/fuzz.py --target stun --runs 200000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import tempfile
from pathlib import Path

from rich.table import Table

from _common import machine_facts, print_result

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(_ROOT))

from tests.fuzz.runner import FuzzResult, run_target, target_names  # noqa: E402


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="executions per target")
    parser.add_argument("--seconds", type=float, default=None, help="time limit per target")
    parser.add_argument(
        "--target", action="append", choices=target_names(), help="only this target (repeat)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="targets run at the same time")
    parser.add_argument("--artifacts", type=Path, default=None, help="where crash inputs go")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    names = args.target or target_names()
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="roost-fuzz-artifacts-"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {
            name: pool.submit(
                run_target,
                name,
                runs=args.runs,
                seconds=args.seconds,
                artifacts=artifacts / name,
            )
            for name in names
        }
        results: list[FuzzResult] = [futures[name].result() for name in names]
    table = Table(title=f"fuzzing, {args.runs:,} runs or {args.seconds or '-'} s per target")
    for column in ("target", "executions", "exec/s", "coverage (seeds → end)", "new", "crashes"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for result in results:
        table.add_row(
            result.target,
            f"{result.executions:,}",
            f"{result.exec_per_s:,.0f}",
            f"{result.coverage_start} → {result.coverage_end}",
            str(result.new_coverage),
            str(result.crashes),
        )
    for result in results:
        if result.crashes:
            sys.stderr.write(f"\n--- {result.target} crashed ---\n{result.tail}\n")
    print_result(
        {
            "benchmark": "fuzz",
            "runs": args.runs,
            "seconds": args.seconds,
            "executions": sum(r.executions for r in results),
            "crashes": sum(r.crashes for r in results),
            "artifacts": str(artifacts),
            "targets": {r.target: r.as_json() for r in results},
            "machine": machine_facts(),
        },
        table,
    )


if __name__ == "__main__":
    main()
