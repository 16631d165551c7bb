"""`roost ca …`: the authority (PROTOCOL.md sections 1–2; seed FIG. 4–6)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from pathlib import Path

import click
from aiohttp import web

from roost.cli.common import (
    RoostGroup,
    at_option,
    echo_json,
    fail_cleanly,
    now_utc,
    parse_at,
)
from roost.cli.human import absolute, fingerprint, print_fields, print_table, relative
from roost.cli.logsetup import configure_logging, log_options
from roost.cli.preflight import lock_state_folder
from roost.errors import StateError, listening
from roost.files import atomic_write
from roost.pki import authority_ops
from roost.pki.authority import Authority
from roost.pki.cainfo import accept_successor, decode_cainfo
from roost.pki.certs import Role, cert_to_pem, key_to_pem
from roost.pki.download import DownloadServer, download_tls_context
from roost.pki.schedule import Action, TimedStep

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
        # An IP or DNS name the certificate cannot carry: nothing was written.
        raise click.UsageError(str(exc)) from exc
    atomic_write(out / "key.pem", key_to_pem(issued.key), mode=0o600)
    atomic_write(out / "cert.pem", cert_to_pem(issued.cert))
    atomic_write(out / "ca-info.bin", issued.ca_info)
    echo_json({"id": issued.identifier, "role": role, "generation": issued.generation})


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--revoke-current", is_flag=True, help="CA N is compromised: flag and issue now.")
@click.option(
    "--rotate-dl-keys",
    default=0,
    type=click.IntRange(0, 255),
    help="Give N+1 a fresh DL key set of this size.",
)
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
    return [
        {"action": step.action.value, "generation": step.generation}
        for step in authority_ops.tick(authority, at)
    ]


def _step_text(step: TimedStep) -> str:
    verbs = {
        Action.PREPARE: "prepare generation {}",
        Action.ACTIVATE: "move issuing to generation {}",
        Action.UNPUBLISH: "stop publishing generation {} (its download certificate expires)",
    }
    return verbs[step.action].format(step.generation)


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@at_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@fail_cleanly
def tick(directory: Path, at: str | None, as_json: bool) -> None:
    """Run the automated operator: prepare, activate and retire on schedule.

    A tick long after a step was due applies every missed step at the time it was due, so
    the authority ends as if it had never been left alone (docs/OPERATIONS.md).
    """
    _lock(directory, "roost ca tick")
    authority = Authority.load(directory)
    when = parse_at(at)
    steps = authority_ops.tick(authority, when)
    doc = {
        "actions": [
            {"action": s.action.value, "generation": s.generation, "due": s.due.isoformat()}
            for s in steps
        ],
        "active": authority.settings.active,
    }
    if as_json:
        echo_json(doc)
        return
    if not steps:
        click.echo(
            f"nothing due at {absolute(when)}; issuing from generation {authority.settings.active}"
        )
    for step in steps:
        late = f" (due {absolute(step.due)}, applied then)" if step.due < when else ""
        click.echo(f"{_step_text(step)}{late}")
    if steps:
        click.echo(f"issuing from generation {authority.settings.active}")


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@fail_cleanly
def repair(directory: Path, as_json: bool) -> None:
    """Check the authority and remove what an interrupted or failed change left behind.

    Nothing listed in authority.json is ever removed; a listed generation with missing or
    broken files is reported (exit 5) and left for a restore from backup.
    """
    _lock(directory, "roost ca repair")
    authority = Authority.load(directory)
    fixed = authority_ops.repair(authority)
    if as_json:
        echo_json({"removed": fixed, "consistent": True})
        return
    for line in fixed:
        click.echo(f"removed: {line}")
    click.echo("the authority is consistent" + ("" if fixed else "; nothing to repair"))


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def _serve(authority: Authority, host: str, port: int, generation: int | None) -> None:
    server = DownloadServer(authority)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner, host, port, ssl_context=download_tls_context(authority, generation, now_utc())
    )
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
    """HTTPS download server publishing every prepared generation (one log line a request)."""
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


def _status_doc(authority: Authority, now: dt.datetime) -> dict[str, object]:
    doc = authority.status()
    rows = doc["generations"]
    assert isinstance(rows, list)
    for row in rows:
        row["fingerprint"] = authority.ca_info(row["generation"]).digest.hex()
    doc["problems"] = [
        {"problem": p.message, "repairable": p.repairable} for p in authority_ops.check(authority)
    ]
    doc["next"] = [
        {
            "action": s.action.value,
            "generation": s.generation,
            "due": s.due.isoformat(),
            "overdue": s.due <= now,
        }
        for s in authority_ops.next_steps(authority)
    ]
    return doc


@ca.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@at_option
@fail_cleanly
def status(directory: Path, as_json: bool, at: str | None) -> None:
    """Show generations, the active one, what a tick would do next and when."""
    authority = Authority.load(directory)
    now = parse_at(at)
    doc = _status_doc(authority, now)
    if as_json:
        echo_json(doc)
        return
    settings = authority.settings
    key_count = len(settings.record(settings.newest).dl_keys)
    print_fields(
        f"Authority {directory}",
        [
            ("issuing from", f"generation {settings.active}"),
            ("publish URL", settings.publish_url),
            (
                "DL keys",
                f"{settings.dl_threshold} of {key_count} sign each generation",
            ),
            ("certificates", f"{doc['issued']} issued"),
        ],
    )
    rows = []
    for g in settings.generations:
        start = dt.datetime.fromisoformat(g.not_before)
        state = (
            "active"
            if g.generation == settings.active
            else ("prepared" if g.generation > settings.active else "retired")
        )
        if g.not_after_time <= now:
            state += ", expired"
        rows.append(
            (
                g.generation,
                state,
                f"{absolute(start)} ({relative(start, now)})",
                f"{absolute(g.not_after_time)} ({relative(g.not_after_time, now)})",
                "-" if g.generation == 1 else g.published,
                "yes" if g.revokes_previous else "no",
                fingerprint(authority.ca_info(g.generation).digest)[:39],
            )
        )
    print_table(
        "Generations",
        (
            "gen",
            "state",
            "valid from",
            "valid until",
            "published",
            "revokes prev.",
            "fingerprint (start)",
        ),
        rows,
    )
    click.echo("Next (roost ca tick):")
    for step in authority_ops.next_steps(authority):
        when = "overdue since" if step.due <= now else "due"
        click.echo(f"  {_step_text(step)}: {when} {absolute(step.due)} ({relative(step.due, now)})")
    for problem in authority_ops.check(authority):
        fix = " (roost ca repair removes it)" if problem.repairable else " (restore from backup)"
        click.echo(f"problem: {problem.message}{fix}")
