"""A real redis-server (or valkey-server) started by the test on a loopback port in a
temporary directory, without persistence; stop, restart on the same port, kill."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.tools import in_ci

__all__ = ["RedisServer", "server_binaries"]


def server_binaries() -> list[str]:
    """The Redis-protocol servers installed here: redis-server and/or valkey-server.

    Under CI=true redis-server is required (its absence is a failing parameter)."""
    found = [name for name in ("redis-server", "valkey-server") if shutil.which(name)]
    if not found or (in_ci() and "redis-server" not in found):
        return ["redis-server"]
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One server process; ``url`` stays the same across ``restart``."""

    def __init__(self, binary: str, directory: Path) -> None:
        path = shutil.which(binary)
        if path is None:
            pytest.skip(f"{binary} is not installed; this test needs the real server")
        self.binary = path
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.02)
        raise AssertionError(f"{self.binary} did not start on port {self.port}")

    def ping(self) -> bool:
        try:
            return self.command("PING") == "+PONG"
        except OSError:
            return False

    def command(self, *words: str) -> str:
        """One command in the inline protocol; the first line of the answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
            conn.sendall((" ".join(words) + "\r\n").encode())
            data = b""
            while b"\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"$"):
                length = int(data[1 : data.index(b"\r\n")])
                while len(data) < data.index(b"\r\n") + 2 + max(length, 0):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                return data[data.index(b"\r\n") + 2 :].decode(errors="replace")
            return data.split(b"\r\n")[0].decode(errors="replace")

    def info(self, section: str) -> dict[str, str]:
        text = self.command("INFO", section)
        values = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                key, _, value = line.partition(":")
                values[key] = value
        return values

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
