"""The schema of every config file: each key's type, range, default and meaning, once.

`roost.config`'s loaders read values through this schema, `roost config check` and
`roost doctor` run its checks, and ``python -m roost.config_schema`` writes
docs/config-reference.md from it (a unit test fails when the committed page differs).

Adding a key is one line in the right table below, for example::

    Key("snapshot_every", Kind.NUMBER, 10.0, above=0, doc="Seconds between stills."),

then read it in the loader with ``doc.value("snapshot_every")`` and regenerate the page.
A key the loader reads that is not declared here is still accepted (so a key added with
the loader's older typed accessors keeps working), but ``tests/unit/test_config_schema.py``
fails until it is declared, because the reference page would miss it. Any other key is
refused, with a "did you mean" suggestion taken from the declared names (difflib).

Every message names the file, the key (``announce.port``) and what is expected. Checks
are pure: they take the parsed TOML document and return the problems; reading the file,
the certificate and the key is the loaders' and `roost.cli.preflight`'s work. What a key
is, how a value is checked and converted, lives in `roost.config_types`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from roost.admission import AdmissionConfig
from roost.config_types import (
    REQUIRED,
    Key,
    Kind,
    Schema,
    Table,
    config_error,
    convert,
    default_text,
    shown,
    suggest,
    value_problem,
)
from roost.device.source_health import SourceHealthConfig
from roost.device.sources import CameraSettings
from roost.errors import ConfigError
from roost.hcsp import AnnounceConfig, RedirectConfig
from roost.hcsp.aio import UdpConfig
from roost.hcsp.documents import MAX_CLIENTS
from roost.reasons import Reason
from roost.rendezvous.broker_events import (
    HOLD_CONNECTION_DEFAULT,
    BrokerCoreConfig,
    PresenceConfig,
)

__all__ = [
    "BROKER_LIMIT_KEYS",
    "BROKER_SCHEMA",
    "DEVICE_SCHEMA",
    "HUB_SCHEMA",
    "REQUIRED",
    "ROLES",
    "SCHEMAS",
    "Key",
    "Kind",
    "Schema",
    "Table",
    "check_document",
    "config_error",
    "convert",
    "detect_role",
    "document_problems",
    "reference_markdown",
    "suggest",
]

_ANNOUNCE = AnnounceConfig()
_UDP = UdpConfig()
_REDIRECT = RedirectConfig()
_BROKER = BrokerCoreConfig()
_CAMERA = CameraSettings()
_ADMISSION = AdmissionConfig()
_PRESENCE = PresenceConfig()
_HEALTH = SourceHealthConfig()


def _identity(node: str) -> tuple[Key, ...]:
    return (
        Key(
            "name",
            Kind.STRING,
            "",
            doc=f"The {node}'s name in logs and status (default: the file's stem).",
        ),
        Key("state_dir", Kind.PATH, doc=f"The {node}'s state folder (trust store, lock, data)."),
        Key("cert", Kind.PATH, doc=f"The {node}'s certificate (PEM), of role {node}."),
        Key("key", Kind.PATH, doc="The private key (PEM) of that certificate."),
    )


_ANNOUNCE_TABLE = Table(
    "announce",
    (
        Key("bind", Kind.STRING, _UDP.bind_host, doc="Address the announcement socket binds."),
        Key(
            "port", Kind.INTEGER, _UDP.port, minimum=0, maximum=65535, doc="Announcement UDP port."
        ),
        Key("multicast", Kind.BOOLEAN, _UDP.multicast, doc="Announce on the multicast group."),
        Key("group", Kind.STRING, _UDP.group, doc="The multicast group."),
        Key(
            "interfaces",
            Kind.STRINGS,
            list(_UDP.interfaces),
            doc="Interface addresses to join on (empty: the default one).",
        ),
        Key("peers", Kind.HOSTPORTS, [], doc="Unicast peers to announce to (loopback homes)."),
        Key(
            "interval",
            Kind.NUMBER,
            _ANNOUNCE.advert_interval,
            above=0,
            doc="Seconds between announcements.",
        ),
        Key(
            "hold_down",
            Kind.NUMBER,
            _ANNOUNCE.hold_down,
            minimum=0,
            doc="Seconds a new hub must be heard before it can win.",
        ),
        Key(
            "freshness_ms",
            Kind.INTEGER,
            _ANNOUNCE.freshness_window_ms,
            minimum=1,
            doc="How old an announcement may be, in ms.",
        ),
    ),
    doc="Announcements and the election (PROTOCOL.md section 3).",
)


def _admission_key(name: str) -> Key:
    default = getattr(_ADMISSION, name)
    kind = Kind.INTEGER if isinstance(default, int) else Kind.NUMBER
    return Key(name, kind, default, minimum=0, doc="See docs/limits.md.")


# Caps, deadlines and HTTP limits of a daemon's listeners (docs/limits.md), hub and broker.
_ADMISSION_TABLE = Table(
    "admission",
    tuple(_admission_key(f.name) for f in fields(AdmissionConfig)),
    doc="Unauthenticated connections, handshake and HTTP limits (`AdmissionConfig` in"
    " roost.admission, docs/limits.md).",
)

_DNS_SD_TABLE = Table(
    "dns_sd",
    (
        Key("enabled", Kind.BOOLEAN, None, doc="Default: on unless the node is on loopback only."),
        Key("interfaces", Kind.STRINGS, None, doc="IPv4 addresses to use (default: announce's)."),
    ),
    doc="DNS-SD: hubs publish, devices browse.",
)

HUB_SCHEMA = Schema(
    "hub",
    (
        Table(
            "",
            (
                *_identity("hub"),
                Key(
                    "listen",
                    Kind.HOSTPORT,
                    doc="Where devices connect (TLS; port 0: any free port, see run.json).",
                ),
                Key(
                    "advertise",
                    Kind.HOSTPORT,
                    None,
                    doc="The endpoint announced to devices (default: listen).",
                ),
                Key(
                    "api",
                    Kind.HOSTPORT,
                    "127.0.0.1:8080",
                    doc="The status API and /metrics (HTTP).",
                ),
                Key(
                    "remote",
                    Kind.HOSTPORT,
                    None,
                    doc="The owner's remote (guard) entrance; absent: none.",
                ),
                Key(
                    "features",
                    Kind.TOKENS,
                    ["hcsp"],
                    doc="Features announced; more features win the election.",
                ),
                Key(
                    "max_devices",
                    Kind.INTEGER,
                    16,
                    minimum=1,
                    maximum=MAX_CLIENTS,
                    doc="Devices served at once.",
                ),
                Key(
                    "retention_mb",
                    Kind.NUMBER,
                    1024,
                    above=0,
                    doc="Recordings kept, in MiB (oldest dropped first).",
                ),
                Key("api_token_file", Kind.PATH, None, doc="A token file the API requires."),
            ),
        ),
        _ANNOUNCE_TABLE,
        Table(
            "redirect",
            (
                Key(
                    "batch_size",
                    Kind.INTEGER,
                    _REDIRECT.batch_size,
                    minimum=1,
                    doc="Devices redirected per batch.",
                ),
                Key(
                    "spacing",
                    Kind.NUMBER,
                    _REDIRECT.batch_spacing,
                    minimum=0,
                    doc="Seconds between batches.",
                ),
            ),
            doc="Handing devices over to a better hub (PROTOCOL.md section 3).",
        ),
        Table(
            "broker",
            (
                Key(
                    "address",
                    Kind.ENDPOINTS,
                    doc="The broker's TLS control port (a reachable address); a list names"
                    " several brokers, tried in turn (docs/broker-scale.md).",
                ),
                Key(
                    "udp",
                    Kind.ENDPOINTS,
                    doc="The broker's UDP port (registrations, STUN); as many as `address`.",
                ),
                Key("local", Kind.HOSTPORT, "0.0.0.0:0", doc="The agent's own UDP socket."),
                Key(
                    "hold_connection",
                    Kind.BOOLEAN,
                    HOLD_CONNECTION_DEFAULT,
                    doc="Keep the mutual-TLS connection to the broker open, so requests come"
                    ' over it (no wake-up, no new connection; docs/broker.md, "Held'
                    ' connections"); false: UDP registrations and wake-ups only.',
                ),
            ),
            doc="The hub's link to a rendezvous broker; absent: not reachable that way.",
            optional=True,
        ),
        Table(
            "dashboard",
            (
                Key("listen", Kind.HOSTPORT, "127.0.0.1:8443", doc="The web dashboard (HTTPS)."),
                Key(
                    "plain_http", Kind.BOOLEAN, False, doc="Plain HTTP, on a loopback listen only."
                ),
                Key("idle_minutes", Kind.NUMBER, 15.0, minimum=0.1, doc="Idle session limit."),
                Key("absolute_hours", Kind.NUMBER, 12.0, minimum=0.01, doc="Session limit."),
                Key("event_max_rows", Kind.INTEGER, 100_000, minimum=100, doc="Events kept."),
                Key("event_max_days", Kind.NUMBER, 30.0, minimum=0.01, doc="Days events are kept."),
            ),
            doc="The owner's web dashboard (docs/dashboard.md); absent: off.",
            optional=True,
        ),
        _DNS_SD_TABLE,
        _ADMISSION_TABLE,
    ),
    doc="`roost hub run --config FILE`.",
)

DEVICE_SCHEMA = Schema(
    "device",
    (
        Table(
            "",
            (
                *_identity("device"),
                Key(
                    "fps",
                    Kind.NUMBER,
                    5.0,
                    above=0,
                    maximum=1000,
                    doc="Frames captured per second.",
                ),
                Key(
                    "width",
                    Kind.INTEGER,
                    320,
                    minimum=1,
                    maximum=16384,
                    doc="Frame width in pixels.",
                ),
                Key(
                    "height",
                    Kind.INTEGER,
                    240,
                    minimum=1,
                    maximum=16384,
                    doc="Frame height in pixels.",
                ),
                Key(
                    "max_buffer_frames",
                    Kind.INTEGER,
                    10_000,
                    minimum=1,
                    doc="Unacknowledged frames kept in the spool.",
                ),
                Key("max_buffer_mb", Kind.NUMBER, 256, above=0, doc="Spool size limit, in MiB."),
                Key("hubs", Kind.HOSTPORTS, [], doc="Hubs to try when none has been heard."),
            ),
        ),
        _ANNOUNCE_TABLE,
        Table(
            "connection",
            (
                Key(
                    "min_dwell",
                    Kind.NUMBER,
                    2.0,
                    minimum=0,
                    doc="Seconds on a hub before following a better one.",
                ),
                Key(
                    "backoff_initial",
                    Kind.NUMBER,
                    0.2,
                    above=0,
                    doc="First reconnect delay, seconds.",
                ),
                Key(
                    "backoff_max",
                    Kind.NUMBER,
                    5.0,
                    above=0,
                    doc="Longest reconnect delay, seconds.",
                ),
                Key(
                    "drain_timeout",
                    Kind.NUMBER,
                    2.0,
                    minimum=0,
                    doc="Seconds a redirect may take to flush the spool.",
                ),
            ),
            doc="The connection manager's timers (PROTOCOL.md section 4).",
        ),
        Table(
            "camera",
            (
                Key(
                    "source",
                    Kind.STRING,
                    _CAMERA.source,
                    doc="test-pattern, a file, a URL, /dev/videoN.",
                ),
                Key(
                    "quality",
                    Kind.INTEGER,
                    _CAMERA.quality,
                    minimum=1,
                    maximum=95,
                    doc="JPEG quality.",
                ),
                Key("loop", Kind.BOOLEAN, _CAMERA.loop, doc="A video file starts over at its end."),
                Key(
                    "format",
                    Kind.STRING,
                    _CAMERA.input_format,
                    doc="FFmpeg input format; empty: probe.",
                ),
                Key("rtsp_transport", Kind.STRING, _CAMERA.rtsp_transport, doc='"tcp" or "udp".'),
                Key(
                    "open_timeout",
                    Kind.NUMBER,
                    _CAMERA.open_timeout,
                    minimum=0,
                    doc="Seconds to open.",
                ),
                Key(
                    "retry_initial",
                    Kind.NUMBER,
                    _HEALTH.retry_initial,
                    minimum=0,
                    doc="First retry, s.",
                ),
                Key(
                    "retry_max", Kind.NUMBER, _HEALTH.retry_max, minimum=0, doc="Longest retry, s."
                ),
                Key(
                    "stall_timeout",
                    Kind.NUMBER,
                    _HEALTH.stall_timeout,
                    minimum=0,
                    doc="No frame: stalled, s.",
                ),
                Key(
                    "stable_after",
                    Kind.NUMBER,
                    _HEALTH.stable_after,
                    minimum=0,
                    doc="Back-off resets, s.",
                ),
            ),
            doc='Where frames come from (docs/hub-and-device.md, "Camera sources").',
        ),
        _DNS_SD_TABLE,
    ),
    doc="`roost device run --config FILE`.",
)


def _limit_key(name: str) -> Key:
    # Every broker core field but interval_s may be set in [limits]; its default and kind
    # come from BrokerCoreConfig, so a field added there is a key here with no edit.
    default = getattr(_BROKER, name)
    kind = Kind.INTEGER if isinstance(default, int) else Kind.NUMBER
    return Key(name, kind, default, minimum=0, doc="See BrokerCoreConfig.")


BROKER_LIMIT_KEYS = tuple(f.name for f in fields(BrokerCoreConfig) if f.name != "interval_s")

BROKER_SCHEMA = Schema(
    "broker",
    (
        Table(
            "",
            (
                *_identity("broker"),
                Key("udp", Kind.HOSTPORT, "0.0.0.0:3478", doc="Registrations, wake-ups and STUN."),
                Key(
                    "tls",
                    Kind.HOSTPORT,
                    "0.0.0.0:7443",
                    doc="Enrollment, held connections, the relay.",
                ),
                Key("api", Kind.HOSTPORT, None, doc="Status API and /metrics; absent: none."),
                Key(
                    "interval_s",
                    Kind.NUMBER,
                    _BROKER.interval_s,
                    above=0,
                    doc="Registration interval, seconds.",
                ),
                Key(
                    "max_channels",
                    Kind.INTEGER,
                    4096,
                    minimum=1,
                    doc="TLS control channels at once.",
                ),
                Key(
                    "registry",
                    Kind.STRING,
                    "memory",
                    doc='"memory" (one process) or a redis://, rediss://, unix:// or'
                    " redis+sentinel:// URL shared by several brokers (docs/broker-scale.md).",
                ),
                Key("node", Kind.STRING, "", doc="This process's name in the shared registry."),
                Key(
                    "workers",
                    Kind.INTEGER,
                    1,
                    minimum=1,
                    doc="SO_REUSEPORT worker processes (needs a shared registry).",
                ),
                Key(
                    "presence_every",
                    Kind.INTEGER,
                    _PRESENCE.every,
                    minimum=1,
                    doc="Write presence on every k-th keepalive besides changes.",
                ),
                Key(
                    "registry_prefix",
                    Kind.STRING,
                    _PRESENCE.prefix,
                    doc="Prefix of the shared registry's keys and channels.",
                ),
                Key(
                    "presence_cache_s",
                    Kind.NUMBER,
                    _PRESENCE.lookup_cache_s,
                    minimum=0,
                    doc="How long a presence record read from the shared registry answers"
                    " lookups without reading it again (0: read every time).",
                ),
                Key(
                    "node_link",
                    Kind.STRING,
                    "127.0.0.1:0",
                    doc="HOST:PORT of the TLS link other broker processes route requests"
                    " over (advertised in the registry; port 0: any free port, each worker"
                    ' its own; a concrete host, not 0.0.0.0), or "off": Redis pub/sub only'
                    " (docs/broker-scale.md).",
                ),
                Key(
                    "node_link_local",
                    Kind.BOOLEAN,
                    _PRESENCE.local_link,
                    doc="Link to broker processes on this host and network namespace over a"
                    " local socket (the peer's user checked by the kernel) instead of TLS;"
                    " false: TLS between every pair.",
                ),
            ),
        ),
        _ADMISSION_TABLE,
        Table(
            "limits",
            tuple(_limit_key(name) for name in BROKER_LIMIT_KEYS),
            doc="The broker core's limits and rates (`BrokerCoreConfig` in"
            " roost.rendezvous.broker_events).",
        ),
    ),
    doc="`roost broker run --config FILE`.",
)

SCHEMAS: Mapping[str, Schema] = {s.role: s for s in (HUB_SCHEMA, DEVICE_SCHEMA, BROKER_SCHEMA)}
ROLES = tuple(SCHEMAS)

# Keys only one role's file has: how `roost config check` and a daemon given another
# role's file tell which role a file is for.
_MARKS: Mapping[str, frozenset[str]] = {
    "hub": frozenset(
        {
            "listen",
            "advertise",
            "features",
            "max_devices",
            "retention_mb",
            "redirect",
            "broker",
            "remote",
            "dashboard",
            "api_token_file",
        }
    ),
    "device": frozenset(
        {
            "fps",
            "width",
            "height",
            "max_buffer_frames",
            "max_buffer_mb",
            "hubs",
            "connection",
            "camera",
        }
    ),
    "broker": frozenset({"tls", "udp", "interval_s", "max_channels", "limits"}),
}


def detect_role(doc: Mapping[str, Any]) -> str | None:
    """The role whose distinctive keys the document has most of; None when none."""
    scores = {role: len(marks & set(doc)) for role, marks in _MARKS.items()}
    best = max(scores.values())
    if best == 0:
        return None
    winners = [role for role, score in scores.items() if score == best]
    return winners[0] if len(winners) == 1 else None


def document_problems(
    path: Path,
    doc: Mapping[str, Any],
    schema: Schema,
    also_known: frozenset[str] | None = frozenset(),
) -> list[ConfigError]:
    """Every problem of a parsed document against ``schema``, in file order.

    ``also_known`` holds dotted keys (``announce.x``) the loader reads although they are not
    declared: they are not refused (see the module docstring). None leaves unknown keys
    for later (the loaders check them once they know what they read).
    """
    problems: list[ConfigError] = []
    other = _other_role(doc, schema)
    if other is not None:
        problems.append(other(path))
        return problems
    top = schema.table("")
    table_names = [t.name for t in schema.tables if t.name]
    for name, value in doc.items():
        table = schema.table(name) if name else None
        if table is not None:
            if not isinstance(value, Mapping):
                problems.append(
                    config_error(path, name, f"must be a table [{name}], not {shown(value)}")
                )
                continue
            problems.extend(_table_problems(path, value, table, also_known))
            continue
        key = top.key(name) if top is not None else None
        if key is None:
            if also_known is None or name in also_known:
                continue
            candidates = [k.name for k in top.keys] + table_names if top else table_names
            kind = "table" if isinstance(value, Mapping) else "key"
            problems.append(
                config_error(path, name, f"is not a known {kind}{suggest(name, candidates)}")
            )
            continue
        problem = value_problem(key, value)
        if problem is not None:
            problems.append(config_error(path, name, problem))
    for table in schema.tables:
        if table.optional and table.name not in doc:
            continue
        present = doc if not table.name else doc.get(table.name, {})
        if not isinstance(present, Mapping):
            continue
        for key in table.keys:
            if key.default is REQUIRED and key.name not in present:
                where = f"{table.name}.{key.name}" if table.name else key.name
                problems.append(
                    config_error(path, where, f"is missing: it must be {key.expected()}")
                )
    return problems


def _table_problems(
    path: Path, section: Mapping[str, Any], table: Table, also_known: frozenset[str] | None
) -> list[ConfigError]:
    problems: list[ConfigError] = []
    for name, value in section.items():
        where = f"{table.name}.{name}"
        key = table.key(name)
        if key is None:
            if also_known is None or where in also_known:
                continue
            hint = suggest(name, [k.name for k in table.keys])
            problems.append(
                config_error(path, where, f"is not a known key of [{table.name}]{hint}")
            )
            continue
        problem = value_problem(key, value)
        if problem is not None:
            problems.append(config_error(path, where, problem))
    return problems


def _other_role(doc: Mapping[str, Any], schema: Schema) -> Any:
    """A file of another role given where ``schema``'s role was expected: refuse it as
    such, not key by key (a hub config to `roost device run` would fill the hub's state)."""
    detected = detect_role(doc)
    if detected is None or detected == schema.role:
        return None
    marks = sorted(_MARKS[detected] & set(doc))[:3]

    def error(path: Path) -> ConfigError:
        return ConfigError(
            f"{path} is a {detected} config (it has {', '.join(marks)}), not a {schema.role}"
            f" config: run it with `roost {detected} run --config {path}`",
            reason=Reason.WRONG_ROLE,
        )

    return error


def check_document(
    path: Path,
    doc: Mapping[str, Any],
    schema: Schema,
    also_known: frozenset[str] | None = frozenset(),
) -> None:
    """Raise the first of :func:`document_problems` (a :class:`ConfigError`), if any."""
    problems = document_problems(path, doc, schema, also_known)
    if problems:
        raise problems[0]


# ----------------------------------------------------------------- the reference page


def reference_markdown() -> str:
    """docs/config-reference.md, generated from the schema (``python -m roost.config_schema``)."""
    lines = [
        "# Config reference",
        "",
        "Generated from `src/roost/config_schema.py` by `python -m roost.config_schema`;",
        "do not edit by hand (`tests/unit/test_config_schema.py` fails when it differs).",
        "",
        "Relative paths are relative to the file's own folder. A key not listed here is refused",
        "with a suggestion; `roost config check FILE` runs every check without starting anything,",
        "and `roost doctor FILE` also checks the certificate, trust state, ports and peers.",
    ]
    for schema in SCHEMAS.values():
        lines += ["", f"## {schema.role} ({schema.doc})"]
        for table in schema.tables:
            title = f"[{table.name}]" if table.name else "top level"
            lines += ["", f"### {title}"]
            if table.doc:
                lines += ["", table.doc + (" Optional table." if table.optional else "")]
            lines += ["", "| key | value | default | meaning |", "|---|---|---|---|"]
            for key in table.keys:
                lines.append(
                    f"| `{key.name}` | {key.expected()} | {default_text(key)} | {key.doc} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
