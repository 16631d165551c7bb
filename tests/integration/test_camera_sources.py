"""Camera sources for real: an HTTP MJPEG stream and a video file made by ffmpeg, decoded
by PyAV, re-encoded, recorded by a real hub; a stream that dies shows as failing and
recovers when it returns (docs/hub-and-device.md, "Camera sources")."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from PIL import Image

from roost.cli.home import free_loopback_ports, make_home
from roost.cli.run import build_hub_daemon
from roost.config import CameraSettings, DeviceConfig, load_device_config, load_hub_config
from roost.device.daemon import DeviceDaemon, read_own_certificate
from roost.device.source_health import SourceHealthConfig
from roost.device.spool import FrameSpool
from roost.hub.daemon import HubDaemon
from roost.hub.recorder import Recorder
from roost.pki.updater import TrustUpdater, UpdateConfig
from tests.helpers.net import free_port
from tests.helpers.tools import require_tool
from tests.helpers.waits import async_wait_until, scaled

pytestmark = pytest.mark.timeout(90)
NO_FETCH = UpdateConfig(fetch_timeout=0.5)
WIDTH, HEIGHT = 64, 48
# Quick retries and a short stall limit keep the failure and the recovery within seconds.
QUICK = SourceHealthConfig(retry_initial=0.1, retry_max=0.5, stall_timeout=3.0)


def _device(config: DeviceConfig, camera: CameraSettings, fps: float) -> DeviceDaemon:
    config = dataclasses.replace(config, camera=camera, fps=fps, width=WIDTH, height=HEIGHT)
    return DeviceDaemon(
        config,
        TrustUpdater(config.trust_dir, config=NO_FETCH),
        FrameSpool(None, 1000, 1 << 26),
        read_own_certificate(config),
    )


@asynccontextmanager
async def _running(
    tmp_path: Path, camera: CameraSettings, fps: float, with_hub: bool = True
) -> AsyncIterator[tuple[HubDaemon | None, DeviceDaemon]]:
    make_home(tmp_path / "home", hubs=1, devices=1, loopback=True, fps=fps)
    hub = None
    if with_hub:
        hub_config = load_hub_config(tmp_path / "home" / "hub-1.toml")
        hub = build_hub_daemon(
            hub_config,
            TrustUpdater(hub_config.trust_dir, config=NO_FETCH),
            Recorder(hub_config.state_dir / "recordings", 1 << 30),
        )
        await hub.start()
    device = _device(load_device_config(tmp_path / "home" / "device-1.toml"), camera, fps)
    try:
        await device.start()
        yield hub, device
    finally:
        await device.stop()
        if hub is not None:
            await hub.stop()
            hub.recorder.close()


@contextmanager
def _mjpeg_server(ffmpeg: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """ffmpeg serving a 10 fps test pattern as multipart JPEG over HTTP to one client."""
    process = subprocess.Popen(
        [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
            "-f", "mpjpeg", "-q:v", "6", "-listen", "1", f"http://127.0.0.1:{port}/",
        ],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def _retries(device: DeviceDaemon) -> int:
    status = device.status().camera
    return 0 if status is None else status.retries


def _camera_state(device: DeviceDaemon) -> tuple[str, str | None]:
    status = device.status().camera
    assert status is not None
    return status.state, status.reason


@pytest.mark.real
async def test_an_http_mjpeg_stream_is_recorded_fails_when_killed_and_recovers(
    tmp_path: Path,
) -> None:
    ffmpeg = require_tool("ffmpeg")
    # The camera's URL must be known before ffmpeg binds it, as with any real camera.
    port = free_loopback_ports(1, socket.SOCK_STREAM)[0]
    url = f"http://127.0.0.1:{port}/"
    camera = CameraSettings(source=url, health=QUICK, open_timeout=2.0)
    with _mjpeg_server(ffmpeg, port) as stream:
        async with _running(tmp_path, camera, fps=5.0) as (hub, device):
            assert hub is not None
            await async_wait_until(
                lambda: hub.counters.frames_stored >= 5, 20, what="stream frames recorded"
            )
            assert _camera_state(device) == ("ok", None)
            stored = hub.recorder.latest(device.identifier)
            assert stored is not None and stored.mime == "image/jpeg"
            assert Image.open(io.BytesIO(stored.payload)).size == (WIDTH, HEIGHT)

            stream.kill()
            stream.wait(timeout=10)
            await async_wait_until(
                lambda: _camera_state(device)[0] == "failing", 10, what="source failing"
            )
            status = device.status().camera
            assert status is not None
            assert status.reason in ("source-lost", "source-unavailable", "source-stalled")
            assert status.since is not None and status.detail
            # Retries keep failing while nothing listens (connection refused).
            await async_wait_until(lambda: _retries(device) >= 2, 10, what="retries")
            stored_before = hub.counters.frames_stored

            with _mjpeg_server(ffmpeg, port):
                await async_wait_until(
                    lambda: _camera_state(device) == ("ok", None), 20, what="source recovered"
                )
                await async_wait_until(
                    lambda: hub.counters.frames_stored >= stored_before + 5,
                    20,
                    what="frames recorded after the recovery",
                )
            recovered = device.status().camera
            assert recovered is not None and sum(recovered.failures.values()) >= 2


@pytest.mark.real
async def test_a_video_file_delivers_frames_at_the_configured_rate(tmp_path: Path) -> None:
    ffmpeg = require_tool("ffmpeg")
    clip = tmp_path / "clip.avi"
    subprocess.run(
        [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=1",
            "-c:v", "mjpeg", "-q:v", "6", str(clip),
        ],
        check=True,
        timeout=30,
    )  # fmt: skip
    fps = 8.0
    camera = CameraSettings(source=str(clip), health=QUICK)
    async with _running(tmp_path, camera, fps=fps, with_hub=False) as (_, device):
        await async_wait_until(lambda: device.counters.captured >= 1, 10, what="first frame")
        loop = asyncio.get_running_loop()
        start, first = loop.time(), device.counters.captured
        # The one-second clip loops: three seconds span two restarts at its end.
        await asyncio.sleep(scaled(3.0))
        rate = (device.counters.captured - first) / (loop.time() - start)
        assert _camera_state(device) == ("ok", None)
    assert fps * 0.7 <= rate <= fps * 1.1, rate
    frame = device.spool.unacked(after=0, limit=1)[0]
    assert Image.open(io.BytesIO(frame.payload)).size == (WIDTH, HEIGHT)


async def test_a_missing_file_is_failing_unavailable_and_retried(tmp_path: Path) -> None:
    camera = CameraSettings(source=str(tmp_path / "no-such.mp4"), health=QUICK)
    async with _running(tmp_path, camera, fps=5.0, with_hub=False) as (_, device):
        await async_wait_until(lambda: _retries(device) >= 2, 10, what="retries of a missing file")
        status = device.status().camera
        assert status is not None
        assert (status.state, status.reason, status.kind) == (
            "failing",
            "source-unavailable",
            "file",
        )
        assert status.retry_at is not None and status.frames == 0
        assert device.counters.captured == 0
        # The status file carries the same object (what `roost device status` reads).
        device.write_status()
        assert '"source-unavailable"' in device.config.status_file.read_text()


async def test_an_rtsp_camera_that_refuses_is_unavailable_and_its_password_is_not_shown(
    tmp_path: Path,
) -> None:
    # Nothing listens on this loopback port: the connection is refused at once.
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/stream"
    camera = CameraSettings(source=url, health=QUICK, open_timeout=2.0)
    async with _running(tmp_path, camera, fps=5.0, with_hub=False) as (_, device):
        await async_wait_until(
            lambda: _camera_state(device)[0] == "failing", 10, what="rtsp source failing"
        )
        device.write_status()
        written = device.config.status_file.read_text()
        status = device.status().camera
    assert status is not None and status.kind == "rtsp"
    assert status.reason == "source-unavailable"
    assert status.source == url.replace("hunter2", "***")
    assert "hunter2" not in written and "admin:***@" in written
