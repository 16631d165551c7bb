"""`roost remote call`: log in to a hub's remote entrance and make one call (docs/guard.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click
from cryptography import x509

from roost.config import parse_hostport
from roost.errors import ConfigError, RefusedError, RemoteProtocolError, VerificationError
from roost.guard.aio import GuardClient
from roost.guard.card import parse_card
from roost.guard.log import checkpoint_to_json, decode_receipt, encode_receipt
from roost.guard.remote import Response
from roost.pki.tls import client_context
from roost.pki.truststore import load_state

from .common import RoostGroup, echo_json, fail_cleanly
from .names import resolve_node

__all__ = ["answer_from", "read_secret", "remote"]


@click.group(cls=RoostGroup)
def remote() -> None:
    """Reach a hub's remote entrance: password, card codes, then protected calls."""


def read_secret(prompt: str) -> str:
    """Hidden prompt on a terminal; one line of standard input for scripts."""
    if sys.stdin.isatty():
        value: str = click.prompt(prompt, hide_input=True, err=True)
        return value
    line = sys.stdin.readline()
    if not line:
        raise click.ClickException(f"standard input ended before the {prompt.lower()}")
    return line.rstrip("\r\n")


def answer_from(card_file: Path | None) -> Callable[[tuple[str, ...]], list[str]]:
    codes = parse_card(card_file.read_text("utf-8")) if card_file is not None else None

    def answer(labels: tuple[str, ...]) -> list[str]:
        if codes is None:
            return [read_secret(f"Code {label}") for label in labels]
        missing = [label for label in labels if label not in codes]
        if missing:
            raise VerificationError(
                f"the card has no code for {', '.join(missing)}", reason="not-on-card"
            )
        return [codes[label] for label in labels]

    return answer


def _show(method: str, response: Response, out: Path | None) -> None:
    results = response.results
    if method == "status" and len(results) == 1:
        click.echo(json.dumps(json.loads(results[0]), indent=2))
        return
    if method == "latest-frame" and len(results) == 3:
        seq, captured_at_ms = struct.unpack(">QQ", results[0])
        target = out or Path(f"latest-frame-{seq}.jpg")
        target.write_bytes(results[2])
        echo_json(
            {
                "seq": seq,
                "captured_at_ms": captured_at_ms,
                "mime": results[1].decode("ascii", "replace"),
                "bytes": len(results[2]),
                "written": str(target),
            }
        )
        return
    shown: list[str] = []
    for item in results:
        try:
            shown.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            shown.append("base64:" + base64.b64encode(item).decode("ascii"))
    echo_json(shown)


_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}


def _frame_of(response: Response) -> tuple[int, int, str, bytes]:
    """``(seq, captured_at_ms, mime, payload)`` of a latest-frame or watch answer."""
    results = response.results
    if len(results) != 3 or len(results[0]) != 16:
        raise RemoteProtocolError("a frame answer has three fields", reason="malformed")
    seq, captured_at_ms = struct.unpack(">QQ", results[0])
    return seq, captured_at_ms, results[1].decode("ascii", "replace"), results[2]


async def _watch(client: GuardClient, args: Sequence[bytes], out: Path) -> Response | None:
    """Write each streamed frame to ``out`` as it arrives; print one JSON line per frame."""
    out.mkdir(parents=True, exist_ok=True)
    last: Response | None = None
    async for response in client.call_stream("watch", *args):
        if not response.ok:
            raise RefusedError("the hub refused watch", reason=response.reason or "refused")
        seq, captured_at_ms, mime, payload = _frame_of(response)
        target = out / f"{seq:020d}.{_EXTENSIONS.get(mime, 'bin')}"
        target.write_bytes(payload)
        echo_json(
            {
                "seq": seq,
                "captured_at_ms": captured_at_ms,
                "mime": mime,
                "bytes": len(payload),
                "written": str(target),
            }
        )
        last = response
    return last


@remote.command("call")
@click.argument("address")
@click.argument("method")
@click.argument("args", nargs=-1)
@click.option("--user", "user_id", required=True, help="User id registered on the hub.")
@click.option(
    "--trust",
    "trust_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Trust store (roost trust init) that authenticates the hub.",
)
@click.option(
    "--hub-id", default=None, help="Require this hub identifier (hcsp:…), not just any hub."
)
@click.option(
    "--card-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the asked codes from a card file instead of prompting.",
)
@click.option(
    "--receipt",
    "receipt_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Fetch, verify and write the log receipt of this call's request.",
)
@click.option(
    "--since-receipt",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A receipt kept earlier: check the hub's log still extends it (no rewrite).",
)
@click.option("--log-key-id", default=None, help="Require the log key with this id (hex).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="latest-frame: the file to write; watch: the directory for the frames.",
)
@click.option(
    "--frames",
    type=click.IntRange(min=1),
    default=None,
    help="watch: how many frames to stream (the hub's default and bound apply).",
)
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Directory of the home's configs, so DEVICE may be a name (device-1).",
)
@fail_cleanly
def call(
    address: str,
    method: str,
    args: Sequence[str],
    user_id: str,
    trust_dir: Path,
    hub_id: str | None,
    card_file: Path | None,
    receipt_file: Path | None,
    since_receipt: Path | None,
    log_key_id: str | None,
    out: Path | None,
    frames: int | None,
    timeout: float,
    home: Path,
) -> None:
    """Log in to ADDRESS (host:port) as --user and call METHOD (status, latest-frame
    DEVICE_ID, watch DEVICE_ID --frames N --out DIR, …). The password is asked for, or
    read as the first line of standard input.
    """
    if frames is not None and method != "watch":
        raise click.UsageError("--frames goes with the watch method")
    if method in ("latest-frame", "watch") and args:
        # A device by its name in the home's configs, or by its identifier.
        args = [resolve_node(args[0], home), *args[1:]]
    call_args = [arg.encode("utf-8") for arg in args]
    if frames is not None:
        call_args.append(str(frames).encode("ascii"))
    try:
        host, port = parse_hostport(address)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS") from exc
    state = load_state(trust_dir)
    password = read_secret("Password")

    def check_server(leaf: x509.Certificate) -> None:
        node, _, _ = state.verify_node(leaf, hub_id)
        if not node.identifier.startswith("hcsp:"):
            raise VerificationError("the server is not a hub", reason="not-hub")

    async def run() -> None:
        client = await GuardClient.connect(
            host,
            port,
            client_context(state.anchors),
            user_id=user_id,
            password=password,
            answer=answer_from(card_file),
            check_server=check_server,
            timeout_s=timeout,
        )
        try:
            if since_receipt is not None:
                earlier = decode_receipt(since_receipt.read_bytes())
                newer = await client.log_extends(earlier)
                click.echo(
                    f"the hub's log extends {since_receipt.name}: size "
                    f"{earlier.checkpoint.size} → {newer.size}, same key",
                    err=True,
                )
            if method == "watch":
                streamed = await _watch(client, call_args, out or Path("watch-frames"))
                if streamed is None:
                    return
                response = streamed
            else:
                response = await client.call(method, *call_args)
                if not response.ok:
                    # The hub answered and said no: a refusal, not a broken wire rule.
                    raise RefusedError(
                        f"the hub refused {method}", reason=response.reason or "refused"
                    )
                _show(method, response, out)
            if receipt_file is not None:
                receipt = await client.receipt(response)
                key_id = str(checkpoint_to_json(receipt.checkpoint)["key_id"])
                if log_key_id is not None and key_id != log_key_id.lower():
                    raise VerificationError(
                        f"receipt signed by log key {key_id}", reason="wrong-log-key"
                    )
                receipt_file.write_bytes(encode_receipt(receipt))
                click.echo(
                    f"receipt for leaf {receipt.leaf_index} (log size "
                    f"{receipt.checkpoint.size}, key {key_id}) written to {receipt_file}",
                    err=True,
                )
        finally:
            await client.close()

    asyncio.run(run())
