"""Running a daemon until it is signalled, and the camera agent's `device run`, click-free.

`roost device run` is the one command a small device runs for months, so it is the one
whose footprint counts (issue "Hostile input and faults", "Soak and footprint": at most
48 MB). Click and the command tree cost about 1.5 MB resident in the agent
(docs/BENCHMARKS.md, "Soak and footprint"), so this module imports neither:
`roost.cli.entry` runs :func:`run_device` directly for a plain `device run --config FILE
[--log-level L] [--log-format F] [-v]`, and the click command of `roost.cli.run` calls the
same function. Anything else on the command line goes through click as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from roost.cli.exitcodes import ExitCode, debugging_requested, failure_line
from roost.cli.logsetup import LEVELS, configure_logging
from roost.cli.preflight import check_identity, lock_state_folder
from roost.clock import set_wall_offset_ms
from roost.pki.certs import Role, certs_from_pem
from roost.pki.updater import TrustUpdater

__all__ = [
    "DeviceRunArguments",
    "device_run_arguments",
    "follow_own_certificate",
    "run_device",
    "run_device_cleanly",
    "run_until_signalled",
    "write_json_line",
]

POLL_EVERY = 60.0
TEST_CLOCK_ENV = "ROOST_TEST_CLOCK_OFFSET_FILE"
log = logging.getLogger("roost.cli")


def write_json_line(obj: Any) -> None:
    """One JSON document on standard output, flushed (what `echo_json` writes)."""
    sys.stdout.write(json.dumps(obj, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


async def run_until_signalled(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    poll: Callable[[float], Awaitable[object]],
) -> None:
    """Start, poll the trust store now and then, stop cleanly on SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await start()
    follower = _follow_test_clock()
    try:
        while not done.is_set():
            await poll(loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), POLL_EVERY)
    finally:
        if follower is not None:
            follower.cancel()
        await stop()


def _follow_test_clock() -> asyncio.Task[None] | None:
    """With ROOST_TEST_CLOCK_OFFSET_FILE set, apply the wall-clock offset (integer ms) that
    file holds, re-read four times a second: fault tests step a daemon's clock with it
    (docs/testing.md, "Faults"). Unset, as in every real deployment, nothing runs."""
    path = os.environ.get(TEST_CLOCK_ENV)
    if not path:
        return None

    async def follow() -> None:
        applied: int | None = None
        while True:
            with contextlib.suppress(OSError, ValueError):
                offset = int(Path(path).read_text().strip() or 0)
                if offset != applied:
                    set_wall_offset_ms(offset)
                    logging.getLogger("roost.clock").warning(
                        "test clock offset now %+d ms (%s)", offset, TEST_CLOCK_ENV
                    )
                    applied = offset
            await asyncio.sleep(0.25)

    return asyncio.get_running_loop().create_task(follow())


def follow_own_certificate(trust: TrustUpdater, cert_file: Path) -> None:
    """A node installed with a certificate of a generation its trust store does not hold
    yet (after `roost ca roll --revoke-current`) fetches that generation before it starts,
    instead of refusing its own certificate (docs/trust.md, "When to fetch")."""
    leaf = certs_from_pem(cert_file.read_bytes())[0]
    asyncio.run(trust.follow_own_certificate(leaf, time.monotonic()))


def run_device(
    config_file: Path, log_level: str = "info", log_format: str = "text", verbose: bool = False
) -> None:
    """Run a camera until SIGINT/SIGTERM (one per state folder)."""
    from roost.config import load_device_config
    from roost.device.daemon import DeviceDaemon, read_own_certificate
    from roost.device.spool import FrameSpool

    configure_logging(log_level, log_format, verbose=verbose)
    config = load_device_config(config_file)
    check_identity(config.source, config.cert, config.key, Role.DEVICE)
    # Two devices on one spool would replace each other's connection (docs/operating.md).
    lock = lock_state_folder(config.state_dir, "roost device run")
    try:
        trust = TrustUpdater(config.trust_dir)
        follow_own_certificate(trust, config.cert)
        spool = FrameSpool(
            config.state_dir / "spool.sqlite3", config.max_buffer_frames, config.max_buffer_bytes
        )
        daemon = DeviceDaemon(config, trust, spool, read_own_certificate(config))

        async def start() -> None:
            await daemon.start()
            write_json_line({"device": daemon.identifier, "last_acked": spool.last_acked})
            log.info(
                "device %s (%s) ready: %s frames unacknowledged",
                config.name,
                daemon.identifier,
                spool.buffered,
                extra={"event": "ready"},
            )

        async def stop() -> None:
            await daemon.stop()
            spool.close()

        # The default loop, not uvloop: a camera sends ten frames a second and hears a few
        # announcements, and uvloop would add about 2 MB to an agent meant to stay small
        # (docs/BENCHMARKS.md, "Soak and footprint").
        asyncio.run(run_until_signalled(start, stop, trust.poll))
    finally:
        lock.release()


class DeviceRunArguments:
    """The options of a plain `device run` command line."""

    __slots__ = ("config_file", "log_format", "log_level", "verbose")

    def __init__(self) -> None:
        self.config_file: Path | None = None
        self.log_level = os.environ.get("ROOST_LOG_LEVEL", "info")
        self.log_format = os.environ.get("ROOST_LOG_FORMAT", "text")
        self.verbose = False


_VALUED = {"--config": "config_file", "--log-level": "log_level", "--log-format": "log_format"}


def device_run_arguments(argv: Sequence[str]) -> DeviceRunArguments | None:
    """The options of ``argv`` when it is exactly `device run` with valid options of that
    command (the same names, choices and environment defaults as the click command), else
    None: help, a typo, a bad value or any other command is click's to answer."""
    if list(argv[:2]) != ["device", "run"]:
        return None
    found = DeviceRunArguments()
    rest = list(argv[2:])
    while rest:
        word = rest.pop(0)
        if word in ("-v", "--verbose"):
            found.verbose = True
            continue
        name, equals, value = word.partition("=")
        if name not in _VALUED:
            return None
        if not equals:
            if not rest:
                return None
            value = rest.pop(0)
        if name == "--config":
            found.config_file = Path(value)
        else:
            setattr(found, _VALUED[name], value)
    if found.config_file is None or found.log_level not in LEVELS:
        return None
    if found.log_format not in ("text", "json"):
        return None
    return found


def run_device_cleanly(arguments: DeviceRunArguments) -> int:
    """:func:`run_device`, ending the way every `roost` command ends: one line on standard
    error and the exit code of the error's class (roost.cli.exitcodes)."""
    assert arguments.config_file is not None
    debugging = debugging_requested()
    try:
        run_device(
            arguments.config_file, arguments.log_level, arguments.log_format, arguments.verbose
        )
    except KeyboardInterrupt:
        sys.stderr.write("Aborted!\n")
        return int(ExitCode.FAILED)
    except Exception as error:
        if debugging:
            traceback.print_exception(error, file=sys.stderr)
        message, code = failure_line(error, debugging=debugging)
        sys.stderr.write(f"roost: {message}\n")
        return int(code)
    return int(ExitCode.OK)
