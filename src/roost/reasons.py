"""The catalogue of refusal reasons and the counting and logging rule, pure.

Every ``RoostError`` carries a ``reason`` from :class:`Reason`; metrics count by it and
docs/architecture.md ("Reason catalogue") lists it. PROTOCOL.md's preamble asks that every
rejection be counted and "logged once per source per interval": :class:`RejectionCounter`
counts every refusal and tells the adapter when a line should be written, so a flood from
one source costs one log line per interval, not one per datagram.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter, OrderedDict
from collections.abc import Mapping

from roost.errors import RoostError

__all__ = [
    "DESCRIPTIONS",
    "REFUSAL_LINE",
    "Reason",
    "RejectionCounter",
    "catalogue_markdown",
    "log_rejection",
]

# The ``extra`` every refusal line carries, so a log handler can tell refusal lines apart
# (``record.roost_refusal``) whatever component logged them.
REFUSAL_LINE: Mapping[str, object] = {"roost_refusal": True}


class Reason(enum.StrEnum):
    """Machine-readable reasons; the value is what counters and peers see."""

    # Generic defaults of the error tree (roost.errors).
    ERROR = "error"
    PROTOCOL = "protocol"
    LOCAL_PROTOCOL = "local-protocol"
    MALFORMED = "malformed"
    VERIFICATION = "verification"
    TRANSPORT = "transport"
    STATE = "state"
    REFUSED = "refused"
    BAD_CONFIG = "bad-config"
    # Framing and codecs (wire.py, framing.py, every decode_…).
    OVERSIZED = "oversized"
    TRUNCATED = "truncated"
    TRAILING_BYTES = "trailing-bytes"
    EMPTY = "empty"
    BAD_MAGIC = "bad-magic"
    BAD_VERSION = "bad-version"
    BAD_FLAGS = "bad-flags"
    BAD_URL = "bad-url"
    BAD_THRESHOLD = "bad-threshold"
    BAD_SIGNATURE_LENGTH = "bad-signature-length"
    BAD_HTTP = "bad-http"
    UNKNOWN_TYPE = "unknown-type"
    # Device channel (PROTOCOL.md section 4).
    EMPTY_DOCUMENT = "empty-document"
    BAD_DOCUMENT = "bad-document"
    BAD_MIME = "bad-mime"
    BAD_HELLO = "bad-hello"
    BAD_WELCOME = "bad-welcome"
    HELLO_TIMEOUT = "hello-timeout"
    ACK_AHEAD = "ack-ahead"
    UNEXPECTED_MESSAGE = "unexpected-message"
    UNEXPECTED_DOCUMENT = "unexpected-document"
    NOT_DEVICE = "not-device"
    NOT_HUB = "not-hub"
    FULL = "full"
    DISCONNECTED = "disconnected"
    MISSING_ATTRIBUTE = "missing-attribute"
    BAD_INTEGER = "bad-integer"
    BAD_FEATURES = "bad-features"
    BAD_ID = "bad-id"
    MALFORMED_XML = "malformed-xml"
    BAD_ROOT = "bad-root"
    BAD_BODY = "bad-body"
    BAD_ENDPOINT = "bad-endpoint"
    BAD_HUB_ADDRESS = "bad-hub-address"
    BAD_UTF8 = "bad-utf8"
    XML_FORBIDDEN = "xml-forbidden"
    BAD_APP = "bad-app"
    STORAGE_FAILED = "storage-failed"
    BAD_NAME = "bad-name"
    # Announcements (section 3).
    NOT_SUBSCRIBE = "not-subscribe"
    NOT_A_HUB = "not-a-hub"
    STALE = "stale"
    FUTURE = "future"
    REPLAY = "replay"
    SEQ_NOT_INCREASING = "seq-not-increasing"
    SOURCE_MISMATCH = "source-mismatch"
    TABLE_FULL = "table-full"
    FORGED_OWN_ID = "forged-own-id"
    # Limits (ratelimit.py, remote entrance).
    RATE_LIMITED = "rate-limited"
    SOURCE_TABLE_FULL = "source-table-full"
    BUSY = "busy"
    SOURCE_BUSY = "source-busy"
    BACKOFF = "backoff"
    # Admission of unauthenticated connections (admission.py, docs/limits.md).
    UNAUTHENTICATED_FULL = "unauthenticated-full"
    SOURCE_UNAUTHENTICATED_FULL = "source-unauthenticated-full"
    TLS_HANDSHAKE_TIMEOUT = "tls-handshake-timeout"
    NOT_TLS = "not-tls"
    TLS_FAILED = "tls-failed"
    CLIENT_CERT_REQUIRED = "client-cert-required"
    CLIENT_CERT_UNTRUSTED = "client-cert-untrusted"
    CLOSED_IN_HANDSHAKE = "closed-in-handshake"
    SESSION_REPLACED = "session-replaced"
    REPLACE_LIMITED = "replace-limited"
    # HTTP APIs (httpapi.py, admission.py).
    BAD_REQUEST = "bad-request"
    HEADER_TOO_LARGE = "header-too-large"
    BODY_TOO_LARGE = "body-too-large"
    LENGTH_REQUIRED = "length-required"
    NOT_FOUND = "not-found"
    METHOD_NOT_ALLOWED = "method-not-allowed"
    HTTP_REFUSED = "http-refused"
    HEADER_TIMEOUT = "header-timeout"
    SILENT_CONNECTION = "silent-connection"
    # Certificates and trust (section 1, section 2).
    CHAIN = "chain"
    BAD_CERT = "bad-cert"
    BAD_KEY = "bad-key"
    NO_ANCHOR = "no-anchor"
    NO_ID = "no-id"
    ID_MISMATCH = "id-mismatch"
    WRONG_ID = "wrong-id"
    NO_PEER_CERT = "no-peer-cert"
    BAD_SIGNATURE = "bad-signature"
    BAD_GENERATION = "bad-generation"
    BAD_PREV = "bad-prev"
    THRESHOLD = "threshold"
    THRESHOLD_NEW = "threshold-new"
    ROLLBACK = "rollback"
    NO_PREPARED = "no-prepared"
    FETCH = "fetch"
    STATUS = "status"
    CA_EXPIRED = "ca-expired"
    REVOKED = "revoked"
    NOT_YET_KNOWN = "not-yet-known"
    RETIRED = "retired"
    # Guard login and sessions (section 6).
    NO_SUCH_USER = "no-such-user"
    UNKNOWN_USER = "unknown-user"
    BAD_PASSWORD = "bad-password"
    BAD_PROOF = "bad-proof"
    BAD_SERVER_PROOF = "bad-server-proof"
    LOCKED_OUT = "locked-out"
    CHALLENGE_EXPIRED = "challenge-expired"
    CHALLENGE_REUSED = "challenge-reused"
    STALE_COUNTER = "stale-counter"
    SUITE_NOT_ALLOWED = "suite-not-allowed"
    DOWNGRADE = "downgrade"
    KDF_BOUNDS = "kdf-bounds"
    TOO_FEW_PAIRS = "too-few-pairs"
    NOT_ON_CARD = "not-on-card"
    LOGIN_TIMEOUT = "login-timeout"
    NO_GRANT = "no-grant"
    USER_MISMATCH = "user-mismatch"
    BAD_TAG = "bad-tag"
    OUT_OF_WINDOW = "out-of-window"
    WRONG_DIRECTION = "wrong-direction"
    REKEY_REQUIRED = "rekey-required"
    REAUTH_REQUIRED = "reauth-required"
    SESSION_CLOSED = "session-closed"
    CLOSED = "closed"
    NOT_LOGGED_IN = "not-logged-in"
    CALL_IN_FLIGHT = "call-in-flight"
    UNKNOWN_METHOD = "unknown-method"
    NO_FRAME = "no-frame"
    STREAM = "stream"
    STREAM_ERROR = "stream-error"
    CONNECT = "connect"
    SESSION_IDLE_EXPIRED = "session-idle-expired"
    SESSION_LIFETIME_EXPIRED = "session-lifetime-expired"
    NO_SESSION = "no-session"
    BAD_CSRF = "bad-csrf"
    NO_LOGIN_ATTEMPT = "no-login-attempt"
    NOT_PEER_HUB = "not-peer-hub"
    # Merkle log and receipts (section 6, tamper evidence).
    NO_LOG = "no-log"
    UNKNOWN_LEAF = "unknown-leaf"
    NO_SUCH_LEAF = "no-such-leaf"
    NOT_COVERED = "not-covered"
    BEYOND_CHECKPOINT = "beyond-checkpoint"
    NO_CONSISTENCY = "no-consistency"
    NO_CONSISTENCY_PROOF = "no-consistency-proof"
    RECEIPT_MISMATCH = "receipt-mismatch"
    RECEIPT_REFUSED = "receipt-refused"
    WRONG_LOG_KEY = "wrong-log-key"
    LOG_CORRUPT = "log-corrupt"
    # Rendezvous: broker datagrams, control channel, STUN, sealed requests (section 5).
    BAD_IDENTIFIER = "bad-identifier"
    BAD_CANDIDATE = "bad-candidate"
    BAD_FAMILY = "bad-family"
    TOO_MANY_CANDIDATES = "too-many-candidates"
    COUNTER_NOT_INCREASING = "counter-not-increasing"
    BAD_REGISTRATION_KEY = "bad-registration-key"
    REPLY_TOO_LARGE = "reply-too-large"
    BAD_CONTROL = "bad-control"
    UNKNOWN_OP = "unknown-op"
    MISSING_FIELD = "missing-field"
    UNKNOWN_FIELD = "unknown-field"
    BAD_FIELD = "bad-field"
    NOT_BINDING = "not-binding"
    BAD_ATTRIBUTE = "bad-attribute"
    BAD_FINGERPRINT = "bad-fingerprint"
    TRANSACTION_MISMATCH = "transaction-mismatch"
    NO_MAPPED_ADDRESS = "no-mapped-address"
    BAD_SEAL = "bad-seal"
    WRONG_SESSION = "wrong-session"
    UNKNOWN_NONCE = "unknown-nonce"
    HANDSHAKE_TIMEOUT = "handshake-timeout"
    BAD_ALPN = "bad-alpn"
    PATH_CLOSED = "path-closed"
    # Rendezvous: the two ends of a brokered connection (agent.py, issuer.py).
    RELAY_LIMIT = "relay-limit"
    NOT_ENROLLED = "not-enrolled"
    ENROLL_FAILED = "enroll-failed"
    UNKNOWN_SESSION = "unknown-session"
    RACK_MISSING = "rack-missing"
    UNKNOWN_COUNTER = "unknown-counter"
    PUNCH_FAILED = "punch-failed"
    LOOKUP_TIMEOUT = "lookup-timeout"
    ACCEPT_TIMEOUT = "accept-timeout"
    RELAY_TIMEOUT = "relay-timeout"
    SETUP_TIMEOUT = "setup-timeout"
    NOT_EQUIPMENT = "not-equipment"
    UNKNOWN_TARGET = "unknown-target"
    TARGET_OFFLINE = "target-offline"
    BAD_TOKEN = "bad-token"
    TOKEN_REUSED = "token-reused"
    SESSION_LIMIT = "session-limit"
    RELAY_EXPIRED = "relay-expired"
    WAKE_TIMEOUT = "wake-timeout"
    ANSWER_TIMEOUT = "answer-timeout"
    IDLE_TIMEOUT = "idle-timeout"
    HELD_LIMIT = "held-limit"
    KEEPALIVE_TIMEOUT = "keepalive-timeout"
    NOT_BROKER = "not-broker"
    # The node link between broker processes (docs/broker-scale.md, "Node link").
    WRONG_NODE = "wrong-node"
    NO_LINK = "no-link"
    LINK_UNREACHABLE = "link-unreachable"
    LINK_BACKLOG = "link-backlog"
    FOREIGN_USER = "foreign-user"
    NO_CAMERA = "no-camera"
    # Camera sources and hub discovery (roost.device.sources, roost.dnssd).
    SOURCE_UNAVAILABLE = "source-unavailable"
    SOURCE_LOST = "source-lost"
    SOURCE_UNDECODABLE = "source-undecodable"
    SOURCE_STALLED = "source-stalled"
    BAD_SERVICE_RECORD = "bad-service-record"
    # Persisted state (recorder, spool, authority, trust store, user store).
    MISSING = "missing"
    EXISTS = "exists"
    CORRUPT = "corrupt"
    SCHEMA_VERSION = "schema-version"
    MISSING_FRAME = "missing-frame"
    DUPLICATE_SEQ = "duplicate-seq"
    UNKNOWN_SEQ = "unknown-seq"
    SEQ_EXHAUSTED = "seq-exhausted"
    ALREADY_ACKED = "already-acked"
    USER_EXISTS = "user-exists"
    BAD_ARGS = "bad-args"
    NOT_RUNNING = "not-running"
    NOT_STATE_DIR = "not-state-dir"
    INCONSISTENT = "inconsistent"
    # Operating a node (docs/operating.md): one instance per state folder, files of the
    # right role, listeners that can bind.
    IN_USE = "in-use"
    WRONG_ROLE = "wrong-role"
    KEY_MISMATCH = "key-mismatch"
    ADDRESS_IN_USE = "address-in-use"


DESCRIPTIONS: Mapping[Reason, str] = {
    Reason.ERROR: "an error without a more precise reason",
    Reason.PROTOCOL: "a wire rule was broken",
    Reason.LOCAL_PROTOCOL: "we were asked to send something the protocol forbids",
    Reason.MALFORMED: "the peer sent bytes that do not parse",
    Reason.VERIFICATION: "well-formed data failed a trust check",
    Reason.TRANSPORT: "the network failed",
    Reason.STATE: "persisted state is missing or inconsistent",
    Reason.REFUSED: "a limit of ours turned the work away, or the peer refused",
    Reason.BAD_CONFIG: "the configuration is invalid",
    Reason.OVERSIZED: "input above its stated maximum, refused before parsing",
    Reason.TRUNCATED: "input ended inside a field or record",
    Reason.TRAILING_BYTES: "bytes after the last field",
    Reason.EMPTY: "an empty message where one byte at least is required",
    Reason.BAD_MAGIC: "the magic bytes are not the format's",
    Reason.BAD_VERSION: "an unknown format version",
    Reason.BAD_FLAGS: "unknown flag bits are set",
    Reason.BAD_URL: "a URL that is not https or not UTF-8",
    Reason.BAD_THRESHOLD: "a signature threshold above the key count or zero",
    Reason.BAD_SIGNATURE_LENGTH: "a signature field of the wrong length",
    Reason.BAD_HTTP: "a malformed HTTP response",
    Reason.UNKNOWN_TYPE: "an unknown message type byte",
    Reason.EMPTY_DOCUMENT: "a DOCUMENT message with no XML",
    Reason.BAD_DOCUMENT: "an XML document that is not UTF-8, not HCSP or not well formed",
    Reason.BAD_MIME: "a frame media type that is empty or not printable ASCII",
    Reason.BAD_HELLO: "the device's first message is not a hello naming it and this hub",
    Reason.BAD_WELCOME: "the hub's answer is not a welcome naming both parties",
    Reason.HELLO_TIMEOUT: "no hello (or welcome) within the channel's deadline",
    Reason.ACK_AHEAD: "an ACK for a frame that was never sent",
    Reason.UNEXPECTED_MESSAGE: "a channel message of a type not allowed in this state",
    Reason.UNEXPECTED_DOCUMENT: "a document not allowed in this state (or for another device)",
    Reason.NOT_DEVICE: "a device-channel client whose certificate is not a device's",
    Reason.NOT_HUB: "a peer that should be a hub presented another role",
    Reason.FULL: "the hub has no room for another device",
    Reason.DISCONNECTED: "the peer closed or reset the connection",
    Reason.MISSING_ATTRIBUTE: "an XML element lacks a required attribute",
    Reason.BAD_INTEGER: "an XML attribute that is not a decimal integer in range",
    Reason.BAD_FEATURES: "too many features, or a feature that is not a short token",
    Reason.BAD_ID: "a node identifier of the wrong shape",
    Reason.MALFORMED_XML: "a document that is not well-formed XML",
    Reason.BAD_ROOT: "a document whose root is not an hcsp element in the namespace",
    Reason.BAD_BODY: "a document whose body element is missing or unknown",
    Reason.BAD_ENDPOINT: "an address that is not host:port with a valid IP and port",
    Reason.BAD_HUB_ADDRESS: "a hub address that is not identifier;ip=host:port",
    Reason.BAD_UTF8: "text that is not UTF-8",
    Reason.XML_FORBIDDEN: "a DTD, entity or other construct the hardened parser refuses",
    Reason.BAD_APP: "a hello whose app attribute is not a short token",
    Reason.STORAGE_FAILED: "the hub could not store frames (disk full, I/O error), none ACKed",
    Reason.BAD_NAME: "a hello whose name is empty, over 64 characters, padded or not printable",
    Reason.NOT_SUBSCRIBE: "an announcement whose document is not a subscribe",
    Reason.NOT_A_HUB: "an announcement signed by a certificate that is not a hub's",
    Reason.STALE: "a timestamp older than the freshness window",
    Reason.FUTURE: "a timestamp ahead of the freshness window",
    Reason.REPLAY: "a sequence number already accepted",
    Reason.SEQ_NOT_INCREASING: "a sequence number below the high-water mark",
    Reason.SOURCE_MISMATCH: "the advertised address is not the datagram's source",
    Reason.TABLE_FULL: "a bounded table is full of live entries",
    Reason.FORGED_OWN_ID: "an announcement claiming this hub's identifier that it did not sign",
    Reason.RATE_LIMITED: "the source spent its token bucket",
    Reason.SOURCE_TABLE_FULL: "too many distinct sources are active at once",
    Reason.BUSY: "every slot of a listener is taken",
    Reason.SOURCE_BUSY: "the source holds its share of slots already",
    Reason.BACKOFF: "a retry inside its back-off window",
    Reason.UNAUTHENTICATED_FULL: "every unauthenticated connection slot of the daemon is taken",
    Reason.SOURCE_UNAUTHENTICATED_FULL: (
        "the source address holds its share of unauthenticated connections already"
    ),
    Reason.TLS_HANDSHAKE_TIMEOUT: "the TLS handshake did not complete within its deadline",
    Reason.NOT_TLS: "bytes on a TLS port that are not a TLS handshake",
    Reason.TLS_FAILED: "the TLS handshake failed",
    Reason.CLIENT_CERT_REQUIRED: "a TLS client that presented no certificate where one is required",
    Reason.CLIENT_CERT_UNTRUSTED: "a TLS client certificate that does not chain to a trusted CA",
    Reason.CLOSED_IN_HANDSHAKE: "the peer closed or reset the connection during the TLS handshake",
    Reason.SESSION_REPLACED: "a device channel replaced by a newer hello of the same device",
    Reason.REPLACE_LIMITED: "a device replacing its own channel faster than its limit",
    Reason.BAD_REQUEST: "an HTTP request that does not parse, or that the API refuses as invalid",
    Reason.HEADER_TOO_LARGE: "an HTTP request line, header or header count above its limit",
    Reason.BODY_TOO_LARGE: "an HTTP request body above its limit, refused before it is read",
    Reason.LENGTH_REQUIRED: "an HTTP request body without a Content-Length",
    Reason.NOT_FOUND: "an HTTP request for a path the API does not serve",
    Reason.METHOD_NOT_ALLOWED: "an HTTP method the API does not serve",
    Reason.HTTP_REFUSED: "an HTTP request refused with another 4xx status",
    Reason.HEADER_TIMEOUT: "an HTTP request whose headers did not arrive within their deadline",
    Reason.SILENT_CONNECTION: "a connection that sent nothing within its idle limit",
    Reason.CHAIN: "a certificate does not chain to a trusted CA generation",
    Reason.BAD_CERT: "a certificate that does not parse or breaks its profile",
    Reason.BAD_KEY: "a key of the wrong type or curve",
    Reason.NO_ANCHOR: "no trusted CA generation is loaded",
    Reason.NO_ID: "a certificate with no single node identifier",
    Reason.ID_MISMATCH: "an identifier that is not the hash of the certificate's key",
    Reason.WRONG_ID: "a certificate for another identifier than the one expected",
    Reason.NO_PEER_CERT: "the peer presented no certificate",
    Reason.BAD_SIGNATURE: "a signature that does not verify",
    Reason.BAD_GENERATION: "CA information that is not generation N+1",
    Reason.BAD_PREV: "CA information whose prev_digest is not the trusted one's",
    Reason.THRESHOLD: "too few signatures by the trusted DL keys",
    Reason.THRESHOLD_NEW: "too few signatures by the new generation's own DL keys",
    Reason.ROLLBACK: "a generation or time floor older than one already passed",
    Reason.NO_PREPARED: "nothing prepared to promote",
    Reason.FETCH: "fetching CA information failed",
    Reason.STATUS: "the download server answered an unexpected HTTP status",
    Reason.CA_EXPIRED: "a CA generation already expired at the time asked",
    Reason.REVOKED: "a certificate of a generation a newer CA information revoked",
    Reason.NOT_YET_KNOWN: "a certificate of a generation the trust store does not hold yet",
    Reason.RETIRED: "a certificate of a generation the trust store has moved past",
    Reason.NO_SUCH_USER: "no such user",
    Reason.UNKNOWN_USER: "a login for a user that is not registered",
    Reason.BAD_PASSWORD: "the password is wrong",
    Reason.BAD_PROOF: "the challenge responses are wrong",
    Reason.BAD_SERVER_PROOF: "the server could not prove it holds the verifiers",
    Reason.LOCKED_OUT: "the user is locked out after failed logins",
    Reason.CHALLENGE_EXPIRED: "a proof arrived after its challenge expired",
    Reason.CHALLENGE_REUSED: "a challenge set was answered twice",
    Reason.STALE_COUNTER: "an access counter below the one the client last saw",
    Reason.SUITE_NOT_ALLOWED: "a suite outside the allow-list",
    Reason.DOWNGRADE: "the server chose a suite the client did not offer",
    Reason.KDF_BOUNDS: "KDF cost outside the configured bounds",
    Reason.TOO_FEW_PAIRS: "fewer registered pairs than a challenge needs",
    Reason.NOT_ON_CARD: "a challenge label the card does not have",
    Reason.LOGIN_TIMEOUT: "the login did not finish within its deadline",
    Reason.NO_GRANT: "a server-first login without a valid password grant",
    Reason.USER_MISMATCH: "a server-first hello naming another user than the one challenged",
    Reason.BAD_TAG: "a sealed message or datagram whose tag does not verify",
    Reason.OUT_OF_WINDOW: "a message index outside the replay window",
    Reason.WRONG_DIRECTION: "a message sealed for the other direction",
    Reason.REKEY_REQUIRED: "the ratchet reached its message limit",
    Reason.REAUTH_REQUIRED: "the session reached its idle or absolute limit",
    Reason.SESSION_CLOSED: "use of a closed session",
    Reason.CLOSED: "the stream or session was closed",
    Reason.NOT_LOGGED_IN: "a call before login",
    Reason.CALL_IN_FLIGHT: "a second call while one is unanswered",
    Reason.UNKNOWN_METHOD: "a remote call names no known method",
    Reason.NO_FRAME: "no frame is recorded for that camera",
    Reason.STREAM_ERROR: "the stream under a guard session failed (reset, TLS error)",
    Reason.STREAM: "the guard stream failed",
    Reason.CONNECT: "the connection could not be opened",
    Reason.SESSION_IDLE_EXPIRED: "the session passed its idle limit; log in again",
    Reason.SESSION_LIFETIME_EXPIRED: "the session passed its absolute limit; log in again",
    Reason.NO_SESSION: "a dashboard request without a valid session cookie",
    Reason.BAD_CSRF: "a state-changing dashboard request without the session's CSRF token",
    Reason.NO_LOGIN_ATTEMPT: "dashboard codes for a login attempt that is unknown or over",
    Reason.NOT_PEER_HUB: "a peer dashboard request whose certificate is not a hub's",
    Reason.NO_LOG: "the server keeps no log",
    Reason.UNKNOWN_LEAF: "a receipt asked for a leaf the log does not hold",
    Reason.NO_SUCH_LEAF: "no such leaf in the log",
    Reason.NOT_COVERED: "a checkpoint that does not cover the leaf",
    Reason.BEYOND_CHECKPOINT: "a proof asked beyond the checkpoint's size",
    Reason.NO_CONSISTENCY: "the server refused a consistency proof",
    Reason.NO_CONSISTENCY_PROOF: "a checkpoint document without its consistency proof",
    Reason.RECEIPT_MISMATCH: "a receipt for another message or leaf",
    Reason.RECEIPT_REFUSED: "the server refused a receipt",
    Reason.WRONG_LOG_KEY: "a receipt signed by another log key than the pinned one",
    Reason.LOG_CORRUPT: "the stored Merkle log does not match its checkpoints",
    Reason.BAD_IDENTIFIER: "an identifier that is not hcsp: or ab: plus 22 base64url characters",
    Reason.BAD_CANDIDATE: "a candidate that is not an unscoped IP address with a port 1-65535",
    Reason.BAD_FAMILY: "an address family byte other than 4 (IPv4) or 6 (IPv6)",
    Reason.TOO_MANY_CANDIDATES: "more candidate addresses than a message may carry",
    Reason.COUNTER_NOT_INCREASING: "a registration or wake-up counter not above the last one",
    Reason.BAD_REGISTRATION_KEY: "a registration key that is not 32 bytes",
    Reason.REPLY_TOO_LARGE: "a reply larger than the datagram it answers (amplification)",
    Reason.BAD_CONTROL: "a control body that is not a UTF-8 JSON object with a string op",
    Reason.UNKNOWN_OP: "a control message with an op we do not know",
    Reason.MISSING_FIELD: "a control message without a field its op requires",
    Reason.UNKNOWN_FIELD: "a control message with a field its op does not define",
    Reason.BAD_FIELD: "a control field of the wrong type, form or range",
    Reason.NOT_BINDING: "a STUN message that is not the expected Binding request or response",
    Reason.BAD_ATTRIBUTE: "a STUN attribute with a malformed value or in a forbidden place",
    Reason.BAD_FINGERPRINT: "a STUN FINGERPRINT that does not match the message",
    Reason.TRANSACTION_MISMATCH: "a STUN response for another transaction",
    Reason.NO_MAPPED_ADDRESS: "a STUN success response without XOR-MAPPED-ADDRESS",
    Reason.BAD_SEAL: "a sealed request that does not open (wrong target, altered data)",
    Reason.WRONG_SESSION: "a punch probe for another session than ours",
    Reason.UNKNOWN_NONCE: "a punch answer that does not carry the nonce we probed with",
    Reason.HANDSHAKE_TIMEOUT: "the QUIC handshake did not complete in time",
    Reason.BAD_ALPN: "the QUIC peer did not agree on the roost/1 application protocol",
    Reason.PATH_CLOSED: "a datagram was sent on a path that is closed",
    Reason.RELAY_LIMIT: "a relay past its byte limit or the hub's relayed-session cap",
    Reason.NOT_ENROLLED: "a wake-up or registration step before the agent has its key",
    Reason.ENROLL_FAILED: "the enrollment connection closed before the broker answered",
    Reason.UNKNOWN_SESSION: "a control message for a session this side does not hold",
    Reason.RACK_MISSING: "registrations went unanswered; a held TLS connection replaces UDP",
    Reason.UNKNOWN_COUNTER: "a RACK for a registration counter the agent is not waiting for",
    Reason.PUNCH_FAILED: "no direct path answered by the punch deadline; the relay is asked",
    Reason.LOOKUP_TIMEOUT: "the broker did not answer the lookup in time",
    Reason.ACCEPT_TIMEOUT: "the hub did not accept or reject the request in time",
    Reason.RELAY_TIMEOUT: "the broker did not open the relay in time",
    Reason.SETUP_TIMEOUT: "a brokered session did not reach a direct or relayed path in time",
    Reason.NOT_EQUIPMENT: "an enrollment or presence without a verified hub or device certificate",
    Reason.UNKNOWN_TARGET: "a lookup or connect for an identifier the broker has not enrolled",
    Reason.TARGET_OFFLINE: "a lookup or connect for an enrolled target that is not live",
    Reason.BAD_TOKEN: "a presence with a token the broker did not issue or has forgotten",
    Reason.TOKEN_REUSED: "a presence with a token already presented once",
    Reason.SESSION_LIMIT: "too many connection requests open (per connection or overall)",
    Reason.RELAY_EXPIRED: "a relayed session past its time limit",
    Reason.WAKE_TIMEOUT: "the target did not present its wake-up token in time",
    Reason.ANSWER_TIMEOUT: "the target did not accept or reject the request in time",
    Reason.IDLE_TIMEOUT: "a broker connection silent past its idle limit",
    Reason.HELD_LIMIT: "the broker holds as many connections as it allows; UDP wake-ups remain",
    Reason.KEEPALIVE_TIMEOUT: "the broker did not answer a keepalive on the held connection",
    Reason.NOT_BROKER: "a peer that should be the broker presented another role",
    Reason.WRONG_NODE: "a node-link hello for, or from, another broker instance than expected",
    Reason.NO_LINK: "a broker process that advertises no node link (off, or its record lapsed)",
    Reason.LINK_UNREACHABLE: "a node link that could not be opened (refused, timed out, TLS)",
    Reason.LINK_BACKLOG: "a node link whose peer stopped reading (unsent bytes above the cap)",
    Reason.FOREIGN_USER: "a local node-link socket whose peer runs as another user (SO_PEERCRED)",
    Reason.NO_CAMERA: "the hub has no connected camera to watch",
    Reason.SOURCE_UNAVAILABLE: "a camera source could not be opened (no file, refused, no device)",
    Reason.SOURCE_LOST: "a camera stream that was delivering broke or ended",
    Reason.SOURCE_UNDECODABLE: "a camera source sent data that does not decode as video",
    Reason.SOURCE_STALLED: "a camera source delivered no frame within its stall timeout",
    Reason.BAD_SERVICE_RECORD: "a DNS-SD hub record with a missing or malformed field, ignored",
    Reason.MISSING: "a file or directory that should exist does not",
    Reason.EXISTS: "refusing to overwrite what exists",
    Reason.CORRUPT: "stored state does not parse",
    Reason.SCHEMA_VERSION: "a database of an unknown schema version",
    Reason.MISSING_FRAME: "an indexed frame file is missing",
    Reason.DUPLICATE_SEQ: "a sequence number already spooled",
    Reason.UNKNOWN_SEQ: "a sequence number the spool did not allocate",
    Reason.SEQ_EXHAUSTED: "sequence numbers are exhausted",
    Reason.ALREADY_ACKED: "a frame below the acknowledged sequence number",
    Reason.USER_EXISTS: "the user already exists",
    Reason.BAD_ARGS: "command arguments out of range",
    Reason.NOT_RUNNING: "the daemon is not running",
    Reason.NOT_STATE_DIR: "a path that is not the state directory the command works on",
    Reason.INCONSISTENT: "an authority directory whose files disagree with its table",
    Reason.IN_USE: "another process holds this state folder's lock",
    Reason.WRONG_ROLE: "a config file or certificate of another role (hub, device, broker)",
    Reason.KEY_MISMATCH: "the private key does not belong to the certificate",
    Reason.ADDRESS_IN_USE: "a listener's address is already bound by another process",
}


class RejectionCounter:
    """Counts refusals by reason and applies the logging rule of PROTOCOL.md's preamble.

    :meth:`count` returns ``None`` when no line should be written, or the number of
    refusals from that source that were counted silently since its last line. At most
    ``max_sources`` sources are remembered (oldest forgotten first), so the table is
    bounded under a spoofed-source flood.
    """

    __slots__ = ("_counts", "_last_logged", "_log_interval", "_max_sources", "_suppressed")

    def __init__(self, log_interval: float = 60.0, max_sources: int = 4096) -> None:
        self._counts: Counter[str] = Counter()
        self._log_interval = log_interval
        self._max_sources = max_sources
        self._last_logged: OrderedDict[str, float] = OrderedDict()
        self._suppressed: Counter[str] = Counter()

    def count(
        self, error: RoostError | str, *, source: str | None = None, now: float | None = None
    ) -> int | None:
        """Count one refusal; say whether (and with what backlog) to log it."""
        reason = error if isinstance(error, str) else error.reason
        self._counts[reason] += 1
        if source is None or now is None:
            return None
        last = self._last_logged.get(source)
        if last is not None and now - last < self._log_interval:
            self._suppressed[source] += 1
            return None
        self._last_logged[source] = now
        self._last_logged.move_to_end(source)
        while len(self._last_logged) > self._max_sources:
            forgotten, _ = self._last_logged.popitem(last=False)
            self._suppressed.pop(forgotten, None)
        return self._suppressed.pop(source, 0)

    def __getitem__(self, reason: str) -> int:
        return self._counts[reason]

    def total(self) -> int:
        return sum(self._counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self._counts)


def log_rejection(
    logger: logging.Logger,
    counter: RejectionCounter,
    error: RoostError | str,
    *,
    source: str,
    now: float,
    what: str = "refused",
) -> None:
    """Count ``error`` (an error, or a bare reason where the failure is an ``OSError``)
    and write one INFO line for it when the logging rule allows."""
    suppressed = counter.count(error, source=source, now=now)
    if suppressed is None:
        return
    reason = error if isinstance(error, str) else error.reason
    more = f" ({suppressed} more since the last line)" if suppressed else ""
    # Marked as a refusal (REFUSAL_LINE), with the event fields of --log-format json.
    logger.info(
        "%s %s: %s%s",
        what,
        source,
        reason,
        more,
        extra={**REFUSAL_LINE, "event": "refused", "reason": str(reason), "source": source},
    )


def catalogue_markdown() -> str:
    """The catalogue as the Markdown table docs/architecture.md carries
    (``python -m roost.reasons`` prints it)."""
    lines = ["| reason | meaning |", "|---|---|"]
    lines += [f"| `{reason.value}` | {DESCRIPTIONS[reason]} |" for reason in Reason]
    return "\n".join(lines)


if __name__ == "__main__":
    print(catalogue_markdown())
