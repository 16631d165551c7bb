"""Crash-safe file replacement shared by every part that persists state (pure helper).

PROTOCOL.md section 2 ("persists every change atomically"): write a temporary file in the
same directory, fsync it, rename it over the target, fsync the directory. A crash leaves
either the old or the new content, never a mix.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write", "fsync_directory"]


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write temp, fsync, rename, fsync the directory (PROTOCOL.md section 2, persistence)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)
