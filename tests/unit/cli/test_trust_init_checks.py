"""`roost trust init` checks what a CA information file can prove about itself.

One flipped bit anywhere (a signature, a signing key, a DL key, next_url, the CA
certificate, a length or flag) is refused with one line and no trust store; the good file
is accepted and its fingerprint printed. Also `check_standalone` on its own.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from roost.cli.exitcodes import ExitCode
from roost.cli.main import _register, cli
from roost.errors import VerificationError
from roost.pki.authority import Authority
from roost.pki.cainfo import CAInfoBody, check_standalone, decode_cainfo, sign_body
from roost.pki.trust import BUILD_TIME

_register()
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    ca = tmp_path_factory.mktemp("ca") / "ca"
    authority = Authority.init(ca, "https://127.0.0.1:8443/ca/", T0)
    return authority.ca_info_bytes(1)


def trust_init(tmp_path: Path, data: bytes, name: str) -> tuple[int, str, Path]:
    source = tmp_path / f"{name}.bin"
    source.write_bytes(data)
    store = tmp_path / f"store-{name}"
    result = CliRunner().invoke(cli, ["trust", "init", str(store), "--ca-info", str(source)])
    return result.exit_code, result.output, store


def test_every_flipped_byte_is_refused(raw: bytes, tmp_path: Path) -> None:
    info = decode_cainfo(raw)
    url_at = raw.index(info.body.next_url.encode())
    cert_at = raw.index(info.body.ca_cert_der)
    fields = {
        "magic": 0,
        "generation": 8,
        "issued_at": 12,
        "flags": 17,
        "prev_digest": 20,
        "certificate": cert_at + 40,
        "certificate signature": cert_at + len(info.body.ca_cert_der) - 3,
        "next_url scheme": url_at + 2,
        "next_url host": url_at + 10,
        "next_url path": url_at + len(info.body.next_url) - 3,
        "dl_threshold": info.signed_length - 1 - 32 * 3 - 1,
        "dl key": info.signed_length - 20,
        "sig_count": info.signed_length,
        "signing key": info.signed_length + 2,
        "signature": len(raw) - 1,
        "first signature": info.signed_length + 1 + 32 + 10,
    }
    for name, offset in fields.items():
        bad = raw[:offset] + bytes([raw[offset] ^ 0x04]) + raw[offset + 1 :]
        code, output, store = trust_init(tmp_path, bad, name.replace(" ", "-"))
        assert code in (ExitCode.VERIFICATION, ExitCode.PROTOCOL), (name, code, output)
        assert output.startswith("roost: ") and len(output.strip().splitlines()) == 1, output
        assert not store.exists() or not any(store.iterdir()), name
    code, output, store = trust_init(tmp_path, raw, "good")
    assert code == 0 and (store / "trust-store.json").exists()
    assert "fingerprint" in output and info.digest.hex().upper()[:4] in output


def test_refusals_explain_themselves(raw: bytes) -> None:
    info = decode_cainfo(raw)
    flipped_signature = raw[:-1] + bytes([raw[-1] ^ 1])
    with pytest.raises(VerificationError, match="only 1 of its 2 signatures") as raised:
        check_standalone(decode_cainfo(flipped_signature), BUILD_TIME)
    assert raised.value.reason == "threshold-new"
    with pytest.raises(VerificationError, match="expired") as raised:
        check_standalone(info, T0 + dt.timedelta(days=365 * 30))
    assert raised.value.reason == "ca-expired"
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    for url in (
        "https://host:0/ca/2.rcai",
        "https:///2.rcai",
        "https://h/2.rcai?x=1",
        "https://h/a b",
    ):
        body = CAInfoBody(
            1,
            0,
            info.body.flags,
            bytes(32),
            info.body.ca_cert_der,
            url,
            2,
            tuple(k.public_key().public_bytes_raw() for k in keys),
        )
        with pytest.raises(VerificationError) as raised:
            check_standalone(decode_cainfo(sign_body(body, keys)), BUILD_TIME)
        assert raised.value.reason == "bad-url", url
