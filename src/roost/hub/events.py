"""The home's events timeline, pure: what changed between two status snapshots.

The dashboard does not ask the daemon to report events one by one; it compares the hub's
typed status snapshots (``HubStatus``, the same document the API and metrics read) a few
times a second and turns every difference into a :class:`HomeEvent`: a new elected hub is
a handover, an elected hub that went silent is a failover, a higher redirect counter is a
batch of redirects, a higher rejection count is a refused announcement or connection with
its reason, a new CA generation is a promotion, and so on. Counters only grow, so nothing
that happened between two snapshots is lost, only merged into one event with its count.
Nothing here reads a clock or touches storage; ``roost.hub.eventlog`` keeps the events.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from roost.hub.status import HubStatus

__all__ = ["EventKind", "HomeEvent", "TrustFetchView", "status_events"]


class EventKind(enum.StrEnum):
    """What kind of thing happened; the timeline filters by it."""

    HANDOVER = "handover"
    FAILOVER = "failover"
    HUB_UP = "hub-up"
    HUB_DOWN = "hub-down"
    REDIRECT = "redirect"
    CAMERA_ONLINE = "camera-online"
    CAMERA_OFFLINE = "camera-offline"
    ANNOUNCEMENT_REFUSED = "announcement-refused"
    CONNECTION_REFUSED = "connection-refused"
    TRUST_FETCH = "trust-fetch"
    TRUST_REJECTED = "trust-rejected"
    TRUST_PREPARED = "trust-prepared"
    TRUST_PROMOTED = "trust-promoted"
    REMOTE_LOGIN = "remote-login"
    REMOTE_LOGIN_FAILED = "remote-login-failed"
    WEB_LOGIN = "web-login"
    WEB_LOGIN_FAILED = "web-login-failed"
    RECORDINGS_DELETED = "recordings-deleted"


@dataclass(frozen=True, slots=True)
class HomeEvent:
    """One line of the timeline. ``hub`` is the hub that saw it; ``subject`` the camera or
    hub it is about (or empty); ``reason`` a ``roost.reasons`` value (or empty)."""

    at_ms: int
    kind: EventKind
    hub: str
    subject: str
    reason: str
    text: str
    count: int = 1

    def to_json(self) -> dict[str, object]:
        """The event as ``/api/events`` serves it."""
        return {
            "at_ms": self.at_ms,
            "kind": self.kind.value,
            "hub": self.hub,
            "subject": self.subject,
            "reason": self.reason,
            "text": self.text,
            "count": self.count,
        }


@dataclass(frozen=True, slots=True)
class TrustFetchView:
    """The updater's fetch counter and last outcome (``roost.pki.updater.FetchRecord``)."""

    fetches: int
    outcome: str | None
    reachable: bool


def _grown(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {
        reason: count - before.get(reason, 0)
        for reason, count in sorted(after.items())
        if count > before.get(reason, 0)
    }


def _camera_label(device: str, names: Mapping[str, str]) -> str:
    """``porch (ab:…)`` when the hello gave a name, the identifier alone otherwise."""
    name = names.get(device)
    return f"{name} ({device})" if name else device


def status_events(
    before: HubStatus,
    after: HubStatus,
    at_ms: int,
    fetch_before: TrustFetchView | None = None,
    fetch_after: TrustFetchView | None = None,
) -> list[HomeEvent]:
    """Every event between two snapshots of one hub, in a stable order."""
    hub = after.identifier
    events: list[HomeEvent] = []

    def add(kind: EventKind, subject: str, text: str, reason: str = "", count: int = 1) -> None:
        events.append(HomeEvent(at_ms, kind, hub, subject, reason, text, count))

    old_hubs = {entry.identifier: entry for entry in before.hubs}
    new_hubs = {entry.identifier: entry for entry in after.hubs}
    for identifier in sorted(set(new_hubs) - set(old_hubs)):
        add(EventKind.HUB_UP, identifier, f"hub {identifier} is live (heard its announcement)")
    for identifier in sorted(set(old_hubs) - set(new_hubs)):
        if identifier == before.winner:
            add(
                EventKind.FAILOVER,
                identifier,
                f"the elected hub {identifier} went silent; cameras fail over to "
                f"{after.winner or 'no hub'}",
            )
        else:
            add(EventKind.HUB_DOWN, identifier, f"hub {identifier} went silent")
    if after.winner != before.winner:
        add(
            EventKind.HANDOVER,
            after.winner or "",
            f"handover: the elected hub is now {after.winner or 'none'}"
            f" (was {before.winner or 'none'})",
        )

    old_devices, new_devices = set(before.connected), set(after.connected)
    for device in sorted(new_devices - old_devices):
        camera = _camera_label(device, after.connected_names)
        add(EventKind.CAMERA_ONLINE, device, f"camera {camera} connected to {after.name}")
    for device in sorted(old_devices - new_devices):
        camera = _camera_label(device, before.connected_names)
        add(EventKind.CAMERA_OFFLINE, device, f"camera {camera} left {after.name}")

    c0, c1 = before.counters, after.counters
    redirects = c1.redirects_sent - c0.redirects_sent
    if redirects > 0:
        add(
            EventKind.REDIRECT,
            after.winner or "",
            f"redirected {redirects} camera(s) to the elected hub {after.winner or '?'}",
            count=redirects,
        )
    grown = (
        (EventKind.ANNOUNCEMENT_REFUSED, c0.announcements_rejected, c1.announcements_rejected),
        (EventKind.CONNECTION_REFUSED, c0.connections_rejected, c1.connections_rejected),
        (EventKind.TRUST_REJECTED, c0.trust_rejected, c1.trust_rejected),
    )
    words = {
        EventKind.ANNOUNCEMENT_REFUSED: "announcement(s) refused",
        EventKind.CONNECTION_REFUSED: "device connection(s) refused",
        EventKind.TRUST_REJECTED: "CA information update(s) rejected",
    }
    for kind, old, new in grown:
        for reason, count in _grown(old, new).items():
            add(kind, "", f"{count} {words[kind]}: {reason}", reason, count)

    t0, t1 = before.trust, after.trust
    if t1.prepared is not None and t1.prepared != t0.prepared:
        add(EventKind.TRUST_PREPARED, "", f"CA generation {t1.prepared} fetched and prepared")
    if t1.current != t0.current:
        add(EventKind.TRUST_PROMOTED, "", f"CA generation {t1.current} promoted to current")

    if fetch_after is not None and fetch_after.fetches > (fetch_before or fetch_after).fetches:
        where = "reachable" if fetch_after.reachable else "unreachable"
        add(
            EventKind.TRUST_FETCH,
            "",
            f"CA information fetched: {fetch_after.outcome} (download server {where})",
            fetch_after.outcome or "",
        )

    r0, r1 = before.remote, after.remote
    if r0 is not None and r1 is not None:
        if r1.logins_ok > r0.logins_ok:
            count = r1.logins_ok - r0.logins_ok
            add(EventKind.REMOTE_LOGIN, "", f"{count} remote login(s) succeeded", count=count)
        for reason, count in _grown(r0.rejected, r1.rejected).items():
            add(
                EventKind.REMOTE_LOGIN_FAILED,
                "",
                f"{count} remote login(s) or call(s) refused: {reason}",
                reason,
                count,
            )
    return events
