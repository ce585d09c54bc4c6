"""``geostore netem serve|apply``: the Toxiproxy-compatible WAN emulator and the link matrix.

``serve`` runs the emulator's HTTP API (Toxiproxy's, port 8474 on loopback by default) until
SIGINT or SIGTERM. ``apply`` makes a running emulator, or a real toxiproxy-server at
``--url``/``$TOXIPROXY_URL``, hold one proxy per directed inter-region link and destination
node of a topology, and prints the address map.
"""

from __future__ import annotations

import argparse

HELP = "the Toxiproxy-compatible WAN emulator (netem serve|apply)"

#: Where ``apply`` puts nodes the topology gives no port (as ``cluster up`` would).
DEFAULT_NODE_BASE_PORT = 7000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{serve,apply}")
    serve = sub.add_parser("serve", help="run the emulator's Toxiproxy API")
    serve.add_argument("--host", default="127.0.0.1", help="API address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8474, help="API port (default: 8474; 0: any)")
    apply = sub.add_parser("apply", help="set up a topology's link proxies, print the address map")
    apply.add_argument("--topology", required=True, help="topology file (TOML)")
    apply.add_argument(
        "--url", default=None, help="Toxiproxy API (default: $TOXIPROXY_URL or 127.0.0.1:8474)"
    )
    apply.add_argument(
        "--node-base-port",
        type=int,
        default=DEFAULT_NODE_BASE_PORT,
        help="first loopback port for nodes without one in the topology (default: 7000)",
    )
    apply.add_argument("--json", action="store_true", help="print the map as JSON")


def run(args: argparse.Namespace) -> int:
    if args.action == "serve":
        from netem.server import run as serve

        return serve(args.host, args.port)
    return _apply(args)


def _apply(args: argparse.Namespace) -> int:
    import json

    from geostore.config.topology import load_topology
    from netem.links import apply_links, format_table, plan_links, toxiproxy_url

    topology = load_topology(args.topology).with_loopback_ports(args.node_base_port)
    plan = plan_links(topology)
    applied = apply_links(plan, args.url)
    if args.json:
        rows = [
            {
                "proxy": a.plan.name,
                "from_region": a.plan.src_region,
                "to_region": a.plan.dst_region,
                "to_node": a.plan.dst_node,
                "listen": a.listen,
                "upstream": a.plan.upstream,
            }
            for a in applied
        ]
        print(json.dumps({"url": toxiproxy_url(args.url), "links": rows}, indent=2))
    else:
        print(f"{len(applied)} link proxies on {toxiproxy_url(args.url)}")
        print(format_table(applied))
    return 0
