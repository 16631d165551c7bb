"""`roost connect`: reach a hub through the broker, log in, watch a camera (docs/broker.md).

The issuer's whole flow (PROTOCOL.md section 5, steps 3 to 9): STUN from the one UDP
socket, TLS to the broker, lookup and verification of the hub's certificate, the password
sealed to it, the broker's wake-up, punching (else the relay), QUIC, then the guard login
(password and card codes) and the sealed calls ``status`` and ``watch``; the frames are
saved and the hub's Merkle log receipt of the watch request is verified.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
from pathlib import Path
from typing import Any

import click

from roost.cli.common import echo_json, fail_cleanly
from roost.cli.names import resolve_node
from roost.cli.remote import answer_from, read_secret
from roost.config import parse_hostport
from roost.errors import (
    ConfigError,
    LocalProtocolError,
    RefusedError,
    RemoteProtocolError,
    RoostError,
    StateError,
    TransportError,
)
from roost.guard.aio import GuardClient
from roost.guard.calls import tls_server_end_point
from roost.guard.remote import Response
from roost.hcsp.documents import is_device_identifier
from roost.pki.truststore import load_state
from roost.reasons import Reason
from roost.rendezvous.issuer import failure_message
from roost.rendezvous.issuer_aio import BrokeredConnection, connect_via_broker
from roost.rendezvous.messages import check_identifier

__all__ = ["DEFAULT_BROKER_UDP_PORT", "connect"]

DEFAULT_BROKER_UDP_PORT = 3478
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}


def _hostport(text: str, hint: str) -> tuple[str, int]:
    try:
        return parse_hostport(text)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from exc


def _frame_of(response: Response) -> tuple[int, int, str, bytes]:
    results = response.results
    if len(results) != 3 or len(results[0]) != 16:
        raise RemoteProtocolError("a frame answer has three fields", reason=Reason.MALFORMED)
    seq, captured_at_ms = struct.unpack(">QQ", results[0])
    return seq, captured_at_ms, results[1].decode("ascii", "replace"), results[2]


async def _pick_camera(client: GuardClient, wanted: str | None) -> str:
    """The device to watch: ``wanted`` when it is an identifier; else the connected device
    whose hello gave that name (the hub's ``connected_names``, for a viewer without the
    home's configs); with no ``wanted``, the first connected device.

    A word that names no connected device is passed on, and the hub refuses it in its own
    words.
    """
    if wanted is not None and is_device_identifier(wanted):
        return wanted
    response = await client.call("status")
    if not response.ok or len(response.results) != 1:
        raise RefusedError("the hub refused status", reason=response.reason or Reason.REFUSED)
    status = json.loads(response.results[0])
    connected = [str(device) for device in status.get("connected") or []]
    if wanted is not None:
        names = status.get("connected_names") or {}
        matches = [device for device in connected if names.get(device) == wanted]
        return matches[0] if len(matches) == 1 else wanted
    if not connected:
        raise StateError("the hub has no connected camera", reason=Reason.NO_CAMERA)
    return connected[0]


@click.command("connect")
@click.argument("hub_id")
@click.option(
    "--broker",
    "broker_addresses",
    required=True,
    multiple=True,
    help="A broker's TLS HOST:PORT; repeat it: the next is tried when one is unreachable.",
)
@click.option(
    "--broker-udp",
    "broker_udps",
    multiple=True,
    help=f"The broker's UDP HOST:PORT (STUN), one per --broker in order; default the "
    f"broker host, port {DEFAULT_BROKER_UDP_PORT}.",
)
@click.option(
    "--trust",
    "trust_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Trust store (roost trust init) that authenticates the broker and the hub.",
)
@click.option("--user", "user_id", required=True, help="User id registered on the hub.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Read the password from the first line of this file instead of prompting.",
)
@click.option(
    "--card-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the asked codes from a card file instead of prompting.",
)
@click.option(
    "--camera", default=None, help="Device to watch, by name or id (default: the first connected)."
)
@click.option("--frames", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("connect-frames"),
    show_default=True,
    help="Directory for the saved frames.",
)
@click.option(
    "--no-punch",
    is_flag=True,
    help="Send and answer no punch probes: the session goes over the broker's relay.",
)
@click.option(
    "--relay-first",
    is_flag=True,
    help="Start on the broker's relay at once and move to the direct path when it answers.",
)
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Directory of the home's configs, so HUB_ID may be a name (hub-1), and --camera too.",
)
@fail_cleanly
def connect(
    hub_id: str,
    broker_addresses: tuple[str, ...],
    broker_udps: tuple[str, ...],
    trust_dir: Path,
    user_id: str,
    password_file: Path | None,
    card_file: Path | None,
    camera: str | None,
    frames: int,
    out: Path,
    no_punch: bool,
    relay_first: bool,
    timeout: float,
    as_json: bool,
    home: Path,
) -> None:
    """Reach HUB_ID (hcsp:…) through the broker, log in as --user and save --frames live
    frames of a camera into --out. The password is asked for once (hidden), or read from
    --password-file, or as the first line of standard input."""
    hub_id = resolve_node(hub_id, home)
    if camera is not None:
        camera = resolve_node(camera, home)
    try:
        check_identifier(hub_id)
    except LocalProtocolError as exc:
        raise click.BadParameter(str(exc), param_hint="HUB_ID") from exc
    brokers = [_hostport(address, "--broker") for address in broker_addresses]
    udps = [_hostport(address, "--broker-udp") for address in broker_udps]
    pairs = [
        (broker, udps[i] if i < len(udps) else (broker[0], DEFAULT_BROKER_UDP_PORT))
        for i, broker in enumerate(brokers)
    ]
    state = load_state(trust_dir)
    if password_file is not None:
        lines = password_file.read_text("utf-8").splitlines()
        password = lines[0] if lines else ""
    else:
        password = read_secret("Password")
    answer = answer_from(card_file)

    async def reach() -> BrokeredConnection:
        # Several brokers (docs/broker-scale.md): an unreachable one passes to the next
        # after a short jittered pause; any other failure is the answer.
        for attempt, (broker, udp) in enumerate(pairs):
            try:
                return await connect_via_broker(
                    hub_id,
                    broker=broker,
                    broker_udp=udp,
                    trust=state,
                    user=user_id,
                    password=password,
                    punch=not no_punch,
                    relay_first=relay_first,
                    quic_timeout_s=timeout,
                )
            except TransportError:
                if attempt == len(pairs) - 1:
                    raise
                await asyncio.sleep(random.uniform(0.05, 0.15) * (attempt + 1))
        raise AssertionError("unreachable: the loop returns or raises")

    async def run() -> dict[str, Any]:
        connection = await reach()
        try:
            return await _session(connection)
        except RoostError as exc:
            # The broker ended the relayed session (its byte or time limit): say that,
            # not the stream error it caused (docs/exit-codes.md, "Brokered connections").
            reason = connection.closed_reason
            if reason is None or reason == exc.reason:
                raise
            raise RefusedError(failure_message(reason), reason=reason) from exc
        finally:
            await connection.close()

    async def _session(connection: BrokeredConnection) -> dict[str, Any]:
        quic = connection.quic
        # The hub opens the login with its Challenge when it took the server-first login
        # (docs/guard.md); otherwise our Hello goes first on a stream of our own.
        reader, writer = quic.login_stream()
        client = await GuardClient.over_stream(
            reader,
            writer,
            channel_binding=tls_server_end_point(quic.server_certificate_der),
            user_id=user_id,
            password=password,
            answer=answer,
            timeout_s=timeout,
            # The first call (status or watch) goes out with the proof: one round trip less.
            pipeline=True,
            server_first=quic.server_first,
        )
        try:
            device = await _pick_camera(client, camera)
            out.mkdir(parents=True, exist_ok=True)
            saved = 0
            total = 0
            last: Response | None = None
            async for response in client.call_stream(
                "watch", device.encode("utf-8"), str(frames).encode("ascii")
            ):
                if not response.ok:
                    raise RefusedError(
                        "the hub refused watch", reason=response.reason or Reason.REFUSED
                    )
                seq, _, mime, payload = _frame_of(response)
                target = out / f"{seq:020d}.{_EXTENSIONS.get(mime, 'bin')}"
                target.write_bytes(payload)
                saved += 1
                total += len(payload)
                last = response
            if last is None:
                raise StateError("the hub streamed no frame", reason=Reason.NO_FRAME)
            receipt = await client.receipt(last)
            rtt = quic.rtt_ms
            if rtt is None:
                rtt = await quic.ping()
            return {
                "hub": hub_id,
                "camera": device,
                "path": connection.current_path.value,
                "started_on": connection.path.value,
                # Who opened the login: the hub with its Challenge, or our Hello.
                "login": "server-first" if quic.server_first else "hello-first",
                "rtt_ms": round(rtt, 3),
                "setup_ms": connection.outcome.setup_ms,
                "timings": dict(connection.outcome.timings),
                "frames": saved,
                "bytes": total,
                "out": str(out),
                "receipt": {
                    "leaf_index": receipt.leaf_index,
                    "size": receipt.checkpoint.size,
                    "root": receipt.checkpoint.root.hex(),
                },
            }
        finally:
            await client.close()

    summary = asyncio.run(run())
    if as_json:
        echo_json(summary)
        return
    receipt = summary["receipt"]
    click.echo(
        f"{summary['frames']} frames ({summary['bytes']} bytes) of {summary['camera']} "
        f"saved in {summary['out']}; path {summary['path']}, rtt {summary['rtt_ms']} ms, "
        f"setup {summary['setup_ms']} ms; receipt leaf {receipt['leaf_index']} "
        f"root {receipt['root']}"
    )
