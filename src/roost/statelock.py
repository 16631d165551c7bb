"""One process per state folder: an OS file lock held for the life of the process.

Two hubs, devices, brokers or authority commands on one state folder would write the same
files (two devices on one spool replace each other's connection and the hub stores
duplicates), so every daemon and every `roost ca` command that writes takes the folder's
lock first. The lock is ``fcntl.flock`` on ``STATE/lock``: the kernel releases it when the
process ends however it ends (a SIGKILL leaves no stale lock), and the file holds the
holder's pid and command only so that the refusal can name them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from roost.errors import StateError
from roost.reasons import Reason

__all__ = ["LOCK_NAME", "StateLock", "holding_state_lock", "lock_holder"]

LOCK_NAME = "lock"


def lock_holder(directory: Path) -> str:
    """What the lock file of ``directory`` says about its holder ("pid 123, roost hub run")."""
    try:
        text = (directory / LOCK_NAME).read_text(errors="replace").strip()
    except OSError:
        return "another process"
    pid, _, what = text.partition(" ")
    return (
        f"pid {pid}, {what}"
        if pid.isdigit() and what
        else (f"pid {pid}" if pid.isdigit() else "another process")
    )


class StateLock:
    """The held lock of one state folder; :meth:`release` (or process exit) frees it."""

    __slots__ = ("_fd", "directory")

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path, what: str) -> StateLock:
        """Take the lock of ``directory`` for ``what`` (``"roost hub run"``), creating the
        folder if needed; a :class:`StateError` (reason ``in-use``) names the holder."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(
                f"cannot use state folder {directory}: {exc.strerror or exc}", reason=Reason.STATE
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(
                f"{directory} is in use by {lock_holder(directory)}: stop it first, one"
                " process per state folder",
                reason=Reason.IN_USE,
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StateError(
                f"cannot lock {directory / LOCK_NAME}: {exc.strerror or exc}", reason=Reason.STATE
            ) from exc
        # Only the holder writes, so a reader sees the current holder's line or nothing.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        return cls(directory, fd)

    def release(self) -> None:
        """Free the lock (the file stays: removing it would race a new holder)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def holding_state_lock(directory: Path, what: str) -> Iterator[StateLock]:
    """``with holding_state_lock(dir, "roost ca roll"):`` for a command's whole run."""
    lock = StateLock.acquire(directory, what)
    try:
        yield lock
    finally:
        lock.release()
