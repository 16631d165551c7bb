"""The broker of PROTOCOL.md section 5 (rendezvous): wire formats first, all pure.

- ``messages``: the UDP datagrams RREG, RACK and RWAK, candidates, tags and counters.
- ``control``: the TLS control channel's JSON ops and relay records.
- ``stun``: STUN Binding (RFC 8489) for reflexive addresses.
- ``seal``: the password sealed to the target's certificate key.

docs/broker.md, "Wire formats (implemented)", describes them.
"""

from roost.rendezvous import control, messages, seal, stun

__all__ = ["control", "messages", "seal", "stun"]
