"""The HCSP XML documents of PROTOCOL.md sections 3 and 4 (pure codecs, no I/O).

Four documents share one envelope, ``<hcsp xmlns=NS to=… from=…>`` with exactly one known
child element: the hub announcement ``subscribe`` (section 3, seed FIG. 8A), and the device
channel documents ``hello``, ``welcome`` and ``redirect`` (section 4, seed FIG. 8B).

Decoding uses defusedxml with DTDs, entities and external references forbidden, after the
size cap (PROTOCOL.md preamble). Unknown attributes and unknown child elements are ignored
for forward compatibility (section 3). Every value we read is validated against a strict
grammar, so a decoded document only ever holds identifiers, IP literals, bounded integers,
short tokens and a hello's short printable name. Encoding writes attributes in a fixed
order with no whitespace, so the same document always yields the same bytes and golden
vectors stay stable.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as safe_etree

from roost.errors import LocalProtocolError, RemoteProtocolError
from roost.wire import check_size

__all__ = [
    "ALL_DEVICES",
    "DEFAULT_MAX_DOCUMENT",
    "MAX_CLIENTS",
    "MAX_FEATURES",
    "MAX_FEATURE_LENGTH",
    "MAX_NAME_LENGTH",
    "NAMESPACE",
    "Document",
    "Endpoint",
    "Hello",
    "HubAddress",
    "Redirect",
    "Subscribe",
    "Welcome",
    "decode_document",
    "encode_document",
    "is_device_identifier",
    "is_hub_identifier",
    "name_problem",
]

NAMESPACE = "http://www.darwin-hcs.org/arch/hcsp/1.0"
# Section 3: an announcement is addressed to every device on the LAN.
ALL_DEVICES = "ab:*"
# Documents travel inside a 1400-byte datagram or a channel message; a few KiB is ample,
# and the caller may pass a tighter cap.
DEFAULT_MAX_DOCUMENT = 4096
MAX_FEATURES = 32
MAX_FEATURE_LENGTH = 32
MAX_CLIENTS = 0xFFFF
# Section 4: a device's name is a label of at most this many characters.
MAX_NAME_LENGTH = 64
_MAX_U64 = (1 << 64) - 1

# Section 1: a role prefix followed by 22 base64url characters (16 bytes of SHA-256).
_HUB_ID = re.compile(r"hcsp:[A-Za-z0-9_-]{22}")
_DEVICE_ID = re.compile(r"ab:[A-Za-z0-9_-]{22}")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# At most 20 decimal digits: enough for any u64, and never a costly int() conversion.
_DIGITS = re.compile(r"[0-9]{1,20}")
_PORT_DIGITS = re.compile(r"[0-9]{1,5}")


def is_hub_identifier(text: str) -> bool:
    """True when ``text`` has the shape of a hub identifier (section 1)."""
    return _HUB_ID.fullmatch(text) is not None


def is_device_identifier(text: str) -> bool:
    """True when ``text`` has the shape of a device identifier (section 1)."""
    return _DEVICE_ID.fullmatch(text) is not None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a device's name (section 4, hello), or None when it can.

    A name is 1 to 64 printable characters with no space at either end: no control,
    format or separator characters, so a label shown next to an identifier can neither
    break a line of a log or a table nor reorder the text around it (bidi overrides).
    """
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"has {len(name)} characters, more than {MAX_NAME_LENGTH}"
    if not name.isprintable():
        return "holds a control or other non-printable character"
    if name.strip() != name:
        return "starts or ends with a space"
    return None


def _bad(message: str, reason: str = "bad-document") -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A TCP endpoint given as an IP literal and a port; IPv6 is written ``[addr]:port``.

    Only canonical IP literals are allowed (the form ``ipaddress`` prints), so two equal
    endpoints always format to the same text and compare equal to a socket's source host.
    """

    host: str
    port: int

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 0xFFFF:
            raise LocalProtocolError(f"port {self.port} is out of range")
        if "%" in self.host:
            # A zone index only means something on the host that wrote it.
            raise LocalProtocolError("scoped IPv6 addresses cannot be advertised")
        try:
            canonical = str(ipaddress.ip_address(self.host))
        except ValueError as exc:
            raise LocalProtocolError(f"{self.host!r} is not an IP literal") from exc
        if canonical != self.host:
            raise LocalProtocolError(f"{self.host!r} is not canonical (use {canonical!r})")

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def format(self) -> str:
        """``host:port`` for IPv4, ``[host]:port`` for IPv6."""
        if self.is_ipv6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``host:port`` or ``[v6]:port``; raises RemoteProtocolError("bad-endpoint")."""
        if text.startswith("["):
            close = text.find("]")
            if close < 0 or text[close + 1 : close + 2] != ":":
                raise _bad(f"endpoint {text!r} is malformed", "bad-endpoint")
            host_text, port_text = text[1:close], text[close + 2 :]
            expect_v6 = True
        else:
            host_text, sep, port_text = text.rpartition(":")
            if not sep:
                raise _bad(f"endpoint {text!r} has no port", "bad-endpoint")
            expect_v6 = False
        if _PORT_DIGITS.fullmatch(port_text) is None or "%" in host_text:
            raise _bad(f"endpoint {text!r} is malformed", "bad-endpoint")
        try:
            address = ipaddress.ip_address(host_text)
        except ValueError as exc:
            raise _bad(f"endpoint {text!r} has no IP literal", "bad-endpoint") from exc
        if (address.version == 6) != expect_v6:
            raise _bad(f"endpoint {text!r} brackets do not match its family", "bad-endpoint")
        port = int(port_text)
        if not 1 <= port <= 0xFFFF:
            raise _bad(f"endpoint {text!r} port is out of range", "bad-endpoint")
        return cls(str(address), port)


@dataclass(frozen=True, slots=True)
class HubAddress:
    """A hub identifier with the endpoint devices connect to: ``hcsp:ID;ip=HOST:PORT``."""

    identifier: str
    endpoint: Endpoint

    def __post_init__(self) -> None:
        if not is_hub_identifier(self.identifier):
            raise LocalProtocolError(f"{self.identifier!r} is not a hub identifier")

    def format(self) -> str:
        return f"{self.identifier};ip={self.endpoint.format()}"

    @classmethod
    def parse(cls, text: str) -> HubAddress:
        """Parse ``hcsp:ID;ip=HOST:PORT``; raises RemoteProtocolError on any deviation."""
        identifier, sep, rest = text.partition(";ip=")
        if not sep or not is_hub_identifier(identifier):
            raise _bad(f"hub address {text!r} is malformed", "bad-hub-address")
        return cls(identifier, Endpoint.parse(rest))


def _check_features(features: tuple[str, ...]) -> None:
    if len(features) > MAX_FEATURES:
        raise LocalProtocolError(f"{len(features)} features exceed the limit of {MAX_FEATURES}")
    for feature in features:
        if len(feature) > MAX_FEATURE_LENGTH or _TOKEN.fullmatch(feature) is None:
            raise LocalProtocolError(f"feature {feature!r} is not a short token")


def _check_int(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise LocalProtocolError(f"{name}={value} is outside 0..{maximum}")


@dataclass(frozen=True, slots=True)
class Subscribe:
    """A hub's announcement (section 3): who it is, where to connect, what it offers."""

    sender: HubAddress
    features: tuple[str, ...]
    connected: int
    max_clients: int
    seq: int
    ts: int

    def __post_init__(self) -> None:
        _check_features(self.features)
        _check_int("connected", self.connected, MAX_CLIENTS)
        _check_int("max", self.max_clients, MAX_CLIENTS)
        _check_int("seq", self.seq, _MAX_U64)
        _check_int("ts", self.ts, _MAX_U64)


@dataclass(frozen=True, slots=True)
class Hello:
    """A device's first message on its channel (section 4)."""

    device: str
    hub: str
    app: str
    last_acked: int
    # The device config's name, a label only: identity is the certificate's identifier
    # (section 4). None: an older device that sends no name.
    name: str | None = None

    def __post_init__(self) -> None:
        if not is_device_identifier(self.device) or not is_hub_identifier(self.hub):
            raise LocalProtocolError("hello needs a device sender and a hub recipient")
        if len(self.app) > MAX_FEATURE_LENGTH or _TOKEN.fullmatch(self.app) is None:
            raise LocalProtocolError(f"app {self.app!r} is not a short token")
        _check_int("last-acked", self.last_acked, _MAX_U64)
        if self.name is not None and (problem := name_problem(self.name)) is not None:
            raise LocalProtocolError(f"name {self.name!r} {problem}", reason="bad-name")


@dataclass(frozen=True, slots=True)
class Welcome:
    """The hub's answer to a hello (section 4)."""

    hub: str
    device: str
    features: tuple[str, ...]
    max_clients: int

    def __post_init__(self) -> None:
        if not is_hub_identifier(self.hub) or not is_device_identifier(self.device):
            raise LocalProtocolError("welcome needs a hub sender and a device recipient")
        _check_features(self.features)
        _check_int("max", self.max_clients, MAX_CLIENTS)


@dataclass(frozen=True, slots=True)
class Redirect:
    """The old hub tells a device to move to ``target`` (section 4, seed FIG. 8B)."""

    hub: str
    device: str
    target: HubAddress
    features: tuple[str, ...]

    def __post_init__(self) -> None:
        if not is_hub_identifier(self.hub) or not is_device_identifier(self.device):
            raise LocalProtocolError("redirect needs a hub sender and a device recipient")
        _check_features(self.features)


Document = Subscribe | Hello | Welcome | Redirect


def _escape(value: str) -> str:
    # Validated values never hold these characters; escaping anyway keeps the encoder
    # safe even if a future field admits free text.
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _element(name: str, attributes: list[tuple[str, str]]) -> str:
    rendered = "".join(f' {key}="{_escape(value)}"' for key, value in attributes)
    return f"<{name}{rendered}/>"


def encode_document(document: Document) -> bytes:
    """The exact UTF-8 bytes of ``document``: fixed attribute order, no whitespace."""
    if isinstance(document, Subscribe):
        to, sender = ALL_DEVICES, document.sender.format()
        body = _element(
            "subscribe",
            [
                ("features", ",".join(document.features)),
                ("connected", str(document.connected)),
                ("max", str(document.max_clients)),
                ("seq", str(document.seq)),
                ("ts", str(document.ts)),
            ],
        )
    elif isinstance(document, Hello):
        to, sender = document.hub, document.device
        attributes = [("app", document.app), ("last-acked", str(document.last_acked))]
        if document.name is not None:
            attributes.append(("name", document.name))
        body = _element("hello", attributes)
    elif isinstance(document, Welcome):
        to, sender = document.device, document.hub
        body = _element(
            "welcome",
            [("features", ",".join(document.features)), ("max", str(document.max_clients))],
        )
    else:
        to, sender = document.device, document.hub
        body = _element(
            "redirect",
            [("id", document.target.format()), ("features", ",".join(document.features))],
        )
    envelope = f'<hcsp xmlns="{NAMESPACE}" to="{_escape(to)}" from="{_escape(sender)}">'
    return (envelope + body + "</hcsp>").encode("utf-8")


# --- decoding -------------------------------------------------------------------------


def _qualified(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


_KNOWN_BODIES = {_qualified(name) for name in ("subscribe", "hello", "welcome", "redirect")}


def _attribute(element: Element, name: str) -> str:
    value = element.get(name)
    if value is None:
        raise _bad(f"<{element.tag}> lacks attribute {name!r}", "missing-attribute")
    return value


def _read_int(element: Element, name: str, maximum: int) -> int:
    text = _attribute(element, name)
    if _DIGITS.fullmatch(text) is None:
        raise _bad(f"attribute {name!r} is not a non-negative integer", "bad-integer")
    value = int(text)
    if value > maximum:
        raise _bad(f"attribute {name!r} exceeds {maximum}", "bad-integer")
    return value


def _read_features(element: Element) -> tuple[str, ...]:
    text = _attribute(element, "features")
    if text == "":
        return ()
    # Split at most one past the limit so a hostile list costs no more than the cap.
    parts = text.split(",", MAX_FEATURES)
    if len(parts) > MAX_FEATURES:
        raise _bad("too many features", "bad-features")
    for part in parts:
        if len(part) > MAX_FEATURE_LENGTH or _TOKEN.fullmatch(part) is None:
            raise _bad("a feature is not a short token", "bad-features")
    return tuple(parts)


def _read_id(text: str, *, hub: bool, what: str) -> str:
    valid = is_hub_identifier(text) if hub else is_device_identifier(text)
    if not valid:
        raise _bad(f"{what} {text!r} is not a {'hub' if hub else 'device'} identifier", "bad-id")
    return text


def _parse_xml(data: bytes) -> Element:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad("document is not UTF-8", "bad-utf8") from exc
    try:
        root = safe_etree.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException as exc:
        raise _bad("document uses a DTD, entity or external reference", "xml-forbidden") from exc
    except (ParseError, ValueError) as exc:
        raise _bad("document is not well-formed XML", "malformed-xml") from exc
    if not isinstance(root, Element):
        raise _bad("document has no root element", "malformed-xml")
    return root


def decode_document(data: bytes, max_size: int = DEFAULT_MAX_DOCUMENT) -> Document:
    """Parse and validate one HCSP document; raises RemoteProtocolError with a reason.

    The caller still has to check that the document is the kind it expects and, for an
    announcement, that its signature and sender verify (section 3 receive order).
    """
    check_size(data, max_size, "HCSP document")
    root = _parse_xml(data)
    if root.tag != _qualified("hcsp"):
        raise _bad("root element is not hcsp in the HCSP namespace", "bad-root")
    bodies = [child for child in root if child.tag in _KNOWN_BODIES]
    if len(bodies) != 1:
        raise _bad(f"expected one known document element, found {len(bodies)}", "bad-body")
    body = bodies[0]
    to, sender = _attribute(root, "to"), _attribute(root, "from")
    kind = body.tag.rpartition("}")[2]
    if kind == "subscribe":
        if to != ALL_DEVICES:
            raise _bad("an announcement must be addressed to ab:*", "bad-id")
        return Subscribe(
            sender=HubAddress.parse(sender),
            features=_read_features(body),
            connected=_read_int(body, "connected", MAX_CLIENTS),
            max_clients=_read_int(body, "max", MAX_CLIENTS),
            seq=_read_int(body, "seq", _MAX_U64),
            ts=_read_int(body, "ts", _MAX_U64),
        )
    if kind == "hello":
        app = _attribute(body, "app")
        if len(app) > MAX_FEATURE_LENGTH or _TOKEN.fullmatch(app) is None:
            raise _bad("app is not a short token", "bad-app")
        name = body.get("name")
        if name is not None and (problem := name_problem(name)) is not None:
            raise _bad(f"name {problem}", "bad-name")
        return Hello(
            device=_read_id(sender, hub=False, what="from"),
            hub=_read_id(to, hub=True, what="to"),
            app=app,
            last_acked=_read_int(body, "last-acked", _MAX_U64),
            name=name,
        )
    hub = _read_id(sender, hub=True, what="from")
    device = _read_id(to, hub=False, what="to")
    if kind == "welcome":
        return Welcome(
            hub=hub,
            device=device,
            features=_read_features(body),
            max_clients=_read_int(body, "max", MAX_CLIENTS),
        )
    return Redirect(
        hub=hub,
        device=device,
        target=HubAddress.parse(_attribute(body, "id")),
        features=_read_features(body),
    )
