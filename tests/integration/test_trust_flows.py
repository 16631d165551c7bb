"""The seed's three rollover flows, end to end on loopback, with no clock on the device.

A real HTTPS download server publishes CA information; a real TLS application server
(a hub) presents certificates from whichever generation the authority issues; the device
side does exactly what a device does: TLS with both slots loaded, then verification with
the trust store, then a failure-triggered fetch and another try.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from roost.errors import VerificationError
from roost.pki.authority import Authority, IssuedLeaf
from roost.pki.cainfo import MAX_CAINFO_SIZE
from roost.pki.certs import Role, cert_to_pem, key_to_pem
from roost.pki.download import DownloadServer, download_tls_context
from roost.pki.tls import client_context, peer_certificate, server_context
from roost.pki.trust import TrustState
from roost.pki.truststore import save_state
from roost.pki.updater import FetchOutcome, TrustUpdater, UpdateConfig
from tests.helpers.net import free_port

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)
FAST = UpdateConfig(failure_backoff_initial=0.0, failure_backoff_max=0.0, fetch_timeout=5.0)


@dataclass
class Home:
    tmp: Path
    authority: Authority
    port: int
    runner: web.AppRunner | None = None

    async def serve_downloads(self, generation: int | None = None) -> None:
        await self.stop_downloads()
        self.runner = web.AppRunner(DownloadServer(self.authority).app, access_log=None)
        await self.runner.setup()
        ctx = download_tls_context(self.authority, generation)
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=ctx).start()

    async def stop_downloads(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def device(self, name: str = "device") -> TrustUpdater:
        state_dir = self.tmp / name
        save_state(state_dir, TrustState.provision(self.authority.ca_info(1)))
        return TrustUpdater(state_dir, config=FAST)


@pytest.fixture
async def home(tmp_path: Path) -> AsyncIterator[Home]:
    port = free_port()
    authority = Authority.init(tmp_path / "ca", f"https://127.0.0.1:{port}/ca/", T0)
    h = Home(tmp_path, authority, port)
    try:
        yield h
    finally:
        await h.stop_downloads()


class AppServer:
    """A TLS server presenting one hub certificate at a time (swap with `present`)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ctx: ssl.SSLContext | None = None
        self.server: asyncio.Server | None = None

    def present(self, leaf: IssuedLeaf) -> None:
        cert, key = self.tmp / f"app-{leaf.serial}.pem", self.tmp / f"app-{leaf.serial}.key"
        cert.write_bytes(cert_to_pem(leaf.cert))
        key.write_bytes(key_to_pem(leaf.key))
        self.ctx = server_context(cert, key)

    async def start(self) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        def factory() -> asyncio.Protocol:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            return asyncio.StreamReaderProtocol(reader, handle, loop=loop)

        # The SSL context is chosen per connection so the certificate can be swapped live.
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(factory, "127.0.0.1", 0, ssl=self._context())
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def _context(self) -> ssl.SSLContext:
        outer = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        outer.minimum_version = ssl.TLSVersion.TLSv1_3

        def pick(sock: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            assert self.ctx is not None
            sock.context = self.ctx

        outer.sni_callback = pick  # type: ignore[assignment]
        assert self.ctx is not None
        outer.load_cert_chain(*self._any_cert())
        return outer

    def _any_cert(self) -> tuple[Path, Path]:
        pem = sorted(self.tmp.glob("app-*.pem"))[-1]
        return pem, pem.with_suffix(".key")

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def authenticate(device: TrustUpdater, port: int) -> int:
    """Connect as a device does; returns the generation the server's certificate chains to.

    TLS loads both slots and skips time (section 1); the leaf is then checked by the trust
    store. On failure the device fetches newer CA information and tries once more.
    """
    for attempt in range(2):
        leaf = None
        try:
            _reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(device.state.anchors), server_hostname="hub"
            )
            leaf = peer_certificate(writer.get_extra_info("ssl_object"))
            writer.close()
            node, _, new_state = device.state.verify_node(leaf)
            device.commit(new_state)
            held = [new_state.current, *([new_state.prepared] if new_state.prepared else [])]
            return next(g.generation for g in held if g.ca_certificate == node.anchor)
        except (ssl.SSLError, VerificationError):
            if attempt:
                raise
            # When TLS itself refused the chain there is no leaf to test: walk to the end.
            await device.on_verification_failure(asyncio.get_running_loop().time(), leaf)
    raise AssertionError("unreachable")


async def test_fig7_normal_roll_at_expiry(home: Home) -> None:
    app = AppServer(home.tmp)
    app.present(home.authority.issue(Role.HUB, T0, ips=["127.0.0.1"]))
    port = await app.start()
    device = home.device()
    try:
        assert await authenticate(device, port) == 1
        # S502–S504: five years before CA 1 expires, generation 2 and its download server.
        home.authority.roll(T0 + 15 * YEAR)
        await home.serve_downloads()
        assert await device.poll(0.0) is True
        assert device.state.prepared is not None and device.state.prepared.generation == 2
        # The device's floor moved to generation 2's issue time, so the hub's first
        # certificate (ten years) is now known to be expired; servers renew under CA 1.
        with pytest.raises(VerificationError):
            await authenticate(device, port)
        app.present(home.authority.issue(Role.HUB, T0 + 15 * YEAR, ips=["127.0.0.1"]))
        assert await authenticate(device, port) == 1  # servers still on CA 1
        # S510: at expiry the servers move to generation 2; the device follows.
        home.authority.activate()
        app.present(home.authority.issue(Role.HUB, T0 + 20 * YEAR, ips=["127.0.0.1"]))
        assert await authenticate(device, port) == 2
        assert device.state.current.generation == 2 and device.state.prepared is None
    finally:
        await app.close()


async def test_fig8_revoked_before_download_server_is_up(home: Home) -> None:
    app = AppServer(home.tmp)
    app.present(home.authority.issue(Role.HUB, T0, ips=["127.0.0.1"]))
    port = await app.start()
    device = home.device()
    try:
        assert await authenticate(device, port) == 1
        # CA 1 is compromised: generation 2 revokes it and issuing moves at once (S509–S511).
        home.authority.roll(T0 + YEAR, revoke_current=True)
        app.present(home.authority.issue(Role.HUB, T0 + YEAR, ips=["127.0.0.1"]))
        await home.serve_downloads()
        assert await authenticate(device, port) == 2
        assert device.state.current.generation == 2 and device.state.prepared is None
        # The attacker's certificates from CA 1 no longer verify.
        attacker = home.authority.issue(Role.HUB, T0 + YEAR, generation=1)
        with pytest.raises(VerificationError):
            device.state.verify_node(attacker.cert)
    finally:
        await app.close()


async def test_fig9_revoked_while_download_server_is_up(home: Home) -> None:
    app = AppServer(home.tmp)
    app.present(home.authority.issue(Role.HUB, T0, ips=["127.0.0.1"]))
    port = await app.start()
    device = home.device()
    try:
        home.authority.roll(T0 + 15 * YEAR)
        await home.serve_downloads()
        assert await device.poll(0.0) is True
        assert device.state.newest.generation == 2
        app.present(home.authority.issue(Role.HUB, T0 + 15 * YEAR, ips=["127.0.0.1"]))
        assert await authenticate(device, port) == 1
        # CA 1 is compromised while generation 2 is already out: generation 3 revokes.
        home.authority.roll(T0 + 16 * YEAR, revoke_current=True)
        app.present(home.authority.issue(Role.HUB, T0 + 16 * YEAR, ips=["127.0.0.1"]))
        assert await authenticate(device, port) == 3
        assert device.state.current.generation == 3 and device.state.prepared is None
        for generation in (1, 2):
            stale = home.authority.issue(Role.HUB, T0 + 16 * YEAR, generation=generation)
            with pytest.raises(VerificationError):
                device.state.verify_node(stale.cert)
    finally:
        await app.close()


async def test_device_three_generations_behind_catches_up(home: Home) -> None:
    device = home.device()
    for step in range(1, 4):
        home.authority.roll(T0 + step * YEAR)
        home.authority.activate()
    await home.serve_downloads()
    app = AppServer(home.tmp)
    app.present(home.authority.issue(Role.HUB, T0 + 4 * YEAR, ips=["127.0.0.1"]))
    port = await app.start()
    try:
        assert await authenticate(device, port) == 4
        assert device.state.current.generation == 4
    finally:
        await app.close()


async def test_not_published_is_not_an_error(home: Home) -> None:
    home.authority.roll(T0 + YEAR)
    await home.serve_downloads()
    device = home.device()
    assert await device.update_once() is FetchOutcome.STORED
    assert await device.update_once() is FetchOutcome.NOT_PUBLISHED


async def test_download_server_from_untrusted_ca_rejected(home: Home, tmp_path: Path) -> None:
    home.authority.roll(T0 + YEAR)
    rogue = Authority.init(tmp_path / "rogue", f"https://127.0.0.1:{home.port}/ca/", T0)
    rogue.roll(T0 + YEAR)
    home.authority = rogue  # the rogue authority serves on the device's URL
    await home.serve_downloads()
    device_dir = tmp_path / "dev"
    save_state(device_dir, TrustState.provision(Authority.load(tmp_path / "ca").ca_info(1)))
    device = TrustUpdater(device_dir, config=FAST)
    before = device.state
    with pytest.raises(VerificationError):
        await device.update_once()
    assert device.state == before and device.rejected["chain"] == 1


async def test_oversized_and_forged_documents_rejected_and_counted(home: Home) -> None:
    device = home.device()
    bodies = {
        "oversized": b"RCAI" + bytes(MAX_CAINFO_SIZE + 10),
        "bad-magic": b"JUNK" * 100,
    }
    for reason, body in bodies.items():

        async def fetch(_url: str, _anchors: object, _floor: object, body: bytes = body) -> bytes:
            return body

        device.fetcher = fetch
        with pytest.raises(Exception) as exc:
            await device.update_once()
        assert getattr(exc.value, "reason", None) == reason
        assert device.rejected[reason] == 1
    assert device.state.prepared is None
