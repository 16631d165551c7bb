"""`roost broker …`: the rendezvous broker of PROTOCOL.md section 5, wired to real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path
from typing import Any

import click

from roost.cli.common import RoostGroup, echo_json, fail_cleanly
from roost.cli.human import print_fields, print_table, relative
from roost.cli.logsetup import configure_logging, log_options
from roost.cli.preflight import check_identity, check_listeners, lock_state_folder
from roost.config import BrokerConfig, load_broker_config
from roost.errors import ConfigError, TransportError
from roost.pki.certs import Role, certs_from_pem, key_from_pem
from roost.pki.updater import TrustUpdater
from roost.reasons import Reason
from roost.rendezvous.broker_aio import BrokerDaemon

__all__ = ["broker", "build_broker_daemon", "print_broker_status"]


def build_broker_daemon(config: BrokerConfig, trust: TrustUpdater) -> BrokerDaemon:
    """Read the broker's certificate and key from the config's files and wire a daemon
    (the CLI is the composition root: the daemon reads no files itself)."""
    return BrokerDaemon(
        config,
        trust,
        certs_from_pem(config.cert.read_bytes())[0],
        key_from_pem(config.key.read_bytes()),
    )


@click.group(cls=RoostGroup)
def broker() -> None:
    """The rendezvous broker: registrations, STUN, wake-ups and the relay."""


@broker.command("run")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="SO_REUSEPORT worker processes sharing the ports (needs a shared registry).",
)
@click.option("--worker", type=int, default=None, hidden=True)
@click.option("--udp-port", type=int, default=None, hidden=True)
@click.option("--tls-port", type=int, default=None, hidden=True)
@log_options
@fail_cleanly
def broker_run(
    config_file: Path,
    workers: int | None,
    worker: int | None,
    udp_port: int | None,
    tls_port: int | None,
    log_level: str,
    log_format: str,
    verbose: bool,
) -> None:
    """Run the broker until SIGINT/SIGTERM (one per state folder; its workers share it)."""
    from roost.cli.daemons import run_until_signalled
    from roost.cli.run import use_fast_loop

    configure_logging(log_level, log_format)
    config = load_broker_config(config_file)
    count = workers or config.workers
    check_identity(config.source, config.cert, config.key, Role.BROKER)
    if worker is None:
        # The supervisor of several workers, or the one process, holds the state folder;
        # its workers run under it and share the folder and the ports.
        lock_state_folder(config.state_dir, "roost broker run")
        where = config.source.name if config.source else "the config"
        check_listeners(
            [
                (f"broker's UDP port (udp in {where})", "udp", config.udp),
                (f"broker's TLS port (tls in {where})", "tcp", config.tls),
                *([(f"status API (api in {where})", "tcp", config.api)] if config.api else []),
            ]
        )
    if worker is None and count > 1:
        if not config.shared:
            raise ConfigError(
                'several workers need a shared registry (registry = "redis://…")',
                reason=Reason.BAD_CONFIG,
            )
        from roost.cli.broker_workers import run_workers

        run_workers(config, config_file, count, verbose)
        return
    if worker is not None:
        config = _worker_config(config, worker, udp_port, tls_port)
    trust = TrustUpdater(config.trust_dir)
    daemon = build_broker_daemon(config, trust)

    async def start() -> None:
        await daemon.start()
        echo_json(
            {
                "broker": config.name,
                "udp": [config.udp[0], daemon.udp_port],
                "tls": [config.tls[0], daemon.tls_port],
                "api": None if config.api is None else [config.api[0], daemon.api_port],
            }
        )

    async def poll(now: float) -> None:
        # A newly fetched CA generation reaches the TLS listener at once (section 2).
        if await trust.poll(now):
            daemon.trust_changed()

    use_fast_loop()
    asyncio.run(run_until_signalled(start, daemon.stop, poll))


def _worker_config(
    config: BrokerConfig, index: int, udp_port: int | None, tls_port: int | None
) -> BrokerConfig:
    """Worker ``index`` of `--workers`: the shared ports, its own node name, API port and
    node-link port (a configured port + index; port 0 stays any free port)."""
    node = config.node or f"{config.name}-{socket.gethostname()}"
    api = config.api
    if api is not None and api[1] != 0:
        api = (api[0], api[1] + index)
    link = config.node_link
    if link is not None and link[1] != 0:
        link = (link[0], link[1] + index)
    return dataclasses.replace(
        config,
        node_link=link,
        udp=(config.udp[0], udp_port if udp_port is not None else config.udp[1]),
        tls=(config.tls[0], tls_port if tls_port is not None else config.tls[1]),
        api=api,
        node=f"{node}-w{index}",
        reuse_port=True,
    )


@broker.command("status")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def broker_status(config_file: Path, as_json: bool) -> None:
    """Ask a running broker for its status (its HTTP API)."""
    from roost.rendezvous.broker_aio import fetch_broker_status
    from roost.rendezvous.broker_status import BrokerStatus

    config = load_broker_config(config_file)
    if config.api is None:
        raise ConfigError(f"{config_file} has no api address", reason=Reason.BAD_CONFIG)
    host, port = config.api
    try:
        doc = fetch_broker_status(host, port)
    except OSError as exc:
        raise TransportError(
            f"broker is not answering at {host}:{port}: {exc}", reason=Reason.NOT_RUNNING
        ) from exc
    # Read it back typed, so a broken document fails here rather than in a reader.
    BrokerStatus.from_json(doc)
    if as_json:
        echo_json(doc)
        return
    print_broker_status(doc)


def print_broker_status(doc: dict[str, Any]) -> None:
    """The broker's status document as a person reads it."""
    uptime = float(doc.get("uptime_s") or 0)
    print_fields(
        f"Broker {doc.get('name')}",
        [
            ("UDP", doc.get("udp")),
            ("TLS", doc.get("tls")),
            ("up for", relative(0.0, uptime).removesuffix(" ago")),
            ("hubs registered", doc.get("registry_size")),
            ("control channels", doc.get("channels")),
            ("sessions", f"{doc.get('sessions')} ({doc.get('relaying')} relayed)"),
            ("trust", f"generation {(doc.get('trust') or {}).get('current')}"),
        ],
    )
    counters = doc.get("counters") or {}
    rows = [
        (
            name.replace("_", " "),
            value
            if not isinstance(value, dict)
            else ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "0",
        )
        for name, value in counters.items()
    ]
    if rows:
        print_table("Since start", ("counter", "value"), rows)
