"""The device: captures frames and keeps them until a hub acknowledges them."""

from roost.device.camera import SyntheticCamera
from roost.device.spool import FrameSpool, SpooledFrame

__all__ = ["FrameSpool", "SpooledFrame", "SyntheticCamera"]
