"""`roost hub …` and `roost device …`: the daemons, wired to real sockets and files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import click
from cryptography.hazmat.primitives.serialization import Encoding

from roost.cli.common import RoostGroup, echo_json, fail_cleanly
from roost.cli.logsetup import configure_logging, log_options
from roost.cli.preflight import check_identity, check_listeners, lock_state_folder
from roost.config import HubConfig, load_device_config, load_hub_config
from roost.device.daemon import DeviceDaemon, read_own_certificate
from roost.device.spool import FrameSpool
from roost.errors import StateError, TransportError
from roost.hub.daemon import HubDaemon
from roost.hub.recorder import Recorder
from roost.hub.runfile import HubRunState, read_run_file, remove_run_file, write_run_file
from roost.pki.certs import Role, certs_from_pem, key_from_pem
from roost.pki.tls import ReloadableServerContext
from roost.pki.updater import TrustUpdater
from roost.reasons import Reason

__all__ = [
    "build_hub_daemon",
    "configure_logging",
    "device",
    "hub",
    "run_until_signalled",
    "use_fast_loop",
]

_POLL_EVERY = 60.0
log = logging.getLogger("roost.cli")


def build_hub_daemon(
    config: HubConfig, trust: TrustUpdater, recorder: Recorder, rng: random.Random | None = None
) -> HubDaemon:
    """Load the hub's certificate and key from the config's files and wire a HubDaemon.

    The daemon reads no files itself: this is where they are read (the CLI is the
    composition root).
    """
    return HubDaemon(
        config,
        trust,
        recorder,
        certificate=certs_from_pem(config.cert.read_bytes())[0],
        private_key=key_from_pem(config.key.read_bytes()),
        tls=ReloadableServerContext(config.cert, config.key, trust.state.anchors),
        rng=rng,
    )


def use_fast_loop() -> None:
    """Run the daemon on uvloop where it is installed."""
    # uvloop receives UDP about ten times faster than the default loop (STYLE.md).
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run_until_signalled(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    poll: Callable[[float], Awaitable[object]],
) -> None:
    """Start, poll the trust store now and then, stop cleanly on SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await start()
    try:
        while not done.is_set():
            await poll(loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), _POLL_EVERY)
    finally:
        await stop()


def _follow_own_certificate(trust: TrustUpdater, cert_file: Path) -> None:
    """A node installed with a certificate of a generation its trust store does not hold
    yet (after `roost ca roll --revoke-current`) fetches that generation before it starts,
    instead of refusing its own certificate (docs/trust.md, "When to fetch")."""
    leaf = certs_from_pem(cert_file.read_bytes())[0]
    asyncio.run(trust.follow_own_certificate(leaf, time.monotonic()))


@click.group(cls=RoostGroup)
def hub() -> None:
    """The home hub: records cameras, announces itself, hands devices over."""


@hub.command("run")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True)
@log_options
@fail_cleanly
def hub_run(config_file: Path, log_level: str, log_format: str, verbose: bool) -> None:
    """Run a hub until SIGINT/SIGTERM (one per state folder)."""
    from roost.guard.aio import GuardServer
    from roost.guard.log import SqliteMerkleLog
    from roost.hub.api import start_api
    from roost.hub.remote import build_guard_server, start_remote
    from roost.rendezvous.agent_aio import BrokerAgent

    configure_logging(log_level, log_format)
    config = load_hub_config(config_file)
    check_identity(config.source, config.cert, config.key, Role.HUB)
    # Held until the process ends: a second hub on this folder is refused (docs/operating.md).
    lock_state_folder(config.state_dir, "roost hub run")
    where = config.source.name if config.source else "the config"
    check_listeners(
        [
            (f"device channel (listen in {where})", "tcp", config.listen),
            (f"status API (api in {where})", "tcp", config.api),
            *(
                [(f"remote entrance (remote in {where})", "tcp", config.remote)]
                if config.remote
                else []
            ),
        ]
    )
    trust = TrustUpdater(config.trust_dir)
    _follow_own_certificate(trust, config.cert)
    recorder = Recorder(config.state_dir / "recordings", config.retention_bytes)
    daemon = build_hub_daemon(config, trust, recorder)
    runners = []
    remote: list[tuple[GuardServer, SqliteMerkleLog]] = []
    agents: list[BrokerAgent] = []

    async def start() -> None:
        await daemon.start()
        runners.append(await start_api(daemon, *config.api))
        remote_address = None
        if config.remote is not None or config.broker is not None:
            # One guard server for the TCP remote entrance and the broker's QUIC sessions:
            # the same users, calls and Merkle log (docs/broker.md, "Running it").
            remote.append(build_guard_server(daemon))
            daemon.guard = remote[0][0]
        if config.remote is not None:
            await start_remote(daemon, guard=remote[0])
            remote_address = (config.remote[0], remote[0][0].bound_port)
        if config.broker is not None:
            await remote[0][0].open()
            agent = BrokerAgent(
                config.broker,
                identifier=daemon.identifier,
                certificate=daemon.certificate,
                certificate_der=daemon.certificate.public_bytes(Encoding.DER),
                private_key=key_from_pem(config.key.read_bytes()),
                cert_file=config.cert,
                key_file=config.key,
                trust=trust,
                guard=remote[0][0],
            )
            await agent.start()
            agents.append(agent)
            daemon.broker_status = agent.status
        # Every listener may be configured with port 0: report the ports really bound,
        # on stdout and in run.json, once all of them are (docs/testing.md).
        state = HubRunState(
            pid=os.getpid(),
            listen=daemon.bound_address,
            advertise=(daemon.advertised.host, daemon.advertised.port),
            api=(config.api[0], runners[0].bound_port),
            remote=remote_address,
        )
        write_run_file(config.run_file, state)
        echo_json({"hub": daemon.identifier, **json.loads(state.to_json())})
        log.info(
            "hub %s (%s) ready: devices %s:%s, api %s:%s",
            config.name,
            daemon.identifier,
            *state.listen,
            *state.api,
            extra={"event": "ready"},
        )

    async def stop() -> None:
        remove_run_file(config.run_file)
        for agent in agents:
            await agent.stop()
        for runner in runners:
            await runner.cleanup()
        for server, merkle_log in remote:
            await server.stop()
            merkle_log.close()
        await daemon.stop()
        recorder.close()

    use_fast_loop()
    asyncio.run(run_until_signalled(start, stop, trust.poll))


@hub.command("status")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def hub_status(config_file: Path, as_json: bool) -> None:
    """Ask a running hub for its status (its HTTP API)."""
    config = load_hub_config(config_file)
    from roost.hub.api import fetch_status

    host, port = _api_address(config)
    try:
        doc = fetch_status(host, port)
    except OSError as exc:
        # Nothing answered: unreachable (docs/exit-codes.md), whether it is down or elsewhere.
        raise TransportError(
            f"hub is not answering at {host}:{port}: {exc}", reason=Reason.NOT_RUNNING
        ) from exc
    if as_json:
        echo_json(doc)
        return
    click.echo(json.dumps(doc, indent=2))


def _api_address(config: HubConfig) -> tuple[str, int]:
    """The configured API address, or the bound one from run.json when configured as port 0."""
    if config.api[1] != 0:
        return config.api
    try:
        return read_run_file(config.run_file).api
    except StateError as exc:
        if exc.reason != Reason.NOT_RUNNING:
            raise
        # No run file: the hub never finished starting, or it stopped (docs/exit-codes.md).
        raise TransportError(
            f"hub {config.name} is not running (no {config.run_file})", reason=Reason.NOT_RUNNING
        ) from exc


@click.group(cls=RoostGroup)
def device() -> None:
    """A camera: captures frames and streams them to the best trusted hub."""


@device.command("run")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True)
@log_options
@fail_cleanly
def device_run(config_file: Path, log_level: str, log_format: str, verbose: bool) -> None:
    """Run a camera until SIGINT/SIGTERM (one per state folder)."""
    configure_logging(log_level, log_format)
    config = load_device_config(config_file)
    check_identity(config.source, config.cert, config.key, Role.DEVICE)
    # Two devices on one spool would replace each other's connection (docs/operating.md).
    lock_state_folder(config.state_dir, "roost device run")
    trust = TrustUpdater(config.trust_dir)
    _follow_own_certificate(trust, config.cert)
    spool = FrameSpool(
        config.state_dir / "spool.sqlite3", config.max_buffer_frames, config.max_buffer_bytes
    )
    daemon = DeviceDaemon(config, trust, spool, read_own_certificate(config))

    async def start() -> None:
        await daemon.start()
        echo_json({"device": daemon.identifier, "last_acked": spool.last_acked})
        log.info(
            "device %s (%s) ready: %s frames unacknowledged",
            config.name,
            daemon.identifier,
            spool.buffered,
            extra={"event": "ready"},
        )

    async def stop() -> None:
        await daemon.stop()
        spool.close()

    use_fast_loop()
    asyncio.run(run_until_signalled(start, stop, trust.poll))


@device.command("status")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def device_status(config_file: Path, as_json: bool) -> None:
    """Show what the device last reported (hub, state, last acked seq, buffered)."""
    config = load_device_config(config_file)
    try:
        doc = json.loads(config.status_file.read_bytes())
    except FileNotFoundError as exc:
        raise StateError(f"{config.name} has not run yet", reason=Reason.NOT_RUNNING) from exc
    except ValueError as exc:
        raise StateError(f"{config.status_file} is not JSON: {exc}", reason=Reason.CORRUPT) from exc
    if not isinstance(doc, dict):
        raise StateError(f"{config.status_file} is not a status document", reason=Reason.CORRUPT)
    doc["age_s"] = round(time.time() - float(doc.get("written_at", 0)), 1)
    if as_json:
        echo_json(doc)
        return
    for key in ("name", "id", "state", "hub", "last_acked_seq", "buffered", "dropped", "age_s"):
        click.echo(f"{key:>15}: {doc.get(key)}")
