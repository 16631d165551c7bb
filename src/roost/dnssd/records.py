"""DNS-SD records of hubs (``_roost._tcp.local.``), pure: what a hub publishes, what a
listener makes of what it finds (docs/hub-and-device.md, "Finding hubs with DNS-SD").

A record is a hint, never trust: it says where a hub claims to listen, and a device that
dials it still requires the hub to prove, over mutual TLS with the home's CA, the
identifier the record named (PROTOCOL.md section 4), exactly as for an announcement's
endpoint. Parsing is strict and bounded so a hostile neighbour on the LAN can only make a
record be ignored (counted ``bad-service-record``), never stretch memory or the candidate
list.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from roost.errors import RemoteProtocolError
from roost.reasons import Reason

__all__ = [
    "MAX_RECORDS",
    "SERVICE_TYPE",
    "DnsSdSettings",
    "HubRecord",
    "host_name",
    "instance_name",
    "parse_record",
    "txt_properties",
]

SERVICE_TYPE = "_roost._tcp.local."
# The TXT format's version; a listener ignores records of another.
TXT_VERSION = "1"
# A listener keeps at most this many hubs from DNS-SD; more are ignored until some go.
MAX_RECORDS = 64
_MAX_VALUE = 200
_MAX_FEATURES = 16
_IDENTIFIER = re.compile(r"hcsp:[A-Za-z0-9_-]{22}")
_FEATURE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")


@dataclass(frozen=True, slots=True)
class DnsSdSettings:
    """The ``[dns_sd]`` table: whether DNS-SD is used, and on which interface addresses."""

    enabled: bool = False
    # Local IPv4 addresses whose interfaces zeroconf may use; empty: the default
    # interface only (the one the default route leaves by), never every interface.
    interfaces: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class HubRecord:
    """One hub as DNS-SD describes it; ``host``/``port`` is its device-channel endpoint."""

    identifier: str
    name: str
    host: str
    port: int
    features: tuple[str, ...]
    max_devices: int
    # The HTTP API's port (dashboard, status), when the hub published one.
    api_port: int | None = None
    # The UDP port its announcements are received on (section 3), when published.
    announce_port: int | None = None

    @property
    def endpoint(self) -> str:
        """``host:port`` of the device channel."""
        return f"{self.host}:{self.port}"

    def to_json(self) -> dict[str, object]:
        """What ``roost discover --json`` prints for this hub."""
        return {
            "id": self.identifier,
            "name": self.name,
            "endpoint": self.endpoint,
            "features": list(self.features),
            "max": self.max_devices,
            "api": f"{self.host}:{self.api_port}" if self.api_port else None,
            "announce": f"{self.host}:{self.announce_port}" if self.announce_port else None,
        }


def _label(identifier: str) -> str:
    return hashlib.sha256(identifier.encode("ascii")).hexdigest()[:12]


def instance_name(record: HubRecord) -> str:
    """The service instance name: the hub's name and a tag of its identifier, so two hubs
    of the same name on one LAN still differ (labels stay under DNS's 63 bytes)."""
    name = "".join(c for c in record.name if c.isprintable() and c != ".")[:40] or "hub"
    return f"{name} {_label(record.identifier)}.{SERVICE_TYPE}"


def host_name(record: HubRecord) -> str:
    """The SRV target host name the record's address is published under."""
    return f"roost-{_label(record.identifier)}.local."


def txt_properties(record: HubRecord) -> dict[str, str]:
    """The TXT keys: v, id, name, features, max, api and announce (when known)."""
    properties = {
        "v": TXT_VERSION,
        "id": record.identifier,
        "name": record.name[:_MAX_VALUE],
        "features": ",".join(record.features),
        "max": str(record.max_devices),
    }
    if record.api_port:
        properties["api"] = str(record.api_port)
    if record.announce_port:
        properties["announce"] = str(record.announce_port)
    return properties


def _bad(problem: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"DNS-SD hub record {problem}", reason=Reason.BAD_SERVICE_RECORD)


def _text(properties: Mapping[bytes, bytes | None], key: str, required: bool = True) -> str | None:
    value = properties.get(key.encode("ascii"))
    if value is None:
        if required:
            raise _bad(f"lacks {key!r}")
        return None
    if len(value) > _MAX_VALUE:
        raise _bad(f"has an oversized {key!r}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"has a {key!r} that is not UTF-8") from exc


def _port(text: str | None, key: str) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise _bad(f"has {key}={text!r}, not a port")
    return int(text)


def parse_record(
    properties: Mapping[bytes, bytes | None], addresses: Sequence[str], port: int
) -> HubRecord:
    """A `HubRecord` from a resolved service; raises RemoteProtocolError
    (``bad-service-record``) when a field is missing or malformed."""
    if _text(properties, "v") != TXT_VERSION:
        raise _bad("is of another TXT version")
    identifier = _text(properties, "id") or ""
    if not _IDENTIFIER.fullmatch(identifier):
        raise _bad("has no hub identifier")
    if not 1 <= port <= 65535:
        raise _bad(f"names port {port}")
    host = None
    for address in addresses:
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            continue
        if parsed.version == 4 and not parsed.is_unspecified and not parsed.is_multicast:
            host = str(parsed)
            break
    if host is None:
        raise _bad("has no usable IPv4 address")
    features = tuple(f for f in (_text(properties, "features") or "").split(",") if f)
    if len(features) > _MAX_FEATURES or not all(_FEATURE.fullmatch(f) for f in features):
        raise _bad("has malformed features")
    max_text = _text(properties, "max") or ""
    if not max_text.isdigit() or int(max_text) > 65535:
        raise _bad(f"has max={max_text!r}")
    return HubRecord(
        identifier=identifier,
        name=_text(properties, "name", required=False) or "",
        host=host,
        port=port,
        features=features,
        max_devices=int(max_text),
        api_port=_port(_text(properties, "api", required=False), "api"),
        announce_port=_port(_text(properties, "announce", required=False), "announce"),
    )
