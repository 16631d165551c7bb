"""The authority's output checked by tools we did not write: `openssl` and `curl`.

PROTOCOL.md section 1 (certificate profiles, node identifiers as SAN URIs) and section 2
("Publication": HTTPS GET of `next_url`, media type, 404 until published). When `CI=true`
the tools are required (tests/conftest.py); elsewhere a missing tool skips with the reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from roost.pki.authority import Authority
from roost.pki.cainfo import MEDIA_TYPE, decode_cainfo
from roost.pki.certs import Role, cert_to_pem
from tests.helpers.tools import require_tool
from tests.helpers.waits import scaled

pytestmark = pytest.mark.real

_HOST = "127.0.0.1"
_SERVER_START_TIMEOUT = scaled(20.0)
_TOOL_TIMEOUT = scaled(20.0)
# Leaves are issued "now" and openssl checks validity against the wall clock; starting a
# few minutes in the past keeps a second's rounding or clock step from failing a check.
_BACKDATE = dt.timedelta(minutes=5)


def _run(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=_TOOL_TIMEOUT)


def _roost(*args: str) -> list[str]:
    # The CLI through the interpreter running the tests, so no installed script is assumed.
    return [sys.executable, "-c", "from roost.cli.main import main; main()", *args]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0) - _BACKDATE


# --------------------------------------------------------------------- issued material


@dataclass(frozen=True)
class Leaf:
    role: Role
    generation: int
    identifier: str | None
    path: Path


@dataclass(frozen=True)
class Issued:
    authority: Authority
    ca_files: dict[int, Path]
    leaves: list[Leaf]
    foreign_ca: Path

    def leaf(self, role: Role, generation: int) -> Leaf:
        return next(x for x in self.leaves if x.role is role and x.generation == generation)


_ROLES = (Role.HUB, Role.DEVICE, Role.DOWNLOAD, Role.BROKER)
_NAMES: dict[Role, dict[str, tuple[str, ...]]] = {
    Role.HUB: {"ips": (_HOST,)},
    Role.DEVICE: {},
    Role.DOWNLOAD: {"ips": (_HOST,)},
    Role.BROKER: {"dns": ("broker.roost.test",), "ips": (_HOST,)},
}


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    """Every role under generation 1, a roll, every role under generation 2."""
    root = tmp_path_factory.mktemp("interop")
    at = _now()
    authority = Authority.init(root / "authority", f"https://{_HOST}:8443/ca/", at)
    leaves: list[Leaf] = []

    def issue_all(generation: int) -> None:
        for role in _ROLES:
            leaf = authority.issue(role, at, generation=generation, **_NAMES[role])
            path = root / f"{role.value}-{generation}.pem"
            path.write_bytes(cert_to_pem(leaf.cert))
            leaves.append(Leaf(role, generation, leaf.identifier, path))

    issue_all(1)
    authority.roll(at)
    authority.activate()
    issue_all(2)

    ca_files = {}
    for generation in (1, 2):
        ca_files[generation] = root / f"ca-{generation}.pem"
        ca_files[generation].write_bytes(cert_to_pem(authority.ca_cert(generation)))
    # Another authority's generation 1 has the very same subject name, so only its key
    # (key identifier and signature) tells the two apart.
    foreign = Authority.init(root / "foreign", f"https://{_HOST}:8443/ca/", at)
    foreign_ca = root / "foreign-ca-1.pem"
    foreign_ca.write_bytes(cert_to_pem(foreign.ca_cert(1)))
    return Issued(authority, ca_files, leaves, foreign_ca)


def _verify(ca: Path, leaf: Path, purpose: str) -> subprocess.CompletedProcess[bytes]:
    openssl = require_tool("openssl")
    return _run(
        openssl, "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(ca), str(leaf)
    )


# ----------------------------------------------------------------------- (a) openssl verify


@pytest.mark.parametrize("generation", [1, 2])
@pytest.mark.parametrize("role", _ROLES, ids=lambda r: r.value)
def test_openssl_verify_accepts_every_issued_certificate(
    issued: Issued, role: Role, generation: int
) -> None:
    leaf = issued.leaf(role, generation)
    done = _verify(issued.ca_files[generation], leaf.path, "sslserver")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.decode().strip() == f"{leaf.path}: OK"


@pytest.mark.parametrize("generation", [1, 2])
@pytest.mark.parametrize("role", [Role.HUB, Role.DEVICE, Role.BROKER], ids=lambda r: r.value)
def test_openssl_accepts_hubs_devices_and_brokers_as_clients(
    issued: Issued, role: Role, generation: int
) -> None:
    # Section 1 table: hubs, devices and brokers (to each other, on the node link) carry
    # both serverAuth and clientAuth.
    done = _verify(issued.ca_files[generation], issued.leaf(role, generation).path, "sslclient")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("role", [Role.DOWNLOAD], ids=lambda r: r.value)
def test_openssl_refuses_download_servers_as_clients(issued: Issued, role: Role) -> None:
    # Section 1 table: download servers are serverAuth only.
    done = _verify(issued.ca_files[1], issued.leaf(role, 1).path, "sslclient")
    assert done.returncode != 0
    assert b"unsuitable certificate purpose" in done.stdout + done.stderr


def test_openssl_verifies_the_download_server_of_generation_2_under_ca_1(issued: Issued) -> None:
    dl_cert, _ = issued.authority.download_credentials(2)
    assert _verify(issued.ca_files[1], dl_cert, "sslserver").returncode == 0
    assert _verify(issued.ca_files[2], dl_cert, "sslserver").returncode != 0


@pytest.mark.parametrize(("leaf_gen", "ca_gen"), [(1, 2), (2, 1)])
def test_openssl_rejects_a_leaf_against_the_other_generation(
    issued: Issued, leaf_gen: int, ca_gen: int
) -> None:
    done = _verify(issued.ca_files[ca_gen], issued.leaf(Role.HUB, leaf_gen).path, "sslserver")
    assert done.returncode != 0
    assert b"unable to get local issuer certificate" in done.stdout + done.stderr


def test_openssl_rejects_a_leaf_against_a_same_named_foreign_ca(issued: Issued) -> None:
    done = _verify(issued.foreign_ca, issued.leaf(Role.HUB, 1).path, "sslserver")
    assert done.returncode != 0
    # OpenSSL matches the leaf's authority key identifier before it checks any signature,
    # so a same-named CA with another key is not even taken as a candidate issuer.
    assert b"unable to get local issuer certificate" in done.stdout + done.stderr


@pytest.mark.parametrize("generation", [1, 2])
def test_openssl_sees_each_ca_as_a_pathlen_0_authority(issued: Issued, generation: int) -> None:
    openssl = require_tool("openssl")
    ca = issued.ca_files[generation]
    assert _verify(ca, ca, "any").returncode == 0
    text = _run(openssl, "x509", "-noout", "-text", "-in", str(ca)).stdout.decode()
    assert "CA:TRUE, pathlen:0" in text
    assert f"CN = Roost CA generation {generation}" in text


# ----------------------------------------------------------------- (c) openssl x509 -text


def _identifier_by_openssl(prefix: str, cert: Path) -> str:
    """Section 1's identifier, computed from openssl's own SPKI DER and SHA-256."""
    openssl = require_tool("openssl")
    pub = _run(openssl, "x509", "-noout", "-pubkey", "-in", str(cert))
    assert pub.returncode == 0, pub.stderr
    der = _run(openssl, "pkey", "-pubin", "-outform", "DER", stdin=pub.stdout)
    assert der.returncode == 0, der.stderr
    digest = _run(openssl, "dgst", "-sha256", "-binary", stdin=der.stdout).stdout
    assert digest == hashlib.sha256(der.stdout).digest()
    return prefix + base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


@pytest.mark.parametrize(("role", "prefix"), [(Role.HUB, "hcsp:"), (Role.DEVICE, "ab:")])
def test_openssl_text_shows_the_node_identifier_as_san_uri(
    issued: Issued, role: Role, prefix: str
) -> None:
    openssl = require_tool("openssl")
    leaf = issued.leaf(role, 1)
    assert leaf.identifier is not None
    assert leaf.identifier.startswith(prefix)
    assert len(leaf.identifier) == len(prefix) + 22
    done = _run(openssl, "x509", "-noout", "-text", "-in", str(leaf.path))
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "X509v3 Subject Alternative Name" in text
    assert f"URI:{leaf.identifier}" in text
    assert leaf.identifier == _identifier_by_openssl(prefix, leaf.path)
    if role is Role.HUB:
        assert f"IP Address:{_HOST}" in text


# -------------------------------------------------------------- (b) curl against ca serve


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _cli(*args: str, cwd: Path) -> dict[str, object]:
    done = subprocess.run(_roost(*args), cwd=cwd, capture_output=True, timeout=_TOOL_TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()
    return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The server's first stdout line, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(left) or proc.poll() is not None:
                return proc.stdout.readline()
    return b""


@dataclass(frozen=True)
class Served:
    directory: Path
    base: str


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`roost ca init` + `roost ca roll`, then `roost ca serve` as a real subprocess."""
    require_tool("curl")
    port = _free_port()
    directory = tmp_path / "authority"
    _cli("ca", "init", str(directory), "--publish-url", f"https://{_HOST}:{port}/ca/", cwd=tmp_path)
    _cli("ca", "roll", str(directory), cwd=tmp_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        _roost("ca", "serve", str(directory), "--listen", f"{_HOST}:{port}"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        line = _read_line(proc, _SERVER_START_TIMEOUT)
        if not line:
            proc.kill()
            _, err = proc.communicate(timeout=_TOOL_TIMEOUT)
            pytest.fail(f"`roost ca serve` did not start: {err.decode(errors='replace')}")
        announced = json.loads(line)
        assert announced["serving"] == f"https://{_HOST}:{port}/"
        assert announced["generations"] == [2]
        yield Served(directory, f"https://{_HOST}:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _curl(cacert: Path, url: str, out: Path) -> subprocess.CompletedProcess[bytes]:
    curl = require_tool("curl")
    # -q ignores any ~/.curlrc and --noproxy keeps a proxy in the environment off loopback.
    return _run(
        curl,
        "-q",
        "--silent",
        "--show-error",
        "--noproxy",
        "*",
        "--max-time",
        "10",
        "--tlsv1.3",
        "--cacert",
        str(cacert),
        "--output",
        str(out),
        "--write-out",
        "%{http_code} %{content_type}",
        url,
    )


def test_curl_fetches_generation_2_from_roost_ca_serve(served: Served, tmp_path: Path) -> None:
    ca1 = served.directory / "gen-1" / "ca-cert.pem"
    info1 = decode_cainfo((served.directory / "gen-1" / "ca-info.bin").read_bytes())
    # The URL is exactly the one generation 1 names as where generation 2 is published.
    url = info1.body.next_url
    assert url == f"{served.base}/ca/2.rcai"
    out = tmp_path / "2.rcai"
    done = _curl(ca1, url, out)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == f"200 {MEDIA_TYPE}"
    assert out.read_bytes() == (served.directory / "gen-2" / "ca-info.bin").read_bytes()
    assert decode_cainfo(out.read_bytes()).body.prev_digest == info1.digest


def test_curl_gets_404_for_a_generation_not_yet_published(served: Served, tmp_path: Path) -> None:
    ca1 = served.directory / "gen-1" / "ca-cert.pem"
    out = tmp_path / "3.rcai"
    done = _curl(ca1, f"{served.base}/ca/3.rcai", out)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split(" ")[0] == "404"
    # A roll while the server runs publishes generation 3 without a restart.
    _cli("ca", "roll", str(served.directory), cwd=tmp_path)
    done = _curl(ca1, f"{served.base}/ca/3.rcai", out)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == f"200 {MEDIA_TYPE}"
    assert out.read_bytes() == (served.directory / "gen-3" / "ca-info.bin").read_bytes()


def test_curl_refuses_the_download_server_under_the_wrong_ca(
    served: Served, tmp_path: Path
) -> None:
    # Section 2: the download server for generation 2 is certified by CA 1, not CA 2.
    ca2 = served.directory / "gen-2" / "ca-cert.pem"
    done = _curl(ca2, f"{served.base}/ca/2.rcai", tmp_path / "never")
    assert done.returncode == 60, done.stderr.decode()
    assert not (tmp_path / "never").exists()
