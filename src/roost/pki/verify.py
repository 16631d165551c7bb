"""Certificate path validation through `cryptography.x509.verification` (PROTOCOL.md section 1).

Never a hand-written path check: this module only chooses the anchors, the validation time
and the policy, and turns library failures into our VerificationError.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID

from roost.errors import VerificationError
from roost.pki.certs import identifier_of, san_uris
from roost.reasons import Reason

__all__ = [
    "VerifiedNode",
    "validation_time",
    "verify_broker_peer",
    "verify_node",
    "verify_server_name",
]

# Leaf, at most one intermediate, the anchor: our CAs have pathlen 0.
MAX_CHAIN_DEPTH = 3


@dataclass(frozen=True, slots=True)
class VerifiedNode:
    """A hub or device whose certificate chained to a trusted anchor at `at`."""

    identifier: str
    certificate: x509.Certificate
    anchor: x509.Certificate


def validation_time(time_floor: dt.datetime, leaf: x509.Certificate) -> dt.datetime:
    """The later of the forward-only floor and the leaf's notBefore.

    A clockless holder cannot tell "not yet valid", so it only enforces expiry against
    what it knows has already happened (PROTOCOL.md section 1; Matter's Last Known Good Time).
    """
    return max(time_floor, leaf.not_valid_before_utc)


def _policy(anchors: Sequence[x509.Certificate], at: dt.datetime) -> xv.PolicyBuilder:
    if not anchors:
        raise VerificationError("no trusted CA generation", reason="no-anchor")
    return (
        xv.PolicyBuilder().store(xv.Store(list(anchors))).time(at).max_chain_depth(MAX_CHAIN_DEPTH)
    )


def _anchor_of(chain: Sequence[x509.Certificate]) -> x509.Certificate:
    return chain[-1]


def verify_node(
    leaf: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    time_floor: dt.datetime,
    expected_identifier: str | None = None,
) -> VerifiedNode:
    """Verify a hub or device certificate and return the identifier it proves.

    Both roles carry clientAuth (section 1 table), so the client verifier applies to each;
    the SAN URI is then checked against the certificate's own key and, when given, against
    the identifier the caller expects (a redirect target, a configured peer).
    """
    at = validation_time(time_floor, leaf)
    try:
        verified = _policy(anchors, at).build_client_verifier().verify(leaf, [])
    except xv.VerificationError as exc:
        raise VerificationError(f"certificate does not verify: {exc}", reason="chain") from exc
    identifier = identifier_of(leaf)
    if expected_identifier is not None and identifier != expected_identifier:
        raise VerificationError(
            f"certificate is {identifier}, expected {expected_identifier}", reason="wrong-id"
        )
    return VerifiedNode(identifier, leaf, _anchor_of(verified.chain))


def verify_server_name(
    leaf: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    time_floor: dt.datetime,
    host: str,
) -> x509.Certificate:
    """Verify a download server or broker certificate for `host`; returns the anchor used."""
    at = validation_time(time_floor, leaf)
    subject: x509.DNSName | x509.IPAddress
    try:
        subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    try:
        chain = _policy(anchors, at).build_server_verifier(subject).verify(leaf, [])
    except xv.VerificationError as exc:
        raise VerificationError(
            f"server certificate does not verify: {exc}", reason="chain"
        ) from exc
    return _anchor_of(chain)


def verify_broker_peer(
    leaf: x509.Certificate, anchors: Sequence[x509.Certificate], time_floor: dt.datetime
) -> x509.Certificate:
    """Verify the certificate of another broker process on the node link, either end
    (docs/broker-scale.md, "Node link"); returns the anchor used.

    A broker's certificate (section 1 table) carries serverAuth and clientAuth and no node
    identifier; hubs and devices, which also chain to the CA, carry an ``hcsp:``/``ab:``
    URI and are refused ``not-broker``, as is a download server's (serverAuth only). The
    chain is checked with the client verifier, which needs clientAuth.
    """
    if any(uri.startswith(("hcsp:", "ab:")) for uri in san_uris(leaf)):
        raise VerificationError("a node's certificate, not a broker's", reason=Reason.NOT_BROKER)
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = x509.ExtendedKeyUsage([])
    wanted = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    if not wanted <= set(eku):
        raise VerificationError(
            "not a broker certificate (serverAuth and clientAuth)", reason=Reason.NOT_BROKER
        )
    at = validation_time(time_floor, leaf)
    try:
        verified = _policy(anchors, at).build_client_verifier().verify(leaf, [])
    except xv.VerificationError as exc:
        raise VerificationError(
            f"broker certificate does not verify: {exc}", reason=Reason.CHAIN
        ) from exc
    return _anchor_of(verified.chain)
