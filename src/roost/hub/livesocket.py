"""The page's one live connection (adapter, aiohttp WebSocket): every tile and the pushes.

``GET /api/ws`` upgrades to a WebSocket behind the same session cookie as every other
route (the auth middleware answers 401 before any upgrade), with the Origin rule of
state-changing requests. Over it:

- the page sends text ``{"watch": [camera id, ...]}`` whenever the set of tiles it shows
  changes (at most ``LiveMuxConfig.max_tiles``);
- the hub sends each watched camera's frames as binary tile messages
  (``roost.hub.livemux``), newest only: each client has one slot per camera within a
  byte budget, so a slow client skips frames and never queues them;
- the hub sends the pushes of ``/api/live`` as text ``{"type": "home"|"event", "data": …}``.

A camera streaming here is fed from ``roost.hub.live`` (frames as they become durable); a
camera streaming to another hub is read from that hub's ``/peer/cameras/{id}/live.mjpeg``
over the peer link and re-sent. The route of every watched camera is checked against the
home view twice a second, so a tile follows a handover without the page doing anything.
The connection closes (code 4401) when the session reaches its idle or absolute limit; the
page then reloads into the login form.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from roost.errors import RoostError, StateError
from roost.hub.dashboard import Dashboard, check_origin, dashboard_of, session_of_request
from roost.hub.live import BOUNDARY
from roost.hub.livemux import (
    DEVICE_ID,
    INLINE_IMAGE_TYPES,
    FrameSlots,
    LiveMuxConfig,
    MjpegPartReader,
    encode_tile_message,
)

__all__ = ["SESSION_ENDED", "add_routes"]

# The close code the page reads as "log in again" (4000-4999 are the application's).
SESSION_ENDED = 4401
_CHECK_S = 0.5
_RETRY_S = 1.0
_STALL_S = 2.0
_LOCAL = "local"


def add_routes(app: web.Application) -> None:
    """Add ``/api/ws`` to the dashboard application."""
    app.router.add_get("/api/ws", _live_socket)


@dataclass
class _Pump:
    route: str
    task: asyncio.Task[None]


class _TileSocket:
    """One page's connection: what it watches, the pumps feeding it, its frame slots."""

    def __init__(self, dashboard: Dashboard, ws: web.WebSocketResponse) -> None:
        self.dashboard = dashboard
        self.ws = ws
        self.config = LiveMuxConfig()
        self.slots = FrameSlots(self.config)
        self.ready = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.wanted: tuple[str, ...] = ()
        self.pumps: dict[str, _Pump] = {}
        self.retry_at: dict[str, float] = {}
        self.sent = 0

    # -------------------------------------------------------------------- messages in

    def receive_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict) or not isinstance(message.get("watch"), list):
            return
        ids = [i for i in message["watch"] if isinstance(i, str) and DEVICE_ID.fullmatch(i)]
        self.wanted = tuple(dict.fromkeys(ids))[: self.config.max_tiles]
        self.retry_at.clear()
        self.reconcile()

    # ------------------------------------------------------------------------ routing

    def _route(self, device_id: str) -> str | None:
        camera = self.dashboard.view.cameras.get(device_id)
        if camera is None or camera.hub is None:
            return _LOCAL if device_id in self.dashboard.daemon.sessions else None
        return _LOCAL if camera.hub == self.dashboard.daemon.identifier else camera.hub

    def reconcile(self) -> None:
        """Start, stop or move each watched camera's pump to where the camera is now."""
        now = asyncio.get_running_loop().time()
        for device_id in list(self.pumps):
            if device_id not in self.wanted:
                self.pumps.pop(device_id).task.cancel()
                self.slots.discard(device_id)
        for device_id in self.wanted:
            route = self._route(device_id)
            pump = self.pumps.get(device_id)
            if pump is not None and (pump.route != route or pump.task.done()):
                pump.task.cancel()
                del self.pumps[device_id]
                pump = None
            if pump is not None or route is None or now < self.retry_at.get(device_id, 0.0):
                continue
            self.retry_at[device_id] = now + _RETRY_S
            source = self._local(device_id) if route == _LOCAL else self._peer(device_id, route)
            self.pumps[device_id] = _Pump(route, asyncio.create_task(source))

    def stop(self) -> None:
        for pump in self.pumps.values():
            pump.task.cancel()
        self.pumps.clear()

    # -------------------------------------------------------------------------- pumps

    def _offer(self, device_id: str, mime: str, payload: bytes) -> None:
        # Only pictures become tiles; a device's other payloads are never shown inline.
        if mime in INLINE_IMAGE_TYPES and self.slots.offer(device_id, payload):
            self.ready.set()

    async def _local(self, device_id: str) -> None:
        dashboard = self.dashboard
        assert dashboard.live is not None
        viewer = dashboard.live.watch(device_id)
        if viewer is None:
            return  # the hub's viewer bound: tried again later
        try:
            if device_id not in dashboard.daemon.sessions:
                return
            with contextlib.suppress(StateError):
                first = await asyncio.to_thread(dashboard.daemon.recorder.latest, device_id)
                if first is not None:
                    self._offer(device_id, first.mime, first.payload)
            while True:
                frame = await viewer.next(_STALL_S)
                if frame is None:
                    if device_id not in dashboard.daemon.sessions:
                        return  # the camera left this hub: reconcile follows it
                    continue
                self._offer(device_id, frame.mime, frame.payload)
        finally:
            viewer.close()

    async def _peer(self, device_id: str, hub_id: str) -> None:
        dashboard = self.dashboard
        endpoint = dashboard.view.endpoint_of(hub_id)
        if endpoint is None:
            return
        try:
            upstream = await dashboard.peers.open(
                dashboard.daemon.trust.state,
                hub_id,
                endpoint,
                f"/peer/cameras/{device_id}/live.mjpeg",
            )
        except RoostError:
            return
        try:
            if upstream.status != 200:
                return
            reader = MjpegPartReader(BOUNDARY, self.config)
            with contextlib.suppress(RoostError, ConnectionError, OSError, TimeoutError):
                async for chunk in upstream.chunks():
                    reader.receive_data(chunk)
                    while (part := reader.next_part()) is not None:
                        self._offer(device_id, part.mime, part.payload)
        finally:
            upstream.close()

    # ------------------------------------------------------------------- messages out

    async def send_frames(self) -> None:
        while True:
            item = self.slots.take()
            if item is None:
                self.ready.clear()
                await self.ready.wait()
                continue
            async with self.send_lock:
                # send_bytes waits for the socket to drain past a small buffer, so a slow
                # client holds at most one message here while its slots keep only the
                # newest frame of each camera.
                await self.ws.send_bytes(encode_tile_message(*item))
            self.sent += 1

    async def send_pushes(self) -> None:
        view = self.dashboard.view
        subscriber = view.subscribe()
        try:
            while True:
                if subscriber.overflowed:
                    view.resync(subscriber)
                name, data = await subscriber.queue.get()
                async with self.send_lock:
                    await self.ws.send_str(f'{{"type": {json.dumps(name)}, "data": {data}}}')
        finally:
            view.unsubscribe(subscriber)


async def _live_socket(request: web.Request) -> web.StreamResponse:
    dashboard = dashboard_of(request)
    # A browser always names the page opening a WebSocket; another site's page is refused
    # (the session cookie is SameSite=Strict as well).
    check_origin(request)
    session = session_of_request(request)
    key = session.csrf
    if dashboard.streams_by_session.get(key, 0) >= dashboard.options.max_streams_per_session:
        raise web.HTTPTooManyRequests(text="too many streams for this session")
    token = request.cookies.get(dashboard.options.sessions.cookie_name)
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=64 * 1024, compress=False)
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="a WebSocket upgrade is expected here")
    await ws.prepare(request)
    dashboard.streams_by_session[key] = dashboard.streams_by_session.get(key, 0) + 1
    tiles = _TileSocket(dashboard, ws)
    loop = asyncio.get_running_loop()
    workers: list[asyncio.Task[Any]] = [
        asyncio.create_task(tiles.send_frames()),
        asyncio.create_task(tiles.send_pushes()),
        asyncio.create_task(_watch_session(dashboard, tiles, token, loop)),
    ]
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                tiles.receive_text(message.data)
    except (ConnectionError, OSError):
        pass
    finally:
        tiles.stop()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        dashboard.streams_by_session[key] -= 1
        if dashboard.streams_by_session[key] <= 0:
            del dashboard.streams_by_session[key]
        with contextlib.suppress(Exception):
            await ws.close()
    return ws


async def _watch_session(
    dashboard: Dashboard, tiles: _TileSocket, token: str | None, loop: asyncio.AbstractEventLoop
) -> None:
    """Follow the watched cameras, and close the connection when the session ends."""
    while dashboard.sessions.alive(token, loop.time()):
        tiles.reconcile()
        await asyncio.sleep(_CHECK_S)
    await tiles.ws.close(code=SESSION_ENDED, message=b"session ended")
