"""A small in-memory PKI for tests: one CA generation and leaves issued on demand."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from roost.pki.certs import LeafRequest, Role, generate_key, issue_leaf, make_ca

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass
class Node:
    role: Role
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    identifier: str


@dataclass
class TestCA:
    """A CA generation with a fixed validity window starting at EPOCH."""

    __test__ = False  # a helper, not a pytest test class

    generation: int = 1
    years: int = 20
    key: ec.EllipticCurvePrivateKey = field(default_factory=generate_key)
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        end = EPOCH + dt.timedelta(days=365 * self.years)
        self.cert = make_ca(self.key, self.generation, EPOCH, end)

    def issue(
        self,
        role: Role,
        *,
        ips: tuple[str, ...] = ("127.0.0.1",),
        dns: tuple[str, ...] = (),
        days: int = 3650,
        not_before: dt.datetime = EPOCH,
    ) -> Node:
        key = generate_key()
        cert, identifier = issue_leaf(
            LeafRequest(role, key.public_key(), dns_names=dns, ip_addresses=ips),
            self.key,
            self.cert,
            not_before,
            not_before + dt.timedelta(days=days),
        )
        return Node(role, key, cert, identifier or "")
