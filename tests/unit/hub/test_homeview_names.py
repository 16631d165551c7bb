"""The home view's camera names (PROTOCOL.md section 4): from this hub's hellos and from
other hubs' reports over the peer link, kept while a camera is offline."""

from __future__ import annotations

from typing import Any

from roost.hub.homeview import HomeView, _PeerReport
from roost.hub.status import HubCountersView, HubEntry, HubStatus
from roost.status import TrustSummary

HERE = "hcsp:" + "A" * 22
PEER = "hcsp:" + "B" * 22
PORCH, GARAGE, ATTIC, ODD = ("ab:" + c * 22 for c in "PGTO")


def _status(connected: dict[str, str | None]) -> HubStatus:
    return HubStatus(
        identifier=HERE,
        name="hub-1",
        endpoint="127.0.0.1:7001",
        features=("hcsp",),
        max_devices=8,
        connected=tuple(sorted(connected)),
        connected_names={d: n for d, n in sorted(connected.items()) if n is not None},
        winner=HERE,
        hubs=(
            HubEntry(HERE, "127.0.0.1:7001", ("hcsp",), len(connected), 8, 1, True, 0.0),
            HubEntry(PEER, "127.0.0.1:7002", ("hcsp",), 1, 8, 2, False, 0.1),
        ),
        trust=TrustSummary(1, None, "2026-01-01T00:00:00+00:00"),
        counters=HubCountersView(0, {}, 0, 0, 0, 0, 0, {}, {}, {}),
        remote=None,
        uptime_s=1.0,
    )


class _Daemon:
    identifier = HERE

    def __init__(self) -> None:
        self.current = _status({})

    def status(self) -> HubStatus:
        return self.current


def _view(daemon: _Daemon) -> HomeView:
    view = HomeView(daemon, events=None, peers=None, offline_grace_s=1.0)  # type: ignore[arg-type]
    view._reports[PEER] = _PeerReport(
        "hub-2",
        {
            GARAGE: {"id": GARAGE, "name": "garage", "online": True, "last_seen_ms": 1000},
            ATTIC: {"id": ATTIC, "name": "attic", "online": False, "last_seen_ms": 500},
            # A name the hello rule refuses (a bidi override) is dropped, not shown.
            ODD: {"id": ODD, "name": "\u202eegarag", "online": True, "last_seen_ms": 1000},
        },
        1000,
        True,
    )
    return view


def _names(view: HomeView) -> dict[str, Any]:
    return {device: camera.name for device, camera in view.cameras.items()}


def test_names_come_from_this_hubs_hellos_and_from_other_hubs() -> None:
    daemon = _Daemon()
    daemon.current = _status({PORCH: "porch"})
    view = _view(daemon)
    view._update_cameras(daemon.current, now_ms=1000)
    assert _names(view) == {PORCH: "porch", GARAGE: "garage", ATTIC: "attic", ODD: None}
    view._previous = daemon.current
    rows = {row["id"]: row for row in view.peer_home()["cameras"]}
    assert rows[PORCH]["name"] == "porch" and rows[PORCH]["online"]


def test_an_offline_camera_keeps_its_last_known_name() -> None:
    daemon = _Daemon()
    daemon.current = _status({PORCH: "porch"})
    view = _view(daemon)
    view._update_cameras(daemon.current, now_ms=1000)
    # The camera leaves and no hub reports it for longer than the grace period.
    daemon.current = _status({})
    view._update_cameras(daemon.current, now_ms=5000)
    porch = view.cameras[PORCH]
    assert porch.hub is None and porch.name == "porch"
    # Other hubs learn the offline camera's name from this hub's report too.
    view._previous = daemon.current
    rows = {row["id"]: row for row in view.peer_home()["cameras"]}
    assert rows[PORCH] == {"id": PORCH, "name": "porch", "online": False, "last_seen_ms": 1000}


def test_a_device_that_sends_no_name_keeps_the_name_it_gave_before() -> None:
    daemon = _Daemon()
    daemon.current = _status({PORCH: "porch"})
    view = _view(daemon)
    view._update_cameras(daemon.current, now_ms=1000)
    daemon.current = _status({PORCH: None})
    view._update_cameras(daemon.current, now_ms=1200)
    assert view.cameras[PORCH].name == "porch"
