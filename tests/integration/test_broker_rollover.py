"""An emergency CA roll in a home with a broker, as real processes on loopback (issue 9,
"Rollover"): after `roost ca roll --revoke-current` and new certificates from the new
generation, the broker, the hub and the issuer all follow, `roost connect` still brings
frames, and a broker presenting its certificate of the revoked generation is refused.

The daemons read their own certificate at start, so an operator restarts each after
installing its new one; at start each polls `roost ca serve` and takes the new generation
(`run_until_signalled` polls at once). The issuer's store follows with `roost trust update`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from roost.cli.common import now_utc
from roost.cli.exitcodes import ExitCode
from roost.cli.home import make_home
from roost.errors import VerificationError
from roost.files import atomic_write
from roost.pki.authority import Authority
from roost.pki.certs import Role, cert_to_pem, certs_from_pem, identifier_of, key_to_pem
from roost.pki.download import DownloadServer, download_tls_context
from roost.pki.updater import TrustUpdater
from tests.helpers.waits import time_unit, wait_until
from tests.integration.test_connect import Site, add_owner, roost

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _ok(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout) if done.stdout.startswith("{") else {}
    return summary


class RollingSite(Site):
    """The connect site plus the authority's download server (`roost ca serve`)."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.downloads: subprocess.Popen[bytes] | None = None

    def serve_downloads(self) -> None:
        log = (self.home.path / "ca-serve.log").open("ab")
        self.downloads = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roost",
                "ca",
                "serve",
                str(self.home.path / "ca"),
                "--listen",
                str(self.home.summary["download_server"]),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_until(
            lambda: "serving" in (self.home.path / "ca-serve.log").read_text(),
            20,
            what="the download server",
        )

    def stop_broker(self) -> None:
        assert self.broker is not None
        self.broker.send_signal(signal.SIGTERM)
        try:
            self.broker.wait(timeout=10 * time_unit())
        except subprocess.TimeoutExpired:
            self.broker.kill()
            self.broker.wait()
        self.broker = None

    def reissue(self, name: str, role: str, *ips: str) -> None:
        """Issue `name` a certificate of the active generation and install it in place."""
        fresh = self.base / f"new-{name}"
        options = [arg for ip in ips for arg in ("--ip", ip)]
        _ok(
            roost(
                "ca",
                "issue",
                str(self.home.path / "ca"),
                "--role",
                role,
                "--out",
                str(fresh),
                *options,
            )
        )
        for file in ("cert.pem", "key.pem", "ca-info.bin"):
            shutil.copy(fresh / file, self.home.path / name / file)

    def generation(self, store: Path) -> int:
        current: int = _ok(roost("trust", "status", str(store), "--json"))["current"]
        return current

    def close(self) -> None:
        super().close()
        if self.downloads is not None:
            self.downloads.kill()
            self.downloads.wait()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RollingSite]:
    base = tmp_path_factory.mktemp("rollover")
    built = RollingSite(base)
    try:
        _ok(add_owner(built.home.path / "hub-1", "owner", base / "owner.card"))
        ca_info = built.home.path / "device-1" / "ca-info.bin"
        _ok(roost("trust", "init", str(base / "owner-trust"), "--ca-info", str(ca_info)))
        built.start_broker()
        built.home.start("hub-1")
        built.home.start("device-1")
        yield built
    finally:
        built.close()


def _wait_connected(site: RollingSite, hub_id: str) -> None:
    home = site.home
    home.wait_for(
        "camera streaming to the hub",
        lambda: (
            (home.device_status(1) or {}).get("hub") == hub_id
            and (home.device_status(1) or {}).get("state") == "streaming"
        ),
        40,
    )
    home.wait_for(
        "the hub registered with the broker",
        lambda: (site.hub_broker() or {}).get("acks", 0) >= 1,
        30,
    )


def test_after_an_emergency_roll_everything_follows_and_the_old_broker_is_refused(
    site: RollingSite,
) -> None:
    home = site.home
    _wait_connected(site, home.hub_id(1))
    before = _ok(site.connect(None, "--frames", "1", "--out", "before"))
    assert before["frames"] == 1

    # CA 1 is compromised: generation 2 revokes it and issuing moves to it at once.
    rolled = _ok(roost("ca", "roll", str(home.path / "ca"), "--revoke-current"))
    assert rolled["generation"] == 2 and rolled["revokes_previous"] and rolled["active"] == 2
    # `roost ca serve` has nothing to serve before the first roll; it starts now.
    site.serve_downloads()
    # Whoever holds CA 1's key can still issue a broker certificate under it.
    revoked = site.base / "revoked-broker"
    stolen = Authority.load(home.path / "ca").issue(
        Role.BROKER, now_utc(), ips=["127.0.0.1"], generation=1
    )
    atomic_write(revoked / "cert.pem", cert_to_pem(stolen.cert))
    atomic_write(revoked / "key.pem", key_to_pem(stolen.key), mode=0o600)

    # The operator installs certificates of generation 2 and restarts each daemon (none
    # reloads its own certificate while running); each takes generation 2 from the
    # download server at start.
    site.stop_broker()
    home.stop("device-1")
    home.stop("hub-1")
    site.reissue("broker", "broker", "127.0.0.1")
    site.reissue("hub-1", "hub", "127.0.0.1")
    site.reissue("device-1", "device")
    new_hub = identifier_of(certs_from_pem((home.path / "hub-1" / "cert.pem").read_bytes())[0])
    assert new_hub != home.hub_id(1)
    site.start_broker()
    home.start("hub-1")
    home.start("device-1")
    _wait_connected(site, new_hub)
    for node in ("broker", "hub-1", "device-1"):
        assert site.generation(home.path / node / "trust") == 2, node

    # The issuer's store follows with one update; then the brokered session works.
    assert site.generation(site.base / "owner-trust") == 1
    _ok(roost("trust", "update", str(site.base / "owner-trust")))
    assert site.generation(site.base / "owner-trust") == 2
    after = _ok(site.connect(new_hub, "--frames", "2", "--out", "after"))
    assert after["frames"] == 2 and after["receipt"]["size"] > 0

    # A broker presenting its certificate of the revoked generation: the issuer refuses it.
    site.stop_broker()
    config = (home.path / "broker.toml").read_text()
    old = config.replace('"broker/cert.pem"', f'"{revoked}/cert.pem"').replace(
        '"broker/key.pem"', f'"{revoked}/key.pem"'
    )
    assert old != config
    (home.path / "broker.toml").write_text(old)
    try:
        site.start_broker()
        refused = site.connect(new_hub)
    finally:
        (home.path / "broker.toml").write_text(config)
    assert refused.returncode == ExitCode.VERIFICATION, refused.stderr
    assert "not trusted" in refused.stderr and "[chain]" in refused.stderr
    assert "Traceback" not in refused.stderr


async def test_a_node_given_a_certificate_of_a_newer_generation_fetches_it_first(
    tmp_path: Path,
) -> None:
    # `roost hub run` and `roost device run` check their own certificate at start; after
    # an emergency roll it is of a generation their store does not hold yet.
    summary = make_home(tmp_path / "home", hubs=1, devices=0, loopback=True)
    authority = Authority.load(tmp_path / "home" / "ca")
    authority.roll(now_utc(), revoke_current=True)
    leaf = authority.issue(Role.HUB, now_utc(), ips=["127.0.0.1"]).cert
    trust = TrustUpdater(tmp_path / "home" / "hub-1" / "trust")
    with pytest.raises(VerificationError):
        trust.state.verify_node(leaf)
    runner = web.AppRunner(DownloadServer(authority).app, access_log=None)
    await runner.setup()
    host, port = str(summary["download_server"]).rsplit(":", 1)
    await web.TCPSite(runner, host, int(port), ssl_context=download_tls_context(authority)).start()
    try:
        await trust.follow_own_certificate(leaf, 0.0)
    finally:
        await runner.cleanup()
    assert trust.state.current.generation == 2 and trust.state.prepared is None
    trust.state.verify_node(leaf)
    # A certificate the store already verifies fetches nothing.
    again = TrustUpdater(tmp_path / "home" / "hub-1" / "trust")
    await again.follow_own_certificate(leaf, 0.0)
    assert again.state == trust.state and sum(again.rejected.values()) == 0
