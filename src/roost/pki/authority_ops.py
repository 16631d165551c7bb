"""Operating an authority over time: the schedule's tick, a consistency check, repair.

`roost.pki.authority` makes one change at a time, each crash-atomic. This module strings
them together for the FIG. 5/6 operator (`tick`), and looks at a whole authority directory
to say whether it is usable (`check`) and to put it back in order after an interrupted or
failed change (`repair`). Every step is validated before anything is written, and a tick's
steps share one commit (`Authority.transaction`): a tick happens whole or not at all.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from roost.errors import RemoteProtocolError, StateError, VerificationError
from roost.files import atomic_write
from roost.pki.authority import Authority
from roost.pki.cainfo import accept_successor, decode_cainfo
from roost.pki.certs import Role, cert_to_pem, certs_from_pem, key_to_pem
from roost.pki.schedule import Action, GenerationTimes, TimedStep, catch_up, upcoming

__all__ = [
    "Problem",
    "check",
    "generation_times",
    "idle_download_credentials",
    "next_steps",
    "repair",
    "tick",
]

_YEAR = dt.timedelta(days=365)
_STAGING_PREFIX = ".gen-"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an authority directory; `repairable` by `roost ca repair`."""

    message: str
    repairable: bool


def generation_times(authority: Authority) -> list[GenerationTimes]:
    """The generation table as the pure schedule reads it."""
    return [
        GenerationTimes(g.generation, g.not_after_time, g.published, g.publish_until_time)
        for g in authority.settings.generations
    ]


def next_steps(authority: Authority) -> list[TimedStep]:
    """What the schedule wants next and when, whatever the time (for `roost ca status`)."""
    lead = authority.settings.lead_years * _YEAR
    return upcoming(generation_times(authority), authority.settings.active, lead)


def tick(authority: Authority, at: dt.datetime) -> list[TimedStep]:
    """Apply every step due by `at`, each at the time it was due, in one commit.

    A tick long after a step was due (the operator was away, or `--at` names a date decades
    on) replays the missed steps at their due times (roost.pki.schedule, `catch_up`), so CA
    N+1 is always made while CA N can still certify its download server. The steps are
    planned in memory first; a plan that cannot be applied raises StateError before any
    file is touched, and a failure while applying leaves the authority as it was.
    """
    blocking = [p for p in check(authority) if not p.repairable]
    if blocking:
        raise StateError(
            f"the authority in {authority.directory} is inconsistent: {blocking[0].message}"
            " (see `roost ca repair`)",
            reason="inconsistent",
        )
    settings = authority.settings
    steps = catch_up(
        generation_times(authority),
        settings.active,
        at,
        settings.lead_years * _YEAR,
        settings.validity_years * _YEAR,
    )
    with authority.transaction():
        for step in steps:
            if step.action is Action.PREPARE:
                late = step.due < at
                lead = settings.lead_years * _YEAR
                made = authority.roll(step.due, publish_until=at + lead if late else None)
                if made.generation != step.generation:
                    raise StateError(
                        f"made generation {made.generation}, planned {step.generation}",
                        reason="inconsistent",
                    )
            elif step.action is Action.ACTIVATE:
                authority.activate(step.generation)
            else:
                authority.unpublish(step.generation)
    return steps


def check(authority: Authority) -> list[Problem]:
    """Everything wrong with the directory, in words; an empty list means consistent.

    Repairable: debris of an interrupted change (a staging directory, a ``gen-N`` the table
    does not list), which readers ignore. Not repairable here: a listed generation whose
    files are missing or do not chain; restore those from a backup (docs/OPERATIONS.md).
    """
    problems: list[Problem] = []
    settings = authority.settings
    numbers = sorted(g.generation for g in settings.generations)
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(Problem(f"the generation table lists {numbers}, not 1..N", False))
        return problems
    if settings.active not in numbers:
        problems.append(Problem(f"the active generation {settings.active} is not listed", False))
    previous = None
    for record in sorted(settings.generations, key=lambda g: g.generation):
        gen = record.generation
        gen_dir = authority.directory / f"gen-{gen}"
        needed = ["ca-key.pem", "ca-cert.pem", "ca-info.bin"]
        if gen > 1:
            needed += ["download-cert.pem", "download-key.pem"]
        missing = [name for name in needed if not (gen_dir / name).is_file()]
        if missing:
            problems.append(Problem(f"generation {gen} lacks {', '.join(missing)}", False))
            previous = None
            continue
        try:
            info = decode_cainfo((gen_dir / "ca-info.bin").read_bytes())
            cert = certs_from_pem((gen_dir / "ca-cert.pem").read_bytes())[0]
        except (RemoteProtocolError, ValueError, IndexError, OSError) as exc:
            problems.append(Problem(f"generation {gen}'s files do not parse: {exc}", False))
            previous = None
            continue
        if info.generation != gen or info.ca_certificate != cert:
            problems.append(Problem(f"gen-{gen}/ca-info.bin is not generation {gen}'s", False))
        if previous is not None:
            try:
                accept_successor(previous, info)
            except VerificationError as exc:
                problems.append(
                    Problem(f"generation {gen} does not follow {gen - 1}: {exc}", False)
                )
        absent = [
            h[:12]
            for h in record.dl_keys
            if not (authority.directory / "dl-keys" / f"{h}.key").is_file()
        ]
        if absent:
            problems.append(
                Problem(f"generation {gen}'s DL keys {', '.join(absent)}… are missing", False)
            )
        previous = info
    for entry in sorted(authority.directory.iterdir()):
        if entry.name.startswith(_STAGING_PREFIX) and entry.is_dir():
            problems.append(Problem(f"{entry.name}/ is left from an interrupted change", True))
        elif entry.name.startswith("gen-") and entry.is_dir():
            suffix = entry.name[4:]
            if not suffix.isdigit() or int(suffix) not in numbers:
                problems.append(
                    Problem(f"{entry.name}/ is not in the generation table (unfinished roll)", True)
                )
    return problems


def repair(authority: Authority) -> list[str]:
    """Remove the debris `check` calls repairable; returns what was removed.

    Raises StateError naming the first problem a repair cannot fix (missing or broken
    files of a listed generation), having changed nothing.
    """
    problems = check(authority)
    blocking = [p for p in problems if not p.repairable]
    if blocking:
        raise StateError(
            f"cannot repair {authority.directory}: {blocking[0].message};"
            " restore the authority from a backup (docs/OPERATIONS.md)",
            reason="inconsistent",
        )
    fixed = [p.message for p in problems]
    if fixed:
        authority.discard_interrupted()
    return fixed


def idle_download_credentials(authority: Authority, at: dt.datetime) -> tuple[Path, Path]:
    """Credentials for a download server with nothing published yet (a fresh home).

    It serves only 404s ("not published yet", PROTOCOL.md section 2), but devices poll it
    and must be able to authenticate it, so its certificate comes from the active CA, which
    every holder trusts. Made once per active generation and kept beside it as
    ``idle-download-cert.pem``/``idle-download-key.pem`` (indexed like every other).
    """
    gen_dir = authority.directory / f"gen-{authority.settings.active}"
    cert_file, key_file = gen_dir / "idle-download-cert.pem", gen_dir / "idle-download-key.pem"
    if cert_file.is_file() and key_file.is_file():
        return cert_file, key_file
    dns, ips = authority.download_names()
    issued = authority.issue(Role.DOWNLOAD, at, dns=dns, ips=ips)
    atomic_write(key_file, key_to_pem(issued.key), mode=0o600)
    atomic_write(cert_file, cert_to_pem(issued.cert))
    return cert_file, key_file
