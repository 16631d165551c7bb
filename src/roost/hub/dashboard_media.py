"""The dashboard's media (adapter): live streams, stills, recordings, and the peer app.

Live: ``GET /api/cameras/{id}/live.mjpeg`` is a ``multipart/x-mixed-replace`` stream of the
camera's newest recorded frames (``roost.hub.live``). A camera streaming to another hub is
streamed from that hub over the peer link (``roost.hub.peers``) and passed through, so the
page keeps showing every camera of the home wherever it is. A stream ends when its camera
is no longer where it was; the page then opens the camera's new address.

Recordings: browse by camera and capture-time range, play a range back at its own pace,
download a range as one Motion-JPEG file (``ffplay -f mjpeg`` plays it), delete a range
(POST, login and CSRF token required like every state change).

Peer app: what other hubs ask for (``/peer/home``, ``/peer/cameras/{id}/live.mjpeg``,
``/peer/cameras/{id}/latest.jpg``), served on a Unix socket in a private directory that
only the bridge of verified hub connections reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from roost.clock import wall_ms_now
from roost.errors import RoostError, StateError
from roost.httpapi import NO_STORE
from roost.hub.dashboard import Dashboard, attach, dashboard_of, session_of_request
from roost.hub.events import EventKind, HomeEvent
from roost.hub.live import BOUNDARY, mjpeg_part
from roost.hub.livemux import DEVICE_ID, INLINE_IMAGE_TYPES
from roost.hub.peers import bridge_to_peer_app
from roost.hub.recorder import FrameEntry, IncomingFrame, Recorder, StoredFrame

__all__ = ["add_routes", "start_peer_app", "stop_peer_app"]

_DEVICE_ID = DEVICE_ID
_INLINE_IMAGE_TYPES = INLINE_IMAGE_TYPES
_STREAM_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
# A live stream that saw no frame for this long checks whether its camera moved or stopped.
_STALL_S = 2.0
_PEER_DASHBOARD = web.AppKey("roost_peer_dashboard", Dashboard)
# Playback never waits longer than this between two frames (a gap in the recording).
_MAX_GAP_S = 1.0
_MAX_PLAY_FRAMES = 100_000


def add_routes(app: web.Application, dashboard: Dashboard) -> None:
    """Add the media routes to the dashboard application."""
    app.router.add_get("/api/cameras/{device_id}/live.mjpeg", _live)
    app.router.add_get("/api/cameras/{device_id}/latest.jpg", _latest)
    app.router.add_get("/api/recordings", _recordings)
    app.router.add_get("/api/recordings/{device_id}/play.mjpeg", _play)
    app.router.add_get("/api/recordings/{device_id}/download", _download)
    app.router.add_post("/api/recordings/{device_id}/delete", _delete)


def _device(request: web.Request) -> str:
    device_id = request.match_info["device_id"]
    if not _DEVICE_ID.fullmatch(device_id):
        raise web.HTTPBadRequest(text="not a camera identifier")
    return device_id


def _frame_response(frame: StoredFrame) -> web.Response:
    headers = {
        **NO_STORE,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if frame.mime in _INLINE_IMAGE_TYPES:
        content_type = frame.mime
    else:
        # A device chooses its mime type: anything not an image is an opaque download, so
        # a hostile device cannot get markup run in the dashboard's origin.
        content_type = "application/octet-stream"
        headers["Content-Disposition"] = "attachment"
    return web.Response(body=frame.payload, content_type=content_type, headers=headers)


async def _prepare_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            **NO_STORE,
            "Content-Type": _STREAM_TYPE,
            "X-Content-Type-Options": "nosniff",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


async def _end_stream(response: web.StreamResponse) -> web.StreamResponse:
    # The viewer may be gone already: ending its stream is then nothing to report.
    with contextlib.suppress(Exception):
        await response.write_eof()
    return response


async def _write_part(response: web.StreamResponse, frame: StoredFrame | IncomingFrame) -> None:
    """One stream part; a mime type that is not an image is sent as an opaque one."""
    mime = frame.mime if frame.mime in _INLINE_IMAGE_TYPES else "application/octet-stream"
    await response.write(mjpeg_part(mime, frame.payload, frame.seq, frame.captured_at_ms))


# ------------------------------------------------------------------------------- live


async def _live(request: web.Request) -> web.StreamResponse:
    dashboard = dashboard_of(request)
    device_id = _device(request)
    session = session_of_request(request)
    key = session.csrf
    if dashboard.streams_by_session.get(key, 0) >= dashboard.options.max_streams_per_session:
        raise web.HTTPTooManyRequests(text="too many streams for this session")
    dashboard.streams_by_session[key] = dashboard.streams_by_session.get(key, 0) + 1
    try:
        camera = dashboard.view.cameras.get(device_id)
        here = dashboard.daemon.identifier
        if camera is not None and camera.hub is not None and camera.hub != here:
            return await _proxy(request, dashboard, camera.hub, device_id)
        return await _stream_local(request, dashboard, device_id)
    finally:
        dashboard.streams_by_session[key] -= 1
        if dashboard.streams_by_session[key] <= 0:
            del dashboard.streams_by_session[key]


async def _stream_local(
    request: web.Request, dashboard: Dashboard, device_id: str
) -> web.StreamResponse:
    """The camera's frames as this hub records them, newest only per viewer."""
    assert dashboard.live is not None
    viewer = dashboard.live.watch(device_id)
    if viewer is None:
        raise web.HTTPServiceUnavailable(text="too many live viewers")
    try:
        if device_id not in dashboard.daemon.sessions:
            # Not streaming here (offline, or just moved): say so rather than hang.
            raise web.HTTPNotFound(text="the camera is not streaming to this hub")
        response = await _prepare_stream(request)
        with contextlib.suppress(StateError):
            first = await asyncio.to_thread(dashboard.daemon.recorder.latest, device_id)
            if first is not None:
                # The same rule as every later part: a mime type that is not an image goes
                # out as an opaque one (the stored type is the device's word).
                await _write_part(response, first)
        while True:
            frame = await viewer.next(_STALL_S)
            if frame is None:
                if device_id not in dashboard.daemon.sessions:
                    break  # the camera left this hub: the page follows it
                continue
            # write() waits for the socket to drain, so a slow viewer holds one frame in
            # its slot and skips the rest (LiveViewer.offer counts them).
            await _write_part(response, frame)
    except (ConnectionError, OSError):
        pass
    finally:
        viewer.close()
    return await _end_stream(response)


async def _proxy(
    request: web.Request, dashboard: Dashboard, hub_id: str, device_id: str
) -> web.StreamResponse:
    """Pass a camera's stream through from the hub that has it (mutual TLS, peer link)."""
    endpoint = dashboard.view.endpoint_of(hub_id)
    if endpoint is None:
        raise web.HTTPNotFound(text="the camera's hub is not live")
    try:
        upstream = await dashboard.peers.open(
            dashboard.daemon.trust.state, hub_id, endpoint, f"/peer/cameras/{device_id}/live.mjpeg"
        )
    except RoostError:
        raise web.HTTPBadGateway(text="the camera's hub did not answer") from None
    try:
        if upstream.status != 200:
            raise web.HTTPNotFound(text="the camera is not streaming there")
        response = await _prepare_stream(request)
        with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
            # The peer's body is the stream's parts already framed; write() waiting for
            # the browser slows this read, and the peer then skips frames for us.
            async for chunk in upstream.chunks():
                await response.write(chunk)
    finally:
        upstream.close()
    return await _end_stream(response)


async def _latest(request: web.Request) -> web.Response:
    dashboard = dashboard_of(request)
    device_id = _device(request)
    try:
        frame = await asyncio.to_thread(dashboard.daemon.recorder.latest, device_id)
    except StateError:
        raise web.HTTPInternalServerError(text="the frame could not be read") from None
    if frame is None:
        raise web.HTTPNotFound(text="no frame stored here for this camera")
    return _frame_response(frame)


# ------------------------------------------------------------------------- recordings


def _range(request: web.Request) -> tuple[int, int]:
    try:
        start = int(request.query.get("from", "0"))
        end = int(request.query.get("to", str(wall_ms_now() + 86_400_000)))
    except ValueError:
        raise web.HTTPBadRequest(text="from and to are Unix milliseconds") from None
    if end < start:
        raise web.HTTPBadRequest(text="the range ends before it starts")
    return start, end


_PASSED_HEADERS = ("content-type", "content-disposition", "x-roost-frames")


async def _from_hub(request: web.Request) -> web.StreamResponse | None:
    """Serve a recordings GET from the hub named by ``hub=`` (not this one) over the peer
    link, or None when the request is for this hub's own recordings."""
    dashboard = dashboard_of(request)
    hub_id = request.query.get("hub", "")
    if not hub_id or hub_id == dashboard.daemon.identifier or request.path.startswith("/peer/"):
        return None
    endpoint = dashboard.view.endpoint_of(hub_id)
    if endpoint is None:
        raise web.HTTPNotFound(text="no such live hub")
    query = urllib.parse.urlencode([(k, v) for k, v in request.query.items() if k != "hub"])
    path = "/peer" + urllib.parse.quote(request.path.removeprefix("/api"), safe="/:")
    path += f"?{query}" if query else ""
    try:
        upstream = await dashboard.peers.open(dashboard.daemon.trust.state, hub_id, endpoint, path)
    except RoostError:
        raise web.HTTPBadGateway(text="that hub did not answer") from None
    try:
        headers = {**NO_STORE, "X-Content-Type-Options": "nosniff"}
        headers.update(
            {name: upstream.headers[name] for name in _PASSED_HEADERS if name in upstream.headers}
        )
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, OSError):
            async for chunk in upstream.chunks():
                await response.write(chunk)
    finally:
        upstream.close()
    return await _end_stream(response)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _where_recorded(handler: _Handler) -> _Handler:
    """A recordings GET served by the hub named in ``hub=``, or here without it."""

    async def route(request: web.Request) -> web.StreamResponse:
        proxied = await _from_hub(request)
        return proxied if proxied is not None else await handler(request)

    return route


async def _entries(recorder: Recorder, device_id: str, start: int, end: int) -> list[FrameEntry]:
    """The camera's frames recorded in the range; 404 when there is none."""
    entries = await asyncio.to_thread(recorder.index, device_id, start, end, _MAX_PLAY_FRAMES)
    if not entries:
        raise web.HTTPNotFound(text="nothing recorded in that range")
    return entries


@_where_recorded
async def _recordings(request: web.Request) -> web.StreamResponse:
    """Cameras recorded here with their span, or one camera's frames in a range."""
    dashboard = dashboard_of(request)
    recorder = dashboard.daemon.recorder
    body: dict[str, Any] = {
        "hub": dashboard.daemon.identifier,
        "retention_bytes": recorder.retention_bytes,
        "bytes_stored": recorder.bytes_stored,
    }
    cameras = await asyncio.to_thread(recorder.cameras)
    names = await asyncio.to_thread(recorder.names)
    body["cameras"] = [
        {
            "id": c.device_id,
            "name": names.get(c.device_id),
            "frames": c.frames,
            "bytes": c.bytes,
            "first_ms": c.first_ms,
            "last_ms": c.last_ms,
        }
        for c in cameras
    ]
    if "camera" in request.query:
        device_id = request.query["camera"]
        if not _DEVICE_ID.fullmatch(device_id):
            raise web.HTTPBadRequest(text="not a camera identifier")
        start, end = _range(request)
        entries = await asyncio.to_thread(recorder.index, device_id, start, end, 100_000)
        body["range"] = {
            "camera": device_id,
            "from": start,
            "to": end,
            "frames": len(entries),
            "bytes": sum(e.size for e in entries),
            "first_ms": entries[0].captured_at_ms if entries else None,
            "last_ms": entries[-1].captured_at_ms if entries else None,
            # A bounded sample of the frames, for a time strip.
            "sample": [
                {"seq": e.seq, "at_ms": e.captured_at_ms}
                for e in entries[:: max(1, len(entries) // 200)]
            ],
        }
    return web.json_response(body, headers=NO_STORE)


@_where_recorded
async def _play(request: web.Request) -> web.StreamResponse:
    """A recorded range as a stream, at the pace it was captured (``speed`` times it)."""
    dashboard = dashboard_of(request)
    device_id = _device(request)
    start, end = _range(request)
    try:
        speed = min(max(float(request.query.get("speed", "1")), 0.1), 64.0)
    except ValueError:
        raise web.HTTPBadRequest(text="speed is a number") from None
    recorder = dashboard.daemon.recorder
    entries = await _entries(recorder, device_id, start, end)
    response = await _prepare_stream(request)
    previous_at: int | None = None
    try:
        for entry in entries:
            if previous_at is not None:
                gap = (entry.captured_at_ms - previous_at) / 1000 / speed
                await asyncio.sleep(min(max(gap, 0.0), _MAX_GAP_S))
            previous_at = entry.captured_at_ms
            frame = await asyncio.to_thread(recorder.read, device_id, entry.seq)
            if frame is None:
                continue  # removed by retention meanwhile
            await _write_part(response, frame)
    except (ConnectionError, OSError):
        pass
    return await _end_stream(response)


@_where_recorded
async def _download(request: web.Request) -> web.StreamResponse:
    """A recorded range as one file: the JPEG frames back to back (Motion JPEG)."""
    dashboard = dashboard_of(request)
    device_id = _device(request)
    start, end = _range(request)
    recorder = dashboard.daemon.recorder
    entries = await _entries(recorder, device_id, start, end)
    name = f"{device_id.replace(':', '-')}-{start}-{end}.mjpeg"
    response = web.StreamResponse(
        headers={
            **NO_STORE,
            "Content-Type": "video/x-motion-jpeg",
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Content-Type-Options": "nosniff",
            "X-Roost-Frames": str(len(entries)),
        }
    )
    await response.prepare(request)
    try:
        for entry in entries:
            frame = await asyncio.to_thread(recorder.read, device_id, entry.seq)
            if frame is not None:
                await response.write(frame.payload)
    except (ConnectionError, OSError):
        pass
    return await _end_stream(response)


async def _delete(request: web.Request) -> web.Response:
    """Delete a recorded range (login and CSRF token checked by the middleware)."""
    dashboard = dashboard_of(request)
    if request.query.get("hub", dashboard.daemon.identifier) != dashboard.daemon.identifier:
        return web.json_response(
            {"error": "recordings are deleted on the hub that stores them"}, status=400
        )
    device_id = _device(request)
    start, end = _range(request)
    deleted = await asyncio.to_thread(dashboard.daemon.recorder.delete_range, device_id, start, end)
    user = session_of_request(request).user_id
    dashboard.view.record(
        [
            HomeEvent(
                wall_ms_now(),
                EventKind.RECORDINGS_DELETED,
                dashboard.daemon.identifier,
                device_id,
                "",
                f"{user} deleted {deleted} recorded frame(s) of {device_id}",
                deleted,
            )
        ]
    )
    return web.json_response({"deleted": deleted}, headers=NO_STORE)


# --------------------------------------------------------------------------- peer app


async def _peer_home(request: web.Request) -> web.Response:
    return web.json_response(request.app[_PEER_DASHBOARD].view.peer_home(), headers=NO_STORE)


async def _peer_live(request: web.Request) -> web.StreamResponse:
    # Only this hub's own cameras: a peer request is never passed on, so two hubs with
    # stale views cannot bounce a stream between them.
    return await _stream_local(request, request.app[_PEER_DASHBOARD], _device(request))


async def _peer_latest(request: web.Request) -> web.Response:
    dashboard = request.app[_PEER_DASHBOARD]
    frame = await asyncio.to_thread(dashboard.daemon.recorder.latest, _device(request))
    if frame is None:
        raise web.HTTPNotFound()
    return _frame_response(frame)


async def start_peer_app(dashboard: Dashboard) -> None:
    """Serve the peer app on a private Unix socket and route verified hubs to it."""
    app = web.Application()
    app[_PEER_DASHBOARD] = dashboard
    attach(app, dashboard)
    app.router.add_get("/peer/home", _peer_home)
    # Recordings are read where they were stored; another hub's page reads them here
    # (read only: deleting needs the owner's session on the hub that stores them).
    app.router.add_get("/peer/recordings", _recordings)
    app.router.add_get("/peer/recordings/{device_id}/play.mjpeg", _play)
    app.router.add_get("/peer/recordings/{device_id}/download", _download)
    app.router.add_get("/peer/cameras/{device_id}/live.mjpeg", _peer_live)
    app.router.add_get("/peer/cameras/{device_id}/latest.jpg", _peer_latest)
    # A fresh directory only this user can enter: the socket path is short (the limit is
    # about 100 bytes) and no other local user can reach the app behind the bridge.
    directory = Path(tempfile.mkdtemp(prefix="roost-peer-"))
    socket_path = directory / "peer.sock"
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.UnixSite(runner, str(socket_path)).start()
    dashboard.peer_runner, dashboard.peer_socket = runner, socket_path
    dashboard._peer_dir = directory

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await bridge_to_peer_app(socket_path, reader, writer)

    daemon: Any = dashboard.daemon
    daemon.peer_web = serve


async def stop_peer_app(dashboard: Dashboard) -> None:
    daemon: Any = dashboard.daemon
    if getattr(daemon, "peer_web", None) is not None:
        daemon.peer_web = None
    if dashboard.peer_runner is not None:
        await dashboard.peer_runner.cleanup()
        dashboard.peer_runner = None
    if dashboard._peer_dir is not None:
        shutil.rmtree(dashboard._peer_dir, ignore_errors=True)
        dashboard._peer_dir = None
