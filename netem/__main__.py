"""``python -m netem [--host H] [--port P]``: the emulator without the geostore CLI."""

from __future__ import annotations

import argparse
import sys

from netem.server import DEFAULT_PORT, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netem", description="Toxiproxy-compatible WAN emulator")
    parser.add_argument("--host", default="127.0.0.1", help="API address (default: loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="API port (default: 8474)")
    args = parser.parse_args(argv)
    return run(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
