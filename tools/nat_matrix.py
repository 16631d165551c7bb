"""The broker's NAT matrix: NAT types, the path each pair of types should get, and the doc.

Issue 9 asks for 25 cells (side A type x side B type), each with the path the session is
expected to take, written down before the run and asserted by the matrix test, then rendered
into docs/NAT-MATRIX.md. The types and their behaviour follow RFC 4787 (section 4.1 mapping,
section 5 filtering); `tests/helpers/natlab.py` builds each one in network namespaces and
`tests/integration/test_natlab.py` measures that the built router behaves as declared here.

Run ``python tools/nat_matrix.py [--results FILE] [--output docs/NAT-MATRIX.md]`` to regenerate
the doc; without ``--results`` the observed column reads "not yet run".

This module has no dependency on the rest of the project, so the doc can be regenerated
from a bare checkout and the future matrix test can import the expectations as data.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from collections.abc import Mapping as MappingType
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CELLS",
    "DEFAULT_OUTPUT",
    "DEFAULT_RESULTS",
    "NOT_RUN",
    "PATHS",
    "Filtering",
    "Mapping",
    "NatType",
    "expected_path",
    "load_results",
    "main",
    "render",
]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "NAT-MATRIX.md"
# Where the matrix test writes what it observed; the doc is rendered from it when present.
DEFAULT_RESULTS = ROOT / "docs" / "nat-matrix-results.json"
PATHS = ("direct", "relay")
NOT_RUN = "not yet run"


class Mapping(enum.Enum):
    """RFC 4787 section 4.1: what a NAT's external address depends on."""

    # One external address:port per internal address:port, whatever the destination (EIM).
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    # A new external port for each destination address, whatever its port.
    ADDRESS_DEPENDENT = "address-dependent"
    # A new external port for each destination address:port (EDM, "symmetric").
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class Filtering(enum.Enum):
    """RFC 4787 section 5: which outside senders may reach an existing mapping."""

    # Anyone (EIF, "full cone"; also a host with no NAT and no firewall).
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    # Only addresses the inside host has sent to, any port ("restricted cone").
    ADDRESS_DEPENDENT = "address-dependent"
    # Only the exact address:port the inside host has sent to ("port-restricted cone").
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class NatType(enum.Enum):
    """The five kinds of side in the matrix, each with its RFC 4787 behaviour."""

    PUBLIC = "public"
    FULL_CONE = "full-cone"
    PORT_RESTRICTED = "port-restricted"
    SYMMETRIC = "symmetric"
    UDP_BLOCKED = "udp-blocked"

    @property
    def udp_passes(self) -> bool:
        """Whether UDP crosses this side's router at all."""
        return self is not NatType.UDP_BLOCKED

    @property
    def mapping(self) -> Mapping | None:
        """The mapping behaviour; None when no UDP passes, so no mapping ever exists."""
        return _BEHAVIOUR[self].mapping

    @property
    def filtering(self) -> Filtering | None:
        """The filtering behaviour; None when no UDP passes."""
        return _BEHAVIOUR[self].filtering

    @property
    def router(self) -> str:
        """How natlab builds it (one line, for the doc)."""
        return _BEHAVIOUR[self].router


@dataclass(frozen=True, slots=True)
class _Behaviour:
    mapping: Mapping | None
    filtering: Filtering | None
    router: str


_BEHAVIOUR = {
    NatType.PUBLIC: _Behaviour(
        Mapping.ENDPOINT_INDEPENDENT,
        Filtering.ENDPOINT_INDEPENDENT,
        "no router: the host sits on the internet bridge with a public address",
    ),
    NatType.FULL_CONE: _Behaviour(
        Mapping.ENDPOINT_INDEPENDENT,
        Filtering.ENDPOINT_INDEPENDENT,
        "MASQUERADE out, and every inbound UDP on the WAN DNATed to the host (port kept)",
    ),
    NatType.PORT_RESTRICTED: _Behaviour(
        Mapping.ENDPOINT_INDEPENDENT,
        Filtering.ADDRESS_AND_PORT_DEPENDENT,
        "MASQUERADE (Linux keeps the source port, so the mapping is endpoint-independent)",
    ),
    NatType.SYMMETRIC: _Behaviour(
        Mapping.ADDRESS_AND_PORT_DEPENDENT,
        Filtering.ADDRESS_AND_PORT_DEPENDENT,
        "MASQUERADE --random (a fresh random port for every destination)",
    ),
    NatType.UDP_BLOCKED: _Behaviour(None, None, "MASQUERADE for TCP, FORWARD drops all UDP"),
}


def expected_path(a: NatType, b: NatType) -> str:
    """The path a session between a host behind `a` and one behind `b` should end on.

    Derived from RFC 4787 and the hole-punching literature (RFC 5128 section 3.3). Both
    sides send probes from their one UDP socket to the other's reflexive address (the source
    the broker saw) and answer any probe that arrives, learning a peer-reflexive address.

    - No UDP on either side: relay, nothing can be punched.
    - Both mappings endpoint-independent: direct. Each side's probe leaves from the port
      the broker saw, so the other side's probes go to the right port; an
      address-and-port-dependent filter opens as soon as its own side has sent one probe,
      and the later attempts pass (this is why punching sends several).
    - One side with an endpoint-dependent mapping (E) toward a side O: E's probe to O
      leaves from a new port the broker never saw. O's probes to E's registered port meet
      a mapping that was made for the broker only. So the only way in is E's own probe,
      from its new port, reaching O: it does when O's filter does not care about the
      port (endpoint-independent, or address-dependent since O has sent to E's address);
      O then learns E's new port as a peer-reflexive address and answers it, and that
      answer matches the mapping E made toward O. It does not when O filters by address
      and port: relay.
    - Both endpoint-dependent: relay; each side's answer would leave from yet another new
      port, which the other side's mapping was not made for. Port prediction is not done.

    The matrix relies on the lab's routers dropping unsolicited inbound UDP addressed to
    themselves (as home routers do): one that accepts it leaves a conntrack entry behind,
    Linux then gives the host's next packet to that peer another source port, and two
    port-restricted sides end on relay (tests/integration/test_natlab.py and
    test_natlab_punch.py show it).
    """
    if a.mapping is None or b.mapping is None:
        return "relay"
    # An address-dependent mapping behaves like an address-and-port-dependent one here: the
    # peer is a new address, so its probes leave from a port the broker never saw.
    a_dependent = a.mapping is not Mapping.ENDPOINT_INDEPENDENT
    b_dependent = b.mapping is not Mapping.ENDPOINT_INDEPENDENT
    if a_dependent and b_dependent:
        return "relay"
    if a_dependent and b.filtering is Filtering.ADDRESS_AND_PORT_DEPENDENT:
        return "relay"
    if b_dependent and a.filtering is Filtering.ADDRESS_AND_PORT_DEPENDENT:
        return "relay"
    return "direct"


# Every cell of the matrix, in the order the doc shows them.
CELLS: tuple[tuple[NatType, NatType], ...] = tuple((a, b) for a in NatType for b in NatType)


def load_results(path: Path) -> dict[tuple[NatType, NatType], str]:
    """Observed paths from a results file: ``{"cells": [{"a", "b", "observed"}]}``.

    The matrix test writes this file; an unknown type or path is an error, so a stale or
    hand-edited file cannot slip into the doc.
    """
    document = json.loads(path.read_text())
    observed: dict[tuple[NatType, NatType], str] = {}
    for cell in document["cells"]:
        key = (NatType(cell["a"]), NatType(cell["b"]))
        path_taken = cell["observed"]
        if path_taken not in PATHS:
            raise ValueError(f"cell {key}: observed path {path_taken!r} is not one of {PATHS}")
        observed[key] = path_taken
    return observed


def _cell_text(expected: str, observed: str | None) -> str:
    if observed is None:
        return f"{expected} / {NOT_RUN}"
    mark = "ok" if observed == expected else "**MISMATCH**"
    return f"{expected} / {observed} ({mark})"


def render(observed: MappingType[tuple[NatType, NatType], str] | None = None) -> str:
    """The whole docs/NAT-MATRIX.md text, from expectations and (optionally) results."""
    observed = observed or {}
    lines = [
        "# NAT matrix",
        "",
        "Generated by `tools/nat_matrix.py`; do not edit by hand.",
        "",
    ]
    if observed:
        lines.append(f"Observed cells: {len(observed)} of {len(CELLS)}.")
    else:
        lines.append(
            "**Expectations only**: the broker's matrix test has not run yet, so every "
            f'observed entry reads "{NOT_RUN}". The expected paths are fixed before any run '
            "(issue 9) and follow from the rule below."
        )
    lines += [
        "",
        "Each cell reads `expected / observed`: the path a session between a host behind",
        "side A (row) and one behind side B (column) should end on, and the one it took.",
        "",
        "| A \\ B | " + " | ".join(t.value for t in NatType) + " |",
        "|---|" + "---|" * len(NatType),
    ]
    for a in NatType:
        row = [_cell_text(expected_path(a, b), observed.get((a, b))) for b in NatType]
        lines.append(f"| **{a.value}** | " + " | ".join(row) + " |")
    direct = sum(1 for a, b in CELLS if expected_path(a, b) == "direct")
    lines += [
        "",
        f"Expected: {direct} direct, {len(CELLS) - direct} relay.",
        "",
        "## Types (RFC 4787)",
        "",
        "| type | mapping (4.1) | filtering (5) | how the lab builds it |",
        "|---|---|---|---|",
    ]
    for kind in NatType:
        mapping = kind.mapping.value if kind.mapping else "none (no UDP)"
        filtering = kind.filtering.value if kind.filtering else "drops all UDP"
        lines.append(f"| {kind.value} | {mapping} | {filtering} | {kind.router} |")
    rule = (expected_path.__doc__ or "").split("\n\n", 1)[1]
    lines += [
        "",
        "## The rule",
        "",
        *(line.removeprefix("    ") for line in rule.rstrip().splitlines()),
        "",
        "## The lab",
        "",
        "`tests/helpers/natlab.py` builds, per test run, an internet namespace with a bridge",
        "(198.18.0.0/24: broker 198.18.0.1, a second reflector 198.18.0.2, a third party",
        "198.18.0.3) and per side a router namespace (WAN on the bridge, iptables, ip_forward)",
        "with a host namespace behind it on its own 10.x.y.0/24 LAN; a public side's host sits",
        "on the bridge. `tests/integration/test_natlab.py` measures each type's mapping and",
        "filtering against the table above, and `tests/integration/test_natlab_punch.py`",
        "punches every cell with plain UDP probes (no broker) and asserts the expected path.",
        "The observed column comes from `tests/integration/test_nat_matrix.py`: per cell the",
        "real `roost broker run` on 198.18.0.1, `roost hub run` and one camera behind side A,",
        "and `roost connect --frames 2 --json` behind side B; the path is the summary's, and",
        "the results file (docs/nat-matrix-results.json) keeps each cell's timings too.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: render the doc, from a results file when there is one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if the doc is out of date")
    args = parser.parse_args(argv)
    results_path = args.results
    if results_path is None and DEFAULT_RESULTS.exists():
        results_path = DEFAULT_RESULTS
    text = render(load_results(results_path) if results_path is not None else None)
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run tools/nat_matrix.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
