"""The device's status document, typed (what `DeviceDaemon.status()` returns), pure.

`DeviceStatus.to_json()` is what the daemon writes to ``state_dir/status.json`` every
second (docs/hub-and-device.md) and ``roost device status`` reads; its keys and value
shapes are that file's contract. `DeviceStatus.from_json()` reads the file back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from roost.status import (
    TrustSummary,
    read_counts,
    read_float,
    read_int,
    read_object,
    read_objects,
    read_optional_str,
    read_str,
)

__all__ = ["CameraStatus", "DeviceCountersView", "DeviceStatus"]


@dataclass(frozen=True, slots=True)
class DeviceCountersView:
    """The device's totals since start: connections, redirects and failovers (section
    4), frames sent, and announcements heard (section 3)."""

    connects: int
    connect_failures: Mapping[str, int]
    redirects_followed: int
    redirects_refused: Mapping[str, int]
    failovers: int
    frames_sent: int
    frames_resent: int
    announcements_accepted: int
    announcements_rejected: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        """The status document's ``counters`` object."""
        return {
            "connects": self.connects,
            "connect_failures": dict(self.connect_failures),
            "redirects_followed": self.redirects_followed,
            "redirects_refused": dict(self.redirects_refused),
            "failovers": self.failovers,
            "frames_sent": self.frames_sent,
            "frames_resent": self.frames_resent,
            "announcements_accepted": self.announcements_accepted,
            "announcements_rejected": dict(self.announcements_rejected),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DeviceCountersView:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed."""
        return cls(
            connects=read_int(doc, "connects"),
            connect_failures=read_counts(doc, "connect_failures"),
            redirects_followed=read_int(doc, "redirects_followed"),
            redirects_refused=read_counts(doc, "redirects_refused"),
            failovers=read_int(doc, "failovers"),
            frames_sent=read_int(doc, "frames_sent"),
            frames_resent=read_int(doc, "frames_resent"),
            announcements_accepted=read_int(doc, "announcements_accepted"),
            announcements_rejected=read_counts(doc, "announcements_rejected"),
        )


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """The camera source's health (docs/hub-and-device.md, "Camera sources").

    ``state`` is ``starting``, ``ok``, ``failing`` or ``stopped``; while failing, ``reason``
    is a catalogue reason (``source-unavailable``, ``source-lost``, ``source-undecodable``,
    ``source-stalled``) and ``detail`` the decoder's own words. Times are Unix seconds.
    """

    # What the config names, a URL's password replaced by ***.
    source: str
    # "test-pattern", "file", "rtsp", "http" or "v4l2".
    kind: str
    state: str
    reason: str | None
    detail: str | None
    since: float | None
    # How often the source was reopened after a failure.
    retries: int
    frames: int
    last_frame_at: float | None
    # When the next attempt starts, while waiting out a back-off.
    retry_at: float | None
    failures: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        """The status document's ``camera`` object."""
        return {
            "source": self.source,
            "kind": self.kind,
            "state": self.state,
            "reason": self.reason,
            "detail": self.detail,
            "since": self.since,
            "retries": self.retries,
            "frames": self.frames,
            "last_frame_at": self.last_frame_at,
            "retry_at": self.retry_at,
            "failures": dict(self.failures),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CameraStatus:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed."""
        return cls(
            source=read_str(doc, "source"),
            kind=read_str(doc, "kind"),
            state=read_str(doc, "state"),
            reason=read_optional_str(doc, "reason"),
            detail=read_optional_str(doc, "detail"),
            since=_optional_float(doc, "since"),
            retries=read_int(doc, "retries"),
            frames=read_int(doc, "frames"),
            last_frame_at=_optional_float(doc, "last_frame_at"),
            retry_at=_optional_float(doc, "retry_at"),
            failures=read_counts(doc, "failures"),
        )


def _optional_float(doc: Mapping[str, Any], key: str) -> float | None:
    return None if doc.get(key) is None else read_float(doc, key)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """One snapshot of a running device."""

    identifier: str
    name: str
    # The connection manager's state name ("starting", "searching", "streaming", ...).
    state: str
    # The hub the channel is open to, and its "host:port"; None while there is none.
    hub: str | None
    hub_endpoint: str | None
    last_acked_seq: int
    buffered: int
    buffered_bytes: int
    dropped: int
    captured: int
    # Persisted across restarts by the spool: every frame this device ever queued.
    frames_total: int
    trust: TrustSummary
    counters: DeviceCountersView
    # Wall-clock seconds (Unix time) when the snapshot was taken, so readers see its age.
    written_at: float
    # The camera source's health; None in documents written before sources had one.
    camera: CameraStatus | None = None
    # Hubs DNS-SD suggested (unverified hints: "id" and "endpoint"), when it is on.
    dns_sd: tuple[Mapping[str, str], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The object written to ``status.json``."""
        return {
            "id": self.identifier,
            "name": self.name,
            "state": self.state,
            "hub": self.hub,
            "hub_endpoint": self.hub_endpoint,
            "last_acked_seq": self.last_acked_seq,
            "buffered": self.buffered,
            "buffered_bytes": self.buffered_bytes,
            "dropped": self.dropped,
            "captured": self.captured,
            "frames_total": self.frames_total,
            "trust": self.trust.to_json(),
            "counters": self.counters.to_json(),
            "written_at": self.written_at,
            "camera": self.camera.to_json() if self.camera is not None else None,
            "dns_sd": [dict(hint) for hint in self.dns_sd] if self.dns_sd is not None else None,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DeviceStatus:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed."""
        return cls(
            identifier=read_str(doc, "id"),
            name=read_str(doc, "name"),
            state=read_str(doc, "state"),
            hub=read_optional_str(doc, "hub"),
            hub_endpoint=read_optional_str(doc, "hub_endpoint"),
            last_acked_seq=read_int(doc, "last_acked_seq"),
            buffered=read_int(doc, "buffered"),
            buffered_bytes=read_int(doc, "buffered_bytes"),
            dropped=read_int(doc, "dropped"),
            captured=read_int(doc, "captured"),
            frames_total=read_int(doc, "frames_total"),
            trust=TrustSummary.from_json(read_object(doc, "trust")),
            counters=DeviceCountersView.from_json(read_object(doc, "counters")),
            written_at=read_float(doc, "written_at"),
            camera=(
                CameraStatus.from_json(read_object(doc, "camera"))
                if doc.get("camera") is not None
                else None
            ),
            dns_sd=(
                tuple(
                    {"id": read_str(hint, "id"), "endpoint": read_str(hint, "endpoint")}
                    for hint in read_objects(doc, "dns_sd")
                )
                if doc.get("dns_sd") is not None
                else None
            ),
        )
