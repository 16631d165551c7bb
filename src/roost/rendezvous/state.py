"""The transition tables of the two ends of a brokered connection (docs/broker.md, "The flow").

Each core keeps its states in an enum below and looks every ``(state, input)`` pair up in
its table, as h11's ``_state.py`` does: the whole protocol of one side reads at a glance and
the tests walk every pair. A pair that is not in a table is an input the broker should not
have sent in that state; the cores ignore it and count it as ``unexpected-message``, because
a broker that misbehaves must not be able to crash the hub or the issuer.

Agent, link to the broker (steps 1, 2): ``IDLE`` → (start) → ``ENROLLING`` → (enrolled) →
``REGISTERING`` ⇄ ``HELD`` (no RACK for ``missed_racks`` tries / a RACK again). The state
says whether UDP reaches the broker; a connection held by configuration (``hold_connection``,
docs/broker.md "Held connections") is kept in both and reopened when lost.

Agent, one brokered session (steps 4 to 8): ``PRESENTING`` → (request) → ``CHECKING`` →
(password ok) → ``AWAIT_START`` → (start) → ``PUNCHING`` → ``DIRECT``, or (punch failed) →
``AWAIT_RELAY`` → (relay-open) → ``RELAY``; a direct path that comes up later takes over.

Issuer (step 3 onwards): ``IDLE`` → ``LOOKING_UP`` → ``VERIFYING`` → ``VERIFIED`` (waiting
for its STUN answer) → ``CONNECTING`` → ``WAKING`` → ``PUNCHING`` → ``DIRECT`` or, through
``AWAIT_RELAY`` / ``RELAY_READY``, ``RELAY``; any refusal, error or timeout before a path →
``FAILED``; the end of a relayed session → ``CLOSED``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = [
    "AGENT_LINK_TRANSITIONS",
    "AGENT_SESSION_TRANSITIONS",
    "ISSUER_TRANSITIONS",
    "AgentSessionState",
    "IssuerInput",
    "IssuerState",
    "LinkInput",
    "LinkState",
    "SessionInput",
]


class LinkState(enum.Enum):
    """How the agent is reachable: not yet, over UDP registrations, or a held connection."""

    IDLE = "idle"
    ENROLLING = "enrolling"
    REGISTERING = "registering"
    HELD = "held"
    STOPPED = "stopped"


class LinkInput(enum.Enum):
    START = "start"
    ENROLLED = "enrolled"
    ENROLL_LOST = "enroll-lost"
    ACK = "ack"
    ACKS_MISSING = "acks-missing"
    HELD_LOST = "held-lost"
    STOP = "stop"


_L = LinkState
_LI = LinkInput

AGENT_LINK_TRANSITIONS: Mapping[tuple[LinkState, LinkInput], LinkState] = {
    (_L.IDLE, _LI.START): _L.ENROLLING,
    # The adapter may enroll on its own and report the answer directly.
    (_L.IDLE, _LI.ENROLLED): _L.REGISTERING,
    (_L.ENROLLING, _LI.ENROLLED): _L.REGISTERING,
    # The enrollment connection failed: try again after enroll_retry.
    (_L.ENROLLING, _LI.ENROLL_LOST): _L.ENROLLING,
    # A re-enrollment replaces the key (step 1) wherever it is answered.
    (_L.REGISTERING, _LI.ENROLLED): _L.REGISTERING,
    (_L.REGISTERING, _LI.ACK): _L.REGISTERING,
    # Step 2: no RACK for missed_racks tries, so UDP does not reach the broker.
    (_L.REGISTERING, _LI.ACKS_MISSING): _L.HELD,
    (_L.HELD, _LI.ENROLLED): _L.HELD,
    (_L.HELD, _LI.ACKS_MISSING): _L.HELD,
    # Registrations go on in HELD: the first RACK means UDP works again.
    (_L.HELD, _LI.ACK): _L.REGISTERING,
    # The held connection dropped: it is opened again after enroll_retry.
    (_L.HELD, _LI.HELD_LOST): _L.HELD,
    # With hold_connection the connection is held while UDP works too, and reopened.
    (_L.REGISTERING, _LI.HELD_LOST): _L.REGISTERING,
    (_L.IDLE, _LI.STOP): _L.STOPPED,
    (_L.ENROLLING, _LI.STOP): _L.STOPPED,
    (_L.REGISTERING, _LI.STOP): _L.STOPPED,
    (_L.HELD, _LI.STOP): _L.STOPPED,
    (_L.STOPPED, _LI.STOP): _L.STOPPED,
}


class AgentSessionState(enum.Enum):
    """Where one brokered session of the agent is."""

    PRESENTING = "presenting"
    CHECKING = "checking"
    AWAIT_START = "await-start"
    PUNCHING = "punching"
    AWAIT_RELAY = "await-relay"
    DIRECT = "direct"
    RELAY = "relay"
    CLOSED = "closed"


class SessionInput(enum.Enum):
    REQUEST = "request"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    START = "start"
    PUNCH_OK = "punch-ok"
    PUNCH_FAILED = "punch-failed"
    RELAY_OPEN = "relay-open"
    RELAY_CLOSE = "relay-close"
    ERROR = "error"
    CHANNEL_LOST = "channel-lost"
    TIMEOUT = "timeout"
    CLOSE = "close"


_S = AgentSessionState
_SI = SessionInput

_AGENT_SESSION: dict[tuple[AgentSessionState, SessionInput], AgentSessionState] = {
    # Step 4: the token was presented; the broker answers with the sealed request.
    (_S.PRESENTING, _SI.REQUEST): _S.CHECKING,
    # Step 5: a wrong password never reaches punching.
    (_S.CHECKING, _SI.ACCEPTED): _S.AWAIT_START,
    (_S.CHECKING, _SI.REJECTED): _S.CLOSED,
    (_S.AWAIT_START, _SI.START): _S.PUNCHING,
    (_S.PUNCHING, _SI.PUNCH_OK): _S.DIRECT,
    (_S.PUNCHING, _SI.PUNCH_FAILED): _S.AWAIT_RELAY,
    # Step 8: the issuer gave up first; the relay opens while our probes go on.
    (_S.PUNCHING, _SI.RELAY_OPEN): _S.RELAY,
    (_S.AWAIT_RELAY, _SI.RELAY_OPEN): _S.RELAY,
    # Step 9: a direct path that comes up later takes over from the relay.
    (_S.RELAY, _SI.PUNCH_OK): _S.DIRECT,
    (_S.RELAY, _SI.PUNCH_FAILED): _S.RELAY,
    (_S.RELAY, _SI.RELAY_CLOSE): _S.CLOSED,
    (_S.RELAY, _SI.CHANNEL_LOST): _S.CLOSED,
    # The relay is not needed once the direct path carries the session.
    (_S.DIRECT, _SI.RELAY_OPEN): _S.DIRECT,
    (_S.DIRECT, _SI.RELAY_CLOSE): _S.DIRECT,
    (_S.DIRECT, _SI.CHANNEL_LOST): _S.DIRECT,
    (_S.DIRECT, _SI.ERROR): _S.DIRECT,
    (_S.RELAY, _SI.ERROR): _S.CLOSED,
    (_S.DIRECT, _SI.CLOSE): _S.CLOSED,
    (_S.RELAY, _SI.CLOSE): _S.CLOSED,
}
# Before a path exists, the broker's error, a lost connection, the setup deadline and our
# own close all end the session.
for _state in (_S.PRESENTING, _S.CHECKING, _S.AWAIT_START, _S.PUNCHING, _S.AWAIT_RELAY):
    for _input in (_SI.ERROR, _SI.CHANNEL_LOST, _SI.TIMEOUT, _SI.CLOSE, _SI.RELAY_CLOSE):
        _AGENT_SESSION.setdefault((_state, _input), _S.CLOSED)
AGENT_SESSION_TRANSITIONS: Mapping[tuple[AgentSessionState, SessionInput], AgentSessionState] = (
    _AGENT_SESSION
)


class IssuerState(enum.Enum):
    """Where the issuer's one connection attempt is."""

    IDLE = "idle"
    LOOKING_UP = "looking-up"
    VERIFYING = "verifying"
    VERIFIED = "verified"
    CONNECTING = "connecting"
    WAKING = "waking"
    PUNCHING = "punching"
    RELAY_READY = "relay-ready"
    AWAIT_RELAY = "await-relay"
    DIRECT = "direct"
    RELAY = "relay"
    FAILED = "failed"
    CLOSED = "closed"


class IssuerInput(enum.Enum):
    START = "start"
    LOOKUP_RESULT = "lookup-result"
    VERIFIED = "verified"
    REFUSED = "refused"
    CONNECT = "connect"
    CONNECTING = "connecting"
    REJECT = "reject"
    START_PUNCH = "start"
    PUNCH_OK = "punch-ok"
    PUNCH_FAILED = "punch-failed"
    RELAY_OPEN = "relay-open"
    RELAY_CLOSE = "relay-close"
    ERROR = "error"
    TIMEOUT = "timeout"
    LOST = "lost"


_I = IssuerState
_II = IssuerInput

_ISSUER: dict[tuple[IssuerState, IssuerInput], IssuerState] = {
    (_I.IDLE, _II.START): _I.LOOKING_UP,
    # Step 3: the adapter checks the looked-up certificate against the trust store.
    (_I.LOOKING_UP, _II.LOOKUP_RESULT): _I.VERIFYING,
    (_I.VERIFYING, _II.VERIFIED): _I.VERIFIED,
    (_I.VERIFYING, _II.REFUSED): _I.FAILED,
    # The connect waits for the STUN answer (or its timeout): it carries the candidates.
    (_I.VERIFIED, _II.CONNECT): _I.CONNECTING,
    (_I.CONNECTING, _II.CONNECTING): _I.WAKING,
    # Step 5: the hub's reject is forwarded; no punch ever starts.
    (_I.CONNECTING, _II.REJECT): _I.FAILED,
    (_I.WAKING, _II.REJECT): _I.FAILED,
    (_I.WAKING, _II.START_PUNCH): _I.PUNCHING,
    (_I.PUNCHING, _II.PUNCH_OK): _I.DIRECT,
    (_I.PUNCHING, _II.PUNCH_FAILED): _I.AWAIT_RELAY,
    # The hub gave up first: the relay is ready, our own probes still decide.
    (_I.PUNCHING, _II.RELAY_OPEN): _I.RELAY_READY,
    (_I.RELAY_READY, _II.PUNCH_OK): _I.DIRECT,
    (_I.RELAY_READY, _II.PUNCH_FAILED): _I.RELAY,
    (_I.AWAIT_RELAY, _II.RELAY_OPEN): _I.RELAY,
    # Step 9: a direct path that comes up later takes over from the relay.
    (_I.RELAY, _II.PUNCH_OK): _I.DIRECT,
    (_I.RELAY, _II.PUNCH_FAILED): _I.RELAY,
    (_I.RELAY, _II.RELAY_CLOSE): _I.CLOSED,
    (_I.RELAY, _II.ERROR): _I.CLOSED,
    (_I.RELAY, _II.LOST): _I.CLOSED,
    # A direct session no longer needs the broker.
    (_I.DIRECT, _II.RELAY_OPEN): _I.DIRECT,
    (_I.DIRECT, _II.RELAY_CLOSE): _I.DIRECT,
    (_I.DIRECT, _II.PUNCH_FAILED): _I.DIRECT,
    (_I.DIRECT, _II.ERROR): _I.DIRECT,
    (_I.DIRECT, _II.LOST): _I.DIRECT,
}
# Before a path exists, an error, a timeout, a lost broker connection or a relay-close
# (a relay limit) ends the attempt with a failure.
for _istate in (
    _I.LOOKING_UP,
    _I.VERIFYING,
    _I.VERIFIED,
    _I.CONNECTING,
    _I.WAKING,
    _I.PUNCHING,
    _I.RELAY_READY,
    _I.AWAIT_RELAY,
):
    for _iinput in (_II.ERROR, _II.TIMEOUT, _II.LOST, _II.RELAY_CLOSE):
        _ISSUER.setdefault((_istate, _iinput), _I.FAILED)
ISSUER_TRANSITIONS: Mapping[tuple[IssuerState, IssuerInput], IssuerState] = _ISSUER
