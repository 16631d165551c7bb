"""`roost config check FILE` and `roost doctor FILE`: what is wrong with a node, and what
to do about it, without starting it (docs/operating.md, "Checking a node").

``config check`` runs the schema's checks (roost.config_schema) and the loader's on a file
whose role it detects. ``doctor`` also checks the certificate and key (pair, role, validity,
chain to the node's trust state), the trust state, the state folder's lock (is the node
running, under which pid), every configured listener (bindable, or in use by whom), and
whether the peers the node dials answer: only addresses the config or the trust state
name, each with a one-second connect and no bytes sent. It reads, never writes: the state
folder is left exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from roost.cli.common import RoostGroup, fail_cleanly
from roost.cli.exitcodes import ExitCode
from roost.cli.preflight import check_identity
from roost.config import (
    BrokerConfig,
    DeviceConfig,
    HubConfig,
    load_broker_config,
    load_device_config,
    load_hub_config,
)
from roost.config_schema import SCHEMAS, detect_role, document_problems
from roost.errors import ConfigError, RoostError
from roost.pki.certs import Role
from roost.pki.trust import TrustState
from roost.pki.truststore import load_state
from roost.reasons import Reason
from roost.statelock import LOCK_NAME, lock_holder

__all__ = ["Check", "config", "doctor", "run_checks"]

_LOADERS: dict[str, Callable[[Path], Any]] = {
    "hub": load_hub_config,
    "device": load_device_config,
    "broker": load_broker_config,
}
_ROLES = {"hub": Role.HUB, "device": Role.DEVICE, "broker": Role.BROKER}
_CONNECT_TIMEOUT = 1.0


def _role_of(path: Path, forced: str | None) -> tuple[str, dict[str, Any]]:
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"no configuration at {path}", reason=Reason.MISSING) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", reason=Reason.BAD_CONFIG) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", reason=Reason.BAD_CONFIG) from exc
    role = forced or detect_role(doc)
    if role is None:
        raise ConfigError(
            f"{path}: cannot tell whether this is a hub, device or broker config; give --role",
            reason=Reason.BAD_CONFIG,
        )
    return role, doc


def _problems(path: Path, role: str, doc: dict[str, Any]) -> list[ConfigError]:
    problems = document_problems(path, doc, SCHEMAS[role])
    if not problems:
        # The loader's own checks (the announce core's bounds, a dialled broker address).
        try:
            _LOADERS[role](path)
        except ConfigError as exc:
            problems.append(exc)
    return problems


@click.group(cls=RoostGroup)
def config() -> None:
    """Config files: check them without starting anything."""


_Command = Callable[[Path, str | None, bool], None]


def _checks_a_file(command: _Command) -> _Command:
    """FILE, ``--role`` and ``--json``, for ``config check`` and ``doctor`` alike."""
    command = fail_cleanly(command)
    command = click.option("--json", "as_json", is_flag=True)(command)
    command = click.option(
        "--role", type=click.Choice(sorted(SCHEMAS)), help="Default: detected from the keys."
    )(command)
    return click.argument("file", type=click.Path(path_type=Path, dir_okay=False))(command)


@config.command("check")
@_checks_a_file
def config_check(file: Path, role: str | None, as_json: bool) -> None:
    """Check FILE like the daemon would; exit 4 listing every problem, 0 when valid."""
    detected, doc = _role_of(file, role)
    problems = _problems(file, detected, doc)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "file": str(file),
                    "role": detected,
                    "ok": not problems,
                    "problems": [str(p) for p in problems],
                }
            )
        )
        if problems:
            raise click.exceptions.Exit(int(ExitCode.CONFIG))
        return
    if problems:
        for problem in problems[:-1]:
            click.echo(f"roost: {problem} [{problem.reason}]", err=True)
        raise problems[-1]
    click.echo(f"{file}: a valid {detected} config")


# ------------------------------------------------------------------------------ doctor


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: ``status`` is ok, warn or fail; ``fix`` says what to do when not ok."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def _warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def run_checks(path: Path, forced_role: str | None = None) -> tuple[str | None, list[Check]]:
    """Every doctor check of the node configured by ``path``; reads only."""
    try:
        role, doc = _role_of(path, forced_role)
    except ConfigError as exc:
        fix = (
            "check the path (`roost init` writes a home's configs)"
            if exc.reason == Reason.MISSING
            else "fix the file (docs/config-reference.md)"
        )
        return None, [_fail("config", str(exc), fix)]
    problems = _problems(path, role, doc)
    if problems:
        checks = [
            _fail("config", str(p), "fix this key (docs/config-reference.md)") for p in problems
        ]
        return role, checks
    node = _LOADERS[role](path)
    checks = [_ok("config", f"a valid {role} config")]
    cert = None
    try:
        cert = check_identity(node.source, node.cert, node.key, _ROLES[role])
        checks.append(_ok("identity", f"{node.cert} matches {node.key} and is a {role}'s"))
    except ConfigError as exc:
        checks.append(_fail("identity", str(exc), "point cert and key at this node's files"))
    state = None
    try:
        state = load_state(node.trust_dir)
        summary = state.summary()
        checks.append(
            _ok(
                "trust",
                f"generation {summary['current']} current, prepared {summary['prepared']}",
            )
        )
    except RoostError as exc:
        checks.append(
            _fail("trust", str(exc), "copy the home's trust store, or `roost trust init`")
        )
    if cert is not None:
        checks.extend(_certificate_checks(cert, state, role))
    running = _running(node.state_dir)
    if running is None:
        checks.append(_ok("instance", f"not running ({node.state_dir} is free)"))
    else:
        checks.append(_ok("instance", f"running: {running}"))
    checks.extend(_port_checks(node, role, running is not None))
    if isinstance(node, HubConfig) and running is not None:
        checks.append(_own_api(node))
    checks.extend(_peer_checks(node, role, state))
    return role, checks


def _own_api(node: HubConfig) -> Check:
    """A running hub's API, at the address its run.json reports (port 0 configs)."""
    from roost.hub.runfile import read_run_file

    try:
        host, port = read_run_file(node.run_file).api
    except RoostError as exc:
        return _warn("hub API", f"no run file: {exc}", "the hub may still be starting")
    error = _try_connect(host, port)
    if error is None:
        return _ok("hub API", f"{host}:{port} answers")
    return _fail("hub API", f"{host}:{port} does not answer: {error}", "look at the hub's log")


def _certificate_checks(cert: x509.Certificate, state: TrustState | None, role: str) -> list[Check]:
    checks = []
    now = dt.datetime.now(dt.UTC)
    not_after = cert.not_valid_after_utc
    if not_after < now:
        checks.append(
            _fail("validity", f"the certificate expired on {not_after:%Y-%m-%d}", "re-issue it")
        )
    elif cert.not_valid_before_utc > now:
        checks.append(
            _warn(
                "validity",
                f"the certificate is valid only from {cert.not_valid_before_utc:%Y-%m-%d}",
                "check this machine's clock",
            )
        )
    else:
        checks.append(_ok("validity", f"valid until {not_after:%Y-%m-%d}"))
    if state is None:
        return checks
    try:
        if role == "broker":
            from roost.rendezvous.channel_aio import verify_broker

            host = _san_host(cert)
            verify_broker(cert, state.anchors, state.time_floor, host)
        else:
            state.verify_node(cert)
        checks.append(_ok("chain", "the certificate chains to the trust state"))
    except RoostError as exc:
        checks.append(
            _fail(
                "chain",
                f"{exc} [{exc.reason}]",
                "the node's trust store must hold its certificate's CA generation"
                " (`roost trust update`, or re-issue)",
            )
        )
    return checks


def _san_host(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "127.0.0.1"
    ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    names = list(san.get_values_for_type(x509.DNSName))
    return (ips or names or ["127.0.0.1"])[0]


def _running(state_dir: Path) -> str | None:
    """Who holds the state folder's lock, or None; the lock file is only opened if it
    exists, so the folder stays as it was."""
    lock = state_dir / LOCK_NAME
    if not lock.exists():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return lock_holder(state_dir)
    finally:
        os.close(fd)
    return None


def _listeners(node: Any, role: str) -> Iterator[tuple[str, str, tuple[str, int]]]:
    """(name, tcp|udp, address) of every listener the config names."""
    if isinstance(node, HubConfig):
        yield "device channel", "tcp", node.listen
        yield "status API", "tcp", node.api
        if node.remote is not None:
            yield "remote entrance", "tcp", node.remote
    if isinstance(node, BrokerConfig):
        yield "broker (udp)", "udp", node.udp
        yield "broker (tls)", "tcp", node.tls
        if node.api is not None:
            yield "status API", "tcp", node.api
    if isinstance(node, HubConfig | DeviceConfig):
        udp = node.announce.udp
        # Announcements share their port (SO_REUSEADDR, several nodes per host on
        # multicast), so a bound port there is not a conflict.
        yield "announcements", "udp-shared", (udp.bind_host, udp.port)


def _port_checks(node: Any, role: str, running: bool) -> list[Check]:
    checks = []
    for name, proto, (host, port) in _listeners(node, role):
        label = f"port {name}"
        where = f"{host}:{port}"
        if port == 0:
            checks.append(_ok(label, f"{where}: any free port (see run.json when running)"))
            continue
        if proto == "udp-shared":
            checks.append(_ok(label, f"{where} (udp, shared)"))
            continue
        error = _try_bind(host, port, proto)
        if error is None:
            status = "free" if not running else "free, though the node runs: is it listening?"
            checks.append(_ok(label, f"{where} {status}"))
            continue
        holder = _holder(port, proto)
        if running:
            checks.append(_ok(label, f"{where} in use{f' by {holder}' if holder else ''}"))
        else:
            checks.append(
                _fail(
                    label,
                    f"{where} cannot be bound: {error}{f' (held by {holder})' if holder else ''}",
                    "stop what holds it, or choose another port in the config",
                )
            )
    return checks


def _try_bind(host: str, port: int, proto: str) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _holder(port: int, proto: str) -> str | None:
    """ "pid N (name)" of the process whose socket is bound to ``port``, from /proc."""
    inodes = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    name = (proc / "comm").read_text().strip()
                    return f"pid {proc.name} ({name})"
        except OSError:
            continue
    return "another user's process"


def _peer_checks(node: Any, role: str, state: TrustState | None) -> list[Check]:
    peers: list[tuple[str, tuple[str, int]]] = []
    if isinstance(node, HubConfig) and node.broker is not None:
        peers.append(("broker", node.broker.address))
    if isinstance(node, DeviceConfig):
        peers.extend(("hub", hub) for hub in node.hubs)
    if state is not None:
        url = urllib.parse.urlsplit(state.newest.body.next_url)
        if url.hostname:
            peers.append(("download server", (url.hostname, url.port or 443)))
    checks = []
    for name, (host, port) in peers:
        error = _try_connect(host, port)
        label = f"reach {name}"
        if error is None:
            checks.append(_ok(label, f"{host}:{port} answers"))
        else:
            checks.append(
                _warn(
                    label,
                    f"{host}:{port} does not answer: {error}",
                    f"start the {name}, or correct its address",
                )
            )
    return checks


def _try_connect(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


_MARK = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


@click.command("doctor")
@_checks_a_file
def doctor(file: Path, role: str | None, as_json: bool) -> None:
    """Check a node: config, certificate, trust, instance, ports, peers; exit 1 on a failure."""
    detected, checks = run_checks(file, role)
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "file": str(file),
                    "role": detected,
                    "ok": not failed,
                    "checks": [c.to_json() for c in checks],
                }
            )
        )
    else:
        for check in checks:
            click.echo(f"{_MARK[check.status]}  {check.name:<22} {check.detail}")
            if check.fix:
                click.echo(f"      {'':<22} fix: {check.fix}")
    if failed:
        raise click.exceptions.Exit(int(ExitCode.FAILED))
