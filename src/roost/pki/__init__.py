"""Identities, CA generations, CA information and the two-slot trust store."""

from roost.pki.authority import Authority
from roost.pki.cainfo import CAInfo, accept_successor, decode_cainfo
from roost.pki.certs import Role, identifier_for_key, identifier_of
from roost.pki.trust import Slot, TrustState
from roost.pki.truststore import load_state, save_state
from roost.pki.updater import FetchOutcome, TrustUpdater, UpdateConfig
from roost.pki.verify import VerifiedNode, verify_node

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
