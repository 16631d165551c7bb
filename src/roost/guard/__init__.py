"""The Guard: weighted security for remote sessions (PROTOCOL.md §6).

Usage authentication with random response codes (:mod:`.challenge`), per-message keys
(:mod:`.ratchet`), session limits (:mod:`.session`) and a tamper-evident Merkle log
(:mod:`.merkle`, :mod:`.log`) and remote calls (:mod:`.remote`) are pure cores. The
adapters live beside them and are re-exported here too: :mod:`.aio` (the asyncio server
and client), :mod:`.log` (the SQLite Merkle log) and :mod:`.userstore` (the SQLite user
store). Importing this package therefore imports asyncio and sqlite3; a core that must stay
pure imports the core modules directly.
"""

from roost.guard.aio import (
    ByteStreamReader,
    ByteStreamWriter,
    GuardClient,
    GuardServer,
    GuardServerConfig,
    LogReceipts,
)
from roost.guard.card import Card, format_card, generate_card, normalize_code, parse_card
from roost.guard.challenge import (
    AuthConfig,
    LoginClient,
    LoginResult,
    LoginServer,
    ServerHandshake,
    encode_reject,
)
from roost.guard.log import (
    Checkpoint,
    Receipt,
    SqliteMerkleLog,
    decode_receipt,
    encode_receipt,
    load_or_create_log_key,
    message_digest,
    sign_checkpoint,
    verify_checkpoint,
    verify_receipt,
)
from roost.guard.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from roost.guard.ratchet import Direction, ReceivingChain, SendingChain
from roost.guard.remote import RemoteClientCore, RemoteServerCore, Response
from roost.guard.session import GuardSession, Role, SessionLimits
from roost.guard.suites import SUITES, KdfParams, Suite, get_suite
from roost.guard.userstore import (
    LockoutPolicy,
    MemoryUserStore,
    SqliteUserStore,
    UserRecord,
    make_user,
)
from roost.reasons import RejectionCounter

__all__ = [
    "SUITES",
    "AuthConfig",
    "ByteStreamReader",
    "ByteStreamWriter",
    "Card",
    "Checkpoint",
    "Direction",
    "GuardClient",
    "GuardServer",
    "GuardServerConfig",
    "GuardSession",
    "KdfParams",
    "LockoutPolicy",
    "LogReceipts",
    "LoginClient",
    "LoginResult",
    "LoginServer",
    "MemoryUserStore",
    "Receipt",
    "ReceivingChain",
    "RejectionCounter",
    "RemoteClientCore",
    "RemoteServerCore",
    "Response",
    "Role",
    "SendingChain",
    "ServerHandshake",
    "SessionLimits",
    "SqliteMerkleLog",
    "SqliteUserStore",
    "Suite",
    "UserRecord",
    "consistency_proof",
    "decode_receipt",
    "encode_receipt",
    "encode_reject",
    "format_card",
    "generate_card",
    "get_suite",
    "inclusion_proof",
    "leaf_hash",
    "load_or_create_log_key",
    "make_user",
    "message_digest",
    "node_hash",
    "normalize_code",
    "parse_card",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
    "verify_receipt",
]
