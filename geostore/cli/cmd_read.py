"""``geostore read``: read a partition by seq range or event-time range.

One page of at most ``--limit`` events (``--all`` follows ``next_seq`` to the end). Prints a
table (seq, event time, key, epoch, body) and where to continue, or one JSON line per event
with ``--json``.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from geostore.client import GeostoreClient, ReadResult

HELP = "read events by seq or time range"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from geostore.client.cli_support import add_client_arguments, parse_ts

    add_client_arguments(parser)
    parser.add_argument("--partition", type=int, default=0, help="partition (default 0)")
    parser.add_argument("--from-seq", type=int, default=None, metavar="N", help="first seq")
    parser.add_argument("--from-ts", type=parse_ts, default=None, help="time range start")
    parser.add_argument("--to-ts", type=parse_ts, default=None, help="time range end (excl.)")
    parser.add_argument("--limit", type=int, default=100, metavar="N", help="events per page")
    parser.add_argument("--all", action="store_true", help="follow next_seq to the end")
    parser.add_argument(
        "--consistency",
        choices=("local", "regional", "strong"),
        default=None,
        help="regional (default): linearizable in the region; local: this node's state",
    )
    parser.add_argument("--after", default=None, metavar="TOKEN", help="an append's token")
    parser.add_argument("--wait-ms", type=int, default=None, help="how long to wait for it")
    parser.add_argument("--json", action="store_true", help="one JSON line per event")


def run(args: argparse.Namespace) -> int:
    from geostore.client.cli_support import compact_json, format_ts, run_with_client, table

    timed = args.from_ts is not None or args.to_ts is not None
    if timed and (args.from_ts is None or args.to_ts is None):
        print("geostore read: error: --from-ts and --to-ts go together", flush=True)
        return 2

    async def page(client: GeostoreClient, from_seq: int | None) -> ReadResult:
        if timed:
            return await client.read_time(
                args.stream,
                args.partition,
                args.from_ts,
                args.to_ts,
                from_seq=from_seq,
                limit=args.limit,
                consistency=args.consistency,
                after=args.after,
                wait_ms=args.wait_ms,
            )
        return await client.read(
            args.stream,
            args.partition,
            from_seq or 0,
            limit=args.limit,
            consistency=args.consistency,
            after=args.after,
            wait_ms=args.wait_ms,
        )

    async def body(client: GeostoreClient) -> int:
        from_seq = args.from_seq
        total = 0
        while True:
            result = await page(client, from_seq)
            total += len(result.events)
            if args.json:
                for ev in result.events:
                    print(json.dumps(ev.to_dict(), separators=(",", ":"), default=str))
            else:
                rows = [
                    (ev.seq, format_ts(ev.ts), ev.key or "", ev.epoch, compact_json(ev.body, 80))
                    for ev in result.events
                ]
                if rows:
                    print(table(("seq", "ts", "key", "epoch", "body"), rows, right=(0, 3)))
            done = result.next_seq == from_seq or (not result.events and not timed)
            from_seq = result.next_seq
            if not args.all or done:
                break
        if not args.json:
            print(
                f"{total:,} events from {args.stream}/{args.partition}; "
                f"continue with --from-seq {from_seq}"
            )
        return 0

    return run_with_client(args, body)
