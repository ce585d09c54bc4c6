"""``geostore demo``: single-leader against multi-leader on three continents, side by side.

What it runs (``make demo``): ``regions/three-continents.toml`` (9 node processes, the WAN
emulator on every inter-region link with the measured RTTs, jitter and bandwidth), once in
each mode for ``--duration`` seconds (default 60) after a short warm-up: multi-leader (per
region Raft groups, partition *i* homed in region *i*, the geo layer shipping between them)
and single-leader (one global Raft group led from ``--leader-region``); after the multi-leader
run, ``--baseline`` seconds of the first region's nodes alone (no WAN, no geo layer) under
the same load give the one-region figure the local appends are held against. In both, one
load-generator process per region keeps 4 appends of real 2013 flights outstanding (closed
loop). The runner is bench/compare.py; a progress bar shows each run. Then it prints the
side-by-side table per region (p50/p99 append latency and throughput per mode, each p50
beside its physical floor and the ratio), replication lag per link beside the RTT
(multi-leader), WAN bytes raw/compressed, renders the report with its plots
(bench/report.py) into ``--out`` and prints its path. Every cluster is torn down.

``--region-only`` keeps the earlier demo: one region of three node processes, real flights
appended, reads and aggregates, the leader SIGKILLed under load and a check that every
acknowledged event survived (``--events``, ``--batch``, ``--dir``, ``--topology``, ``--keep``
apply to it).
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
from typing import Any, Literal

HELP = "single-leader vs multi-leader on three continents under netem, side by side"

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
    parser.add_argument(
        "--duration", type=float, default=60.0, help="measured seconds per mode (60)"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first (5)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="outstanding appends per region (4)"
    )
    parser.add_argument("--leader-region", default=None, help="single-leader's region (first)")
    parser.add_argument(
        "--baseline",
        type=float,
        default=20.0,
        help="measured seconds of the one-region baseline after multi-leader (20; 0: none)",
    )
    parser.add_argument(
        "--out", default=None, help="report folder (default: a new temp folder, printed)"
    )
    parser.add_argument(
        "--region-only",
        action="store_true",
        help="the one-region demo instead: appends, reads, a leader SIGKILL, a loss check",
    )
    parser.add_argument("--events", type=int, default=20_000, help="flights to append")
    parser.add_argument("--batch", type=int, default=500, help="events per append request")
    parser.add_argument("--dir", default=None, help="cluster folder (default: a temp folder)")
    parser.add_argument(
        "--topology",
        default=None,
        help="topology file (three-continents.toml; --region-only: local.toml)",
    )
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
    if args.region_only:
        return _run_region_only(args)
    return _run_comparison(args)


def _run_region_only(args: argparse.Namespace) -> int:
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


# --- the comparison demo ------------------------------------------------------------------

MODES = ("multi-leader", "single-leader")


class _Progress:
    """Progress lines from bench/compare.py: the bar redraws in place on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.open_bar = False

    def __call__(self, line: str) -> None:
        is_bar = "] " in line and " s " in line and line.split("] ", 1)[1].startswith("[")
        if self.tty and is_bar:
            sys.stdout.write("\r  " + line.ljust(90))
            self.open_bar = True
        else:
            if self.open_bar:
                sys.stdout.write("\n")
                self.open_bar = False
            sys.stdout.write("  " + line + "\n")
        sys.stdout.flush()


def _bench_root() -> Path:
    """The checkout's root holding bench/ (found like ``geostore bench`` finds it)."""
    from geostore.cli.cmd_bench import _importable, repo_root

    root = repo_root()
    _importable(root)
    return root


def comparison_tables(docs: dict[str, dict[str, Any]], topology: Any) -> str:
    """The side-by-side tables of two comparison results (keyed by mode) as text."""
    from bench.floor import append_floor_ms, lag_ack_floor_ms, ratio

    regions = [r for r in topology.region_names() if all(r in d["regions"] for d in docs.values())]
    modes = [m for m in MODES if m in docs]

    def floor(mode: str, region: str) -> float | None:
        doc = docs[mode]
        fsync = (doc.get("fsync_ms") or {}).get("p50")
        if fsync is None:
            return None
        leader = doc["config"].get("leader_region")
        kind: Literal["multi-leader", "single-leader"] = (
            "single-leader" if mode == "single-leader" else "multi-leader"
        )
        return append_floor_ms(
            topology, kind, region, float(fsync), leader_region=leader, intra_rtt_ms=0.0
        )

    headers = ["region"]
    for m in modes:
        short = "ML" if m == "multi-leader" else "SL"
        headers += [f"{short} p50", f"{short} floor", f"{short} x floor", f"{short} p99"]
        headers += [f"{short} ev/s"]
    rows: list[list[Any]] = []
    for region in regions:
        row: list[Any] = [region]
        for m in modes:
            r = docs[m]["regions"][region]
            p50 = float(r["latency_ms"]["p50"])
            f = floor(m, region)
            x = ratio(p50, f)
            row += [p50, f, None if x is None else f"{x:.2f}x", float(r["latency_ms"]["p99"])]
            row += [float(r["throughput_events_per_s"])]
        rows.append(row)
    total: list[Any] = ["all regions"]
    totals = {}
    for m in modes:
        totals[m] = sum(float(r["throughput_events_per_s"]) for r in docs[m]["regions"].values())
        total += ["", "", "", "", totals[m]]
    rows.append(total)
    title = "Append latency (ms) and throughput (events/s) per region; floor = RTTs + one fsync"
    out = [_table(title, headers, rows)]
    if len(totals) == 2 and totals["single-leader"] > 0:
        x = totals["multi-leader"] / totals["single-leader"]
        out.append(f"  multi-leader / single-leader aggregate throughput: {x:.1f}x")
    one = (docs.get("multi-leader") or {}).get("one_region")
    if one:
        base = float(one["latency_ms"]["p50"])
        local = {r: float(docs["multi-leader"]["regions"][r]["latency_ms"]["p50"]) for r in regions}
        worst = max(local, key=lambda r: local[r]) if local else None
        if worst is not None and base > 0:
            out.append(
                f"  multi-leader local p50 / one-region p50: {local[worst] / base:.2f}x "
                f"(worst region {worst}, {local[worst]:.1f} ms; {one['region']} alone, same "
                f"load: p50 {base:.1f} ms, {float(one['throughput_events_per_s']):.0f} events/s)"
            )
    for m in modes:
        fs = docs[m].get("fsync_ms")
        cpu = docs[m].get("cpu") or {}
        out.append(f"  {m}: fsync p50 {fs['p50']:.2f} ms (same run)" if fs else f"  {m}: fsync -")
        if "machine_cpu_pct" in cpu:
            flag = "  CPU-BOUND (figures limited by this machine)" if cpu.get("cpu_bound") else ""
            out[-1] += f"; machine CPU {cpu['machine_cpu_pct']:.0f}%{flag}"
        procs = [p for p in (cpu.get("processes") or {}).values() if "runq_wait_s" in p]
        ran = sum(float(p["cpu_s"]) for p in procs)
        if ran > 0:
            waited = sum(float(p["runq_wait_s"]) for p in procs)
            out[-1] += f"; processes waited {waited / ran:.1f} s for a core per CPU second"
    lag_rows: list[list[Any]] = []
    byte_rows: list[list[Any]] = []
    for m in modes:
        for key, link in sorted((docs[m].get("links") or {}).items()):
            lag = link.get("lag_ms") or {}
            applied = link.get("apply_lag_ms") or {}
            rtt = lag_ack_floor_ms(topology, link["src"], link["dst"])
            one_way = topology.one_way_ms(link["src"], link["dst"])
            if lag or applied:
                lag_rows.append(
                    [
                        m,
                        key,
                        applied.get("p50"),
                        applied.get("p99"),
                        one_way + 50.0,
                        lag.get("p50"),
                        lag.get("p99"),
                        rtt + 50.0,
                    ]
                )
            raw, comp = link.get("wan_bytes_raw"), link.get("wan_bytes_compressed")
            zratio = f"{raw / comp:.1f}x" if raw and comp else None
            byte_rows.append([m, key, raw, comp, zratio, link.get("wan_bytes_wire")])
    if lag_rows:
        out.append(
            _table(
                "Replication lag per link, ms (multi-leader). Per event: its home commit to its "
                "apply in the destination region (the issue's target: p99 < one-way + 50). "
                "Oldest unacked: age of the oldest committed event the destination has not "
                "acknowledged, sampled once a second (its floor is one RTT)",
                [
                    "mode",
                    "link",
                    "event p50",
                    "event p99",
                    "one-way+50",
                    "unacked p50",
                    "unacked p99",
                    "RTT+50",
                ],
                lag_rows,
            )
        )
    if byte_rows:
        out.append(
            _table(
                "WAN bytes per link, measured window: shipper payload raw and zstd, and what "
                "the emulator carried (all traffic of the pair)",
                ["mode", "link", "raw B", "zstd B", "ratio", "wire B"],
                byte_rows,
            )
        )
    return "\n".join(out)


def _run_comparison(args: argparse.Namespace) -> int:
    root = _bench_root()
    from bench.compare import attach_one_region, one_region_baseline, result_name, run_mode
    from bench.report import render_report, written_files
    from geostore.config import load_topology

    topology_path = (
        Path(args.topology) if args.topology else root / "regions" / "three-continents.toml"
    )
    topology = load_topology(topology_path)
    out = Path(args.out or tempfile.mkdtemp(prefix="geostore-demo-report-")).resolve()
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    leader = args.leader_region or str(topology.region_names()[0])
    per_mode = args.warmup + args.duration
    print(
        f"geostore demo: single-leader vs multi-leader on {topology.name} "
        f"({len(topology.region_names())} regions, WAN emulated), {args.concurrency} appends "
        f"outstanding per region, {per_mode:.0f} s per mode plus cluster start and stop"
    )
    progress = _Progress()
    docs: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for i, mode in enumerate(MODES, 1):
        print(f"\n[{i}/2] {mode}" + (f" (led from {leader})" if mode == "single-leader" else ""))
        docs[mode] = run_mode(
            topology_path,
            mode,
            duration_s=args.duration,
            warmup_s=args.warmup,
            concurrency_per_region=args.concurrency,
            batch=1,
            workload="flights",
            leader_region=leader,
            out_dir=results,
            progress=progress,
        )
        if mode == "multi-leader" and args.baseline > 0:
            first = str(topology.region_names()[0])
            print(f"\n[{i}/2] one-region baseline: {first}'s nodes alone (no WAN), same load")
            baseline = one_region_baseline(
                topology_path,
                first,
                duration_s=args.baseline,
                warmup_s=args.warmup,
                concurrency_per_region=args.concurrency,
                batch=1,
                workload="flights",
                out_dir=out,
                progress=progress,
            )
            docs[mode] = attach_one_region(results / result_name(topology.name, mode), baseline)
    print(comparison_tables(docs, topology))
    report = render_report(sorted(results.glob("*.json")), out)
    images = len(written_files(report)) - 1
    print(f"\nreport: {report} ({images} plots); results: {results}")
    print(f"demo took {time.monotonic() - started:.0f} s; every cluster is stopped")
    return 0
