"""What the broker benchmarks share (bench/broker.py, bench/broker_scale.py): identities
issued by a home's authority and enrolled for real over mutual TLS, fast RREG bytes (a
precomputed prefix + counter + candidates + HMAC, checked against
``messages.encode_registration`` by the callers), broker.toml with the per-source rate
limits lifted (every benchmark packet comes from 127.0.0.1), and waiting for a broker's
start line."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import ssl
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

from roost.cli.common import now_utc
from roost.config import to_toml
from roost.framing import RECORD_HEADER_SIZE, encode_record
from roost.pki.authority import Authority
from roost.pki.certs import Role, cert_to_pem, certs_from_pem, key_to_pem
from roost.pki.tls import client_context
from roost.rendezvous import control
from roost.rendezvous.messages import REGISTRATION_MAGIC, Candidate, encode_candidates

__all__ = [
    "HOST",
    "LIMITS",
    "LOCAL",
    "configure_limits",
    "enroll",
    "issue_identities",
    "rreg",
    "rreg_maker",
    "wait_json_line",
]

HOST = "127.0.0.1"
_HOST = HOST
LOCAL = (Candidate.of("192.168.1.20", 40001),)
_LOCAL = LOCAL
# Limits lifted for the run (see the module docstring); everything else stays the default.
LIMITS = {
    "udp_source_rate": 10_000_000.0,
    "udp_source_burst": 10_000_000.0,
    "global_udp_rate": 10_000_000.0,
    "global_udp_burst": 10_000_000.0,
    "tls_source_rate": 1_000_000.0,
    "tls_source_burst": 1_000_000.0,
}


def rreg_maker(identifier: str, key: bytes) -> tuple[bytes, bytes, bytes]:
    """The constant parts of one identity's RREG: prefix (before the counter), suffix."""
    ident = identifier.encode("ascii")
    prefix = REGISTRATION_MAGIC + bytes([1, len(ident)]) + ident
    return prefix, encode_candidates(_LOCAL), key


def rreg(maker: tuple[bytes, bytes, bytes], counter: int) -> bytes:
    prefix, suffix, key = maker
    body = prefix + counter.to_bytes(8, "big") + suffix
    return body + hmac.digest(key, body, "sha256")[:16]


def configure_limits(home: Path, extra: dict[str, Any] | None = None) -> Path:
    """broker.toml with the rate limits of the module docstring lifted; ``extra`` sets
    top-level keys (its ``limits`` merges into ``[limits]``)."""
    path = home / "broker.toml"
    doc = tomllib.loads(path.read_text())
    extra = dict(extra or {})
    doc["limits"] = {**doc.get("limits", {}), **LIMITS, **extra.pop("limits", {})}
    doc.update(extra)
    path.write_text(to_toml(doc, "Roost rendezvous broker (benchmark: rate limits lifted)"))
    return path


def issue_identities(home: Path, count: int) -> list[tuple[Path, Path]]:
    """`count` hub identities from the home's authority, cert and key files on /dev/shm."""
    authority = Authority.load(home / "ca")
    at = now_utc()
    directory = home / "equipment"
    directory.mkdir()
    files: list[tuple[Path, Path]] = []
    for n in range(count):
        issued = authority.issue(Role.HUB, at)
        cert_file, key_file = directory / f"{n}.pem", directory / f"{n}.key"
        cert_file.write_bytes(cert_to_pem(issued.cert))
        key_file.write_bytes(key_to_pem(issued.key))
        files.append((cert_file, key_file))
    return files


async def enroll(
    home: Path, port: int, files: list[tuple[Path, Path]], concurrency: int
) -> list[tuple[str, bytes]]:
    anchors = certs_from_pem((home / "ca" / "gen-1" / "ca-cert.pem").read_bytes())
    queue = list(enumerate(files))
    enrolled: list[tuple[str, bytes]] = []

    async def one(cert_file: Path, key_file: Path) -> tuple[str, bytes]:
        context: ssl.SSLContext = client_context(anchors, cert_file, key_file)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(_HOST, port, ssl=context), 10.0
        )
        try:
            writer.write(encode_record(control.encode_control("enroll")))
            await writer.drain()
            header = await asyncio.wait_for(reader.readexactly(RECORD_HEADER_SIZE), 10.0)
            body = await reader.readexactly(int.from_bytes(header, "big"))
            message = control.decode_channel_body(body)
            if not isinstance(message, control.Enrolled):
                raise RuntimeError(f"enrollment answered {message!r}")
            return message.identifier, message.key
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    async def worker() -> None:
        while queue:
            _, (cert_file, key_file) = queue.pop()
            enrolled.append(await one(cert_file, key_file))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return enrolled


def wait_json_line(process: subprocess.Popen[bytes], log: Path, timeout: float) -> dict[str, Any]:
    """The broker's start line (its bound ports: a configured port 0 is any free one, so
    nothing races the broker for a port picked before it started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited: {log.read_text()[-2000:]}")
        for line in log.read_bytes().splitlines():
            if line.startswith(b"{") and b'"broker"' in line:
                started: dict[str, Any] = json.loads(line)
                return started
        time.sleep(0.05)
    raise TimeoutError("the broker did not start")
