"""The `roost` command's entry point: a plain `roost device run` without click, the rest
through click's command tree (roost.cli.main).

A camera agent runs one command for months and every megabyte it holds counts, so the
plain form of that command (`device run --config FILE`, with `--log-level`, `--log-format`
or `-v`) skips click and the command tree (about 1.5 MB resident, docs/BENCHMARKS.md,
"Soak and footprint"). Its options, environment defaults, output, failure line and exit
codes are those of the click command, which calls the same function
(roost.cli.daemons.run_device). Any other form, `--help` or a bad value included, goes to
click, which answers it as before.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    if sys.argv[1:3] == ["device", "run"]:
        from roost.cli.daemons import device_run_arguments, run_device_cleanly

        arguments = device_run_arguments(sys.argv[1:])
        if arguments is not None:
            sys.exit(run_device_cleanly(arguments))
    from roost.cli.main import main as click_main

    click_main()
