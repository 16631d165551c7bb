"""A loopback home in one event loop with every hub's dashboard, and a scripted login.

Tests and ``bench/dashboard.py`` use it: hubs and cameras run in-process (as in
``test_daemons_inprocess.py``), each hub serves its dashboard over TLS with its own
certificate, and an owner is registered in every hub's user store with a card whose codes
the helper knows, so it can log in as a person would: the form, the password, then the
codes for the labels the hub asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from roost.cli.home import make_home
from roost.cli.run import build_hub_daemon, start_hub_dashboard
from roost.config import load_device_config, load_hub_config
from roost.device.daemon import DeviceDaemon, read_own_certificate
from roost.device.spool import FrameSpool
from roost.guard.card import Card, generate_card
from roost.guard.suites import KdfParams
from roost.guard.userstore import SqliteUserStore, make_user
from roost.hub.daemon import HubDaemon
from roost.hub.dashboard import Dashboard
from roost.hub.recorder import Recorder
from roost.pki.updater import TrustUpdater, UpdateConfig

__all__ = [
    "OWNER",
    "PASSWORD",
    "DashboardHome",
    "LoginPage",
    "dashboard_home",
    "insecure_client",
    "login",
]

OWNER = "owner"
PASSWORD = "correct horse battery staple"
# Cheap KDFs keep logins fast in tests; the cost is the user store's, not the protocol's.
_FAST = KdfParams(log2_n=10)
NO_FETCH = UpdateConfig(fetch_timeout=0.5)


@dataclass
class DashboardHome:
    path: Path
    card: Card
    hubs: list[HubDaemon] = field(default_factory=list)
    dashboards: list[Dashboard | None] = field(default_factory=list)
    devices: list[DeviceDaemon] = field(default_factory=list)

    def url(self, index: int) -> str:
        dashboard = self.dashboards[index]
        assert dashboard is not None
        return dashboard.url

    async def start_hub(self, index: int) -> HubDaemon:
        config = load_hub_config(self.path / f"hub-{index + 1}.toml")
        trust = TrustUpdater(config.trust_dir, config=NO_FETCH)
        recorder = Recorder(config.state_dir / "recordings", 1 << 30)
        hub = build_hub_daemon(config, trust, recorder)
        await hub.start()
        self.hubs[index] = hub
        self.dashboards[index] = await start_hub_dashboard(hub, config)
        return hub

    async def stop_hub(self, index: int) -> None:
        dashboard, hub = self.dashboards[index], self.hubs[index]
        if dashboard is not None:
            await dashboard.stop()
            self.dashboards[index] = None
        await hub.stop()
        hub.recorder.close()

    async def start_device(self, index: int) -> DeviceDaemon:
        config = load_device_config(self.path / f"device-{index + 1}.toml")
        device = DeviceDaemon(
            config,
            TrustUpdater(config.trust_dir, config=NO_FETCH),
            FrameSpool(None, 1000, 1 << 26),
            read_own_certificate(config),
        )
        await device.start()
        self.devices[index] = device
        return device


@contextlib.asynccontextmanager
async def dashboard_home(
    tmp_path: Path, hubs: int = 2, devices: int = 3, fps: float = 5.0, start_hubs: int = 1
) -> AsyncIterator[DashboardHome]:
    """A home whose first ``start_hubs`` hubs and every camera are running."""
    make_home(tmp_path, hubs=hubs, devices=devices, loopback=True, fps=fps)
    card = generate_card(6)
    for index in range(hubs):
        store = SqliteUserStore.in_state_dir(tmp_path / f"hub-{index + 1}")
        try:
            store.add(make_user(OWNER, PASSWORD, card, password_kdf=_FAST, pair_kdf=_FAST))
        finally:
            store.close()
    home = DashboardHome(tmp_path, card)
    home.hubs = [None] * hubs  # type: ignore[list-item]
    home.dashboards = [None] * hubs
    home.devices = [None] * devices  # type: ignore[list-item]
    try:
        for index in range(start_hubs):
            await home.start_hub(index)
        for index in range(devices):
            await home.start_device(index)
        yield home
    finally:
        for device in home.devices:
            if device is not None:
                with contextlib.suppress(Exception):
                    await device.stop()
        for index, hub in enumerate(home.hubs):
            if hub is not None and home.dashboards[index] is not None:
                with contextlib.suppress(Exception):
                    await home.stop_hub(index)


def insecure_client() -> aiohttp.ClientSession:
    """A client for the dashboards' self-signed-to-the-home TLS, keeping cookies per host."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    )


@dataclass
class LoginPage:
    status: int
    text: str

    def field(self, name: str) -> str:
        match = re.search(rf'name="{name}" value="([^"]*)"', self.text)
        return html.unescape(match.group(1)) if match else ""

    @property
    def labels(self) -> list[str]:
        match = re.search(r'data-labels="([^"]*)"', self.text)
        return (
            [label for label in html.unescape(match.group(1)).split("|") if label] if match else []
        )


async def login(
    client: aiohttp.ClientSession,
    base: str,
    card: Card,
    *,
    password: str = PASSWORD,
    wrong_code: bool = False,
) -> int:
    """Log in through the form as a browser would; returns the final HTTP status."""
    async with client.get(base + "login") as response:
        form = LoginPage(response.status, await response.text())
    token = form.field("login_csrf")
    data = {"login_csrf": token, "user": OWNER, "password": password}
    async with client.post(base + "login", data=data) as response:
        step = LoginPage(response.status, await response.text())
    if step.status != 200:
        return step.status
    codes = {}
    for index, label in enumerate(step.labels):
        code = card.code_for(label)
        codes[f"code{index}"] = ("2" if code[0] != "2" else "3") + code[1:] if wrong_code else code
    data = {"login_csrf": token, "attempt": step.field("attempt"), **codes}
    async with client.post(base + "login/codes", data=data, allow_redirects=False) as response:
        await response.read()
        return response.status


async def wait_for(condition: object, seconds: float = 10.0) -> None:
    """Poll an async or plain condition until true (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        value = condition() if callable(condition) else condition
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")
