"""`roost demo` end to end, and a real TLS peer (`openssl s_client`) against a hub."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.home import LoopbackHome
from tests.helpers.tools import require_tool

pytestmark = pytest.mark.timeout(180)


@pytest.mark.slow
def test_demo_runs_and_accounts_for_every_frame() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roost", "demo"],
        capture_output=True,
        text=True,
        timeout=150,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Every frame accounted for" in result.stdout
    assert "rejected (chain)" in result.stdout


@pytest.mark.real
def test_openssl_s_client_with_device_certificate_reaches_hub(tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    home = LoopbackHome(tmp_path / "home", hubs=1, devices=1)
    try:
        home.start("hub-1")
        home.wait_for("hub-1 API", lambda: home.hub_status(1) is not None, 20)
        # The hub binds port 0 and reports the bound device-channel port in run.json.
        listen = "{}:{}".format(*home.wait_bound(1).listen)
        device = tmp_path / "home" / "device-1"
        ca = tmp_path / "home" / "ca" / "gen-1" / "ca-cert.pem"
        result = subprocess.run(
            [
                openssl,
                "s_client",
                "-connect",
                listen,
                "-tls1_3",
                "-cert",
                str(device / "cert.pem"),
                "-key",
                str(device / "key.pem"),
                "-CAfile",
                str(ca),
                "-verify_return_error",
                "-brief",
            ],
            input=b"",
            capture_output=True,
            timeout=20,
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        assert "Verification: OK" in output, output
        assert "TLSv1.3" in output, output
        # Without a client certificate the hub refuses (mutual TLS). In TLS 1.3 the
        # refusal is an alert after the client's Finished, so read to see it.
        host, port = listen.rsplit(":", 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(ca))
        ctx.verify_flags |= 0x200000
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            ctx.wrap_socket(raw) as tls,
            pytest.raises((ssl.SSLError, ConnectionError)),
        ):
            if tls.recv(1) == b"":
                raise ConnectionError("closed without a welcome")
    finally:
        home.close()
