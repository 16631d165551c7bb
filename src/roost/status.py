"""Pieces shared by the status documents of the hub and the device, pure.

A status document is a frozen, slotted dataclass whose ``to_json()`` gives the JSON object
the dashboard, ``roost hub status --json``, the device's ``status.json`` and the
benchmarks read (docs/dashboard.md, "Status document"), and whose ``from_json()`` reads
that object back for clients. The readers here check each value's JSON type, so a document from a
broken or hostile peer fails with one ``RemoteProtocolError`` (reason ``malformed``)
instead of a ``KeyError`` deep inside a caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from roost.errors import RemoteProtocolError
from roost.reasons import Reason

__all__ = [
    "TrustSummary",
    "read_bool",
    "read_counts",
    "read_float",
    "read_int",
    "read_object",
    "read_objects",
    "read_optional_int",
    "read_optional_str",
    "read_str",
    "read_strings",
]


@dataclass(frozen=True, slots=True)
class TrustSummary:
    """The trust store's generations and time floor (``TrustState.summary()``)."""

    current: int
    prepared: int | None
    time_floor: str

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the status document's ``trust`` key."""
        return {"current": self.current, "prepared": self.prepared, "time_floor": self.time_floor}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TrustSummary:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed."""
        return cls(
            current=read_int(doc, "current"),
            prepared=read_optional_int(doc, "prepared"),
            time_floor=read_str(doc, "time_floor"),
        )


def _malformed(key: str, expected: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"status document: {key!r} is not {expected}", reason=Reason.MALFORMED
    )


def _get(doc: Mapping[str, Any], key: str) -> Any:
    if not isinstance(doc, Mapping):
        raise _malformed(key, "inside an object")
    if key not in doc:
        raise _malformed(key, "present")
    return doc[key]


def _is_int(value: object) -> bool:
    # JSON has no separate boolean-as-integer, so true/false is never a count.
    return isinstance(value, int) and not isinstance(value, bool)


def read_int(doc: Mapping[str, Any], key: str) -> int:
    """``doc[key]`` as an integer."""
    value = _get(doc, key)
    if not _is_int(value):
        raise _malformed(key, "an integer")
    result: int = value
    return result


def read_bool(doc: Mapping[str, Any], key: str) -> bool:
    """``doc[key]`` as true or false."""
    value = _get(doc, key)
    if not isinstance(value, bool):
        raise _malformed(key, "a boolean")
    return value


def read_optional_int(doc: Mapping[str, Any], key: str) -> int | None:
    """``doc[key]`` as an integer or null."""
    value = _get(doc, key)
    if value is not None and not _is_int(value):
        raise _malformed(key, "an integer or null")
    result: int | None = value
    return result


def read_float(doc: Mapping[str, Any], key: str) -> float:
    """``doc[key]`` as a number (an integer is accepted: JSON writes 2.0 as 2 in some tools)."""
    value = _get(doc, key)
    if not (isinstance(value, float) or _is_int(value)):
        raise _malformed(key, "a number")
    return float(value)


def read_str(doc: Mapping[str, Any], key: str) -> str:
    """``doc[key]`` as a string."""
    value = _get(doc, key)
    if not isinstance(value, str):
        raise _malformed(key, "a string")
    return value


def read_optional_str(doc: Mapping[str, Any], key: str) -> str | None:
    """``doc[key]`` as a string or null."""
    value = _get(doc, key)
    if value is not None and not isinstance(value, str):
        raise _malformed(key, "a string or null")
    result: str | None = value
    return result


def read_strings(doc: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """``doc[key]`` as a list of strings."""
    value = _get(doc, key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _malformed(key, "a list of strings")
    return tuple(value)


def read_counts(doc: Mapping[str, Any], key: str) -> dict[str, int]:
    """``doc[key]`` as counts by reason: an object of integers."""
    value = _get(doc, key)
    if not isinstance(value, dict) or not all(_is_int(count) for count in value.values()):
        raise _malformed(key, "an object of integers")
    return dict(value)


def read_object(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``doc[key]`` as a JSON object."""
    value = _get(doc, key)
    if not isinstance(value, dict):
        raise _malformed(key, "an object")
    result: Mapping[str, Any] = value
    return result


def read_objects(doc: Mapping[str, Any], key: str) -> tuple[Mapping[str, Any], ...]:
    """``doc[key]`` as a list of JSON objects."""
    value = _get(doc, key)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _malformed(key, "a list of objects")
    return tuple(value)
