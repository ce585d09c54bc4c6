"""``geostore region failover``: move every home of a lost region to a surviving region.

``region failover --cluster DIR LOST --to REGION [--now] [--json]`` sends
``POST /v1/admin/regions/{LOST}/failover`` to a node of ``REGION``. While the lost region's
home lease may still be held (as the survivor saw it renewed, plus a clock-drift margin) the
node answers 409 ``lease_held`` with the time left: the command waits that long, showing a
countdown, and asks again. ``--now`` skips the wait: whatever the lost region still
acknowledges until its lease runs out is orphaned (moved to its quarantine when it returns).
Prints per partition the fork, the events known to be lost and the RPO in time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from geostore.cli.opsclient import ClusterCall, print_table

HELP = "region operations (region failover --cluster DIR LOST --to REGION [--now])"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{failover}")
    fo = sub.add_parser("failover", help="move a lost region's partitions to a survivor")
    fo.add_argument("--cluster", required=True, help="the folder 'geostore cluster up' made")
    fo.add_argument("region", metavar="LOST", help="the lost region")
    fo.add_argument("--to", required=True, help="the surviving region taking its homes")
    fo.add_argument(
        "--now",
        action="store_true",
        help="do not wait for the lost region's lease to expire (risks orphaning appends it "
        "still acknowledges)",
    )
    fo.add_argument("--wait-max", type=float, default=120.0, help="longest lease wait, s")
    fo.add_argument("--json", action="store_true", help="print the answer as JSON")


def run(args: argparse.Namespace) -> int:
    call = ClusterCall.load(args.cluster)
    for name in (args.region, args.to):
        if name not in call.regions:
            print(f"geostore region: error: no region {name!r}; regions: {call.region_list()}")
            return 1
    if args.region == args.to:
        print("geostore region: error: --to must be another region than the lost one")
        return 1
    if args.now:
        print(
            f"warning: --now: {args.region} may still hold its home lease; appends it "
            "acknowledges until the lease runs out will be orphaned (quarantined on its return)",
            file=sys.stderr if args.json else sys.stdout,
        )
    started = time.monotonic()
    while True:
        status, body = call.post(
            args.to, f"/v1/admin/regions/{args.region}/failover", {"to": args.to, "now": args.now}
        )
        err = body.get("error", {}) if isinstance(body, dict) else {}
        if status == 409 and err.get("code") == "lease_held":
            left_ms = int(err.get("remaining_ms", 1000))
            if time.monotonic() - started + left_ms / 1000 > args.wait_max:
                print(
                    f"geostore region: error: {args.region}'s lease is still held "
                    f"({left_ms} ms left) after {args.wait_max:g} s: the region looks alive "
                    "(it keeps renewing). Use 'partition move' for a planned move, or --now"
                )
                return 1
            progress = sys.stderr if args.json else sys.stdout  # --json: stdout is the answer
            progress.write(
                f"\rwaiting for {args.region}'s home lease to expire: {left_ms / 1000:5.1f} s "
            )
            progress.flush()
            time.sleep(min(1.0, max(0.05, left_ms / 1000)))
            continue
        break
    waited = time.monotonic() - started
    if waited > 0.5:
        print(file=sys.stderr if args.json else sys.stdout)
    if status != 200:
        print(f"geostore region: error: {call.describe(status, body)}")
        return 1
    answer: dict[str, Any] = body
    answer["waited_ms"] = round(waited * 1000)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 1 if any("error" in p for p in answer.get("partitions", [])) else 0
    rows = []
    for p in answer.get("partitions", []):
        if "error" in p:
            rows.append([f"{p['stream']}/{p['partition']}", "-", "-", "-", "-", "-", p["error"]])
            continue
        lost = p["lost_events"]
        rows.append(
            [
                f"{p['stream']}/{p['partition']}",
                str(p["epoch"]),
                str(p["fork_seq"]),
                "unknown" if lost < 0 else f">= {lost}",
                "unknown" if p["rpo_ms"] < 0 else str(p["rpo_ms"]),
                "never heard" if p.get("silent_ms", -1) < 0 else str(p["silent_ms"]),
                f"{p.get('quarantined_here', 0)} quarantined in {args.to}"
                if p.get("quarantined_here")
                else "",
            ]
        )
    print(f"failover of {args.region} to {args.to} (waited {waited:.1f} s for the lease)")
    print_table(
        ["partition", "epoch", "fork seq", "events lost", "RPO ms", "silent ms", "note"], rows
    )
    if not rows:
        print(f"no partition was homed in {args.region}")
    if answer.get("warning"):
        print(f"warning: {answer['warning']}")
    failed = [p for p in answer.get("partitions", []) if "error" in p]
    if failed:
        print(
            f"geostore region: error: {len(failed)} partition(s) did not move (see the table); "
            "run the same failover again: moved partitions are no longer homed in "
            f"{args.region}, so it retries only these"
        )
        return 1
    print(
        f"events lost: what {args.to} knew {args.region} had committed beyond the fork (a lower "
        f"bound); silent ms: how long {args.to} had not heard from {args.region}, whose appends "
        f"in that time are unknown here. The exact events land in {args.region}'s quarantine "
        "when it returns ('geostore quarantine list')"
    )
    return 0
