"""``geostore stream create``: create a stream (idempotent for an identical definition).

``--schema`` takes JSON (or ``@file.json``): ``{"attributes": [{"name", "type",
"required"?, "indexed"?}]}``; ``--home P=REGION`` (repeatable) sets partition homes.
Prints the stream and each partition's home and epoch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geostore.client import GeostoreClient

HELP = "create streams (stream create NAME)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from geostore.client.cli_support import add_client_arguments

    sub = parser.add_subparsers(dest="action", required=True, metavar="{create}")
    p = sub.add_parser("create", help="create a stream", description="create a stream")
    add_client_arguments(p, stream=False)
    p.add_argument("name", metavar="NAME", help="stream name")
    p.add_argument("--partitions", type=int, default=1, help="number of partitions")
    p.add_argument("--key-field", default=None, help="body field that routes events")
    p.add_argument("--schema", default=None, help="schema as JSON, or @FILE")
    p.add_argument(
        "--home", action="append", default=[], metavar="P=REGION", help="home of partition P"
    )
    p.add_argument("--json", action="store_true", help="print the answer as JSON")


def _schema(text: str | None) -> dict[str, Any] | None:
    from geostore.errors import ApiError, ErrorCode

    if text is None:
        return None
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        value = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ApiError(ErrorCode.MALFORMED, f"--schema: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(ErrorCode.MALFORMED, "--schema must be a JSON object")
    return value


def _homes(items: list[str]) -> dict[int, str] | None:
    from geostore.errors import ApiError, ErrorCode

    homes: dict[int, str] = {}
    for item in items:
        part, sep, region = item.partition("=")
        if not sep or not part.isdigit() or not region:
            raise ApiError(ErrorCode.MALFORMED, f"--home {item!r}: use PARTITION=REGION")
        homes[int(part)] = region
    return homes or None


def run(args: argparse.Namespace) -> int:
    from geostore.client.cli_support import error_line, run_with_client, table
    from geostore.errors import GeostoreError

    try:
        schema, homes = _schema(args.schema), _homes(args.home)
    except GeostoreError as exc:
        print(error_line("stream", exc))
        return 1
    args.command = "stream create"

    async def body(client: GeostoreClient) -> int:
        info = await client.create_stream(args.name, args.partitions, args.key_field, schema, homes)
        if args.json:
            print(
                json.dumps(
                    {
                        "name": info.name,
                        "partitions": info.partitions,
                        "key_field": info.key_field,
                        "schema": info.schema,
                        "homes": [
                            {"partition": h.partition, "home": h.home, "epoch": h.epoch}
                            for h in info.homes
                        ],
                    }
                )
            )
            return 0
        print(
            f"stream {info.name}: {info.partitions} partition(s)"
            + (f", key field {info.key_field}" if info.key_field else "")
            + (", with schema" if info.schema else "")
        )
        rows = [(h.partition, h.home or "-", h.epoch) for h in info.homes]
        if rows:
            print(table(("partition", "home", "epoch"), rows, right=(0, 2)))
        return 0

    return run_with_client(args, body)
