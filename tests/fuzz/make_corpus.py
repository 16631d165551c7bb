"""Write the seed corpora under tests/fuzz/corpus/<target>/ (run from the repository root).

Every seed is a valid input made by Roost's real encoders, most of them the golden vectors
already committed under tests/vectors (so a seed is exactly what a peer sends), plus the
published STUN vectors of RFC 5769 sections 2.1-2.3. A seed file is named by the SHA-256 of
its content, so regenerating adds nothing twice; files the fuzzer saved after a crash
(``crash-…``, added by hand with a regression test) are left alone.

    PYTHONPATH=src .venv/bin/python -m tests.fuzz.make_corpus
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from roost.config import broker_limits_table, connection_table, redirect_table, to_toml
from roost.framing import encode_record
from roost.guard.session import encode_fields
from roost.hcsp.channel import AckMessage, FrameMessage, encode_message, encode_message_body
from roost.hcsp.documents import (
    Endpoint,
    Hello,
    HubAddress,
    Redirect,
    Welcome,
    encode_document,
)
from roost.rendezvous.messages import Candidate, encode_candidates
from roost.rendezvous.presence import Hop, NodeMessage, PeerRecord, PresenceRecord, hello
from tests.fuzz.targets import CORPUS, DEVICE_ID, FEATURES, HUB_ID, TARGETS
from tests.unit.rendezvous.test_stun import (
    RFC5769_IPV4_RESPONSE,
    RFC5769_IPV6_RESPONSE,
    RFC5769_REQUEST,
)

__all__ = ["main", "seeds"]

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
_OTHER_HUB = "hcsp:" + "O" * 22


def _hex(name: str) -> bytes:
    return bytes.fromhex((VECTORS / name).read_text().strip())


def _channel_documents() -> list[bytes]:
    target = HubAddress(_OTHER_HUB, Endpoint("127.0.0.1", 7001))
    return [
        encode_document(Hello(DEVICE_ID, HUB_ID, "camera", 0)),
        encode_document(Welcome(HUB_ID, DEVICE_ID, FEATURES, 16)),
        encode_document(Redirect(HUB_ID, DEVICE_ID, target, FEATURES)),
    ]


def _device_stream() -> bytes:
    """What a device sends once its hello is answered: frames 1-3."""
    return b"".join(
        encode_message(FrameMessage(seq, 1000 * seq, "image/jpeg", b"\xff\xd8frame\xff\xd9"))
        for seq in range(1, 4)
    )


def _channel_seeds(side: str) -> list[bytes]:
    hello, welcome, redirect = (encode_record(b"\x01" + doc) for doc in _channel_documents())
    if side == "hub":
        # Unopened (control bit 0 clear): the hello first (one from an older device without
        # a name, one with); opened: frames straight away.
        named = encode_record(
            b"\x01" + encode_document(Hello(DEVICE_ID, HUB_ID, "camera", 0, "porch"))
        )
        return [
            b"\x00" + hello + _device_stream(),
            b"\x00" + named + _device_stream(),
            b"\x01" + _device_stream(),
            b"\x13",
        ]
    acks = encode_message(AckMessage(1)) + encode_message(AckMessage(3))
    return [b"\x00" + welcome + acks, b"\x01" + acks + redirect, b"\x21" + acks, b"\x11"]


def _config_seeds() -> list[bytes]:
    common = {"state_dir": "state", "cert": "node.pem", "key": "node.key"}
    hub = to_toml(
        {
            "name": "hub-1",
            **common,
            "listen": "127.0.0.1:7001",
            "api": "127.0.0.1:0",
            "retention_mb": 64,
            "announce": {"interval": 1.0, "hold_down": 3.0, "unicast": ["127.0.0.1:17320"]},
            "redirect": redirect_table(),
            "broker": {"address": "127.0.0.1:3479", "udp": "127.0.0.1:3478"},
        }
    )
    device = to_toml(
        {
            "name": "cam-1",
            **common,
            "fps": 5.0,
            "hubs": ["127.0.0.1:7001"],
            "max_buffer_mb": 16,
            "connection": connection_table(),
        }
    )
    broker = to_toml(
        {"name": "broker", **common, "udp": "127.0.0.1:0", "limits": broker_limits_table()}
    )
    return [b"\x00" + hub.encode(), b"\x01" + device.encode(), b"\x02" + broker.encode()]


def seeds() -> dict[str, list[bytes]]:
    """Every target's seed inputs."""
    guard = json.loads((VECTORS / "guard" / "golden.json").read_text())["suites"]
    login = [
        bytes.fromhex(suite[key])
        for suite in guard.values()
        for key in ("hello", "challenge", "proof", "accept", "checkpoint", "receipt")
    ] + [b"\x05"]
    frames = [
        bytes.fromhex(suite[key])
        for suite in guard.values()
        for key in ("frame0", "frame1_reordered")
    ]
    framed = b"".join(encode_record(frame) for frame in frames)
    cainfo = bytes.fromhex(json.loads((VECTORS / "pki" / "cainfo.json").read_text())["encoded"])
    control = json.loads((VECTORS / "rendezvous" / "control.json").read_text())["bodies"]
    documents = [
        (VECTORS / "hcsp" / f"{name}.xml").read_bytes()
        for name in ("subscribe", "subscribe-ipv6", "hello", "hello-named", "welcome", "redirect")
    ]
    candidates = (Candidate.parse("192.0.2.1:7001"), Candidate.parse("[2001:db8::1]:7002"))
    frame = FrameMessage(9, 1764600000000, "image/jpeg", b"\xff\xd8\xff\xd9")
    return {
        "cainfo": [cainfo],
        "hcsp-datagram": [_hex("hcsp/announcement.hex")],
        "hcsp-document": [*documents, *_channel_documents()],
        "channel-codec": [
            encode_message_body(frame),
            encode_message_body(AckMessage(9)),
            b"\x01" + documents[2],
            b"\x03" + encode_message(frame) + encode_message(AckMessage(9)),
        ],
        "channel-hub": _channel_seeds("hub"),
        "channel-device": _channel_seeds("device"),
        "guard-login": login,
        "guard-records": [*frames, b"\x05" + framed, encode_fields((b"watch", b"cam-1", b""))],
        "config": _config_seeds(),
        "broker-datagrams": [
            _hex(f"rendezvous/{name}.hex")
            for name in ("registration", "registration-empty", "ack-ipv4", "ack-ipv6", "wake")
        ]
        + [encode_candidates(candidates)],
        "stun": [
            RFC5769_REQUEST,
            RFC5769_IPV4_RESPONSE,
            RFC5769_IPV6_RESPONSE,
            *(
                _hex(f"rendezvous/{name}.hex")
                for name in ("stun-request", "stun-response-ipv4", "stun-response-ipv6")
            ),
        ],
        "broker-shared": [
            b"\x00"
            + PresenceRecord("b1-host-41", 1796237203699, 17, bytes(range(32)), None).encode(),
            b"\x00" + PresenceRecord("b2", 5, 1 << 40, bytes(32), b"0\x82\x01\x00", False).encode(),
            b"\x01" + hello("b2", 7, "b1", 1796237203699).encode(),
            b"\x01" + NodeMessage(Hop.OPEN, "b2", 7, 3, 1, b"192.0.2.7").encode(),
            b"\x01" + NodeMessage(Hop.RECORD, "b2", 7, 3, 1, control["connect"].encode()).encode(),
            b"\x02" + PeerRecord(7, "10.0.0.11", 7444).encode(),
            b"\x02"
            + PeerRecord(7, "127.0.0.1", 40001, "roost-node-link/b1/7", "boot:net-1").encode(),
        ],
        "broker-control": [
            *(body.encode() for body in control.values()),
            _hex("rendezvous/relay.hex"),
            _hex("rendezvous/sealed.hex"),
        ],
    }


def main() -> None:
    table = seeds()
    missing = sorted(set(TARGETS) - set(table))
    if missing:
        raise SystemExit(f"targets without seeds: {missing}")
    for name, inputs in table.items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            TARGETS[name].run(data)  # a seed must itself satisfy the contract
            (folder / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)
        print(f"{name}: {len(inputs)} seeds")


if __name__ == "__main__":
    main()
