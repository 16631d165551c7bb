"""Which roost modules guide each fuzz target (imported before anything of roost).

The runner instruments only these for coverage feedback: instrumenting the whole package
costs about ten seconds of start-up per target, which a 10-second CI run cannot afford.
The shared codecs every decoder uses (``roost.wire``, ``roost.framing``) are always in.
"""

from __future__ import annotations

__all__ = ["GUIDES"]

_SHARED = ("roost.wire", "roost.framing", "roost.errors")

GUIDES: dict[str, tuple[str, ...]] = {
    "cainfo": (*_SHARED, "roost.pki.cainfo"),
    "hcsp-datagram": (*_SHARED, "roost.hcsp.announce", "roost.hcsp.documents"),
    "hcsp-document": (*_SHARED, "roost.hcsp.documents"),
    "channel-codec": (*_SHARED, "roost.hcsp.channel"),
    "channel-hub": (*_SHARED, "roost.channel", "roost.hcsp.channel", "roost.hcsp.documents"),
    "channel-device": (*_SHARED, "roost.channel", "roost.hcsp.channel", "roost.hcsp.documents"),
    "guard-login": (*_SHARED, "roost.guard.messages", "roost.guard.log", "roost.guard.suites"),
    "guard-records": (*_SHARED, "roost.guard.ratchet", "roost.guard.session"),
    "config": (*_SHARED, "roost.config"),
    "broker-datagrams": (*_SHARED, "roost.rendezvous.messages"),
    "stun": (*_SHARED, "roost.rendezvous.stun", "roost.rendezvous.messages"),
    "broker-control": (
        *_SHARED,
        "roost.rendezvous.control",
        "roost.rendezvous.seal",
        "roost.rendezvous.messages",
    ),
    "broker-shared": (*_SHARED, "roost.rendezvous.presence"),
}
