"""What the client commands of the CLI share (``geostore append|read|tail|aggregate|stream``).

The common options (``--cluster``, ``--region``, ``--timeout``, ``--cbor``, and the
credentials ``--ca``, ``--cert``, ``--cert-key``, ``--token`` or ``$GEOSTORE_TOKEN``), running one
coroutine with a client, readable tables, event-time parsing and printing, and the one-line
error with what to do next. It lives beside the client so the commands stay thin.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from geostore.client.client import GeostoreClient
from geostore.client.errors import CallTimeout, RequestFailed, TlsFailed, Unreachable
from geostore.errors import ErrorCode, GeostoreError

#: What to do next, per error code (the message says what went wrong).
_HINTS: dict[ErrorCode, str] = {
    ErrorCode.UNKNOWN_STREAM: "create it with 'geostore stream create --cluster DIR NAME'",
    ErrorCode.UNKNOWN_PARTITION: "check the stream's partitions with 'geostore cluster status'",
    ErrorCode.MALFORMED: "fix the request (see 'geostore COMMAND --help' and docs/api.md)",
    ErrorCode.SCHEMA_VIOLATION: "make the events match the stream's schema",
    ErrorCode.TOO_LARGE: "send fewer or smaller events per request, or narrow the range",
    ErrorCode.FIELD_NOT_INDEXED: "aggregate an indexed field, or pass --scan-limit N",
    ErrorCode.CONFLICT: "the stream exists with another definition: use another name",
    ErrorCode.NOT_LEADER: "the region is electing a leader: retry in a few seconds",
    ErrorCode.NO_QUORUM: "too few nodes of the region are up: check 'geostore cluster status'",
    ErrorCode.UNAVAILABLE: "is the cluster up? check 'geostore cluster status --dir DIR'",
    ErrorCode.WAIT_TIMEOUT: "retry, raise --timeout, or check 'geostore cluster status'",
    ErrorCode.WRONG_REGION: "pass one of the cluster's regions with --region",
    ErrorCode.UNAUTHORIZED: (
        "pass a valid token with --token or $GEOSTORE_TOKEN "
        "(an operator mints one with 'geostore certs token')"
    ),
    ErrorCode.FORBIDDEN: "use a token that holds the role named above, or ask an operator for one",
}
#: Where the CLI takes a bearer token from when --token is not given.
TOKEN_ENV = "GEOSTORE_TOKEN"


def add_client_arguments(parser: argparse.ArgumentParser, *, stream: bool = True) -> None:
    parser.add_argument(
        "--cluster", required=True, metavar="DIR", help="folder 'geostore cluster up' made"
    )
    parser.add_argument(
        "--region", default=None, help="your region (may be omitted when there is only one)"
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="deadline of each call (s)"
    )
    parser.add_argument("--cbor", action="store_true", help="talk CBOR instead of JSON")
    parser.add_argument(
        "--ca", default=None, metavar="PEM", help="cluster CA to trust (default: cluster.json's)"
    )
    parser.add_argument("--cert", default=None, metavar="PEM", help="client certificate (mTLS)")
    # not --key: that is append's partitioning key
    parser.add_argument(
        "--cert-key", dest="tls_key", default=None, metavar="PEM", help="private key of --cert"
    )
    parser.add_argument(
        "--token",
        default=None,
        metavar="SECRET",
        help=f"bearer token (default: ${TOKEN_ENV}; prefer the variable: argv is visible)",
    )
    if stream:
        parser.add_argument("stream", metavar="STREAM", help="stream name")


def make_client(args: argparse.Namespace) -> GeostoreClient:
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
    return GeostoreClient.from_cluster(
        args.cluster,
        args.region,
        content_type="cbor" if args.cbor else "json",
        timeout_s=args.timeout,
        ca=getattr(args, "ca", None),
        cert=getattr(args, "cert", None),
        key=getattr(args, "tls_key", None),
        token=token,
    )


def run_with_client(
    args: argparse.Namespace, body: Callable[[GeostoreClient], Awaitable[int]]
) -> int:
    """Run ``body`` with a client of ``args``; typed errors become one line and exit 1."""

    async def main() -> int:
        async with make_client(args) as client:
            return await body(client)

    try:
        return asyncio.run(main())
    except GeostoreError as exc:
        print(error_line(args.command, exc), file=sys.stderr)
        return 1


def error_line(command: str, exc: GeostoreError) -> str:
    """``geostore CMD: error: WHAT (code); WHAT TO DO NEXT``."""
    if isinstance(exc, RequestFailed):
        what = f"{exc.message} ({exc.code}, HTTP {exc.status})"
    elif isinstance(exc, CallTimeout | Unreachable):
        what = exc.message
    else:
        what = f"{exc.message} ({exc.code})"
    hint = _HINTS.get(exc.code)
    if isinstance(exc, TlsFailed):
        hint = "pass the cluster CA with --ca (and --cert/--key if the node asks for one)"
    if isinstance(exc, CallTimeout):
        hint = "raise --timeout, or check 'geostore cluster status --dir DIR'"
    return f"geostore {command}: error: {what}" + (f"; {hint}" if hint else "")


def parse_ts(text: str) -> int:
    """Event time: integer microseconds since the Unix epoch, or an ISO 8601 date/time (UTC
    unless it names a zone)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither microseconds nor an ISO date such as 2013-01-01T05:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return int(when.timestamp()) * 1_000_000 + when.microsecond


def now_us() -> int:
    return int(_dt.datetime.now(_dt.UTC).timestamp() * 1_000_000)


def format_ts(ts_us: int) -> str:
    try:
        when = _dt.datetime.fromtimestamp(ts_us / 1_000_000, _dt.UTC)
    except (OverflowError, OSError, ValueError):
        return str(ts_us)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if ts_us % 1_000_000:
        text += f".{ts_us % 1_000_000:06d}"
    return text + "Z"


def compact_json(value: Any, width: int | None = None) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain text table; columns in ``right`` are right-aligned (numbers)."""
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
