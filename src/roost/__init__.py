"""Roost: trusted hubs, clockless trust rollover, remote reach, protected messages."""

__all__ = ["__version__"]

__version__ = "0.1.0"
