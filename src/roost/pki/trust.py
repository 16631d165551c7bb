"""The two-slot trust store: the client's authentication and CA-information update unit.

Pure, ordered state transitions (seed claims 4–6, PROTOCOL.md section 2, and the fixes of
python-tuf's `TrustedMetadataSet`): every change returns a new `TrustState` or raises, so a
failed step leaves the caller's state untouched. This module opens no files: persistence
is the adapter `roost.pki.truststore` (`save_state`/`load_state`).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cryptography import x509

from roost.errors import StateError, VerificationError
from roost.pki.cainfo import CAInfo, accept_successor
from roost.pki.verify import VerifiedNode, verify_node

__all__ = [
    "BUILD_TIME",
    "MAX_CATCH_UP",
    "MAX_RETIRED",
    "Slot",
    "TrustState",
]

# The floor a fresh install starts from: no certificate that expired before this release
# can ever be accepted, even by a device that has never seen a clock (Matter's LKGT rule).
BUILD_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# A device that fell behind walks at most this many generations in one catch-up.
MAX_CATCH_UP = 16
# Retired generations kept for download-server TLS only.
MAX_RETIRED = 16
_ISSUER_GENERATION = re.compile(r"Roost CA generation ([0-9]{1,9})\b")


class Slot(enum.Enum):
    CURRENT = "current"
    PREPARED = "prepared"


@dataclass(frozen=True, slots=True)
class TrustState:
    """Current and prepared CA information, and the forward-only time floor."""

    current: CAInfo
    prepared: CAInfo | None
    time_floor: dt.datetime
    # CA certificates (DER) of generations this holder has moved past, newest last. They
    # authenticate nothing but download servers: a server publishing several generations
    # presents one certificate, possibly from a CA the holder has since retired, and the
    # CA information it serves carries its own authenticity (section 2). Generations a
    # successor revoked are never kept here.
    retired: tuple[bytes, ...] = ()
    # Generations whose CA information carried REVOKES_PREVIOUS, as this holder accepted
    # them: what lets `explain` say which generation revoked a certificate's issuer.
    revocations: tuple[int, ...] = ()

    @classmethod
    def provision(cls, first: CAInfo, build_time: dt.datetime = BUILD_TIME) -> TrustState:
        """The seed's default state: the CA information installed at provisioning."""
        return cls(first, None, max(build_time, first.issued_at_time))

    @property
    def newest(self) -> CAInfo:
        return self.prepared or self.current

    @property
    def transport_anchors(self) -> list[x509.Certificate]:
        """Anchors for download-server TLS: both slots, then retired generations."""
        return [*self.anchors, *(x509.load_der_x509_certificate(d) for d in self.retired)]

    def _retire(self, *infos: CAInfo) -> tuple[bytes, ...]:
        kept = [*self.retired, *(i.body.ca_cert_der for i in infos)]
        return tuple(dict.fromkeys(kept))[-MAX_RETIRED:]

    @property
    def anchors(self) -> list[x509.Certificate]:
        """Both trust generations, current first (TLS contexts load all of them)."""
        infos = [self.current] + ([self.prepared] if self.prepared else [])
        return [i.ca_certificate for i in infos]

    def _raise_floor(self, at: dt.datetime) -> TrustState:
        return self if at <= self.time_floor else replace(self, time_floor=at)

    def accept(self, candidate: CAInfo) -> TrustState:
        """Store the successor of the newest slot, or raise VerificationError.

        A normal successor fills the prepared slot; when a prepared slot is already full the
        window slides (current := prepared), which is how a device behind catches up. A
        successor flagged REVOKES_PREVIOUS is promoted at once and everything older dropped
        (seed steps S509–S511).
        """
        accept_successor(self.newest, candidate)
        floor = max(self.time_floor, candidate.issued_at_time)
        if candidate.revokes_previous:
            # The newest slot is compromised; anything older is merely retired.
            older = [self.current] if self.prepared is not None else []
            compromised = self.newest.body.ca_cert_der
            retired = tuple(d for d in self._retire(*older) if d != compromised)
            revocations = (*self.revocations, candidate.generation)
            return TrustState(candidate, None, floor, retired, revocations)
        if self.prepared is None:
            return TrustState(self.current, candidate, floor, self.retired, self.revocations)
        return TrustState(
            self.prepared, candidate, floor, self._retire(self.current), self.revocations
        )

    def promote(self) -> TrustState:
        """Prepared becomes current (a server verified under prepared only; claims 4–6)."""
        if self.prepared is None:
            raise StateError("nothing prepared to promote", reason="no-prepared")
        return TrustState(
            self.prepared, None, self.time_floor, self._retire(self.current), self.revocations
        )

    def verify_node(
        self, leaf: x509.Certificate, expected_identifier: str | None = None
    ) -> tuple[VerifiedNode, Slot, TrustState]:
        """Authenticate a hub or device: current first, then prepared (promoting on success).

        Returns the verified node, the slot that verified, and the state to keep (with the
        floor raised to the leaf's notBefore). Raises VerificationError when neither slot does.
        """
        errors: list[VerificationError] = []
        for slot, info in self._slots():
            try:
                node = verify_node(
                    leaf, [info.ca_certificate], self.time_floor, expected_identifier
                )
            except VerificationError as exc:
                errors.append(exc)
                continue
            state = self.promote() if slot is Slot.PREPARED else self
            return node, slot, state._raise_floor(leaf.not_valid_before_utc)
        error = _first_meaningful(errors)
        if error.reason == "chain":
            explained = self.explain(leaf)
            if explained is not None:
                raise explained from error
        raise error

    def explain(self, leaf: x509.Certificate) -> VerificationError | None:
        """Why `leaf` cannot verify here, in words, when its issuer's generation says it.

        The generation is read from the issuer name Roost gives every CA ("Roost CA
        generation N", roost.pki.certs): an unauthenticated hint, used only to word the
        refusal, never to accept anything.
        """
        match = _ISSUER_GENERATION.search(leaf.issuer.rfc4514_string())
        if match is None:
            return None
        issuer = int(match.group(1))
        known = [info.generation for _, info in self._slots()]
        if issuer in known:
            return None  # Its own CA: the chain error (expired, forged) is the right one.
        revoker = min((r for r in self.revocations if r > issuer), default=None)
        if revoker is not None:
            # A revoking generation R drops R-1 (compromised) and everything before it.
            along = "" if issuer == revoker - 1 else f" along with generation {revoker - 1}"
            return VerificationError(
                f"the certificate was issued by generation {issuer}, which generation"
                f" {revoker} revoked{along} (REVOKES_PREVIOUS); the node needs a new"
                " certificate from the active generation",
                reason="revoked",
            )
        if issuer > max(known):
            return VerificationError(
                f"the certificate was issued by generation {issuer}, which this trust store"
                f" does not hold yet (it holds {', '.join(map(str, known))}); run"
                " `roost trust update` or check the download server",
                reason="not-yet-known",
            )
        return VerificationError(
            f"the certificate was issued by generation {issuer}, which this trust store has"
            f" moved past (it holds {', '.join(map(str, known))}); the node needs a"
            " certificate from a newer generation",
            reason="retired",
        )

    def _slots(self) -> list[tuple[Slot, CAInfo]]:
        slots = [(Slot.CURRENT, self.current)]
        if self.prepared is not None:
            slots.append((Slot.PREPARED, self.prepared))
        return slots

    def summary(self) -> dict[str, object]:
        return {
            "current": self.current.generation,
            "prepared": self.prepared.generation if self.prepared else None,
            "time_floor": self.time_floor.isoformat(),
        }


def _first_meaningful(errors: Sequence[VerificationError]) -> VerificationError:
    # An identifier mismatch says more than "does not chain"; report it when present.
    for exc in errors:
        if exc.reason == "wrong-id":
            return exc
    return errors[0] if errors else VerificationError("no trusted generation", reason="chain")
