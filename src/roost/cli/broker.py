"""`roost broker …`: the rendezvous broker of PROTOCOL.md section 5, wired to real sockets."""

from __future__ import annotations

import asyncio
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
@log_options
@fail_cleanly
def broker_run(config_file: Path, log_level: str, log_format: str, verbose: bool) -> None:
    """Run the broker until SIGINT/SIGTERM (one per state folder)."""
    from roost.cli.run import run_until_signalled, use_fast_loop

    configure_logging(log_level, log_format)
    config = load_broker_config(config_file)
    check_identity(config.source, config.cert, config.key, Role.BROKER)
    lock_state_folder(config.state_dir, "roost broker run")
    where = config.source.name if config.source else "the config"
    check_listeners(
        [
            (f"broker's UDP port (udp in {where})", "udp", config.udp),
            (f"broker's TLS port (tls in {where})", "tcp", config.tls),
            *([(f"status API (api in {where})", "tcp", config.api)] if config.api else []),
        ]
    )
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
