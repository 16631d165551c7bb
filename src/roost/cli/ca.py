"""`roost ca …`: the authority (PROTOCOL.md sections 1–2; seed FIG. 4–6)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from pathlib import Path

import click
from aiohttp import web

from roost.cli.common import RoostGroup, at_option, echo_json, fail_cleanly, parse_at
from roost.cli.logsetup import configure_logging, log_options
from roost.cli.preflight import lock_state_folder
from roost.errors import StateError, listening
from roost.files import atomic_write
from roost.pki.authority import Authority
from roost.pki.cainfo import accept_successor, decode_cainfo
from roost.pki.certs import Role, cert_to_pem, key_to_pem
from roost.pki.download import DownloadServer, download_tls_context
from roost.pki.schedule import Action, GenerationTimes, plan

__all__ = ["ca", "tick_authority"]

_YEAR = dt.timedelta(days=365)
_log = logging.getLogger("roost.download")


def _lock(directory: Path, what: str) -> None:
    """Hold the authority folder's lock until the command ends (roost.statelock): two
    `roost ca roll` at once would both prepare generation N+1."""
    if not directory.exists() and what != "roost ca init":
        return  # Authority.load names the missing folder; the lock must not create it.
    lock_state_folder(directory, what)


@click.group(cls=RoostGroup)
def ca() -> None:
    """The Roost certificate authority."""


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--publish-url", required=True, help="https:// base URL of the download server.")
@click.option("--dl-keys", default=3, show_default=True, help="Ed25519 DL keys in the set.")
@click.option("--dl-threshold", default=2, show_default=True, help="Signatures required.")
@click.option("--validity-years", default=20, show_default=True)
@click.option("--lead-years", default=5, show_default=True, help="Roll this long before expiry.")
@at_option
@fail_cleanly
def init(
    directory: Path,
    publish_url: str,
    dl_keys: int,
    dl_threshold: int,
    validity_years: int,
    lead_years: int,
    at: str | None,
) -> None:
    """Create generation 1 of a new authority in DIRECTORY."""
    _lock(directory, "roost ca init")
    authority = Authority.init(
        directory,
        publish_url,
        parse_at(at),
        dl_keys=dl_keys,
        dl_threshold=dl_threshold,
        validity_years=validity_years,
        lead_years=lead_years,
    )
    info = authority.ca_info(1)
    echo_json({"generation": 1, "next_url": info.body.next_url, "dl_keys": dl_keys})


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--dns", multiple=True, help="DNS name to include (repeatable).")
@click.option("--ip", "ips", multiple=True, help="IP address to include (repeatable).")
@at_option
@fail_cleanly
def issue(
    directory: Path,
    role: str,
    out: Path,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    at: str | None,
) -> None:
    """Issue a certificate; writes cert.pem, key.pem and ca-info.bin into OUT."""
    _lock(directory, "roost ca issue")
    authority = Authority.load(directory)
    targets = [out / "cert.pem", out / "key.pem", out / "ca-info.bin"]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise StateError(f"refusing to overwrite {', '.join(existing)}", reason="exists")
    try:
        issued = authority.issue(Role(role), parse_at(at), dns=dns, ips=ips)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    atomic_write(out / "key.pem", key_to_pem(issued.key), mode=0o600)
    atomic_write(out / "cert.pem", cert_to_pem(issued.cert))
    atomic_write(out / "ca-info.bin", issued.ca_info)
    echo_json({"id": issued.identifier, "role": role, "generation": issued.generation})


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--revoke-current", is_flag=True, help="CA N is compromised: flag and issue now.")
@click.option("--rotate-dl-keys", default=0, help="Give N+1 a fresh DL key set of this size.")
@at_option
@fail_cleanly
def roll(directory: Path, revoke_current: bool, rotate_dl_keys: int, at: str | None) -> None:
    """Prepare generation N+1 (and its download-server certificate)."""
    _lock(directory, "roost ca roll")
    authority = Authority.load(directory)
    info = authority.roll(parse_at(at), revoke_current, rotate_dl_keys)
    echo_json(
        {
            "generation": info.generation,
            "next_url": info.body.next_url,
            "revokes_previous": info.revokes_previous,
            "active": authority.settings.active,
        }
    )


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@fail_cleanly
def activate(directory: Path) -> None:
    """Move issuing to the newest generation (S510)."""
    _lock(directory, "roost ca activate")
    echo_json({"active": Authority.load(directory).activate()})


def tick_authority(authority: Authority, at: dt.datetime) -> list[dict[str, object]]:
    """Apply every action the FIG. 5/6 schedule wants at `at`; returns what was done."""
    done: list[dict[str, object]] = []
    lead = authority.settings.lead_years * _YEAR
    for _ in range(64):
        times = [
            GenerationTimes(g.generation, g.not_after_time, g.published)
            for g in authority.settings.generations
        ]
        steps = plan(times, authority.settings.active, at, lead)
        if not steps:
            break
        step = steps[0]
        if step.action is Action.PREPARE:
            authority.roll(at)
        elif step.action is Action.ACTIVATE:
            authority.activate()
        else:
            authority.unpublish(step.generation)
        done.append({"action": step.action.value, "generation": step.generation})
    return done


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@at_option
@fail_cleanly
def tick(directory: Path, at: str | None) -> None:
    """Run the automated operator: prepare, activate and retire on schedule."""
    _lock(directory, "roost ca tick")
    authority = Authority.load(directory)
    done = tick_authority(authority, parse_at(at))
    echo_json({"actions": done, "active": authority.settings.active})


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def _serve(authority: Authority, host: str, port: int, generation: int | None) -> None:
    server = DownloadServer(authority)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=download_tls_context(authority, generation))
    try:
        with listening("download server", host, port):
            await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    echo_json(
        {"serving": f"https://{host}:{bound}/", "generations": authority.published_generations()}
    )
    _log.info(
        "download server listening on https://%s:%s/, generations %s",
        host,
        bound,
        authority.published_generations(),
        extra={"event": "listening"},
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--listen", default="127.0.0.1:8443", show_default=True, metavar="HOST:PORT")
@click.option("--generation", type=int, default=None, help="Whose download certificate to use.")
@log_options
@fail_cleanly
def serve(
    directory: Path,
    listen: str,
    generation: int | None,
    log_level: str,
    log_format: str,
    verbose: bool,
) -> None:
    """HTTPS download server publishing every prepared generation."""
    configure_logging(log_level, log_format)
    authority = Authority.load(directory)
    host, port = _split_listen(listen)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(authority, host, port, generation))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@ca.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--prev", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def inspect(file: Path, prev: Path | None, as_json: bool) -> None:
    """Decode CA information; with --prev, check it is a valid successor."""
    info = decode_cainfo(file.read_bytes())
    cert = info.ca_certificate
    doc: dict[str, object] = {
        "generation": info.generation,
        "issued_at": info.issued_at_time.isoformat(),
        "revokes_previous": info.revokes_previous,
        "prev_digest": info.body.prev_digest.hex(),
        "digest": info.digest.hex(),
        "ca_subject": cert.subject.rfc4514_string(),
        "ca_not_after": cert.not_valid_after_utc.isoformat(),
        "next_url": info.body.next_url,
        "dl_threshold": info.body.dl_threshold,
        "dl_keys": [k.hex() for k in info.body.dl_keys],
        "signatures": len(info.signatures),
        "size": len(info.raw),
    }
    if prev is not None:
        accept_successor(decode_cainfo(prev.read_bytes()), info)
        doc["valid_successor"] = True
    if as_json:
        echo_json(doc)
        return
    for key, value in doc.items():
        click.echo(f"{key:>16}: {value}")


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def status(directory: Path, as_json: bool) -> None:
    """Show generations, the active one, and how much was issued."""
    doc = Authority.load(directory).status()
    if as_json:
        echo_json(doc)
        return
    click.echo(json.dumps(doc, indent=2))
