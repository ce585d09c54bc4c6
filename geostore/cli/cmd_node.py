"""``geostore node``: run one node process (what ``cluster up`` starts on each node).

``geostore node --topology FILE --node ID --dir DIR [--config CFG] [--override CFG]
[--port P]`` opens (or creates) the node's data dir, joins its region's Raft group with the
peers the topology names (every node of the region needs a host and port there; ``--port``
only overrides this node's own), serves the HTTP API and peer links on one port, and runs
until SIGTERM or SIGINT, then shuts down gracefully (exit status 0).

``--unsafe-no-fsync`` acknowledges appends without fsync: it exists ONLY so a fault test can
show that the checks catch lost acknowledged writes. Never use it otherwise.
"""

from __future__ import annotations

import argparse
import sys

HELP = "run one node (geostore node --topology FILE --node ID --dir DIR)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topology", required=True, help="topology TOML file (see regions/)")
    parser.add_argument("--node", required=True, help="this node's id in the topology")
    parser.add_argument("--dir", required=True, help="this node's data directory")
    parser.add_argument("--config", default=None, help="config TOML file")
    parser.add_argument("--override", default=None, help="per-node config override TOML file")
    parser.add_argument("--port", type=int, default=None, help="port (default: the topology's)")
    parser.add_argument("--host", default=None, help="address to bind (default: the topology's)")
    parser.add_argument("--mode", default="multi-leader", choices=("multi-leader", "single-leader"))
    parser.add_argument("--seed", type=int, default=None, help="seed of the node's randomness")
    parser.add_argument(
        "--unsafe-no-fsync",
        action="store_true",
        help="UNSAFE negative control: acknowledge without fsync (fault tests only)",
    )


def run(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from geostore.config import load_config, load_topology
    from geostore.ids import NodeId
    from geostore.runtime.logs import setup_logging
    from geostore.runtime.node import NodeRuntime

    topology = load_topology(args.topology)
    config = load_config(args.config, args.override)
    topology.node(args.node)  # ConfigError (exit 1) for an unknown node id
    os.makedirs(args.dir, exist_ok=True)
    setup_logging(args.dir, args.node)
    if args.mode != "multi-leader":
        print("geostore node: only --mode multi-leader is implemented yet", file=sys.stderr)
        return 2
    if args.unsafe_no_fsync:
        print(
            "geostore node: WARNING: --unsafe-no-fsync: acknowledged writes may be lost",
            file=sys.stderr,
        )

    async def main() -> int:
        spec = topology.node(args.node)
        node = NodeRuntime(
            topology,
            NodeId(args.node),
            config,
            args.dir,
            port=args.port,
            host=args.host or spec.host or "127.0.0.1",
            mode=args.mode,
            unsafe_no_fsync=args.unsafe_no_fsync,
            seed=args.seed,
        )
        await node.run()
        return node.exit_code

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())
