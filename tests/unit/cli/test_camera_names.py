"""Cameras by the names their hellos gave (PROTOCOL.md section 4) where the home's configs
are not at hand: `roost hub status` labels them, `roost connect --camera NAME` finds them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from roost.cli.connect import _pick_camera
from roost.cli.run import print_hub_status
from roost.guard.calls import Response

HUB = "hcsp:" + "H" * 22
PORCH, GARAGE, OLD = ("ab:" + c * 22 for c in "PGO")


def _status() -> dict[str, Any]:
    return {
        "id": HUB,
        "name": "hub-1",
        "endpoint": "127.0.0.1:40000",
        "features": ["hcsp"],
        "max": 8,
        # OLD is an older device that sent no name.
        "connected": [GARAGE, OLD, PORCH],
        "connected_names": {GARAGE: "garage", PORCH: "porch"},
        "winner": HUB,
        "hubs": [],
        "trust": {"current": 1, "prepared": None, "time_floor": "2026-01-01T00:00:00+00:00"},
        "counters": {"frames_stored": 3},
        "remote": None,
        "uptime_s": 5.0,
        "broker": None,
    }


def test_hub_status_labels_devices_with_their_hello_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No home configs here (a hub asked from another machine): the hellos' names label.
    print_hub_status(_status(), {})
    out = capsys.readouterr().out
    assert f"porch ({PORCH})" in out and f"garage ({GARAGE})" in out
    assert OLD in out and f"({OLD})" not in out
    # The home's own config files win where both name a device.
    print_hub_status(_status(), {PORCH: "front-door"})
    out = capsys.readouterr().out
    assert f"front-door ({PORCH})" in out and "porch (" not in out


class _Client:
    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        self.calls: list[str] = []

    async def call(self, method: str, *args: bytes) -> Response:
        self.calls.append(method)
        return Response(True, 1, (json.dumps(self.status).encode(),), b"\0" * 32)


def _pick(wanted: str | None, status: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    client = _Client(status or _status())
    chosen = asyncio.run(_pick_camera(client, wanted))  # type: ignore[arg-type]
    return chosen, client.calls


def test_connect_finds_a_camera_by_the_name_its_hello_gave() -> None:
    assert _pick("porch") == (PORCH, ["status"])
    # An identifier needs no status call; no camera asks for the first connected one.
    assert _pick(GARAGE) == (GARAGE, [])
    assert _pick(None) == (GARAGE, ["status"])
    # A name no connected camera gave, or one two cameras gave, goes on as it is and the
    # hub refuses it in its own words; so does any name asked of an older hub.
    assert _pick("attic")[0] == "attic"
    twice = {**_status(), "connected_names": {GARAGE: "cam", PORCH: "cam"}}
    assert _pick("cam", twice)[0] == "cam"
    older = {k: v for k, v in _status().items() if k != "connected_names"}
    assert _pick("porch", older)[0] == "porch"
