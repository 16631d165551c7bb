"""Identities, CA generations, CA information and the two-slot trust store."""

from typing import TYPE_CHECKING

from roost.pki.cainfo import CAInfo, accept_successor, decode_cainfo
from roost.pki.certs import Role, identifier_for_key, identifier_of
from roost.pki.trust import Slot, TrustState
from roost.pki.truststore import load_state, save_state
from roost.pki.updater import FetchOutcome, TrustUpdater, UpdateConfig
from roost.pki.verify import VerifiedNode, verify_node

if TYPE_CHECKING:
    from roost.pki.authority import Authority

__all__ = [
    "Authority",
    "CAInfo",
    "FetchOutcome",
    "Role",
    "Slot",
    "TrustState",
    "TrustUpdater",
    "UpdateConfig",
    "VerifiedNode",
    "accept_successor",
    "decode_cainfo",
    "identifier_for_key",
    "identifier_of",
    "load_state",
    "save_state",
    "verify_node",
]


def __getattr__(name: str) -> "type[Authority]":
    # The authority (sqlite3, shutil, archives) loads on first use: every node imports this
    # package for its certificates, only `roost ca` runs a CA (docs/BENCHMARKS.md, "Soak and
    # footprint").
    if name == "Authority":
        from roost.pki.authority import Authority

        return Authority
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
