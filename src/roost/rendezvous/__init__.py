"""The broker of PROTOCOL.md section 5 (rendezvous): wire formats first, all pure.

- ``messages``: the UDP datagrams RREG, RACK and RWAK, candidates, tags and counters.
- ``control``: the TLS control channel's JSON ops and relay records.
- ``stun``: STUN Binding (RFC 8489) for reflexive addresses.
- ``seal``: the password sealed to the target's certificate key.
- ``punch``: hole-punching probes and the ``Puncher`` core.

The adapters ``paths`` (the shared UDP socket, relay and switching paths) and ``quic`` (QUIC
sessions over a path, with aioquic) are imported by name, not here, so the pure codecs stay
free of asyncio.

docs/broker.md, "Wire formats (implemented)", describes them.
"""

from roost.rendezvous import control, messages, punch, seal, stun

__all__ = ["control", "messages", "punch", "seal", "stun"]
