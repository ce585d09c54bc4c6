"""``geostore leader transfer``: hand a region's leadership to another node, and wait for it.

``leader transfer --cluster DIR --region R [--to NODE] [--timeout S]`` finds the region's
leader from ``/v1/status``, asks it to transfer to ``NODE`` (default: the most caught-up
follower, by applied index), then polls until ``NODE`` reports itself leader. Used for
maintenance: a node about to be restarted gives up leadership first, so writes pause for one
round trip instead of an election timeout.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HELP = "leadership operations (leader transfer --cluster DIR --region R [--to NODE])"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{transfer}")
    tr = sub.add_parser("transfer", help="hand the region's leadership to another node")
    tr.add_argument("--cluster", required=True, help="the folder 'geostore cluster up' made")
    tr.add_argument("--region", default=None, help="region (default: the only/first one)")
    tr.add_argument("--to", default=None, help="target node id (default: best follower)")
    tr.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for it")


def _call(url: str, body: Any = None, timeout_s: float = 3.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    from geostore.cli.cmd_cluster import _urlopen  # with the cluster's CA and admin token

    try:
        with _urlopen(req, timeout_s) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())["error"]
            message = f"{err.get('code')}: {err.get('message')}"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise RuntimeError(message) from None


def _data_group(status: Any) -> dict[str, Any]:
    groups = (status or {}).get("groups", {})
    for name, g in groups.items():
        if str(name).startswith("data"):
            return dict(g)
    return dict(next(iter(groups.values()), {}))


def _statuses(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for n in nodes:
        try:
            out[n["id"]] = _data_group(_call(n["api"] + "/v1/status", timeout_s=2.0))
        except (OSError, RuntimeError, ValueError):
            continue
    return out


def run(args: argparse.Namespace) -> int:
    from geostore.cli.cmd_cluster import _use_credentials

    path = Path(args.cluster)
    file = path / "cluster.json" if path.is_dir() else path
    cluster = json.loads(file.read_text())
    _use_credentials(cluster, str(file.parent))
    regions = cluster["regions"]
    region = args.region or next(iter(regions))
    if region not in regions:
        print(f"geostore leader: error: no region {region!r}; regions: {', '.join(regions)}")
        return 1
    nodes = regions[region]["nodes"]
    by_id = {n["id"]: n for n in nodes}
    statuses = _statuses(nodes)
    leader = next((i for i, g in statuses.items() if g.get("role") == "leader"), None)
    if leader is None:
        print(f"geostore leader: error: region {region} has no leader now; try again shortly")
        return 1
    target = args.to
    if target is None:
        followers = [(g.get("applied", 0), i) for i, g in statuses.items() if i != leader]
        if not followers:
            print("geostore leader: error: no follower answers; nothing to transfer to")
            return 1
        target = max(followers)[1]
    if target not in by_id:
        print(f"geostore leader: error: no node {target!r} in region {region}")
        return 1
    if target == leader:
        print(f"{target} already leads region {region}")
        return 0
    started = time.monotonic()
    try:
        _call(by_id[leader]["api"] + "/v1/admin/leader/transfer", {"to": target})
    except (OSError, RuntimeError) as exc:
        print(f"geostore leader: error: {leader} refused the transfer ({exc}); try again")
        return 1
    deadline = started + args.timeout
    while time.monotonic() < deadline:
        g = _statuses([by_id[target]]).get(target, {})
        if g.get("role") == "leader":
            took_ms = (time.monotonic() - started) * 1000
            print(f"leadership of {region}: {leader} -> {target} in {took_ms:.0f} ms "
                  f"(term {g.get('term')})")  # fmt: skip
            return 0
        time.sleep(0.05)
    print(f"geostore leader: error: {target} did not become leader within {args.timeout:g} s")
    return 1
