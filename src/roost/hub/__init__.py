"""The hub: records frames from its devices (PROTOCOL.md section 4)."""

from roost.hub.recorder import IncomingFrame, Recorder, StoredFrame

__all__ = ["IncomingFrame", "Recorder", "StoredFrame"]
