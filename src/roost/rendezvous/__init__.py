"""The broker of PROTOCOL.md section 5 (rendezvous): wire formats first, all pure.

- ``messages``: the UDP datagrams RREG, RACK and RWAK, candidates, tags and counters.
- ``control``: the TLS control channel's JSON ops and relay records.
- ``stun``: STUN Binding (RFC 8489) for reflexive addresses.
- ``seal``: the user and password sealed to the target's certificate key.
- ``punch``: hole-punching probes and the ``Puncher`` core.
- ``agent`` (with ``agent_events``): the equipment side of a brokered connection.
- ``issuer``: the issuing side (``roost connect``).
- ``sessions``, ``state``: what both ends share, and their transition tables.

The adapters ``paths`` (the shared UDP socket, relay and switching paths) and ``quic`` (QUIC
sessions over a path, with aioquic) are imported by name, not here, so the pure codecs stay
free of asyncio.

docs/broker.md, "Wire formats (implemented)" and "The two ends", describes them.

The submodules load on first use (PEP 562): a device imports ``roost.config``, which needs
only ``broker_events``' defaults, and should not pay for the agent, the issuer and the guard
they pull in (docs/BENCHMARKS.md, "Soak and footprint").
"""

import importlib
from types import ModuleType

__all__ = [
    "agent",
    "agent_events",
    "control",
    "issuer",
    "messages",
    "punch",
    "seal",
    "sessions",
    "state",
    "stun",
]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
