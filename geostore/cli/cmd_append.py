"""``geostore append``: append events to a stream through the client (idempotent producer).

``--body JSON`` appends one event with that body; ``--file events.jsonl`` appends one event
per line, sent in batches of ``--batch`` events. A line that is an object with a ``body``
field is taken as a whole event (``ts``, ``key``, ``partition`` may be given); any other
line is the body. ``--partition``, ``--key`` and ``--ts`` apply to events that do not say.
Prints each partition's seq range (or JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geostore.client import GeostoreClient

HELP = "append events to a stream (--body JSON | --file events.jsonl)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from geostore.client.cli_support import add_client_arguments, parse_ts

    add_client_arguments(parser)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--body", metavar="JSON", help="body of one event, as JSON")
    src.add_argument("--file", metavar="PATH", help="JSON lines, one event (or body) a line")
    parser.add_argument("--partition", type=int, default=None, help="partition of the events")
    parser.add_argument("--key", default=None, help="partitioning key of the events")
    parser.add_argument("--ts", type=parse_ts, default=None, help="event time (us or ISO)")
    parser.add_argument(
        "--batch", type=int, default=1000, metavar="N", help="events per request (--file)"
    )
    parser.add_argument("--json", action="store_true", help="print each answer as a JSON line")


def _event(obj: Any, args: argparse.Namespace) -> dict[str, Any]:
    event: dict[str, Any] = dict(obj) if isinstance(obj, dict) and "body" in obj else {"body": obj}
    if args.partition is not None:
        event.setdefault("partition", args.partition)
    if args.key is not None:
        event.setdefault("key", args.key)
    if args.ts is not None:
        event.setdefault("ts", args.ts)
    return event


def _events(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    from geostore.errors import ApiError, ErrorCode

    if args.body is not None:
        try:
            yield _event({"body": json.loads(args.body)}, args)
        except ValueError as exc:
            raise ApiError(ErrorCode.MALFORMED, f"--body is not JSON: {exc}") from None
        return
    try:
        handle = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise ApiError(ErrorCode.MALFORMED, f"cannot open {args.file}: {exc.strerror}") from None
    with handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield _event(json.loads(line), args)
            except ValueError as exc:
                raise ApiError(
                    ErrorCode.MALFORMED, f"{args.file}:{lineno}: not JSON: {exc}"
                ) from None


def run(args: argparse.Namespace) -> int:
    from geostore.client.cli_support import run_with_client, table

    if args.batch < 1:
        print("geostore append: error: --batch must be at least 1", file=sys.stderr)
        return 2

    async def body(client: GeostoreClient) -> int:
        totals: dict[int, list[int]] = {}  # partition -> [first, last, epoch, count]
        failed = 0
        batch: list[dict[str, Any]] = []
        sent = 0

        async def flush() -> None:
            nonlocal failed, sent
            result = await client.append(args.stream, batch)
            sent += len(batch)
            batch.clear()
            if args.json:
                print(
                    json.dumps(
                        {
                            "results": [
                                {
                                    "partition": r.partition,
                                    "first_seq": r.first_seq,
                                    "last_seq": r.last_seq,
                                    "epoch": r.epoch,
                                }
                                for r in result.results
                            ]
                            + [
                                {"partition": e.partition, "error": e.error.to_body()["error"]}
                                for e in result.errors
                            ],
                            "token": result.token,
                        }
                    )
                )
            for r in result.results:
                t = totals.setdefault(r.partition, [r.first_seq, r.last_seq, r.epoch, 0])
                t[0], t[1] = min(t[0], r.first_seq), max(t[1], r.last_seq)
                t[2], t[3] = r.epoch, t[3] + r.count
            for e in result.errors:
                failed += 1
                print(
                    f"geostore append: partition {e.partition} failed: {e.error.message} "
                    f"({e.error.code})",
                    file=sys.stderr,
                )
            if args.file and sys.stderr.isatty():
                print(f"\r{sent:,} events appended", end="", file=sys.stderr, flush=True)

        for event in _events(args):
            batch.append(event)
            if len(batch) >= args.batch:
                await flush()
        if batch:
            await flush()
        if args.file and sys.stderr.isatty():
            print(file=sys.stderr)
        if not args.json:
            rows = [(p, t[3], t[0], t[1], t[2]) for p, t in sorted(totals.items())]
            print(
                table(
                    ("partition", "events", "first_seq", "last_seq", "epoch"),
                    rows,
                    right=(0, 1, 2, 3, 4),
                )
            )
            print(f"{sum(t[3] for t in totals.values()):,} events appended to {args.stream}")
        return 1 if failed else 0

    return run_with_client(args, body)
