"""``geostore aggregate``: count/min/max/sum/avg of a numeric body field over a time range.

The range is ``[--from-ts, --to-ts)`` (microseconds or ISO dates; default: the 365 days up to
now); ``--window-us`` adds fixed windows. The table's last line says what the answer cost
(blocks read, events decoded, summaries used), so an aggregate answered from summaries shows.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geostore.client import GeostoreClient

HELP = "count/min/max/sum/avg of a field over a time range"

_DEFAULT_SPAN_US = 365 * 86_400 * 1_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from geostore.client.cli_support import add_client_arguments, parse_ts

    add_client_arguments(parser)
    parser.add_argument("--field", required=True, help="numeric body field")
    parser.add_argument("--from-ts", type=parse_ts, default=None, help="range start (us or ISO)")
    parser.add_argument("--to-ts", type=parse_ts, default=None, help="range end, exclusive")
    parser.add_argument("--partition", type=int, default=None, help="one partition (default all)")
    parser.add_argument("--window-us", type=int, default=None, help="fixed window length (us)")
    parser.add_argument("--scan-limit", type=int, default=None, help="allow a bounded scan")
    parser.add_argument("--consistency", choices=("local", "regional", "strong"), default=None)
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def run(args: argparse.Namespace) -> int:
    from geostore.client.cli_support import format_ts, now_us, run_with_client, table

    to_ts = args.to_ts if args.to_ts is not None else now_us()
    from_ts = args.from_ts if args.from_ts is not None else to_ts - _DEFAULT_SPAN_US

    async def body(client: GeostoreClient) -> int:
        agg = await client.aggregate(
            args.stream,
            args.field,
            from_ts,
            to_ts,
            partition=args.partition,
            window_us=args.window_us,
            scan_limit=args.scan_limit,
            consistency=args.consistency,
        )
        if args.json:
            doc: dict[str, Any] = {
                "count": agg.count,
                "min": agg.min,
                "max": agg.max,
                "sum": agg.sum,
                "avg": agg.avg,
                "stats": agg.stats,
            }
            if agg.windows is not None:
                doc["windows"] = [
                    {
                        "start_ts": w.start_ts,
                        "end_ts": w.end_ts,
                        "count": w.count,
                        "min": w.min,
                        "max": w.max,
                        "sum": w.sum,
                        "avg": w.avg,
                    }
                    for w in agg.windows
                ]
            print(json.dumps(doc))
            return 0
        rows: list[tuple[object, ...]] = []
        for w in agg.windows or ():
            rows.append(
                (format_ts(w.start_ts), w.count, _n(w.min), _n(w.max), _n(w.sum), _n(w.avg))
            )
        rows.append(("all", agg.count, _n(agg.min), _n(agg.max), _n(agg.sum), _n(agg.avg)))
        print(
            f"{args.stream}.{args.field} over [{format_ts(from_ts)}, {format_ts(to_ts)})"
            + (f", partition {args.partition}" if args.partition is not None else "")
        )
        print(table(("window", "count", "min", "max", "sum", "avg"), rows, right=(1, 2, 3, 4, 5)))
        if agg.stats:
            print("cost: " + ", ".join(f"{k} {v}" for k, v in agg.stats.items()))
        return 0

    return run_with_client(args, body)


def _n(value: int | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return f"{value:,}"
