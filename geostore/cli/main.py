"""Entry point of the ``geostore`` command.

Each subcommand NAME is a module ``geostore.cli.cmd_NAME`` exposing::

    HELP: str                                   # one line for ``geostore --help``
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int    # the exit status

Modules load only when their command runs, so ``geostore sim`` never imports aiohttp and
``geostore --help`` imports nothing heavy. Operating errors print as one line and exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from geostore import __version__
from geostore.errors import GeostoreError

#: name -> one-line summary shown before the module is loaded
COMMANDS: dict[str, str] = {
    "demo": "the main job: a local multi-region cluster under emulated WAN latency",
    "cluster": "start, inspect and stop a local cluster (cluster up|status|down)",
    "node": "run one node; node add|remove|replace for membership",
    "leader": "leadership operations (leader transfer)",
    "stream": "create and describe streams (stream create)",
    "append": "append events to a stream",
    "read": "read events by seq or time range",
    "tail": "follow a stream live",
    "aggregate": "count/min/max/sum/avg of a field over a time range",
    "partition": "partition operations (partition move)",
    "region": "region operations (region failover)",
    "quarantine": "list, export and re-append events quarantined by failback",
    "sim": "seeded deterministic simulation runs with invariant checkers",
    "netem": "the Toxiproxy-compatible WAN emulator (netem serve|apply)",
    "bench": "benchmarks and reports",
    "topology": "validate and show topology and config files",
    "certs": "create the cluster CA and node certificates (certs init)",
}


def _load(name: str) -> ModuleType | None:
    module_name = f"geostore.cli.cmd_{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(n) for n in COMMANDS)
    lines = "\n".join(f"  {n.ljust(width)}  {summary}" for n, summary in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="geostore",
        description="geostore: a geo-replicated, multi-leader event store.",
        epilog=f"commands:\n{lines}\n\nRun 'geostore COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    top.add_argument("--version", action="version", version=f"geostore {__version__}")
    top.add_argument("command", nargs="?", help=argparse.SUPPRESS)
    if not args or args[0].startswith("-"):
        top.parse_args(args)  # handles --help / --version and exits
        top.print_help()
        return 2
    name = args[0]
    if name not in COMMANDS:
        print(f"geostore: error: unknown command {name!r}; see 'geostore --help'", file=sys.stderr)
        return 2
    module = _load(name)
    if module is None:
        print(
            f"geostore: error: the {name!r} command is not part of this build yet",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(prog=f"geostore {name}", description=module.HELP)
    module.add_arguments(parser)
    parsed = parser.parse_args(args[1:])
    parsed.command = name
    try:
        status: int = module.run(parsed)
    except GeostoreError as exc:
        print(f"geostore {name}: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"geostore {name}: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
