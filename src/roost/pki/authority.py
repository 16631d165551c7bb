"""The authority: CA generations, CA information, issuing (seed FIG. 4–6, steps S501–S511).

State lives in one directory:

    authority.json          settings and the generation table (replaced atomically)
    index.sqlite3           every certificate ever issued
    gen-N/ca-key.pem        CA N private key (0600)
    gen-N/ca-cert.pem       CA N certificate
    gen-N/ca-info.bin       CA information N
    gen-N/download-*.pem    the certificate (issued by CA N-1) of the server publishing N
    dl-keys/<hex>.key       Ed25519 DL private keys (0600), named by public key

Time is always an argument (`at`); the CLI passes the wall clock or `--at`.

A generation appears whole or not at all (PROTOCOL.md section 2, "persists every change
atomically"): it is written into a hidden staging directory ``.gen-N.tmp-PID`` beside the
others, every file and the directory fsynced, renamed to ``gen-N`` and the parent fsynced;
saving authority.json with the new record is the commit. A crash before the commit leaves
a staging directory, or a ``gen-N`` that authority.json does not list; nothing reads
either, and the next roll clears them before it starts. Two things may outlive such a
crash on purpose: a DL key set generated for the interrupted roll (``dl-keys/``, never
referenced), and the index row of the download certificate it had CA N-1 sign, because the
index records every certificate ever signed.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from roost.errors import StateError
from roost.files import atomic_write, fsync_directory
from roost.pki.cainfo import CAInfo, CAInfoBody, Flags, decode_cainfo, sign_body
from roost.pki.certs import (
    LeafRequest,
    Role,
    cert_to_pem,
    certs_from_pem,
    generate_key,
    issue_leaf,
    key_from_pem,
    key_to_pem,
    make_ca,
)
from roost.statelock import LOCK_NAME

__all__ = [
    "Authority",
    "GenerationRecord",
    "IssuedLeaf",
    "Settings",
    "check_publish_url",
    "describe_time",
]

_SETTINGS = "authority.json"
_INDEX = "index.sqlite3"
_YEAR = dt.timedelta(days=365)
_LEAF_BACKDATE = dt.timedelta(hours=1)
# X.509 GeneralizedTime ends with the year 9999.
_LAST_TIME = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
# Directories a generation passes through before it is committed, and ``gen-N`` itself.
_STAGING_PREFIX = ".gen-"
_GENERATION_DIR = re.compile(r"gen-([1-9][0-9]*)")


@dataclass
class GenerationRecord:
    """One row of the generation table kept in authority.json."""

    generation: int
    not_before: str
    not_after: str
    revokes_previous: bool = False
    published: bool = True
    dl_keys: list[str] = field(default_factory=list)
    # Set when a late `roost ca tick` made this generation (roost.pki.schedule).
    publish_until: str | None = None

    @property
    def publish_until_time(self) -> dt.datetime | None:
        return None if self.publish_until is None else dt.datetime.fromisoformat(self.publish_until)

    @property
    def not_after_time(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.not_after)


@dataclass
class Settings:
    publish_url: str
    dl_threshold: int
    validity_years: int
    lead_years: int
    leaf_validity_days: int
    active: int
    generations: list[GenerationRecord]

    def record(self, generation: int) -> GenerationRecord:
        for rec in self.generations:
            if rec.generation == generation:
                return rec
        raise StateError(f"generation {generation} does not exist", reason="missing")

    @property
    def newest(self) -> int:
        return max(r.generation for r in self.generations)


@dataclass(frozen=True, slots=True)
class IssuedLeaf:
    role: Role
    identifier: str | None
    generation: int
    serial: int
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    ca_info: bytes


def _write_private(path: Path, data: bytes) -> None:
    if path.exists():
        raise StateError(f"refusing to overwrite {path}", reason="exists")
    atomic_write(path, data, mode=0o600)


def _write_new(path: Path, data: bytes) -> None:
    if path.exists():
        raise StateError(f"refusing to overwrite {path}", reason="exists")
    atomic_write(path, data)


def check_publish_url(url: str) -> None:
    """Raise StateError unless `url` can be the base of every generation's next_url."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise StateError(f"{url!r} is not a URL: {exc}", reason="bad-url") from exc
    if parts.scheme != "https" or not parts.hostname:
        raise StateError(
            f"the publish URL {url!r} must be https://HOST[:PORT]/PATH", reason="bad-url"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise StateError(
            f"the publish URL {url!r} may not carry a query, fragment or user", reason="bad-url"
        )
    if port == 0 or any(c.isspace() or ord(c) < 0x20 for c in url):
        raise StateError(f"the publish URL {url!r} has a bad port or character", reason="bad-url")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def describe_time(at: dt.datetime) -> str:
    """A time as people read it in messages: ``2046-01-01 00:00 UTC``."""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


_when = describe_time


class Authority:
    """Operations on an authority directory; every method validates before it writes."""

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings
        # Inside `transaction()`, saves wait for its end: several steps, one commit.
        self._deferred = False
        self._dirty = False

    # ----------------------------------------------------------------- set-up and loading

    @classmethod
    def init(
        cls,
        directory: Path,
        publish_url: str,
        at: dt.datetime,
        dl_keys: int = 3,
        dl_threshold: int = 2,
        validity_years: int = 20,
        lead_years: int = 5,
        leaf_validity_days: int = 3650,
    ) -> Authority:
        """Create generation 1 (S501): CA key and certificate, DL key set, CA information 1."""
        if (directory / _SETTINGS).exists():
            raise StateError(f"{directory} already holds an authority", reason="exists")
        check_publish_url(publish_url)
        if not 1 <= dl_threshold <= dl_keys <= 255:
            raise StateError("need 1 <= --dl-threshold <= --dl-keys <= 255", reason="bad-args")
        if not 0 < lead_years < validity_years <= 100:
            raise StateError("need 0 < --lead-years < --validity-years <= 100", reason="bad-args")
        if leaf_validity_days < 1:
            raise StateError("leaf certificates need at least one day", reason="bad-args")
        if at + validity_years * _YEAR > _LAST_TIME:
            raise StateError(
                f"a CA made at {_when(at)} would outlive the year 9999", reason="bad-args"
            )
        directory.mkdir(parents=True, exist_ok=True)
        # The lock `roost ca` commands hold while they write (roost.statelock) may be there.
        if any(p.name not in (".gitkeep", LOCK_NAME) for p in directory.iterdir()):
            raise StateError(f"{directory} is not empty", reason="exists")
        publish_url = publish_url if publish_url.endswith("/") else publish_url + "/"
        settings = Settings(
            publish_url, dl_threshold, validity_years, lead_years, leaf_validity_days, 1, []
        )
        authority = cls(directory, settings)
        authority._index_connect().close()
        keys = authority._new_dl_keys(dl_keys)
        authority._create_generation(1, at, revokes_previous=False, new_dl_keys=keys)
        return authority

    @classmethod
    def load(cls, directory: Path) -> Authority:
        path = directory / _SETTINGS
        try:
            raw = json.loads(path.read_bytes())
            gens = [GenerationRecord(**g) for g in raw.pop("generations")]
            settings = Settings(generations=gens, **raw)
        except FileNotFoundError as exc:
            raise StateError(
                f"{directory} holds no authority (run `roost ca init`)", reason="missing"
            ) from exc
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise StateError(f"{path} is corrupt: {exc}", reason="corrupt") from exc
        return cls(directory, settings)

    def _save(self) -> None:
        if self._deferred:
            self._dirty = True
            return
        doc = asdict(self.settings)
        atomic_write(self.directory / _SETTINGS, json.dumps(doc, indent=2).encode("utf-8"))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Several changes, one commit: authority.json is saved once, at the end.

        If anything inside raises, the generation table in memory goes back to what it was
        and generation directories written meanwhile are removed (they are unrecorded, so
        readers already ignore them), so a failed `roost ca tick` changes nothing that
        counts. The index keeps rows of certificates signed meanwhile (it records every
        certificate ever signed), and DL keys made meanwhile stay unused in dl-keys/.
        """
        if self._deferred:
            yield
            return
        saved = copy.deepcopy(self.settings)
        self._deferred, self._dirty = True, False
        try:
            yield
        except BaseException:
            self.settings = saved
            self._deferred = False
            with contextlib.suppress(OSError):
                self.discard_interrupted()
            raise
        self._deferred = False
        if self._dirty:
            self._save()

    # --------------------------------------------------------------------- key material

    def _gen_dir(self, generation: int) -> Path:
        return self.directory / f"gen-{generation}"

    def _new_dl_keys(self, count: int) -> list[Ed25519PrivateKey]:
        keys = [Ed25519PrivateKey.generate() for _ in range(count)]
        for key in keys:
            name = key.public_key().public_bytes_raw().hex()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_private(self.directory / "dl-keys" / f"{name}.key", pem)
        return keys

    def _dl_key(self, public_hex: str) -> Ed25519PrivateKey:
        data = (self.directory / "dl-keys" / f"{public_hex}.key").read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise StateError(f"DL key {public_hex} is not Ed25519", reason="corrupt")
        return key

    def ca_key(self, generation: int) -> ec.EllipticCurvePrivateKey:
        return key_from_pem((self._gen_dir(generation) / "ca-key.pem").read_bytes())

    def ca_cert(self, generation: int) -> x509.Certificate:
        return certs_from_pem((self._gen_dir(generation) / "ca-cert.pem").read_bytes())[0]

    def ca_info_bytes(self, generation: int) -> bytes:
        return (self._gen_dir(generation) / "ca-info.bin").read_bytes()

    def ca_info(self, generation: int) -> CAInfo:
        return decode_cainfo(self.ca_info_bytes(generation))

    def next_url(self, generation: int) -> str:
        """Where CA information `generation + 1` is published (section 2, next_url)."""
        return f"{self.settings.publish_url}{generation + 1}.rcai"

    def publish_path(self, generation: int) -> str:
        return urlsplit(self.next_url(generation - 1)).path

    # ------------------------------------------------------------------------ generations

    def _create_generation(
        self,
        generation: int,
        at: dt.datetime,
        revokes_previous: bool,
        new_dl_keys: Sequence[Ed25519PrivateKey] | None,
        activate: bool = False,
        publish_until: dt.datetime | None = None,
    ) -> CAInfo:
        self.discard_interrupted()
        gen_dir = self._gen_dir(generation)
        if gen_dir.exists():
            raise StateError(f"generation {generation} already exists", reason="exists")
        previous = self.settings.record(generation - 1) if generation > 1 else None
        if new_dl_keys is not None:
            dl_keys = list(new_dl_keys)
        else:
            assert previous is not None
            dl_keys = [self._dl_key(h) for h in previous.dl_keys]
        not_after = at + self.settings.validity_years * _YEAR
        ca_key = generate_key()
        ca_cert = make_ca(ca_key, generation, at, not_after)
        body = CAInfoBody(
            generation=generation,
            issued_at=int(at.timestamp()),
            flags=Flags.REVOKES_PREVIOUS if revokes_previous else Flags.NONE,
            prev_digest=self.ca_info(generation - 1).digest if previous else bytes(32),
            ca_cert_der=ca_cert.public_bytes(serialization.Encoding.DER),
            next_url=self.next_url(generation),
            dl_threshold=self.settings.dl_threshold,
            dl_keys=tuple(k.public_key().public_bytes_raw() for k in dl_keys),
        )
        # Section 2: N+1 carries a threshold of N's DL keys and a threshold of its own.
        signers: dict[bytes, Ed25519PrivateKey] = {}
        if previous is not None:
            for h in previous.dl_keys[: self.settings.dl_threshold]:
                signers[bytes.fromhex(h)] = self._dl_key(h)
        for key in dl_keys[: self.settings.dl_threshold]:
            signers[key.public_key().public_bytes_raw()] = key
        info_bytes = sign_body(body, signers.values())
        staging = self.directory / f"{_STAGING_PREFIX}{generation}.tmp-{os.getpid()}"
        staging.mkdir()
        # atomic_write fsyncs every file and the staging directory after each rename.
        _write_private(staging / "ca-key.pem", key_to_pem(ca_key))
        _write_new(staging / "ca-cert.pem", cert_to_pem(ca_cert))
        _write_new(staging / "ca-info.bin", info_bytes)
        if previous is not None:
            self._issue_download_cert(staging, generation, at)
        os.rename(staging, gen_dir)
        fsync_directory(self.directory)
        if activate:
            self.settings.active = generation
        self.settings.generations.append(
            GenerationRecord(
                generation,
                at.isoformat(),
                not_after.isoformat(),
                revokes_previous,
                True,
                [k.public_key().public_bytes_raw().hex() for k in dl_keys],
                None if publish_until is None else publish_until.isoformat(),
            )
        )
        # The commit: until authority.json lists it, gen-N is debris of an interrupted roll.
        self._save()
        return decode_cainfo(info_bytes)

    def discard_interrupted(self) -> None:
        """Remove what a roll that crashed before its commit left behind (module docstring)."""
        recorded = {record.generation for record in self.settings.generations}
        for entry in sorted(self.directory.iterdir()):
            match = _GENERATION_DIR.fullmatch(entry.name)
            if match is not None and int(match.group(1)) not in recorded and entry.is_dir():
                # Renamed to a staging name first, so a crash while deleting leaves debris
                # the next roll recognises, never a half-empty gen-N.
                doomed = entry.with_name(f"{_STAGING_PREFIX}{match.group(1)}.discard")
                if doomed.exists():
                    shutil.rmtree(doomed)
                os.rename(entry, doomed)
                fsync_directory(self.directory)
                entry = doomed
            if entry.name.startswith(_STAGING_PREFIX) and entry.is_dir():
                shutil.rmtree(entry)

    def download_names(self) -> tuple[list[str], list[str]]:
        """The DNS names and IP addresses a download certificate carries: the publish host."""
        host = urlsplit(self.settings.publish_url).hostname or "localhost"
        return ([], [host]) if _is_ip(host) else ([host], [])

    def _issue_download_cert(self, gen_dir: Path, generation: int, at: dt.datetime) -> None:
        """The server publishing N is certified by CA N-1, the one devices still trust."""
        dns, ips = self.download_names()
        issued = self.issue(Role.DOWNLOAD, at, dns=dns, ips=ips, generation=generation - 1)
        _write_new(gen_dir / "download-cert.pem", cert_to_pem(issued.cert))
        _write_private(gen_dir / "download-key.pem", key_to_pem(issued.key))

    def roll(
        self,
        at: dt.datetime,
        revoke_current: bool = False,
        rotate_dl_keys: int = 0,
        publish_until: dt.datetime | None = None,
    ) -> CAInfo:
        """Prepare the next generation (S502–S504); with revocation, issue from it at once.

        `revoke_current` flags REVOKES_PREVIOUS and moves issuing to the new generation
        (S509–S511); holders drop every generation before it. Older generations stay
        published so that a holder further behind can still walk to it. `rotate_dl_keys`
        > 0 gives the new generation a fresh DL key set of that size (signed in by a
        threshold of the old set).
        """
        generation = self.settings.newest + 1
        self.check_roll(at, rotate_dl_keys)
        new_keys = self._new_dl_keys(rotate_dl_keys) if rotate_dl_keys else None
        # With revocation, issuing moves in the same commit, so no crash can leave the
        # compromised generation active beside its recorded replacement.
        return self._create_generation(
            generation,
            at,
            revoke_current,
            new_keys,
            activate=revoke_current,
            publish_until=publish_until,
        )

    def check_roll(self, at: dt.datetime, rotate_dl_keys: int = 0) -> None:
        """Raise StateError, before anything is written, if a roll at `at` cannot be made.

        CA N+1's download server is certified by CA N (section 2, "Publication"), so a roll
        needs CA N valid at `at`; after CA N expired only `roost ca tick`, which applies a
        missed roll at the time it was due, can still make N+1.
        """
        newest = self.settings.record(self.settings.newest)
        if at >= newest.not_after_time:
            raise StateError(
                f"CA generation {newest.generation} expired at {_when(newest.not_after_time)},"
                f" so it cannot certify the download server of generation"
                f" {newest.generation + 1} at {_when(at)}; run `roost ca tick`, which makes"
                " missed generations at the times they were due",
                reason="ca-expired",
            )
        self.check_issue(Role.DOWNLOAD, at, newest.generation)
        if at + self.settings.validity_years * _YEAR > _LAST_TIME:
            raise StateError(
                f"a CA made at {_when(at)} would outlive the year 9999", reason="bad-args"
            )
        if rotate_dl_keys and not self.settings.dl_threshold <= rotate_dl_keys <= 255:
            raise StateError(
                f"--rotate-dl-keys needs {self.settings.dl_threshold} to 255 keys"
                f" (the threshold is {self.settings.dl_threshold})",
                reason="bad-args",
            )

    def check_issue(self, role: Role, at: dt.datetime, generation: int | None = None) -> None:
        """Raise StateError, before anything is written, if a leaf cannot be issued at `at`."""
        generation = generation or self.settings.active
        record = self.settings.record(generation)
        start = dt.datetime.fromisoformat(record.not_before)
        if at > _LAST_TIME - dt.timedelta(days=self.settings.leaf_validity_days):
            raise StateError(f"{_when(at)} is too close to the year 9999", reason="bad-args")
        if at >= record.not_after_time:
            raise StateError(
                f"CA generation {generation} expired at {_when(record.not_after_time)};"
                f" run `roost ca tick --at {at.isoformat()}` to move issuing on first",
                reason="ca-expired",
            )
        if at + dt.timedelta(days=self.settings.leaf_validity_days) <= start:
            raise StateError(
                f"CA generation {generation} starts at {_when(start)}, after a {role.value}"
                f" certificate issued at {_when(at)} would expire",
                reason="bad-args",
            )

    def activate(self, generation: int | None = None) -> int:
        """Issuing moves to `generation`, by default the newest (S510)."""
        target = self.settings.newest if generation is None else generation
        self.settings.record(target)
        if target < self.settings.active:
            raise StateError(
                f"generation {target} is older than the active {self.settings.active}",
                reason="rollback",
            )
        self.settings.active = target
        self._save()
        return self.settings.active

    def unpublish(self, generation: int) -> None:
        self.settings.record(generation).published = False
        self._save()

    def published_generations(self) -> list[int]:
        return [g.generation for g in self.settings.generations if g.generation > 1 and g.published]

    # ------------------------------------------------------------------------------ issue

    def _index_connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.directory / _INDEX)
        db.execute(
            "CREATE TABLE IF NOT EXISTS issued ("
            " serial TEXT PRIMARY KEY, role TEXT NOT NULL, identifier TEXT,"
            " generation INTEGER NOT NULL, not_before TEXT NOT NULL, not_after TEXT NOT NULL,"
            " names TEXT NOT NULL, issued_at TEXT NOT NULL, pem TEXT NOT NULL)"
        )
        return db

    def issue(
        self,
        role: Role,
        at: dt.datetime,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        generation: int | None = None,
    ) -> IssuedLeaf:
        """Issue a leaf under the active generation (or `generation`) and index it."""
        generation = generation or self.settings.active
        self.check_issue(role, at, generation)
        if role not in (Role.HUB, Role.DEVICE) and not (dns or ips):
            # A usage mistake (the CLI maps ValueError to exit 2), found before any write.
            raise ValueError(f"a {role.value} certificate needs at least one DNS or IP name")
        ca_cert = self.ca_cert(generation)
        key = generate_key()
        # Backdate slightly for peers whose clocks lag, never before the CA itself.
        not_before = max(at - _LEAF_BACKDATE, ca_cert.not_valid_before_utc)
        not_after = at + dt.timedelta(days=self.settings.leaf_validity_days)
        cert, identifier = issue_leaf(
            LeafRequest(role, key.public_key(), tuple(dns), tuple(ips)),
            self.ca_key(generation),
            ca_cert,
            not_before,
            not_after,
        )
        db = self._index_connect()
        try:
            with db:
                db.execute(
                    "INSERT INTO issued VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        f"{cert.serial_number:x}",
                        role.value,
                        identifier,
                        generation,
                        cert.not_valid_before_utc.isoformat(),
                        cert.not_valid_after_utc.isoformat(),
                        json.dumps(list(dns) + list(ips)),
                        at.isoformat(),
                        cert_to_pem(cert).decode("ascii"),
                    ),
                )
        finally:
            db.close()
        return IssuedLeaf(
            role,
            identifier,
            generation,
            cert.serial_number,
            cert,
            key,
            self.ca_info_bytes(generation),
        )

    def issued(self) -> list[dict[str, object]]:
        db = self._index_connect()
        try:
            rows = db.execute(
                "SELECT serial, role, identifier, generation, not_after FROM issued ORDER BY rowid"
            ).fetchall()
        finally:
            db.close()
        keys = ("serial", "role", "id", "generation", "not_after")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def download_credentials(self, generation: int) -> tuple[Path, Path]:
        gen_dir = self._gen_dir(generation)
        return gen_dir / "download-cert.pem", gen_dir / "download-key.pem"

    def status(self) -> dict[str, object]:
        return {
            "active": self.settings.active,
            "newest": self.settings.newest,
            "publish_url": self.settings.publish_url,
            "dl_threshold": self.settings.dl_threshold,
            "generations": [
                {
                    "generation": g.generation,
                    "not_before": g.not_before,
                    "not_after": g.not_after,
                    "revokes_previous": g.revokes_previous,
                    "published": g.published if g.generation > 1 else None,
                    "next_url": self.next_url(g.generation),
                }
                for g in self.settings.generations
            ],
            "issued": len(self.issued()),
        }
