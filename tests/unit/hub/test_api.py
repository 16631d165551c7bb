"""Hub admin API: status JSON and Prometheus metrics; no page, no frame; optional bearer token."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from roost.device.camera import SyntheticCamera
from roost.hub.api import build_app, start_api
from roost.hub.recorder import Recorder
from roost.hub.status import HubStatus

CAMERA = "ab:EIW6Qe0ARnWrsJZTsHWadA"
OTHER_CAMERA = "ab:gC3YWhxMRQGZVBboYIEgxw"
SILENT_CAMERA = "ab:AAAAAAAAAAAAAAAAAAAAAA"
OWN_HUB = "hcsp:Qm9vc3RIdWJPbmVfX19fXw"
PEER_HUB = "hcsp:UGVlckh1YlR3b19fX19fXw"

pytestmark = pytest.mark.timeout(30)


@dataclass
class FakeSession:
    frames_stored: int
    last_seq: int
    connected_at: float


def _status() -> dict[str, Any]:
    return {
        "id": OWN_HUB,
        "name": "attic",
        "endpoint": "192.0.2.10:7400",
        "features": ["jpeg", "night"],
        "max": 8,
        "connected": sorted([CAMERA, OTHER_CAMERA]),
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
                "last_seen_s_ago": 0.42,
            },
            {
                "id": OWN_HUB,
                "endpoint": "192.0.2.10:7400",
                "features": ["jpeg", "night"],
                "connected": 2,
                "max": 8,
                "rank": 2,
                "self": True,
                "last_seen_s_ago": 0.0,
            },
        ],
        "trust": {"current": 1, "prepared": None, "time_floor": "2025-01-01T00:00:00+00:00"},
        "counters": {
            "announcements_accepted": 41,
            "announcements_rejected": {"bad-signature": 3, "stale": 2},
            "announcements_sent": 17,
            "own_echoes": 16,
            "redirects_sent": 5,
            "frames_stored": 1234,
            "frames_duplicate": 7,
            "connections_rejected": {"full": 1},
            "channel_errors": {},
            "trust_rejected": {"chain": 4},
        },
        "remote": {
            "active": 1,
            "connections": 6,
            "refused_busy": 0,
            "refused_rate": 0,
            "logins_ok": 4,
            "logins_granted": 3,
            "logins_failed": 2,
            "calls": 19,
            "sessions_expired": 1,
            "stream_errors": 0,
            "rejected": {"bad-proof": 2},
        },
        "uptime_s": 93.5,
    }


class FakeHub:
    """Has exactly what the API reads from the daemon; counts status() calls."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self.sessions = {
            CAMERA: FakeSession(frames_stored=2, last_seq=2, connected_at=0.0),
            OTHER_CAMERA: FakeSession(frames_stored=0, last_seq=0, connected_at=0.0),
        }
        self.snapshot = _status()
        self.status_calls = 0

    def status(self) -> HubStatus:
        self.status_calls += 1
        return HubStatus.from_json(copy.deepcopy(self.snapshot))


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    store = Recorder(tmp_path, retention_bytes=10_000_000)
    camera = SyntheticCamera("porch")
    for seq in (1, 2):
        at_ms = 1_700_000_000_000 + seq * 100
        store.store(CAMERA, seq, at_ms, camera.mime, camera.capture(seq, at_ms), at_ms + 5)
    return store


@pytest.fixture
def hub(recorder: Recorder) -> FakeHub:
    return FakeHub(recorder)


@pytest.fixture
async def client(hub: FakeHub) -> AsyncIterator[TestClient[aiohttp.web.Request, Any]]:
    async with TestClient(TestServer(build_app(hub))) as test_client:
        yield test_client


# ---------------------------------------------------------------------------- status


async def test_status_is_the_daemon_snapshot_as_json(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/status")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    expected = _status()
    for key in ("id", "features", "max", "connected", "hubs", "counters", "winner"):
        assert body[key] == expected[key]
    assert [hub["rank"] for hub in body["hubs"]] == [1, 2]
    assert all("last_seen_s_ago" in hub for hub in body["hubs"])
    counters = body["counters"]
    assert counters["announcements_accepted"] == 41
    assert counters["announcements_rejected"] == {"bad-signature": 3, "stale": 2}
    assert (counters["redirects_sent"], counters["frames_stored"]) == (5, 1234)


async def test_status_adds_device_progress_from_sessions(client: TestClient[Any, Any]) -> None:
    body = await (await client.get("/api/status")).json()
    rows = {row["id"]: row for row in body["devices"]}
    assert set(rows) == {CAMERA, OTHER_CAMERA}
    assert (rows[CAMERA]["last_seq"], rows[CAMERA]["frames_stored"]) == (2, 2)
    assert rows[CAMERA]["connected_s"] >= 0


# --------------------------------------------------------------------------- frames


async def test_the_admin_address_serves_no_page_and_no_frame(
    client: TestClient[Any, Any],
) -> None:
    # Frames and the home's page are behind the owner's login (roost.hub.dashboard); the
    # admin address, reachable without one, must not serve them.
    for path in ("/", f"/api/devices/{CAMERA}/latest.jpg", f"/api/cameras/{CAMERA}/live.mjpeg"):
        assert (await client.get(path)).status == 404, path


async def test_a_configured_token_is_required_as_bearer(hub: FakeHub) -> None:
    token = "s3cret-token-for-scrapers"
    async with TestClient(TestServer(build_app(hub, token))) as test_client:
        for path in ("/api/status", "/metrics"):
            refused = await test_client.get(path)
            assert refused.status == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
            assert OWN_HUB not in await refused.text()
            wrong = await test_client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status == 401
            right = await test_client.get(path, headers={"Authorization": f"Bearer {token}"})
            assert right.status == 200


# -------------------------------------------------------------------------- metrics


def _scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_mirror_the_status_counters(
    client: TestClient[Any, Any], hub: FakeHub
) -> None:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = _scrape(await response.text())
    expected = {
        ("roost_hub_announcements_accepted_total", ()): 41,
        ("roost_hub_announcements_sent_total", ()): 17,
        ("roost_hub_own_echoes_total", ()): 16,
        ("roost_hub_redirects_sent_total", ()): 5,
        ("roost_hub_frames_stored_total", ()): 1234,
        ("roost_hub_frames_duplicate_total", ()): 7,
        ("roost_hub_announcements_rejected_total", (("reason", "bad-signature"),)): 3,
        ("roost_hub_announcements_rejected_total", (("reason", "stale"),)): 2,
        ("roost_hub_connections_rejected_total", (("reason", "full"),)): 1,
        ("roost_hub_trust_rejected_total", (("reason", "chain"),)): 4,
        ("roost_hub_connected_devices", ()): 2,
        ("roost_hub_max_devices", ()): 8,
        ("roost_hub_live_hubs", ()): 2,
        ("roost_hub_is_winner", ()): 0,
        ("roost_hub_uptime_seconds", ()): 93.5,
        ("roost_hub_remote_sessions", ()): 1,
        ("roost_hub_remote_logins_ok_total", ()): 4,
        ("roost_hub_remote_logins_granted_total", ()): 3,
        ("roost_hub_remote_logins_failed_total", ()): 2,
        ("roost_hub_remote_calls_total", ()): 19,
        ("roost_hub_remote_sessions_expired_total", ()): 1,
        ("roost_hub_remote_rejected_total", (("reason", "bad-proof"),)): 2,
    }
    for key, value in expected.items():
        assert samples[key] == value, key
    info_labels = dict(next(labels for name, labels in samples if name == "roost_hub_info"))
    assert info_labels["id"] == OWN_HUB
    assert info_labels["features"] == "jpeg,night"
    assert not [name for name, _ in samples if not name.startswith("roost_hub_")]


async def test_metrics_are_read_at_scrape_time_without_double_counting(
    client: TestClient[Any, Any], hub: FakeHub
) -> None:
    first = _scrape(await (await client.get("/metrics")).text())
    second = _scrape(await (await client.get("/metrics")).text())
    assert first == second
    assert hub.status_calls == 2
    hub.snapshot["counters"]["frames_stored"] = 2000
    hub.snapshot["winner"] = OWN_HUB
    third = _scrape(await (await client.get("/metrics")).text())
    assert third[("roost_hub_frames_stored_total", ())] == 2000
    assert third[("roost_hub_is_winner", ())] == 1


async def test_each_app_has_its_own_registry(hub: FakeHub) -> None:
    # Two apps in one process must not collide, and the global registry stays untouched.
    build_app(hub)
    build_app(hub)
    assert not [m for m in REGISTRY.collect() if m.name.startswith("roost_hub")]


# ---------------------------------------------------------------------------- runner


async def test_start_api_serves_on_a_free_loopback_port(hub: FakeHub) -> None:
    runner = await start_api(hub, "127.0.0.1", 0)
    try:
        assert runner.bound_port > 0
        url = f"http://127.0.0.1:{runner.bound_port}/api/status"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            assert (await response.json())["id"] == OWN_HUB
    finally:
        await runner.cleanup()
