"""The home's web app over real TLS on loopback: nothing without a login, CSRF on every
state change, cookie flags, lock-out, recordings, events, the push stream, the peer link."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from roost.errors import TransportError
from roost.hub.eventlog import EventQuery
from roost.hub.live import BOUNDARY
from roost.hub.livemux import decode_tile_message
from roost.hub.livesocket import SESSION_ENDED
from roost.pki.tls import client_context
from tests.helpers.dashboard import DashboardHome, dashboard_home, insecure_client, login
from tests.helpers.waits import async_wait_until

pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="module")]

_IDENTIFIER = re.compile(r"(ab|hcsp):[A-Za-z0-9_-]{22}")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def home(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DashboardHome]:
    async with dashboard_home(tmp_path_factory.mktemp("home"), start_hubs=1) as running:
        await async_wait_until(
            lambda: (
                len(running.hubs[0].sessions) == 3
                and all(running.hubs[0].recorder.count(d) >= 3 for d in running.hubs[0].sessions)
            ),
            20,
            what="three cameras recording on hub-1",
        )
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def owner(home: DashboardHome) -> AsyncIterator[aiohttp.ClientSession]:
    client = insecure_client()
    try:
        assert await login(client, home.url(0), home.card) == 303
        yield client
    finally:
        await client.close()


def _cameras(home: DashboardHome) -> list[str]:
    return sorted(home.hubs[0].sessions)


def _urls(camera: str) -> list[tuple[str, str]]:
    return [
        ("GET", ""),
        ("GET", "api/home"),
        ("GET", "api/events"),
        ("GET", "api/events?kind=handover"),
        ("GET", "api/live"),
        ("GET", "api/ws"),
        ("GET", f"api/cameras/{camera}/live.mjpeg"),
        ("GET", f"api/cameras/{camera}/latest.jpg"),
        ("GET", "api/recordings"),
        ("GET", f"api/recordings?camera={camera}"),
        ("GET", f"api/recordings/{camera}/play.mjpeg"),
        ("GET", f"api/recordings/{camera}/download"),
        ("POST", f"api/recordings/{camera}/delete"),
        ("POST", "logout"),
        ("GET", "api/status"),
        ("GET", "metrics"),
        ("GET", "peer/home"),
    ]


async def test_without_a_session_nothing_is_served_and_nothing_leaks(
    home: DashboardHome,
) -> None:
    base = home.url(0)
    camera = _cameras(home)[0]
    async with insecure_client() as stranger:
        for cookie in (None, "0" * 64):
            if cookie is not None:
                stranger.cookie_jar.update_cookies({"roost_session": cookie})
            for method, path in _urls(camera):
                async with stranger.request(method, base + path) as response:
                    body = await response.read()
                    # The page answers 401 with the login form, everything else 401 with
                    # a fixed body, even what the dashboard does not serve at all (the
                    # admin API and the peer app live elsewhere).
                    assert response.status == 401, (method, path, response.status)
                    if path == "":
                        assert 'id="password-form"' in body.decode()
                    assert not _IDENTIFIER.search(body.decode("latin-1")), (method, path)
                    assert b"\xff\xd8" not in body, "a JPEG was served"
                    assert not response.headers.get("Content-Type", "").startswith("multipart")


async def test_the_session_cookie_is_httponly_strict_and_secure(home: DashboardHome) -> None:
    async with insecure_client() as client:
        async with client.get(home.url(0) + "login") as response:
            assert "HttpOnly" in response.headers["Set-Cookie"]
        assert await login(client, home.url(0), home.card) == 303
        cookie = next(c for c in client.cookie_jar if c.key == "roost_session")
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        assert cookie["secure"] is True
        assert cookie["path"] == "/"
        assert 0 < int(cookie["max-age"]) <= 12 * 3600
        assert len(cookie.value) == 64


async def test_state_changes_need_the_csrf_token_and_this_origin(
    home: DashboardHome, owner: aiohttp.ClientSession
) -> None:
    base = home.url(0)
    camera = _cameras(home)[0]
    recorder = home.hubs[0].recorder
    async with owner.get(base) as response:
        page = await response.text()
    csrf = re.search(r'name="roost-csrf" content="([0-9a-f]+)"', page)
    assert csrf is not None
    first = next(c for c in recorder.cameras() if c.device_id == camera)
    span = f"?from=0&to={first.first_ms}"
    target = base + f"api/recordings/{camera}/delete{span}"
    for headers in ({}, {"X-CSRF-Token": "0" * 64}):
        async with owner.post(target, headers=headers) as response:
            assert response.status == 403
    cross = {"X-CSRF-Token": csrf.group(1), "Origin": "https://evil.example"}
    async with owner.post(target, headers=cross) as response:
        assert response.status == 403
    # Nothing was deleted (new frames keep arriving, so the span is what is compared).
    assert len(recorder.index(camera, 0, first.first_ms)) == 1
    async with owner.post(target, headers={"X-CSRF-Token": csrf.group(1)}) as response:
        assert response.status == 200
        assert (await response.json())["deleted"] == 1
    assert recorder.index(camera, 0, first.first_ms) == []
    # Logging out needs the token too (a form field here), then the cookie is worthless.
    async with owner.post(base + "logout", data={"csrf": "wrong"}) as response:
        assert response.status == 403
    token = next(c.value for c in owner.cookie_jar if c.key == "roost_session")
    async with owner.post(base + "logout", data={"csrf": csrf.group(1)}) as response:
        # Followed the redirect: the login form, with the cookie cleared.
        assert response.status == 401 and response.url.path == "/"
    async with insecure_client() as replay:
        replay.cookie_jar.update_cookies({"roost_session": token})
        async with replay.get(base + "api/home") as response:
            assert response.status == 401


async def test_home_events_and_push_for_the_owner(
    home: DashboardHome, owner: aiohttp.ClientSession
) -> None:
    base = home.url(0)
    # The election settles a hold-down after the hub set or its load changed.
    doc: dict[str, object] = {}
    for _ in range(100):
        async with owner.get(base + "api/home") as response:
            doc = await response.json()
        if doc["hubs"][0]["elected"]:  # type: ignore[index]
            break
        await asyncio.sleep(0.1)
    assert {c["id"] for c in doc["cameras"] if c["online"]} == set(_cameras(home))  # type: ignore[attr-defined]
    assert [h["elected"] for h in doc["hubs"]] == [True]  # type: ignore[attr-defined]
    trust = doc["trust"]
    assert trust["current"] == 1 and trust["warnings"] == []  # type: ignore[index]
    async with owner.get(base + "api/events?kind=camera-online") as response:
        events = (await response.json())["events"]
    assert {e["subject"] for e in events} == set(_cameras(home))
    assert {e["kind"] for e in events} == {"camera-online"}
    async with owner.get(base + "api/events?kind=no-such-kind") as response:
        assert response.status == 400
    async with owner.get(base + "api/live") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        async with asyncio.timeout(5):
            text = b""
            while b"event: home" not in text or not text.endswith(b"\n\n"):
                chunk = await response.content.readany()
                assert chunk, "the push stream ended"
                text += chunk
    assert b'"cameras"' in text


async def _tiles_over_the_socket(
    owner: aiohttp.ClientSession, base: str, cameras: list[str], frames_each: int
) -> tuple[dict[str, int], set[str]]:
    """Frames per camera and push types received over the page's one WebSocket."""
    origin = base.rstrip("/")
    counts = dict.fromkeys(cameras, 0)
    pushes: set[str] = set()
    async with owner.ws_connect(base + "api/ws", headers={"Origin": origin}) as ws:
        await ws.send_json({"watch": [*cameras, "not-a-camera"]})
        async with asyncio.timeout(15):
            while min(counts.values()) < frames_each or "home" not in pushes:
                message = await ws.receive()
                if message.type == aiohttp.WSMsgType.TEXT:
                    pushes.add(message.json()["type"])
                    continue
                assert message.type == aiohttp.WSMsgType.BINARY, message
                camera, payload = decode_tile_message(message.data)
                assert camera in counts and payload.startswith(b"\xff\xd8")
                counts[camera] += 1
    return counts, pushes


async def test_every_tile_and_the_pushes_over_one_websocket(
    home: DashboardHome, owner: aiohttp.ClientSession
) -> None:
    base = home.url(0)
    counts, pushes = await _tiles_over_the_socket(owner, base, _cameras(home), 3)
    assert set(counts) == set(_cameras(home)) and "home" in pushes
    # Another site's page cannot open it, even with the owner's cookie.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await owner.ws_connect(base + "api/ws", headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    # A plain GET with the session is not an upgrade.
    async with owner.get(base + "api/ws") as response:
        assert response.status == 400
    # The session ends (here: closed on the hub, as logout does): the socket closes with
    # the code the page reads as "log in again", and a new one is refused.
    dashboard = home.dashboards[0]
    assert dashboard is not None
    token = next(c.value for c in owner.cookie_jar if c.key == "roost_session")
    async with owner.ws_connect(base + "api/ws") as ws:
        dashboard.sessions.close(token)
        async with asyncio.timeout(5):
            while (await ws.receive()).type not in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
            ):
                pass
        assert ws.close_code == SESSION_ENDED
    async with owner.get(base + "api/ws") as response:
        assert response.status == 401


async def test_live_stream_recordings_play_and_download(
    home: DashboardHome, owner: aiohttp.ClientSession
) -> None:
    base = home.url(0)
    camera = _cameras(home)[1]
    async with owner.get(base + f"api/cameras/{camera}/live.mjpeg") as response:
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        parts: set[bytes] = set()
        async with asyncio.timeout(10):
            buffer = b""
            while len(parts) < 3:
                chunk = await response.content.readany()
                assert chunk, "the stream ended"
                buffer += chunk
                for match in re.finditer(rb"X-Roost-Seq: (\d+)", buffer):
                    parts.add(match.group(1))
    assert len(parts) >= 3, "the stream did not move"
    async with owner.get(base + f"api/recordings?camera={camera}") as response:
        listing = await response.json()
    assert {c["id"] for c in listing["cameras"]} == set(_cameras(home))
    assert listing["retention_bytes"] == 1 << 30
    recorded = listing["range"]
    assert recorded["frames"] >= 3
    span = f"from={recorded['first_ms']}&to={recorded['first_ms'] + 400}"
    async with owner.get(base + f"api/recordings/{camera}/download?{span}") as response:
        data = await response.read()
        frames = int(response.headers["X-Roost-Frames"])
        assert "attachment" in response.headers["Content-Disposition"]
    assert frames >= 1 and data.count(b"\xff\xd8\xff") == frames
    async with owner.get(base + f"api/recordings/{camera}/play.mjpeg?{span}&speed=8") as response:
        played = await response.read()
    assert played.count(f"--{BOUNDARY}".encode()) == frames
    async with owner.get(base + f"api/cameras/{camera}/latest.jpg") as response:
        assert response.content_type == "image/jpeg"
    async with owner.get(base + "api/cameras/not-a-camera/latest.jpg") as response:
        assert response.status == 400


async def test_repeated_failures_lock_the_owner_out_as_in_the_guard(tmp_path: Path) -> None:
    async with dashboard_home(tmp_path, hubs=1, devices=0) as home, insecure_client() as client:
        base = home.url(0)
        for _ in range(5):
            assert await login(client, base, home.card, password="wrong") == 401
        # The right password and codes are refused while the lock holds.
        assert await login(client, base, home.card) == 401
        events = home.dashboards[0].events  # type: ignore[union-attr]
        reasons = [e.reason for _, e in events.query(EventQuery(kinds=("web-login-failed",)))]
        assert reasons[0] == "locked-out" and reasons.count("bad-password") == 5


async def test_the_trust_panel_says_in_plain_words_when_rollover_is_stuck(
    home: DashboardHome, owner: aiohttp.ClientSession
) -> None:
    hub = home.hubs[0]
    trust, view = hub.trust, home.dashboards[0].view  # type: ignore[union-attr]
    original_fetcher, original_state = trust.fetcher, trust.state

    async def unreachable(*_args: object) -> bytes | None:
        raise TransportError("connection refused", reason="fetch")

    async def nothing_new(*_args: object) -> bytes | None:
        return None

    try:
        trust.fetcher = unreachable
        with pytest.raises(TransportError):
            await trust.update_once()
        panel = view.trust_panel()
        assert panel["download_server"] == "unreachable"
        assert any("did not answer the last fetch" in w for w in panel["warnings"])
        await async_wait_until(
            lambda: any(
                e.kind == "trust-fetch" and "unreachable" in e.text
                for _, e in view.events.query(EventQuery(kinds=("trust-fetch",)))
            ),
            5,
            what="the fetch on the timeline",
        )
        trust.fetcher = nothing_new
        await trust.update_once()
        assert view.trust_panel()["download_server"] == "reachable"
        assert view.trust_panel()["warnings"] == []
        # Ten days before the current CA expires, with no successor prepared.
        expires = dt.datetime.fromisoformat(view.trust_panel()["current_expires"])
        trust.state = dataclasses.replace(original_state, time_floor=expires - dt.timedelta(10))
        async with owner.get(home.url(0) + "api/home") as response:
            warnings = (await response.json())["trust"]["warnings"]
        assert len(warnings) == 1 and warnings[0].startswith("Rollover is stuck")
        assert "no successor is prepared" in warnings[0]
    finally:
        trust.fetcher, trust.state = original_fetcher, original_state


async def test_another_hubs_cameras_and_recordings_through_this_hub(
    home: DashboardHome, owner: aiohttp.ClientSession
) -> None:
    # Runs last in the module: hub-2 starts, wins, and the cameras move to it.
    base = home.url(0)
    hub_two = await home.start_hub(1)
    await async_wait_until(
        lambda: (
            len(hub_two.sessions) == 3
            and all(hub_two.recorder.count(d) >= 3 for d in hub_two.sessions)
        ),
        30,
        what="the cameras recording on hub-2",
    )
    camera = sorted(hub_two.sessions)[0]
    async with owner.get(base + f"api/recordings?hub={hub_two.identifier}&camera={camera}") as r:
        listing = await r.json()
    assert {c["id"] for c in listing["cameras"]} == set(hub_two.sessions)
    assert listing["hub"] == hub_two.identifier and listing["range"]["frames"] >= 3
    first = listing["range"]["first_ms"]
    span = f"hub={hub_two.identifier}&from={first}&to={first + 400}"
    async with owner.get(base + f"api/recordings/{camera}/download?{span}") as response:
        data = await response.read()
        frames = int(response.headers["X-Roost-Frames"])
        assert "attachment" in response.headers["Content-Disposition"]
    assert frames >= 1 and data.count(b"\xff\xd8\xff") == frames
    # The live stream comes through hub-1 from hub-2 (the peer link), once hub-1 has
    # heard from hub-2 where the camera is.
    view = home.dashboards[0].view  # type: ignore[union-attr]
    await async_wait_until(
        lambda: view.cameras[camera].hub == hub_two.identifier, 10, what="hub-1 sees the move"
    )
    async with owner.get(base + f"api/cameras/{camera}/live.mjpeg") as response:
        assert response.status == 200
        seqs: set[bytes] = set()
        async with asyncio.timeout(10):
            buffer = b""
            while len(seqs) < 2:
                chunk = await response.content.readany()
                assert chunk, "the stream ended"
                buffer += chunk
                seqs |= set(re.findall(rb"X-Roost-Seq: (\d+)", buffer))
    # The page's WebSocket carries hub-2's cameras too, read from hub-2 by hub-1.
    counts, _ = await _tiles_over_the_socket(owner, base, sorted(hub_two.sessions), 2)
    assert min(counts.values()) >= 2
    async with owner.get(base) as response:
        csrf = re.search(r'name="roost-csrf" content="([0-9a-f]+)"', await response.text())
    assert csrf is not None
    target = base + f"api/recordings/{camera}/delete?{span}"
    async with owner.post(target, headers={"X-CSRF-Token": csrf.group(1)}) as response:
        assert response.status == 400  # deleted only where stored, logged in there
    assert hub_two.recorder.count(camera) >= 3


async def test_a_device_certificate_cannot_use_the_peer_link(home: DashboardHome) -> None:
    hub = home.hubs[0]
    device = home.devices[0]
    context = client_context(hub.trust.state.anchors, device.config.cert, device.config.key)
    context.set_alpn_protocols(["roost-web/1"])
    before = hub.counters.connections_rejected["not-hub"]
    reader, writer = await asyncio.open_connection(*hub.bound_address, ssl=context)
    writer.write(b"GET /peer/home HTTP/1.0\r\n\r\n")
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    assert answer == b""
    assert hub.counters.connections_rejected["not-hub"] == before + 1
