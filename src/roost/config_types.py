"""The building blocks of the config schema (roost.config_schema): what a key is, how a
value is checked against it and converted, and how it is shown on the reference page.
Pure: values in, problems (strings) or converted values out."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost.errors import ConfigError
from roost.hcsp.documents import MAX_FEATURE_LENGTH, MAX_FEATURES
from roost.reasons import Reason

__all__ = [
    "REQUIRED",
    "Key",
    "Kind",
    "Schema",
    "Table",
    "config_error",
    "convert",
    "default_text",
    "shown",
    "suggest",
    "value_problem",
]


class Kind(enum.Enum):
    """What a key's value must be, as written in TOML."""

    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    PATH = "path"
    HOSTPORT = "HOST:PORT"
    HOSTPORTS = "list of HOST:PORT"
    # One HOST:PORT, or a list of them (a hub's brokers, tried in turn).
    ENDPOINTS = "HOST:PORT or list of HOST:PORT"
    STRINGS = "list of strings"
    TOKENS = "list of tokens"


class _Required:
    __slots__ = ()

    def __repr__(self) -> str:
        return "REQUIRED"


# A key without a default must be present.
REQUIRED: Any = _Required()


@dataclass(frozen=True, slots=True)
class Key:
    """One key: its kind, its default (``REQUIRED``; ``None`` when absence means "off"),
    its bounds (``minimum``/``maximum`` inclusive, ``above`` exclusive) and its meaning."""

    name: str
    kind: Kind
    default: Any = REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    doc: str = ""

    def expected(self) -> str:
        """What the value must be, in words, for messages and the reference page."""
        if self.kind is Kind.INTEGER or self.kind is Kind.NUMBER:
            noun = "an integer" if self.kind is Kind.INTEGER else "a number"
            bounds = []
            if self.above is not None:
                bounds.append(f"> {self.above:g}")
            if self.minimum is not None:
                bounds.append(f">= {self.minimum:g}")
            if self.maximum is not None:
                bounds.append(f"<= {self.maximum:g}")
            return f"{noun} {' and '.join(bounds)}" if bounds else noun
        return {
            Kind.STRING: "a string",
            Kind.BOOLEAN: "true or false",
            Kind.PATH: "a path string (relative to the file)",
            Kind.HOSTPORT: 'a string "HOST:PORT" (port 0-65535)',
            Kind.HOSTPORTS: 'a list of "HOST:PORT" strings',
            Kind.ENDPOINTS: 'a string "HOST:PORT" or a list of them',
            Kind.STRINGS: "a list of strings",
            Kind.TOKENS: f'a list of at most {MAX_FEATURES} short tokens (["hcsp", "webs"])',
        }[self.kind]


@dataclass(frozen=True, slots=True)
class Table:
    """One table of a file (``name`` "" is the top level); ``optional`` tables switch a
    feature on by being present, and then their required keys must be there too."""

    name: str
    keys: tuple[Key, ...]
    doc: str = ""
    optional: bool = False

    def key(self, name: str) -> Key | None:
        return next((k for k in self.keys if k.name == name), None)


@dataclass(frozen=True, slots=True)
class Schema:
    """Every table of one role's config file."""

    role: str
    tables: tuple[Table, ...]
    doc: str = ""

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)


def config_error(path: Path, where: str, problem: str) -> ConfigError:
    """``FILE: KEY PROBLEM`` as the one error class of configuration."""
    return ConfigError(f"{path}: {where} {problem}", reason=Reason.BAD_CONFIG)


def suggest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest declared name, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def shown(value: object) -> str:
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({kind})"


_HOSTPORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s\[\]:]+|[0-9A-Fa-f:]+):([0-9]{1,5})")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _hostport_problem(value: str) -> str | None:
    match = _HOSTPORT.fullmatch(value)
    if match is None:
        return "is not HOST:PORT"
    if int(match.group(2)) > 65535:
        return "has a port above 65535"
    return None


def value_problem(key: Key, value: object) -> str | None:
    """Why ``value`` does not fit ``key``, or None."""
    bad = f"must be {key.expected()}, not {shown(value)}"
    kind = key.kind
    if kind in (Kind.STRING, Kind.PATH):
        return None if isinstance(value, str) else bad
    if kind is Kind.BOOLEAN:
        return None if isinstance(value, bool) else bad
    if kind is Kind.ENDPOINTS:
        kind = Kind.HOSTPORTS if isinstance(value, list) else Kind.HOSTPORT
        key = dataclasses.replace(key, kind=kind)
    if kind is Kind.HOSTPORT:
        if not isinstance(value, str):
            return bad
        problem = _hostport_problem(value)
        return (
            None
            if problem is None
            else f"holds {value!r}, which {problem}: must be {key.expected()}"
        )
    if kind in (Kind.STRINGS, Kind.HOSTPORTS, Kind.TOKENS):
        if isinstance(value, str) and kind is not Kind.HOSTPORTS and "," in value:
            listed = ", ".join(f'"{part.strip()}"' for part in value.split(","))
            return f"must be a list: write [{listed}], not {value!r}"
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return bad
        if kind is Kind.HOSTPORTS:
            for item in value:
                problem = _hostport_problem(item)
                if problem is not None:
                    return f"holds {item!r}, which {problem}: must be {key.expected()}"
        if kind is Kind.TOKENS:
            if len(value) > MAX_FEATURES:
                return f"has {len(value)} entries, more than {MAX_FEATURES}"
            for item in value:
                if len(item) > MAX_FEATURE_LENGTH or _TOKEN.fullmatch(item) is None:
                    return (
                        f"holds {item!r}: each entry must be a short token (letters, digits, . _ -)"
                    )
        return None
    # Numbers: TOML has no NaN-free guarantee, and a bool is an int in Python.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return bad
    if kind is Kind.INTEGER and isinstance(value, float) and not value.is_integer():
        return bad
    if value != value or value in (float("inf"), float("-inf")):
        return bad
    if key.above is not None and not value > key.above:
        return bad
    if key.minimum is not None and value < key.minimum:
        return bad
    if key.maximum is not None and value > key.maximum:
        return bad
    return None


def convert(key: Key, value: Any, source: Path) -> Any:
    """A checked value as the config dataclasses hold it: paths resolved against the file's
    folder, HOST:PORT as ``(host, port)``, lists as tuples, numbers as float or int."""
    if value is None:
        return None
    kind = key.kind
    if kind is Kind.PATH:
        path = Path(value)
        return path if path.is_absolute() else source.parent / path
    if kind is Kind.HOSTPORT:
        return _split(value)
    if kind is Kind.HOSTPORTS or (kind is Kind.ENDPOINTS and isinstance(value, list)):
        return tuple(_split(v) for v in value)
    if kind is Kind.ENDPOINTS:
        return (_split(value),)
    if kind in (Kind.STRINGS, Kind.TOKENS):
        return tuple(value)
    if kind is Kind.NUMBER:
        return float(value)
    if kind is Kind.INTEGER:
        return int(value)
    return value


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def default_text(key: Key) -> str:
    if key.default is REQUIRED:
        return "required"
    if key.default is None:
        return "absent"
    if isinstance(key.default, bool):
        return "`true`" if key.default else "`false`"
    if isinstance(key.default, str):
        return f'`"{key.default}"`' if key.default else '`""`'
    if isinstance(key.default, list):
        return "`[" + ", ".join(f'"{v}"' for v in key.default) + "]`"
    return f"`{key.default!r}`"
