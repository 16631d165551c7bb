"""The hub dashboard rendered by a real browser: headless Chromium against loopback.

The API is served from the test's own event loop with a real recorder holding JPEG frames
from the synthetic camera and a fake daemon status. Chromium runs as a subprocess with a
virtual-time budget, so the page's script has fetched /api/status and built the DOM before
the screenshot is taken and the DOM is dumped. When CI=true a missing Chromium is a
failure (tests/conftest.py); elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from roost.device.camera import SyntheticCamera
from roost.httpapi import ApiRunner
from roost.hub.api import start_api
from roost.hub.recorder import Recorder
from roost.hub.status import HubStatus
from tests.helpers.net import time_unit
from tests.helpers.tools import require_tool

pytestmark = [pytest.mark.real, pytest.mark.timeout(180)]

CAMERAS = {"ab:EIW6Qe0ARnWrsJZTsHWadA": "porch", "ab:gC3YWhxMRQGZVBboYIEgxw": "garage"}
OWN_HUB = "hcsp:Qm9vc3RIdWJPbmVfX19fXw"
PEER_HUB = "hcsp:UGVlckh1YlR3b19fX19fXw"
# Chromium's first start in a fresh profile can take several seconds on a loaded machine.
_CHROMIUM_TIMEOUT = 60.0
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class FakeSession:
    frames_stored: int
    last_seq: int
    connected_at: float


class FakeHub:
    """The daemon's reporting surface with a fixed, realistic status."""

    def __init__(self, recorder: Recorder, sessions: dict[str, FakeSession]) -> None:
        self.recorder = recorder
        self.sessions = sessions

    def status(self) -> HubStatus:
        return HubStatus.from_json(self._document())

    def _document(self) -> dict[str, Any]:
        return {
            "id": OWN_HUB,
            "name": "attic",
            "endpoint": "192.0.2.10:7400",
            "features": ["jpeg", "night"],
            "max": 8,
            "connected": sorted(self.sessions),
            "winner": PEER_HUB,
            "hubs": [
                {
                    "id": PEER_HUB,
                    "endpoint": "192.0.2.11:7400",
                    "features": ["jpeg", "night", "4k"],
                    "connected": 3,
                    "max": 16,
                    "rank": 1,
                    "self": False,
                    "last_seen_s_ago": 0.4,
                },
                {
                    "id": OWN_HUB,
                    "endpoint": "192.0.2.10:7400",
                    "features": ["jpeg", "night"],
                    "connected": len(self.sessions),
                    "max": 8,
                    "rank": 2,
                    "self": True,
                    "last_seen_s_ago": 0.0,
                },
            ],
            "trust": {"current": 1, "prepared": None, "time_floor": "2025-01-01T00:00:00+00:00"},
            "counters": {
                "announcements_accepted": 41,
                "announcements_rejected": {"bad-signature": 3, "<b>stale</b>": 2},
                "announcements_sent": 17,
                "own_echoes": 16,
                "redirects_sent": 5,
                "frames_stored": 4,
                "frames_duplicate": 1,
                "connections_rejected": {"full": 1},
                "channel_errors": {},
                "trust_rejected": {},
            },
            "uptime_s": 93.5,
        }


def _chromium() -> str:
    return require_tool("chromium", "chromium-browser")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[str]:
    recorder = Recorder(tmp_path / "recordings", retention_bytes=10_000_000)
    sessions: dict[str, FakeSession] = {}
    loop_now = asyncio.get_running_loop().time()
    for device_id, name in CAMERAS.items():
        camera = SyntheticCamera(name)
        for seq in (1, 2):
            at_ms = 1_700_000_000_000 + seq * 100
            payload = camera.capture(seq, at_ms)
            recorder.store(device_id, seq, at_ms, camera.mime, payload, at_ms + 5)
        sessions[device_id] = FakeSession(frames_stored=2, last_seq=2, connected_at=loop_now - 42)
    runner: ApiRunner = await start_api(FakeHub(recorder, sessions), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{runner.bound_port}/"
    finally:
        await runner.cleanup()
        recorder.close()


async def _run_chromium(binary: str, profile: Path, *args: str) -> bytes:
    argv = [
        binary,
        "--headless",
        "--no-sandbox",  # Tests may run as root, where Chromium refuses its sandbox.
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    # The subprocess is awaited asynchronously so this event loop keeps serving the page.
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(), _CHROMIUM_TIMEOUT * time_unit()
        )
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(_PNG_SIGNATURE)
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_dashboard_renders_devices_hubs_and_counters(served: str, tmp_path: Path) -> None:
    chromium = _chromium()
    screenshot = tmp_path / "dashboard.png"
    common = ["--hide-scrollbars", "--window-size=1280,1100", "--virtual-time-budget=3000"]

    await _run_chromium(
        chromium, tmp_path / "profile-shot", *common, f"--screenshot={screenshot}", served
    )
    png = screenshot.read_bytes()
    # A person reviewing the design can ask for a copy of the screenshot.
    keep = os.environ.get("ROOST_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(screenshot, keep)
    assert _png_size(png) == (1280, 1100)
    # A blank page compresses to a few kilobytes; two camera frames and tables do not.
    assert len(png) > 40_000

    dom = await _run_chromium(chromium, tmp_path / "profile-dom", *common, "--dump-dom", served)
    page = dom.decode()
    for device_id in CAMERAS:
        assert f'data-device="{device_id}"' in page
        assert f"/api/devices/{device_id.replace(':', '%3A')}/latest.jpg?t=" in page
    assert page.count('class="frame has-frame"') == len(CAMERAS), "frames did not load"
    assert '<tr class="winner">' in page
    assert PEER_HUB in page and "★ WINNER" in page and "THIS HUB" in page
    assert 'data-counter="frames_stored"' in page
    # Reasons are inserted as text, so markup in a reason shows up escaped.
    assert "&lt;b&gt;stale&lt;/b&gt;" in page and "<b>stale</b>" not in page
    assert '<span class="pill good" id="link">Live</span>' in page
