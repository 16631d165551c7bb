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
    read_optional_str,
    read_str,
)

__all__ = ["DeviceCountersView", "DeviceStatus"]


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
        )
