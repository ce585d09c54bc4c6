"""``geostore tail``: print a partition's events as they commit, until Ctrl-C or ``--count``.

Starts at ``--from-seq`` (default: the next event to commit). The client reconnects to
another node of the region if its node goes away, resuming after the last event printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from geostore.client import GeostoreClient

HELP = "follow a stream live"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from geostore.client.cli_support import add_client_arguments

    add_client_arguments(parser)
    parser.add_argument("--partition", type=int, default=0, help="partition (default 0)")
    parser.add_argument("--from-seq", type=int, default=None, metavar="N", help="first seq")
    parser.add_argument("--count", type=int, default=None, metavar="N", help="stop after N")
    parser.add_argument("--json", action="store_true", help="one JSON line per event")


def run(args: argparse.Namespace) -> int:
    from geostore.client.cli_support import compact_json, format_ts, run_with_client

    async def body(client: GeostoreClient) -> int:
        seen = 0
        if args.count is not None and args.count <= 0:
            return 0
        if not args.json:
            print(f"{'seq':>8}  {'ts':<27}  {'key':<10}  body", flush=True)
        async for ev in client.tail(args.stream, args.partition, args.from_seq):
            if args.json:
                print(json.dumps(ev.to_dict(), separators=(",", ":"), default=str), flush=True)
            else:
                line = f"{ev.seq:>8}  {format_ts(ev.ts):<27}  {ev.key or '':<10}  "
                print(line + compact_json(ev.body, 100), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
        return 0

    try:
        return run_with_client(args, body)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 0
