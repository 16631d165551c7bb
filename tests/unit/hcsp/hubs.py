"""Building blocks for HCSP core tests: hubs from a test CA and a trust-store verifier."""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from roost.hcsp.core import AnnounceConfig, AnnounceCore, OwnHub
from roost.hcsp.documents import Endpoint, HubAddress
from roost.pki.certs import Role
from roost.pki.verify import verify_node
from tests.helpers import pki as pki_helpers
from tests.helpers.pki import EPOCH, Node

PORT = 17320


class CountingVerifier:
    """The daemon's closure over its trust store, counting calls to show the cache works."""

    def __init__(self, *anchors: x509.Certificate) -> None:
        self.anchors = list(anchors)
        self.calls = 0

    def __call__(self, certificate: x509.Certificate) -> str:
        self.calls += 1
        return verify_node(certificate, self.anchors, EPOCH).identifier


def new_ca() -> pki_helpers.TestCA:
    return pki_helpers.TestCA()


def hub_node(ca: pki_helpers.TestCA, host: str) -> Node:
    return ca.issue(Role.HUB, ips=(host,))


def own_hub(
    node: Node, host: str, features: tuple[str, ...] = ("hcsp",), max_clients: int = 5
) -> OwnHub:
    return OwnHub(
        address=HubAddress(node.identifier, Endpoint(host, PORT)),
        features=features,
        max_clients=max_clients,
        private_key=node.key,
        certificate_der=node.cert.public_bytes(serialization.Encoding.DER),
    )


def hub_core(
    ca: pki_helpers.TestCA,
    host: str,
    features: tuple[str, ...] = ("hcsp",),
    max_clients: int = 5,
    config: AnnounceConfig | None = None,
    verifier: Callable[[x509.Certificate], str] | None = None,
) -> tuple[Node, AnnounceCore]:
    node = hub_node(ca, host)
    core = AnnounceCore(
        config or AnnounceConfig(),
        own_hub(node, host, features, max_clients),
        verifier or CountingVerifier(ca.cert),
    )
    return node, core


def device_core(
    ca: pki_helpers.TestCA,
    config: AnnounceConfig | None = None,
    verifier: Callable[[x509.Certificate], str] | None = None,
) -> AnnounceCore:
    return AnnounceCore(config or AnnounceConfig(), None, verifier or CountingVerifier(ca.cert))
