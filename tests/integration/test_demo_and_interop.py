"""`roost demo` end to end, and a real TLS peer (`openssl s_client`) against a hub."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.home import LoopbackHome
from tests.helpers.tools import require_netns, require_tool

pytestmark = pytest.mark.timeout(180)


@pytest.mark.slow
def test_demo_runs_and_accounts_for_every_frame(tmp_path: Path) -> None:
    env = {"COLUMNS": "120", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    # The demo runs the checkout's own code, and so does its remote viewer.
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "roost", "demo", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Rich wraps lines at the terminal width; the checks read the words.
    out = " ".join(result.stdout.split())
    assert "Every frame accounted for" in out
    assert "rejected (chain)" in out
    # The demo says where hub A's dashboard is and how to log in to it.
    assert re.search(r"Hub A's dashboard: https://127\.0\.0\.1:\d+/", out), out
    assert "Log in as owner, password demo owner password" in out
    assert (tmp_path / "act-2" / "owner-card.txt").read_text().count("\n") >= 3
    # Act 3: the remote viewer reached hub A through the broker and saved live frames.
    assert "act 3: a remote viewer through the broker" in out
    assert re.search(r"then path (direct|relay) \(started on (direct|relay)\)", out), out
    assert re.search(r"setup_ms \d+, rtt_ms [\d.]+", out), out
    assert re.search(r"3 live frames of \S+ saved", out), out
    assert re.search(r"receipt \(leaf \d+, log size \d+\) verifies", out), out
    frames = sorted((tmp_path / "act-2" / "viewer-frames").glob("*.jpg"))
    assert len(frames) == 3
    assert all(frame.read_bytes().startswith(b"\xff\xd8") for frame in frames)
    namespace = re.search(r"network namespace roost-demo-([0-9a-f]+)-v", out)
    if os.environ.get("CI") == "true" and os.geteuid() == 0:
        assert namespace is not None, out
    if namespace is None:
        assert "The viewer runs on loopback (" in out, out
        return
    # The demo removes its namespaces (and the veth with them) on the way out.
    tag = namespace.group(1)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
    assert f"roost-demo-{tag}-" not in listed.stdout
    veth = subprocess.run(["ip", "link", "show", f"rdemo{tag}"], capture_output=True, timeout=20)
    assert veth.returncode != 0


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


@pytest.mark.netns
def test_demo_net_puts_the_viewer_behind_a_nat_and_always_removes_it() -> None:
    from roost.cli.demo_net import DemoNet, demo_net_unavailable

    require_netns()
    reason = demo_net_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with DemoNet() as net:
        made = net.namespaces()
        assert made == [net.router, net.viewer]
        # The public side listens in this namespace; the viewer's datagram arrives from the
        # router's WAN address (MASQUERADE), and the reply finds its way back through it.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as public:
            public.bind((net.public_ip, 0))
            public.settimeout(10)
            port = public.getsockname()[1]
            script = (
                "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                "s.settimeout(10);s.bind(('0.0.0.0',40000));"
                f"s.sendto(b'hello',('{net.public_ip}',{port}));"
                "sys.stdout.write(s.recvfrom(64)[0].decode())"
            )
            viewer = subprocess.Popen(
                net.viewer_command([sys.executable, "-c", script]),
                stdout=subprocess.PIPE,
                text=True,
            )
            data, source = public.recvfrom(64)
            public.sendto(b"welcome", source)
            stdout, _ = viewer.communicate(timeout=20)
        assert data == b"hello"
        assert source[0] == net.router_wan_ip
        assert stdout == "welcome"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
    assert not any(ns in listed.stdout for ns in made)
    # A failure inside the block removes everything too.
    with pytest.raises(RuntimeError, match="inside"), DemoNet() as net:
        made = net.namespaces()
        raise RuntimeError("a failure inside")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
    assert not any(ns in listed.stdout for ns in made)
    veth = subprocess.run(["ip", "link", "show", f"rdemo{net.tag}"], capture_output=True)
    assert veth.returncode != 0
