"""Run one fuzz target under atheris (libFuzzer) in this process, or many in subprocesses.

As a program, ``python -m tests.fuzz.runner TARGET [libFuzzer flags]`` instruments the
``roost`` package (coverage feedback comes from its branches only), then fuzzes
``TARGET``. The corpus folders and flags are chosen by :func:`run_target`, which
``bench/fuzz.py`` and ``tests/fuzz/test_fuzz.py`` call: the committed seeds under
``tests/fuzz/corpus/<target>/`` are read, and whatever the fuzzer finds new goes to a
scratch folder, so a run never edits the committed corpus.

A crash is an input on which the target raised (``ContractViolation``, or any untyped
exception out of a decoder): libFuzzer stops, writes the input as ``crash-<sha1>`` into the
artifact folder, and :func:`run_target` reports it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "FuzzResult", "main", "run_target", "target_names"]

ROOT = Path(__file__).resolve().parents[2]
_CORPUS = Path(__file__).resolve().parent / "corpus"
# libFuzzer's status lines: "#1024 INITED cov: 210 ft: 388 corp: 12/1Kb exec/s: 0 rss: 60Mb".
_STATUS = re.compile(
    r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+(?: .*?exec/s: (\d+))?"
)
_DONE = re.compile(r"^Done (\d+) runs in (\d+) second")


@dataclass
class FuzzResult:
    """What one target's run measured."""

    target: str
    executions: int = 0
    seconds: float = 0.0
    exec_per_s: float = 0.0
    coverage_start: int = 0
    coverage_end: int = 0
    features_start: int = 0
    features_end: int = 0
    corpus_start: int = 0
    corpus_end: int = 0
    crashes: int = 0
    crash_files: list[str] = field(default_factory=list)
    exit_code: int = 0
    tail: str = ""

    @property
    def new_coverage(self) -> int:
        """Edges covered at the end that the seeds alone did not reach."""
        return self.coverage_end - self.coverage_start

    def as_json(self) -> dict[str, Any]:
        """The result as a JSON object, with the derived figures."""
        out = asdict(self)
        out["new_coverage"] = self.new_coverage
        out["new_features"] = self.features_end - self.features_start
        del out["tail"]
        return out


def target_names() -> list[str]:
    """Every target with a committed corpus folder, in name order."""
    return sorted(path.name for path in _CORPUS.iterdir() if path.is_dir())


def _parse(result: FuzzResult, log: str) -> None:
    for line in log.splitlines():
        status = _STATUS.match(line)
        if status:
            runs, kind, cov, ft, corp = (status.group(i) for i in range(1, 6))
            if kind == "INITED":
                result.coverage_start, result.features_start = int(cov), int(ft)
                result.corpus_start = int(corp)
            result.executions = max(result.executions, int(runs))
            result.coverage_end, result.features_end = int(cov), int(ft)
            result.corpus_end = int(corp)
        done = _DONE.match(line)
        if done:
            result.executions = int(done.group(1))


def run_target(
    name: str,
    *,
    runs: int | None = 1_000_000,
    seconds: float | None = None,
    artifacts: Path | None = None,
    timeout_slack: float = 60.0,
) -> FuzzResult:
    """Fuzz ``name`` in a subprocess for ``runs`` executions or ``seconds`` (whichever ends
    first); return the figures, with any crash input copied into ``artifacts``."""
    seeds = _CORPUS / name
    if not seeds.is_dir():
        raise ValueError(f"no fuzz target {name!r} (no folder {seeds})")
    with tempfile.TemporaryDirectory(prefix=f"roost-fuzz-{name}-") as scratch:
        found = Path(scratch) / "found"
        found.mkdir()
        crash_dir = artifacts or Path(scratch) / "artifacts"
        crash_dir.mkdir(parents=True, exist_ok=True)
        flags = [
            f"-artifact_prefix={crash_dir}/",
            "-print_final_stats=1",
            "-timeout=10",
            "-rss_limit_mb=1024",
            "-max_len=4096",
            f"-runs={runs if runs is not None else -1}",
        ]
        dictionary = _CORPUS.parent / "dicts" / f"{name}.dict"
        if dictionary.is_file():
            # Tokens a mutation rarely stumbles on (TOML's inf and nan, the config keys).
            flags.append(f"-dict={dictionary}")
        if seconds is not None:
            flags.append(f"-max_total_time={max(1, round(seconds))}")
        before = set(crash_dir.iterdir())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.runner", name, *flags, str(found), str(seeds)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # A watchdog bounds the whole run, start-up included, even if libFuzzer hangs.
        watchdog = threading.Timer((seconds or 3600.0) + timeout_slack, process.kill)
        watchdog.start()
        lines: list[str] = []
        fuzzing_from: float | None = None
        try:
            assert process.stderr is not None
            for line in process.stderr:
                lines.append(line.rstrip("\n"))
                if fuzzing_from is None and " INITED " in line:
                    fuzzing_from = time.monotonic()
            process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
        ended = time.monotonic()
        result = FuzzResult(target=name, exit_code=process.returncode)
        result.seconds = ended - started
        log = "\n".join(lines)
        _parse(result, log)
        # Executions per second while fuzzing, start-up (imports, instrumentation) left out.
        fuzzing = ended - (fuzzing_from or started)
        result.exec_per_s = result.executions / fuzzing if fuzzing > 0 else 0.0
        crashes = sorted(set(crash_dir.iterdir()) - before)
        result.crash_files = [str(path) for path in crashes]
        result.crashes = len(crashes) or (1 if process.returncode != 0 else 0)
        result.tail = "\n".join(log.splitlines()[-40:])
    return result


def _roost_modules() -> list[str]:
    """Every module name under ``src/roost``, found from the files (nothing is imported)."""
    package = ROOT / "src" / "roost"
    names = []
    for path in package.rglob("*.py"):
        parts = ("roost", *path.relative_to(package).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def main(argv: Sequence[str]) -> None:
    """Fuzz the target named by ``argv[1]``; the rest of ``argv`` goes to libFuzzer."""
    import atheris

    if len(argv) < 2:
        raise SystemExit("usage: python -m tests.fuzz.runner TARGET [libFuzzer flags]")
    from tests.fuzz.guides import GUIDES

    # atheris' include list works on top-level packages only, so the modules that do not
    # guide this target are named one by one in its exclude list.
    guides = GUIDES[argv[1]]
    unguided = [
        name
        for name in _roost_modules()
        if not any(name == guide or name.startswith(guide + ".") for guide in guides)
    ]
    with atheris.instrument_imports(include=["roost"], exclude=unguided):
        from tests.fuzz.targets import TARGETS
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
