"""What a daemon checks before it binds or writes anything (docs/operating.md).

The config was checked by its loader (roost.config_schema). Here: the certificate and key
the config names exist, parse, belong together, and are of the daemon's role (a device
certificate given to a hub is refused by the certificate's own role), so a mistake ends in
one line naming the file and the key instead of an ``SSLError`` from deep in a listener.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from roost.errors import ConfigError, RoostError, listening
from roost.pki.certs import Role, certs_from_pem, identifier_of, key_from_pem
from roost.reasons import Reason
from roost.statelock import StateLock

__all__ = ["certificate_role", "check_identity", "check_listeners", "lock_state_folder"]


def certificate_role(cert: x509.Certificate) -> Role | None:
    """The node role a certificate carries: hub (``hcsp:``), device (``ab:``), or None for
    a server certificate without a node identifier (broker, download server)."""
    try:
        identifier = identifier_of(cert)
    except RoostError:
        return None
    return Role.HUB if identifier.startswith("hcsp:") else Role.DEVICE


def _read(source: Path | None, key: str, path: Path, what: str) -> bytes:
    where = f"{source}: {key}" if source is not None else key
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{where} names {path}, which does not exist", reason=Reason.MISSING
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{where} names {path}, which cannot be read: {exc.strerror or exc}",
            reason=Reason.BAD_CONFIG,
        ) from exc


def check_identity(
    source: Path | None, cert_file: Path, key_file: Path, role: Role
) -> x509.Certificate:
    """The node's certificate, once it is known to parse, to match ``key_file`` and to be
    of ``role``; otherwise a :class:`ConfigError` naming the file and the key."""
    where = f"{source}: " if source is not None else ""
    try:
        chain = certs_from_pem(_read(source, "cert", cert_file, "certificate"))
        if not chain:
            raise ValueError("no certificate in it")
        cert = chain[0]
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{where}cert {cert_file} is not a PEM certificate ({exc})", reason=Reason.BAD_CONFIG
        ) from exc
    try:
        private_key = key_from_pem(_read(source, "key", key_file, "key"))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{where}key {key_file} is not a PEM private key Roost can use ({exc})",
            reason=Reason.BAD_CONFIG,
        ) from exc
    ours = private_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    theirs = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if ours != theirs:
        raise ConfigError(
            f"{where}key {key_file} does not belong to cert {cert_file}: give the key issued"
            " with that certificate",
            reason=Reason.KEY_MISMATCH,
        )
    found = certificate_role(cert)
    if role in (Role.HUB, Role.DEVICE) and found is not role:
        shown = found.value if found is not None else "server (broker or download)"
        raise ConfigError(
            f"{where}cert {cert_file} is a {shown} certificate, not a {role.value}'s: a"
            f" {role.value} needs a certificate issued with --role {role.value}",
            reason=Reason.WRONG_ROLE,
        )
    if role is Role.BROKER and found is not None:
        raise ConfigError(
            f"{where}cert {cert_file} is a {found.value} certificate, not a broker's: a broker"
            " needs a certificate issued with --role broker",
            reason=Reason.WRONG_ROLE,
        )
    return cert


def check_listeners(listeners: Sequence[tuple[str, str, tuple[str, int]]]) -> None:
    """Bind each configured TCP/UDP listener once and let go, before the daemon takes its
    state folder or writes anything: a taken address then ends the start with one line
    (exit code 14) and the state left as it was. Port 0 is any free port, never taken.
    The daemon's own bind reports the same way if the port is taken in between."""
    for what, kind, (host, port) in listeners:
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        with socket.socket(family, sock_type) as sock:
            if sock_type == socket.SOCK_STREAM:
                # As asyncio's listeners do: a port in TIME_WAIT is not taken.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with listening(what, host, port):
                sock.bind((host, port))


def lock_state_folder(directory: Path, what: str) -> StateLock:
    """Take ``directory``'s lock for the rest of the command (roost.statelock); it is
    released when the command ends, however it ends, so the lock file is left empty and a
    refused or failed command leaves the folder as it found it."""
    lock = StateLock.acquire(directory, what)
    # Under a click command its context releases the lock; `roost device run` runs
    # without click (roost.cli.daemons) and releases it itself.
    click = sys.modules.get("click")
    ctx = None if click is None else click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().call_on_close(lock.release)
    return lock
