"""Benchmark of trust rollover: CA-information checks and download-server fetches.

Run as `.venv/bin/python bench/trust.py [--seconds 3]`. It prints a table, then one JSON line.

What is measured, in one run and on loopback only:

- (a) CA-information verifications per second: `decode_cainfo` + `accept_successor` of a
  2-of-3 generation 2 against generation 1 (PROTOCOL.md section 2), next to raw Ed25519
  verifications of a message of the same size, so the share of the time spent in
  signatures is visible. The number of Ed25519 verifications one acceptance performs is
  counted, not assumed.
- (b) Fetches per second from a real `DownloadServer` (aiohttp `AppRunner` + `TCPSite` with
  `download_tls_context`) by `HttpsFetcher`, one new TLS connection per fetch, next to raw
  TLS 1.3 handshakes to a trivial server in the same loop with the same P-256 certificate,
  opened and closed the same way (`asyncio.open_connection` with `ssl`).

Every loop is bounded by both a duration and a count, after a short warm-up, and the cases
of each part run in interleaved slices so that outside load hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import platform
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cryptography
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.table import Table

from _common import cpu_model, load_average, print_result
from roost.pki import cainfo as cainfo_module
from roost.pki.authority import Authority
from roost.pki.cainfo import CAInfo, accept_successor, decode_cainfo
from roost.pki.download import DownloadServer, download_tls_context
from roost.pki.tls import client_context, server_context
from roost.pki.trust import TrustState
from roost.pki.updater import HttpsFetcher

_WARMUP = 20
_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Rate:
    """One measured loop: how many operations in how many seconds."""

    name: str
    count: int
    seconds: float
    note: str

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def micros(self) -> float:
        return self.seconds / self.count * 1e6 if self.count else 0.0


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    op: Callable[[], object]
    note: str


@dataclass(frozen=True, slots=True)
class AsyncCase:
    name: str
    op: Callable[[], Awaitable[object]]
    note: str


def _slice(op: Callable[[], object], seconds: float, limit: int) -> tuple[int, float]:
    """Call `op` for about `seconds` or `limit` calls; returns (calls, seconds taken)."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    # Checking the clock every 64 calls keeps the clock read out of the measured cost of
    # operations that take only tens of microseconds.
    while count < limit:
        for _ in range(64):
            op()
        count += 64
        if time.perf_counter() >= deadline:
            break
    return count, time.perf_counter() - start


def _measure(cases: list[Case], seconds: float, rounds: int, limit: int) -> list[Rate]:
    """Each case for `seconds` in total, in `rounds` interleaved slices.

    The machine is shared: interleaving spreads any burst of outside load over every case
    alike, so the ratios between cases stay meaningful even when absolute rates wobble.
    """
    for case in cases:
        for _ in range(_WARMUP):
            case.op()
    totals = {case.name: [0, 0.0] for case in cases}
    for _ in range(rounds):
        for case in cases:
            done = totals[case.name]
            count, took = _slice(case.op, seconds / rounds, max(0, limit - int(done[0])))
            done[0] += count
            done[1] += took
    return [Rate(c.name, int(totals[c.name][0]), totals[c.name][1], c.note) for c in cases]


async def _measure_async(
    cases: list[AsyncCase], seconds: float, rounds: int, limit: int
) -> list[Rate]:
    """The async twin of `_measure`; operations here last milliseconds, so check every call."""
    for case in cases:
        for _ in range(_WARMUP):
            await case.op()
    totals = {case.name: [0, 0.0] for case in cases}
    for _ in range(rounds):
        for case in cases:
            done = totals[case.name]
            count = 0
            start = time.perf_counter()
            deadline = start + seconds / rounds
            while done[0] + count < limit and time.perf_counter() < deadline:
                await case.op()
                count += 1
            done[0] += count
            done[1] += time.perf_counter() - start
    return [Rate(c.name, int(totals[c.name][0]), totals[c.name][1], c.note) for c in cases]


# ------------------------------------------------------------------- (a) CA information


class _CountingKey:
    """Stands in for `Ed25519PublicKey` inside the codec to count real verifications."""

    calls = 0

    def __init__(self, key: Any) -> None:
        self._key = key

    @classmethod
    def from_public_bytes(cls, data: bytes) -> _CountingKey:
        return cls(_REAL_ED25519_PUBLIC.from_public_bytes(data))

    def verify(self, signature: bytes, message: bytes) -> None:
        type(self).calls += 1
        self._key.verify(signature, message)


# Reached by name because the codec imports the class without re-exporting it.
_REAL_ED25519_PUBLIC: Any = getattr(cainfo_module, "Ed25519PublicKey")  # noqa: B009


@contextlib.contextmanager
def _counting_verifies() -> Iterator[type[_CountingKey]]:
    # The codec looks the class up at call time, so swapping the module attribute for one
    # call counts exactly the verifications `accept_successor` performs.
    _CountingKey.calls = 0
    setattr(cainfo_module, "Ed25519PublicKey", _CountingKey)  # noqa: B010
    try:
        yield _CountingKey
    finally:
        setattr(cainfo_module, "Ed25519PublicKey", _REAL_ED25519_PUBLIC)  # noqa: B010


def _verifies_per_accept(trusted: CAInfo, raw: bytes) -> int:
    with _counting_verifies() as counter:
        accept_successor(trusted, decode_cainfo(raw))
        return counter.calls


def _bench_cainfo(
    authority: Authority, rotated: Authority, seconds: float, rounds: int, limit: int
) -> tuple[list[Rate], dict[str, Any]]:
    raw1, raw2 = authority.ca_info_bytes(1), authority.ca_info_bytes(2)
    trusted = decode_cainfo(raw1)
    candidate = decode_cainfo(raw2)
    accept_successor(trusted, candidate)
    rot1, rot2 = rotated.ca_info_bytes(1), rotated.ca_info_bytes(2)
    rot_trusted = decode_cainfo(rot1)
    rot_candidate = decode_cainfo(rot2)
    accept_successor(rot_trusted, rot_candidate)

    verifies = _verifies_per_accept(trusted, raw2)
    rot_verifies = _verifies_per_accept(rot_trusted, rot2)

    # Raw Ed25519 over a message of exactly the size the DL keys sign.
    message = bytes(len(candidate.signed_bytes))
    key = Ed25519PrivateKey.generate()
    signature = key.sign(message)
    public = key.public_key()

    def accept() -> None:
        accept_successor(trusted, decode_cainfo(raw2))

    def accept_rotated() -> None:
        accept_successor(rot_trusted, decode_cainfo(rot2))

    def decode_only() -> None:
        decode_cainfo(raw2)

    def ed25519() -> None:
        public.verify(signature, message)

    cases = [
        Case(
            "cainfo verify (2-of-3, same DL keys)",
            accept,
            f"decode + accept; {len(candidate.signatures)} sigs, {verifies} Ed25519 verifies",
        ),
        Case(
            "cainfo verify (2-of-3, DL keys rotated)",
            accept_rotated,
            f"decode + accept; {len(rot_candidate.signatures)} sigs, {rot_verifies} verifies",
        ),
        Case("cainfo decode only", decode_only, "structure + CA cert DER parse"),
        Case("raw Ed25519 verify", ed25519, f"cryptography, {len(message)}-byte message"),
    ]
    rates = _measure(cases, seconds, rounds, limit)
    facts = {
        "cainfo_bytes": len(raw2),
        "cainfo_signed_bytes": len(candidate.signed_bytes),
        "signatures_per_cainfo": len(candidate.signatures),
        "ed25519_verifies_per_cainfo": verifies,
        "signatures_per_cainfo_rotated": len(rot_candidate.signatures),
        "ed25519_verifies_per_cainfo_rotated": rot_verifies,
    }
    return rates, facts


# ---------------------------------------------------------------- (b) HTTPS on loopback


async def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The trivial server: the handshake is all that is measured, so hang up at once."""
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def _bench_network(
    authority: Authority, seconds: float, rounds: int, limit: int
) -> tuple[list[Rate], dict[str, Any]]:
    expected = authority.ca_info_bytes(2)
    state = TrustState.provision(authority.ca_info(1))
    cert_file, key_file = authority.download_credentials(2)

    runner = web.AppRunner(DownloadServer(authority).app, access_log=None)
    await runner.setup()
    # Port 0 lets the kernel pick a free port; the fetch URL is built from the bound port
    # and the real publication path, so the publish URL's port does not matter here.
    site = web.TCPSite(runner, _HOST, 0, ssl_context=download_tls_context(authority))
    await site.start()
    port = runner.addresses[0][1]
    url = f"https://{_HOST}:{port}{authority.publish_path(2)}"

    trivial = await asyncio.start_server(
        _close_at_once, _HOST, 0, ssl=server_context(cert_file, key_file)
    )
    trivial_port = trivial.sockets[0].getsockname()[1]
    shared_ctx = client_context(state.anchors)

    fetcher = HttpsFetcher()
    first = await fetcher(url, state.anchors, state.time_floor)
    if first != expected:
        raise SystemExit("the download server did not return CA information 2 byte for byte")

    async def fetch() -> None:
        data = await fetcher(url, state.anchors, state.time_floor)
        if data is None or len(data) != len(expected):
            raise SystemExit("a fetch returned something other than CA information 2")

    async def handshake(ctx_factory: Callable[[], ssl.SSLContext]) -> None:
        _, writer = await asyncio.open_connection(
            _HOST, trivial_port, ssl=ctx_factory(), server_hostname=_HOST
        )
        if writer.get_extra_info("ssl_object").version() != "TLSv1.3":
            raise SystemExit("the handshake did not negotiate TLS 1.3")
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()

    async def handshake_shared() -> None:
        await handshake(lambda: shared_ctx)

    async def handshake_fresh() -> None:
        await handshake(lambda: client_context(state.anchors))

    try:
        cases = [
            AsyncCase(
                "HttpsFetcher fetch of 2.rcai",
                fetch,
                "new TLS connection + GET + server verify, one at a time",
            ),
            AsyncCase(
                "raw TLS 1.3 handshake",
                handshake_shared,
                "P-256 download cert, one client context reused",
            ),
            AsyncCase(
                "raw TLS 1.3 handshake, fresh context",
                handshake_fresh,
                "as above, client context built per connection like the fetcher",
            ),
        ]
        rates = await _measure_async(cases, seconds, rounds, limit)
    finally:
        trivial.close()
        await trivial.wait_closed()
        await runner.cleanup()
    return rates, {"fetch_response_bytes": len(expected)}


# -------------------------------------------------------------------------------- main


def _make_authorities(root: Path) -> tuple[Authority, Authority]:
    """Two authorities at generation 2: one keeping its DL keys, one rotating them."""
    at = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    # Only the host of the publish URL matters: it names the download certificate's IP.
    plain = Authority.init(root / "plain", f"https://{_HOST}/ca/", at)
    plain.roll(at + dt.timedelta(seconds=1))
    rotated = Authority.init(root / "rotated", f"https://{_HOST}/ca/", at)
    rotated.roll(at + dt.timedelta(seconds=1), rotate_dl_keys=3)
    return plain, rotated


def _new_loop(choice: str) -> tuple[asyncio.AbstractEventLoop, str]:
    """uvloop by default, as the daemons use it where available (STYLE.md, Dependencies)."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("uvloop is not installed") from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration per measurement")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved slices per case")
    parser.add_argument("--max-ops", type=int, default=2_000_000, help="cap per CPU loop")
    parser.add_argument("--max-fetches", type=int, default=100_000, help="cap per network loop")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be positive and --rounds at least 1")

    with tempfile.TemporaryDirectory(prefix="roost-bench-trust-") as tmp:
        plain, rotated = _make_authorities(Path(tmp))
        crypto_rates, facts = _bench_cainfo(plain, rotated, args.seconds, args.rounds, args.max_ops)
        loop, loop_name = _new_loop(args.loop)
        try:
            net_rates, net_facts = loop.run_until_complete(
                _bench_network(plain, args.seconds, args.rounds, args.max_fetches)
            )
        finally:
            loop.close()

    rates = crypto_rates + net_rates
    table = Table(title=f"Trust rollover (bench/trust.py, {loop_name} loop, loopback)")
    for column in ("measurement", "count", "seconds", "per second", "µs each", "what"):
        table.add_column(column, justify="left" if column in ("measurement", "what") else "right")
    for r in rates:
        table.add_row(
            r.name,
            f"{r.count:,}",
            f"{r.seconds:.2f}",
            f"{r.per_second:,.0f}",
            f"{r.micros:,.1f}",
            r.note,
        )

    accept, accept_rot, decode, ed, fetch, hs, hs_fresh = rates
    verifies = facts["ed25519_verifies_per_cainfo"]
    result: dict[str, Any] = {
        "cainfo_verify_per_s": round(accept.per_second, 1),
        "cainfo_verify_rotated_per_s": round(accept_rot.per_second, 1),
        "cainfo_decode_per_s": round(decode.per_second, 1),
        "ed25519_verify_per_s": round(ed.per_second, 1),
        "fetch_per_s": round(fetch.per_second, 1),
        "tls_handshake_per_s": round(hs.per_second, 1),
        "tls_handshake_fresh_ctx_per_s": round(hs_fresh.per_second, 1),
        **facts,
        **net_facts,
        # The share of an acceptance spent inside Ed25519: 1.0 would mean nothing else costs.
        "ed25519_share_of_cainfo_verify": round(
            accept.micros and verifies * ed.micros / accept.micros, 3
        ),
        "cainfo_verify_vs_ed25519": round(accept.per_second / ed.per_second, 4),
        "fetch_vs_tls_handshake": round(fetch.per_second / hs.per_second, 3),
        "fetch_vs_tls_handshake_fresh_ctx": round(fetch.per_second / hs_fresh.per_second, 3),
        "seconds_per_measurement": args.seconds,
        "rounds": args.rounds,
        "loadavg_1m_after": load_average(),
        "loop": loop_name,
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": ssl.OPENSSL_VERSION,
    }
    print_result(result, table, width=160)


if __name__ == "__main__":
    main()
