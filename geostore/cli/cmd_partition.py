"""``geostore partition move``: move a partition's home to another region on purpose.

``partition move --cluster DIR STREAM/P --to REGION [--timeout-ms N] [--json]`` sends
``POST /v1/admin/partitions/{STREAM}/{P}/move`` to a node of the target region (any node
forwards it to the current home region's leader, which runs the move: fence, drain the tail
to the target, bump the epoch in the metadata group, open at the target) and prints the
pause of each phase. ``--to`` the current home lifts a fence left by an interrupted move.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from geostore.cli.opsclient import ClusterCall, print_table

HELP = "partition operations (partition move --cluster DIR STREAM/P --to REGION)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{move}")
    mv = sub.add_parser("move", help="move a partition's home to another region (planned)")
    mv.add_argument("--cluster", required=True, help="the folder 'geostore cluster up' made")
    mv.add_argument("target", metavar="STREAM/P", help="the partition, e.g. flights/0")
    mv.add_argument("--to", required=True, help="the region that becomes its home")
    mv.add_argument(
        "--timeout-ms", type=int, default=10_000, help="give up fencing+draining after this"
    )
    mv.add_argument("--json", action="store_true", help="print the answer as JSON")


def _parse_target(text: str) -> tuple[str, int]:
    stream, sep, part = text.rpartition("/")
    if not sep or not stream or not part.isdigit():
        raise SystemExit(f"geostore partition: error: {text!r} is not STREAM/PARTITION")
    return stream, int(part)


def run(args: argparse.Namespace) -> int:
    stream, part = _parse_target(args.target)
    call = ClusterCall.load(args.cluster)
    if args.to not in call.regions:
        print(f"geostore partition: error: no region {args.to!r}; regions: {call.region_list()}")
        return 1
    if not args.json:
        print(f"moving {stream}/{part} to {args.to} (fence, drain, bump, open)...", flush=True)
    status, body = call.post(
        args.to,
        f"/v1/admin/partitions/{stream}/{part}/move",
        {"to": args.to, "timeout_ms": args.timeout_ms},
        timeout_s=args.timeout_ms / 1000 + 15,
    )
    if status != 200:
        print(f"geostore partition: error: {call.describe(status, body)}")
        return 1
    answer: dict[str, Any] = body
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    if not answer.get("changed"):
        extra = " (a leftover fence was lifted)" if answer.get("unfenced") else ""
        print(f"{stream}/{part} is already homed in {args.to}{extra}")
        return 0
    pauses = answer.get("pauses_ms", {})
    rows = [[phase, f"{ms}"] for phase, ms in pauses.items()]
    rows.append(["total pause", f"{answer.get('pause_ms')}"])
    print(
        f"{stream}/{part}: {answer['from']} -> {answer['to']}, epoch {answer['epoch']}, "
        f"fork at seq {answer['fork_seq']}"
    )
    print_table(["phase", "ms"], rows)
    if not answer.get("opened"):
        print(f"note: {args.to} had not applied the new epoch within the wait; it will shortly")
    return 0
