"""The device: captures frames and keeps them until a hub acknowledges them.

``SyntheticCamera``, ``FrameSpool`` and ``SpooledFrame`` load on first use (PEP 562): the
config loaders import ``roost.device.source_health`` and ``roost.device.sources``, and a hub
or a broker reading its config should not load Pillow for a camera it does not have.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FrameSpool", "SpooledFrame", "SyntheticCamera"]

_HOMES = {
    "SyntheticCamera": "roost.device.camera",
    "FrameSpool": "roost.device.spool",
    "SpooledFrame": "roost.device.spool",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
