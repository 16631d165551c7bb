"""Names next to identifiers: a home's hubs and devices as people call them.

`roost init` gives every node a name (``hub-1``, ``device-2``) in its config file and an
identifier derived from its key (PROTOCOL.md section 1). Status output shows both, and
commands that take a node accept either. The map is read from the config files of a home
directory (each names its ``name`` and its ``cert``); a file that does not parse as a node
config is skipped, since the map only labels and never authenticates anything.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from roost.errors import VerificationError
from roost.pki.certs import certs_from_pem, identifier_of

__all__ = ["home_names", "label", "resolve_node"]

_IDENTIFIER = re.compile(r"^(hcsp|ab):[A-Za-z0-9_-]{22}$")


def home_names(directory: Path) -> dict[str, str]:
    """Identifier → name for every node config (``*.toml``) in `directory`."""
    names: dict[str, str] = {}
    try:
        files = sorted(directory.glob("*.toml"))
    except OSError:
        return names
    for config in files:
        try:
            doc = tomllib.loads(config.read_text())
            name, cert = doc["name"], doc["cert"]
            if not isinstance(name, str) or not isinstance(cert, str):
                continue
            cert_path = Path(cert) if Path(cert).is_absolute() else config.parent / cert
            identifier = identifier_of(certs_from_pem(cert_path.read_bytes())[0])
        except (OSError, ValueError, KeyError, IndexError, VerificationError):
            continue
        if identifier:
            names[identifier] = name
    return names


def label(identifier: str | None, names: dict[str, str]) -> str:
    """``device-1 (ab:…)`` when the name is known, the identifier alone otherwise."""
    if identifier is None:
        return "-"
    name = names.get(identifier)
    return f"{name} ({identifier})" if name else identifier


def resolve_node(word: str, directory: Path) -> str:
    """The identifier of the node named `word` in `directory`'s configs, else `word` itself.

    An identifier, or a word that names no configured node, is passed on unchanged: the
    peer that knows the nodes (the hub, the broker) refuses an unknown one in its own
    words.
    """
    if _IDENTIFIER.match(word):
        return word
    matches = [ident for ident, name in home_names(directory).items() if name == word]
    return matches[0] if len(matches) == 1 else word
