"""``geostore topology``: validate and show topology and config files.

``show FILE`` prints the regions and nodes, the RTT matrix, every directed link with jitter
and bandwidth, the streams, and the Raft timing the topology implies (regional groups and a
group spanning every region). ``check FILE`` validates and exits 0, or prints the one-line
``file: field: reason`` error and exits 1. Both take ``--config`` and ``--override`` so a
config file and a per-node override are validated together with the topology.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geostore.config import Config, Topology

HELP = "validate and show topology and config files (topology show|check FILE)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{show,check}")
    for action, help_text in (
        ("show", "print regions, nodes, RTT matrix, links, streams and derived Raft timing"),
        ("check", "validate; exit 0, or print the one-line error and exit 1"),
    ):
        p = sub.add_parser(action, help=help_text, description=help_text)
        p.add_argument("file", help="topology TOML file (see regions/)")
        p.add_argument("--config", default=None, help="config TOML file to validate and use")
        p.add_argument("--override", default=None, help="per-node config override TOML file")
        if action == "show":
            p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    from geostore.config import load_config, load_topology
    from geostore.errors import ConfigError

    try:
        topology = load_topology(args.file)
        config = load_config(args.config, args.override)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if args.action == "check":
        streams = len(topology.streams)
        print(
            f"ok: {topology.name}: {len(topology.regions)} regions, {len(topology.nodes())} "
            f"nodes, {len(topology.links)} directed links, {streams} "
            f"stream{'' if streams == 1 else 's'}"
            + (f"; config {args.config}" if args.config else "")
            + (f" + {args.override}" if args.override else "")
        )
        return 0
    if args.json:
        print(json.dumps(_as_json(topology, config), indent=2))
    else:
        print(render(topology, config, config_source=_source(args)))
    return 0


def _source(args: argparse.Namespace) -> str:
    parts = [p for p in (args.config, args.override) if p]
    return " + ".join(parts) if parts else "defaults"


def _timings(topology: Topology, config: Config) -> list[tuple[str, tuple[str, ...], Any]]:
    from geostore.config import raft_timing

    rows: list[tuple[str, tuple[str, ...], Any]] = []
    for name in topology.region_names():
        rows.append((f"regional {name}", (name,), raft_timing(config, topology, (name,))))
    everywhere = topology.region_names()
    if len(everywhere) > 1:
        rows.append(
            ("metadata / single-leader", everywhere, raft_timing(config, topology, everywhere))
        )
    return rows


def _as_json(topology: Topology, config: Config) -> dict[str, Any]:
    return {
        "topology": topology.to_dict(),
        "config": config.to_dict(),
        "raft_timing": [
            {
                "group": label,
                "regions": list(spans),
                "widest_rtt_ms": topology.widest_rtt_ms(spans),
                "tick_ms": t.tick_ms,
                "heartbeat_ticks": t.heartbeat_ticks,
                "election_ticks": t.election_ticks,
                "heartbeat_ms": t.heartbeat_ms,
                "election_ms": t.election_ms,
            }
            for label, spans, t in _timings(topology, config)
        ],
    }


def _table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    """Plain aligned columns; columns in ``right`` are right-aligned (numbers)."""
    right = right or set()
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  " + "  ".join(out).rstrip()

    return [line(header), *(line(r) for r in rows)]


def _num(value: float) -> str:
    return f"{value:.1f}"


def render(topology: Topology, config: Config, *, config_source: str = "defaults") -> str:
    """The human-readable ``topology show`` report."""
    names = list(topology.region_names())
    out: list[str] = [
        f"topology {topology.name}" + (f"  ({topology.path})" if topology.path else ""),
        "",
        f"regions ({len(names)}), nodes ({len(topology.nodes())})",
    ]
    region_rows = []
    for r in topology.regions:
        nodes = ", ".join(
            n.id + (f"@{n.host or '*'}:{n.port}" if n.port else f"@{n.host}" if n.host else "")
            for n in r.nodes
        )
        region_rows.append([r.name, _num(r.intra_rtt_ms), nodes])
    out += _table(["region", "intra_rtt_ms", "nodes"], region_rows, right={1})

    out += ["", "rtt_ms_p50 matrix (diagonal: intra-region)"]
    matrix = [[a, *(_num(topology.rtt_ms(a, b)) for b in names)] for a in names]
    out += _table(["", *names], matrix, right=set(range(1, len(names) + 1)))

    out += ["", "links (per direction; a proxy adds one_way_ms +- jitter_ms)"]
    link_rows = []
    for a in names:
        for b in names:
            if a == b:
                continue
            link = topology.link(a, b)
            bw = "unlimited" if link.bandwidth_kbps is None else str(link.bandwidth_kbps)
            link_rows.append(
                [
                    f"{a} -> {b}",
                    _num(link.rtt_ms_p50),
                    _num(link.one_way_ms),
                    _num(link.jitter_ms),
                    bw,
                ]
            )
    if link_rows:
        out += _table(
            ["link", "rtt_ms_p50", "one_way_ms", "jitter_ms", "bandwidth_kbps"],
            link_rows,
            right={1, 2, 3, 4},
        )
    else:
        out.append("  (one region: no links)")

    out += ["", f"streams ({len(topology.streams)})"]
    if topology.streams:
        stream_rows = [
            [
                s.name,
                str(s.partitions),
                s.key_field or "-",
                " ".join(f"{p}={h}" for p, h in sorted(s.homes.items())),
            ]
            for s in topology.streams
        ]
        out += _table(["stream", "partitions", "key_field", "homes"], stream_rows, right={1})
    else:
        out.append("  (none declared)")

    out += ["", f"raft timing (config: {config_source})"]
    timing_rows = [
        [
            label,
            _num(topology.widest_rtt_ms(spans)),
            str(t.tick_ms),
            f"{t.heartbeat_ticks} ({t.heartbeat_ms} ms)",
            f"{t.election_ticks} ({t.election_ms} ms)",
        ]
        for label, spans, t in _timings(topology, config)
    ]
    out += _table(
        ["group", "widest_rtt_ms", "tick_ms", "heartbeat_ticks", "election_ticks"],
        timing_rows,
        right={1, 2},
    )
    return "\n".join(out)
