"""HCSP: signed hub announcements, election and redirect planning (PROTOCOL.md sections 3-4).

The modules re-exported here are pure cores (no sockets, no clock, no files). The asyncio
adapter that runs the announce core on UDP sockets is :mod:`roost.hcsp.aio`; it is not
imported here, so importing this package stays free of I/O.
"""

from roost.hcsp.announce import (
    MAX_DATAGRAM,
    SignedAnnouncement,
    decode_announcement,
    encode_announcement,
    verify_announcement_signature,
)
from roost.hcsp.core import (
    AnnounceConfig,
    AnnounceCore,
    AnnounceCounters,
    CertificateVerifier,
    OwnHub,
)
from roost.hcsp.documents import (
    NAMESPACE,
    Document,
    Endpoint,
    Hello,
    HubAddress,
    Redirect,
    Subscribe,
    Welcome,
    decode_document,
    encode_document,
)
from roost.hcsp.election import Candidate, HubRank, elect, rank_of
from roost.hcsp.events import (
    AnnouncementRefused,
    HcspEvent,
    HubDown,
    HubUp,
    HubUpdated,
    LiveHub,
    WinnerChanged,
)
from roost.hcsp.redirect import RedirectBatch, RedirectConfig, RedirectPlanner, fair_share

__all__ = [
    "MAX_DATAGRAM",
    "NAMESPACE",
    "AnnounceConfig",
    "AnnounceCore",
    "AnnounceCounters",
    "AnnouncementRefused",
    "Candidate",
    "CertificateVerifier",
    "Document",
    "Endpoint",
    "HcspEvent",
    "Hello",
    "HubAddress",
    "HubDown",
    "HubRank",
    "HubUp",
    "HubUpdated",
    "LiveHub",
    "OwnHub",
    "Redirect",
    "RedirectBatch",
    "RedirectConfig",
    "RedirectPlanner",
    "SignedAnnouncement",
    "Subscribe",
    "Welcome",
    "WinnerChanged",
    "decode_announcement",
    "decode_document",
    "elect",
    "encode_announcement",
    "encode_document",
    "fair_share",
    "rank_of",
    "verify_announcement_signature",
]
