"""The home's web app in a real browser: Debian's Chromium driven by Playwright.

One browser for the module and one loopback home (two hubs, three cameras, every hub with
its dashboard over TLS) in the module's event loop. The tests log in through the form as a
person would, watch the cameras play, start the better hub and see the handover arrive on
the open page without a reload, keep using the page of the hub that lost (a bookmark),
and stop a camera to see its tile go offline. Screenshots are kept under
``test-artifacts/dashboard/`` (gitignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.helpers.dashboard import OWNER, PASSWORD, DashboardHome, dashboard_home
from tests.helpers.tools import require_tool
from tests.helpers.waits import scaled

pytestmark = [
    pytest.mark.real,
    pytest.mark.timeout(180),
    pytest.mark.asyncio(loop_scope="module"),
]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
_ARGS = [
    "--headless",
    "--no-sandbox",  # Tests may run as root, where Chromium refuses its sandbox.
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Any]:
    chromium = require_tool("chromium", "chromium-browser")
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=chromium, args=_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def home(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DashboardHome]:
    async with dashboard_home(tmp_path_factory.mktemp("home"), start_hubs=1) as running:
        yield running


async def _shot(page: Any, name: str) -> bytes:
    data: bytes = await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    return data


async def _fill_password(page: Any, url: str) -> None:
    await page.goto(url)
    await page.wait_for_selector("#password-form", state="visible")
    await page.fill("#user", OWNER)
    await page.fill("#password", PASSWORD)
    await page.click("#next")
    await page.wait_for_selector("#codes-form", state="visible")


async def _log_in(page: Any, home: DashboardHome, url: str) -> None:
    await _fill_password(page, url)
    inputs = await page.query_selector_all("#codes input")
    for field in inputs:
        label = await field.get_attribute("data-label")
        await field.fill(home.card.code_for(label))
    await page.click("#login")
    await page.wait_for_selector("#cameras .tile", timeout=scaled(10) * 1000)


async def _tile_images(page: Any) -> dict[str, bytes]:
    """Each live tile's picture as rendered now, by camera."""
    shots = {}
    for tile in await page.query_selector_all("#cameras .tile.live"):
        camera = await tile.get_attribute("data-camera")
        image = await tile.query_selector("img")
        shots[camera] = await image.screenshot()
    return shots


async def _wait_playing(page: Any, count: int) -> None:
    # naturalWidth > 0 once the first part of the multipart stream has been decoded.
    await page.wait_for_function(
        f"""() => Array.from(document.querySelectorAll('#cameras .tile.live img'))
              .filter((img) => img.naturalWidth > 0).length >= {count}""",
        timeout=scaled(15) * 1000,
    )


async def _assert_pictures_change(page: Any, cameras: int) -> None:
    first = await _tile_images(page)
    deadline = time.monotonic() + scaled(6)
    changed: set[str] = set()
    while time.monotonic() < deadline and len(changed) < cameras:
        await asyncio.sleep(0.4)
        later = await _tile_images(page)
        changed |= {camera for camera, shot in later.items() if shot != first.get(camera)}
    assert len(first) == cameras and len(changed) == cameras, (len(first), changed)


@pytest_asyncio.fixture(loop_scope="module")
async def eight_cameras(tmp_path: Path) -> AsyncIterator[DashboardHome]:
    async with dashboard_home(tmp_path / "eight", hubs=1, devices=8, start_hubs=1) as running:
        yield running


async def test_eight_live_cameras_on_one_page_over_one_connection(
    browser: Any, eight_cameras: DashboardHome
) -> None:
    # Runs first, before the module's other home starts. A browser opens six HTTP/1.1
    # connections to a host: with a stream per tile, eight tiles would starve the page.
    home = eight_cameras
    context = await browser.new_context(
        ignore_https_errors=True, viewport={"width": 1400, "height": 1200}
    )
    try:
        page = await context.new_page()
        sockets: list[str] = []
        streams: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.on("request", lambda r: streams.append(r.url) if "live.mjpeg" in r.url else None)
        await _log_in(page, home, home.url(0))
        await _wait_playing(page, 8)
        await _shot(page, "08-eight-cameras")
        await _assert_pictures_change(page, 8)
        await _shot(page, "09-eight-cameras-later")
        # The page's own requests still answer while all eight tiles play.
        started = time.monotonic()
        answers = await page.evaluate(
            """async () => {
                const urls = ["/api/events?limit=20", "/api/home", "/api/recordings"];
                const got = await Promise.all(urls.map((u) => fetch(u)));
                return got.map((r) => r.status);
            }"""
        )
        assert answers == [200, 200, 200]
        assert time.monotonic() - started < scaled(3)
        assert await page.locator("#events .event").count() > 0
        assert len(sockets) == 1 and sockets[0].endswith("/api/ws"), sockets
        assert streams == [], "the page opened per-camera streams"
    finally:
        await context.close()


async def test_the_login_page_appears_and_a_wrong_code_is_refused(
    browser: Any, home: DashboardHome
) -> None:
    context = await browser.new_context(ignore_https_errors=True)
    try:
        page = await context.new_page()
        response = await page.goto(home.url(0))
        assert response.status == 401  # the page is the login form, not the home
        assert await page.is_visible("#password-form")
        assert await page.query_selector("#cameras") is None
        await _shot(page, "01-login")
        await _fill_password(page, home.url(0))
        await _shot(page, "02-codes")
        for field in await page.query_selector_all("#codes input"):
            code = home.card.code_for(await field.get_attribute("data-label"))
            await field.fill(("3" if code[0] == "2" else "2") + code[1:])
        async with page.expect_response(lambda r: r.url.endswith("/login/codes")) as answer:
            await page.click("#login")
        assert (await answer.value).status == 401
        await page.wait_for_selector("#message:not(:empty)")
        assert "Login refused" in await page.inner_text("#message")
        assert await page.query_selector("#cameras") is None
        cookies = {c["name"] for c in await context.cookies()}
        assert "roost_session" not in cookies
        await _shot(page, "03-refused")
    finally:
        await context.close()


async def test_live_cameras_follow_a_handover_on_the_bookmarked_page(
    browser: Any, home: DashboardHome
) -> None:
    context = await browser.new_context(
        ignore_https_errors=True, viewport={"width": 1400, "height": 1000}
    )
    try:
        page = await context.new_page()
        await _log_in(page, home, home.url(0))
        session = next(c for c in await context.cookies() if c["name"] == "roost_session")
        assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"

        # Three cameras play: each picture changes between two looks.
        await _wait_playing(page, 3)
        await _shot(page, "04-home-live")
        await _assert_pictures_change(page, 3)
        await _shot(page, "05-home-live-later")

        # The better hub starts: the election moves, and the open page shows it without a
        # reload (pushed over Server-Sent Events).
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        hub_two = await home.start_hub(1)
        started = time.monotonic()
        await page.wait_for_selector(
            f'#hubs tr.elected[data-hub="{hub_two.identifier}"]', timeout=scaled(15) * 1000
        )
        await page.wait_for_selector(
            '#events .event[data-kind="handover"]', timeout=scaled(5) * 1000
        )
        assert navigations == [], "the page reloaded"
        handover_seen_s = time.monotonic() - started

        # The page bookmarked on hub-1 keeps showing every camera, now streaming to hub-2
        # and passed through hub-1 over the peer link.
        await page.wait_for_function(
            """() => Array.from(document.querySelectorAll('#cameras .tile.live'))
                  .filter((t) => t.textContent.includes('streaming to hub-2')).length === 3""",
            timeout=scaled(20) * 1000,
        )
        # Each tile names its camera (the name its hello gave) above its identifier, also
        # for the cameras on the other hub (PROTOCOL.md section 4; names ride the peer link).
        shown = await page.evaluate(
            """() => Object.fromEntries(Array.from(document.querySelectorAll('#cameras .tile'))
                  .map((t) => [t.dataset.camera, [t.querySelector('.camera-name').textContent,
                                                  t.querySelector('.mono').textContent]]))"""
        )
        assert shown == {d.identifier: [d.config.name, d.identifier] for d in home.devices}
        await _wait_playing(page, 3)
        await _assert_pictures_change(page, 3)
        await _shot(page, "06-after-handover-on-hub-1")
        timeline = await page.inner_text("#events")
        assert "handover: the elected hub is now " + hub_two.identifier in timeline

        # A camera stops: its tile stays, as an offline tile with when it was last seen.
        stopped = home.devices[2]
        await stopped.stop()
        camera_id = stopped.identifier
        await page.wait_for_selector(
            f'#cameras .tile.offline[data-camera="{camera_id}"]', timeout=scaled(15) * 1000
        )
        tile_text = await page.inner_text(f'#cameras .tile[data-camera="{camera_id}"]')
        assert "OFFLINE" in tile_text and "last seen" in tile_text
        # The offline tile keeps the camera's last known name.
        assert stopped.config.name in tile_text and camera_id in tile_text
        assert len(await page.query_selector_all("#cameras .tile")) == 3
        await _shot(page, "07-camera-offline")
        print(f"handover shown on the page {handover_seen_s:.2f} s after hub-2 started")
    finally:
        await context.close()
