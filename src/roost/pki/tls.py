"""TLS 1.3 contexts as PROTOCOL.md section 1 prescribes.

OpenSSL checks the chain during the handshake but not time (a clockless node cannot), and
not host names (nodes are known by identifier); the peer certificate is then checked again
with `cryptography.x509.verification` at the trust store's validation time.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from roost.errors import TransportError
from roost.pki.certs import load_certificate

__all__ = ["ReloadableServerContext", "client_context", "peer_certificate", "server_context"]

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: expiry is enforced against the time floor instead.
X509_V_FLAG_NO_CHECK_TIME = 0x200000


def _anchors_pem(anchors: Sequence[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in anchors)


def _harden(ctx: ssl.SSLContext, anchors: Sequence[x509.Certificate]) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if anchors:
        ctx.load_verify_locations(cadata=_anchors_pem(anchors))
        ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME


def client_context(
    anchors: Sequence[x509.Certificate],
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext:
    """A client context trusting `anchors` (both slots), optionally presenting a certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _harden(ctx, anchors)
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def server_context(
    cert_file: Path,
    key_file: Path,
    client_anchors: Sequence[x509.Certificate] = (),
    *,
    optional_client_cert: bool = False,
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """A server context; with `client_anchors` it requires a client certificate (mutual TLS).

    With `optional_client_cert` a client may present none (the broker's issuers, PROTOCOL.md
    section 5); one it does present must still chain to `client_anchors`. `alpn` lists
    application protocols a client may select (a hub's peer dashboard requests); a client
    offering none gets the listener's default protocol.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    _harden(ctx, client_anchors)
    ctx.load_cert_chain(cert_file, key_file)
    if not client_anchors:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_OPTIONAL if optional_client_cert else ssl.CERT_REQUIRED
    return ctx


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> x509.Certificate:
    """The leaf the peer presented, parsed; TransportError when there is none."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise TransportError("peer presented no certificate", reason="no-peer-cert")
    return load_certificate(der)


class ReloadableServerContext:
    """A server context whose certificate and trusted anchors can change while listening.

    `asyncio` servers keep the context they started with; OpenSSL's servername callback
    runs for every handshake (with or without SNI), so it swaps in the newest inner
    context. Promotions of the trust store thus reach new connections at once.
    """

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        client_anchors: Sequence[x509.Certificate],
        *,
        optional_client_cert: bool = False,
        alpn: Sequence[str] = (),
    ) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self._optional = optional_client_cert
        self._alpn = tuple(alpn)
        self._inner = self._build(client_anchors)
        self.outer = self._build(client_anchors)
        self.outer.sni_callback = self._pick

    def _build(self, client_anchors: Sequence[x509.Certificate]) -> ssl.SSLContext:
        return server_context(
            self._cert_file,
            self._key_file,
            client_anchors,
            optional_client_cert=self._optional,
            alpn=self._alpn,
        )

    def _pick(self, ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        ssl_object.context = self._inner

    def update(self, client_anchors: Sequence[x509.Certificate]) -> None:
        self._inner = self._build(client_anchors)
