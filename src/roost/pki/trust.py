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
    # What each accepted REVOKES_PREVIOUS generation made this holder drop, as
    # (revoking generation, dropped generation, the dropped CA's key identifier): what lets
    # `explain` say which generation revoked a certificate's issuer.
    revocations: tuple[tuple[int, int, bytes], ...] = ()

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
            dropped = tuple(
                (candidate.generation, info.generation, _key_id(info.ca_certificate))
                for _, info in self._slots()
            )
            return TrustState(candidate, None, floor, retired, (*self.revocations, *dropped))
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

    @property
    def revoked_by(self) -> list[int]:
        """The generations whose REVOKES_PREVIOUS this holder accepted, oldest first."""
        return sorted({by for by, _, _ in self.revocations})

    def explain(self, leaf: x509.Certificate) -> VerificationError | None:
        """Why `leaf` cannot verify here, in words, when the store knows its issuer.

        The issuer is matched by the leaf's authority key identifier against the CAs this
        store dropped at a revocation, then the ones it retired; a certificate of a CA it
        never knew is reported as "not yet known" only when its issuer name claims a newer
        generation than the store holds. These are words for a person, never a reason to
        accept anything; None leaves the chain error as it is (a foreign CA, an expiry).
        """
        key_id = _authority_key_id(leaf)
        known = [info.generation for _, info in self._slots()]
        holds = ", ".join(map(str, known))
        for by, generation, dropped in self.revocations:
            if key_id is not None and key_id == dropped:
                along = "" if generation == by - 1 else f" along with generation {by - 1}"
                return VerificationError(
                    f"the certificate was issued by generation {generation}, which generation"
                    f" {by} revoked{along} (REVOKES_PREVIOUS); the node needs a new"
                    " certificate from the active generation",
                    reason="revoked",
                )
        for der in self.retired:
            cert = x509.load_der_x509_certificate(der)
            if key_id is not None and key_id == _key_id(cert):
                retired_generation = _generation_of(cert.subject.rfc4514_string())
                return VerificationError(
                    f"the certificate was issued by generation {retired_generation}, which this"
                    f" trust store has moved past (it holds {holds}); the node needs a certificate"
                    " from a newer generation",
                    reason="retired",
                )
        claimed = _generation_of(leaf.issuer.rfc4514_string())
        if claimed is not None and claimed > max(known):
            return VerificationError(
                f"the certificate names generation {claimed} as its issuer, which this trust"
                f" store does not hold yet (it holds {holds}); run `roost trust update` or"
                " check the download server",
                reason="not-yet-known",
            )
        return None

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


def _key_id(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return aki.key_identifier


def _generation_of(name: str) -> int | None:
    match = _ISSUER_GENERATION.search(name)
    return int(match.group(1)) if match else None


def _first_meaningful(errors: Sequence[VerificationError]) -> VerificationError:
    # An identifier mismatch says more than "does not chain"; report it when present.
    for exc in errors:
        if exc.reason == "wrong-id":
            return exc
    return errors[0] if errors else VerificationError("no trusted generation", reason="chain")
