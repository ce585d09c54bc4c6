"""One region's throughput and latency: geostore (3 node processes) against PySyncObj.

What it runs, on this machine, in one go:

1. geostore: a one-region topology of three nodes started with ``geostore cluster up``
   (each node its own process, file log with fsync and group commit), a stream with one
   partition, and the load generator (bench/loadgen.py) in its own process sending to the
   region's leader (JSON over HTTP, idempotent producer; ``--client raw``, the default: a
   lean keep-alive HTTP client, so the load generator takes less of the two cores from the
   nodes; ``--client client``: the Python client, GeostoreClient over aiohttp).
2. PySyncObj, the Raft library a Python user would pick instead: three processes of this
   module (``_pysyncobj-node``), each a ``SyncObj`` holding a replicated append-only list,
   behind a small aiohttp endpoint ``POST /append {"events": [...]}`` that answers once
   PySyncObj reports the command applied (committed by a majority). The same load
   generator sends the same events to its leader. PySyncObj writes its journal to a
   memory-mapped file and never fsyncs: acknowledged entries live only in page cache. Its
   list keeps every event in memory (so its RSS grows with the data; geostore's should not).

Phases (closed loop): single-event appends at concurrency 1, 16 and 64, then batches of
100 and 1,000 small synthetic events (8 and 4 outstanding, so a batch is always being
encoded, replicated and synced while others wait). Reported per system and phase:
requests/s, events/s, p50/p99 latency, and CPU microseconds per acknowledged event for
every node process and the load generator (from /proc, over the measured window).

``--quick`` runs each phase for 2 s after a 0.5 s warm-up (about a minute in all).
``--soak-minutes 10`` replaces the phases by one constant open-loop load and reports each
node's RSS growth between minute 2 and the end (the target: under 10%), with a table of
every node's RSS at each minute of the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.results import Metric, Result, emit

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("closed:1:1", "closed:16:1", "closed:64:1", "closed:8:100", "closed:4:1000")
NODES = ("n1", "n2", "n3")
DURABILITY = {
    "geostore": "fsync before ack (group commit), quorum of 3",
    "pysyncobj": "NO fsync (mmap journal, page cache), quorum of 3",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _python() -> str:
    return sys.executable


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _loadgen(
    name: str, target_args: list[str], pids: dict[str, int], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    cmd = [
        _python(), "-m", "bench.loadgen", *target_args,
        "--duration", str(args.duration), "--warmup", str(args.warmup),
        "--workload", args.workload, "--name", name, "--json-out", str(out), "--quiet",
        "--client", args.client,
        "--cpu-pids", *[str(p) for p in pids.values()], "--cpu-names", *pids.keys(),
    ]  # fmt: skip
    for phase in args.phases:
        cmd += ["--phase", phase]
    if args.soak_minutes is not None:
        cmd += ["--rss-every", "60"]
    print(f"[{name}] load generator: {len(args.phases)} phases", file=sys.stderr, flush=True)
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
        timeout=60 + len(args.phases) * (args.duration + args.warmup) * 4,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: load generator exited {proc.returncode}")
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


# --- geostore ------------------------------------------------------------------------------


def run_geostore(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from geostore.config import make_topology

    topo = make_topology({"r1": list(NODES)}, 0.0, name="bench-region", intra_rtt_ms=0.0)
    (work / "region.toml").write_text(topo.to_toml())
    cluster = work / "geostore"
    geostore = [_python(), "-m", "geostore"]
    config: list[str] = []
    if args.node_config is not None:
        config = ["--config", str(args.node_config.resolve())]
    elif args.soak_minutes is not None and args.soak_snapshot_entries:
        # snapshots during the soak: where memory used to grow with the data
        (work / "soak.toml").write_text(
            f"[raft]\nsnapshot_threshold_entries = {args.soak_snapshot_entries}\n"
        )
        config = ["--config", str(work / "soak.toml")]
    up = subprocess.run(
        [*geostore, "cluster", "up", "--topology", str(work / "region.toml"),
         "--dir", str(cluster), "--no-netem", "--timeout", "60", *config,
         *([] if args.tls else ["--insecure"])],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    try:
        if up.returncode != 0:
            raise RuntimeError(f"geostore cluster up failed:\n{up.stdout}{up.stderr}")
        doc = json.loads((cluster / "cluster.json").read_text())
        pids = {n["id"]: int(n["pid"]) for n in doc["regions"]["r1"]["nodes"]}
        target = ["--cluster", str(cluster), "--region", "r1", "--stream", "bench",
                  "--create", "--to-leader"]  # fmt: skip
        return _loadgen("geostore", target, pids, args, work / "geostore.json")
    finally:
        subprocess.run(
            [*geostore, "cluster", "down", "--dir", str(cluster), "--timeout", "15"],
            cwd=ROOT, env=_env(), capture_output=True, timeout=60,
        )  # fmt: skip


# --- PySyncObj -----------------------------------------------------------------------------


def _pysyncobj_node(args: argparse.Namespace) -> int:
    """One PySyncObj node with its HTTP endpoint (runs in its own process)."""
    from aiohttp import web
    from pysyncobj import (  # type: ignore[import-untyped]
        FAIL_REASON,
        SyncObj,
        SyncObjConf,
        replicated,
    )

    class AppendLog(SyncObj):  # type: ignore[misc]
        """A replicated append-only list of events."""

        def __init__(self, me: str, partners: list[str], conf: Any) -> None:
            super().__init__(me, partners, conf=conf)
            self.events: list[Any] = []

        @replicated  # type: ignore[untyped-decorator]
        def append_many(self, events: list[Any]) -> int:
            first = len(self.events)
            self.events.extend(events)
            return first

    conf = SyncObjConf(
        journalFile=args.journal or None,
        appendEntriesUseBatch=args.batch_entries,
        commandsWaitLeader=True,
        dynamicMembershipChange=False,
    )
    me = f"127.0.0.1:{args.raft_port}"
    partners = [p for p in args.partners if p != me]
    log = AppendLog(me, partners, conf)

    async def append(request: web.Request) -> web.Response:
        body = await request.json()
        events = body["events"]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, Any]] = loop.create_future()

        def settle(result: Any, error: Any) -> None:
            if not fut.done():
                fut.set_result((result, error))

        def done(result: Any, error: Any) -> None:  # on PySyncObj's thread
            loop.call_soon_threadsafe(settle, result, error)

        log.append_many(events, callback=done)
        result, error = await asyncio.wait_for(fut, 30)
        if error != FAIL_REASON.SUCCESS:
            return web.json_response({"error": f"pysyncobj failure {error}"}, status=503)
        return web.json_response({"first": result, "count": len(events)})

    async def health(request: web.Request) -> web.Response:
        leader = log._getLeader()
        status = 200 if log.isReady() and leader is not None else 503
        return web.json_response(
            {"me": me, "leader": str(leader) if leader else None, "is_leader": str(leader) == me},
            status=status,
        )

    app = web.Application()
    app.router.add_post("/append", append)
    app.router.add_get("/health", health)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.http_port).start()
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await runner.cleanup()

    asyncio.run(serve())
    log.destroy()
    return 0


def _get(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except urllib.error.HTTPError as err:
        doc = json.loads(err.read() or b"{}")
        return doc
    except (OSError, ValueError):
        return None


def run_pysyncobj(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    raft_ports = [_free_port() for _ in NODES]
    http_ports = [_free_port() for _ in NODES]
    partners = [f"127.0.0.1:{p}" for p in raft_ports]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    (work / "pysyncobj").mkdir(exist_ok=True)
    try:
        for name, rp, hp in zip(NODES, raft_ports, http_ports, strict=True):
            journal = str(work / "pysyncobj" / f"{name}.journal") if args.journal else ""
            cmd = [_python(), "-m", "bench.region", "_pysyncobj-node", "--raft-port", str(rp),
                   "--http-port", str(hp), "--journal", journal, "--partners", *partners]  # fmt: skip
            if args.pysyncobj_batch:
                cmd.append("--batch-entries")
            log = open(work / "pysyncobj" / f"{name}.log", "wb")  # noqa: SIM115
            procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=log)
        leader_url = None
        deadline = time.monotonic() + 60
        while leader_url is None and time.monotonic() < deadline:
            for hp in http_ports:
                doc = _get(f"http://127.0.0.1:{hp}/health")
                if doc and doc.get("is_leader"):
                    leader_url = f"http://127.0.0.1:{hp}"
            time.sleep(0.2)
        if leader_url is None:
            raise RuntimeError(f"PySyncObj elected no leader; logs in {work / 'pysyncobj'}")
        pids = {name: p.pid for name, p in procs.items()}
        return _loadgen(
            "pysyncobj", ["--target", "http-list", "--url", leader_url], pids, args,
            work / "pysyncobj.json",
        )  # fmt: skip
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


# --- report --------------------------------------------------------------------------------


def _phases(doc: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if doc is None:
        return {}
    return {p["phase"]: p for p in doc["config"]["phases"]}


def comparison_table(docs: dict[str, dict[str, Any] | None]) -> str:
    rows = [("system", "phase", "req/s", "events/s", "p50 ms", "p99 ms", "failed",
             "CPU us/event (n1 n2 n3 | loadgen)", "durability")]  # fmt: skip
    for system, doc in docs.items():
        if doc is None:
            rows.append((system, "-", "-", "-", "-", "-", "-", "-", "NOT RUN"))
            continue
        for name, p in _phases(doc).items():
            cpu = p["cpu_us_per_event"]
            nodes = " ".join(f"{cpu[n]:.0f}" for n in NODES if n in cpu)
            rows.append((
                system, name, f"{p['requests_per_s']:,.0f}", f"{p['events_per_s']:,.0f}",
                f"{p['latency_ms']['p50']:.1f}", f"{p['latency_ms']['p99']:.1f}",
                str(sum(p["failed"].values())),
                f"{nodes} | {cpu.get('loadgen', 0):.0f}", DURABILITY[system],
            ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def rss_table(docs: dict[str, dict[str, Any] | None]) -> str:
    """Soak: each node's RSS (MiB) per minute of the measured window, and its growth."""
    lines = []
    for system, doc in docs.items():
        for name, p in _phases(doc).items():
            series = p.get("rss_series", [])
            if not series:
                continue
            procs = sorted(series[0]["rss_bytes"])
            lines.append(f"{system} {name}: RSS MiB, minutes into the measured window")
            lines.append("t_min   " + "  ".join(f"{n:>8}" for n in procs))
            for row in series:
                rss = row["rss_bytes"]
                cells = "  ".join(f"{rss.get(n, 0) / 2**20:8.1f}" for n in procs)
                lines.append(f"{row['t_s'] / 60:5.1f}   {cells}")
            first, last = series[0]["rss_bytes"], series[-1]["rss_bytes"]
            growth = "  ".join(
                f"{(last[n] - first[n]) * 100 / first[n]:7.1f}%" if first.get(n) else "       -"
                for n in procs
            )
            lines.append(f"growth  {growth}")
    return "\n".join(lines)


def to_result(
    docs: dict[str, dict[str, Any] | None], config: dict[str, Any], *, soak: bool = False
) -> Result:
    g, s = _phases(docs.get("geostore")), _phases(docs.get("pysyncobj"))
    metrics: list[Metric] = []
    for system, phases in (("geostore", g), ("pysyncobj", s)):
        for name, p in phases.items():
            for proc, rss in sorted(p.get("rss_bytes", {}).items()):
                if proc in NODES and rss["start"] > 0:
                    growth = (rss["end"] - rss["start"]) * 100 / rss["start"]
                    metrics.append(Metric(
                        f"{system}.{name}.rss_growth_pct.{proc}", growth, "%",
                        target=10.0 if soak and system == "geostore" else None, better="lower",
                    ))  # fmt: skip

    def phase_metrics(system: str, phases: dict[str, dict[str, Any]]) -> None:
        for name, p in phases.items():
            single = p["batch"] == 1
            c64 = name == "closed-c64-b1"
            b1000 = p["batch"] == 1000
            is_g = system == "geostore"
            metrics.append(Metric(
                f"{system}.{name}.{'appends' if single else 'events'}_per_s",
                p["requests_per_s"] if single else p["events_per_s"], "1/s",
                target=(3_000 if c64 else 150_000 if b1000 else None) if is_g else None,
            ))  # fmt: skip
            measured = p.get("requests_ok", 0) > 0  # no answers: no latency to meet a target
            metrics.append(Metric(
                f"{system}.{name}.p50", p["latency_ms"]["p50"], "ms",
                target=25.0 if is_g and c64 and measured else None, better="lower",
            ))  # fmt: skip
            metrics.append(Metric(f"{system}.{name}.p99", p["latency_ms"]["p99"], "ms",
                                  better="lower"))  # fmt: skip
            cpu = p["cpu_us_per_event"]
            if not single:
                for proc, value in sorted(cpu.items()):
                    metrics.append(
                        Metric(
                            f"{system}.{name}.cpu_us_per_event.{proc}", value, "us", better="lower"
                        )
                    )

    phase_metrics("geostore", g)
    phase_metrics("pysyncobj", s)
    for name in [n for n in g if n in s]:
        key = "requests_per_s" if g[name]["batch"] == 1 else "events_per_s"
        if s[name][key] > 0:
            metrics.append(
                Metric(f"ratio_geostore_to_pysyncobj.{name}", g[name][key] / s[name][key], "x")
            )
    return Result("region", config, metrics)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_pysyncobj-node"]:
        node = argparse.ArgumentParser()
        node.add_argument("--raft-port", type=int, required=True)
        node.add_argument("--http-port", type=int, required=True)
        node.add_argument("--journal", default="")
        node.add_argument("--batch-entries", action="store_true")
        node.add_argument("--partners", nargs="+", required=True)
        return _pysyncobj_node(node.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="python -m bench.region", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 s phases after 0.5 s warm-up")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per phase")
    p.add_argument("--phases", nargs="+", default=list(PHASES), help="loadgen phases")
    p.add_argument("--client", choices=("raw", "client"), default="raw",
                   help="load generator's HTTP client: raw (lean keep-alive, the default) or "
                   "client (GeostoreClient / aiohttp, a few hundred us more CPU a request)")  # fmt: skip
    p.add_argument("--workload", choices=("synthetic", "flights", "weather"), default="synthetic")
    p.add_argument("--systems", nargs="+", choices=("geostore", "pysyncobj"),
                   default=["geostore", "pysyncobj"])  # fmt: skip
    p.add_argument("--no-journal", dest="journal", action="store_false",
                   help="PySyncObj with its in-memory journal instead of the mmap file")  # fmt: skip
    p.add_argument(
        "--pysyncobj-batch",
        action="store_true",
        help="PySyncObj's appendEntriesUseBatch (its default; entries then wait for the 100 ms "
        "append period, so single-event latency is about 100 ms). Off here by default",
    )
    p.add_argument(
        "--soak-minutes",
        type=float,
        default=None,
        help="instead of the phases: a constant open-loop load for this long; RSS of each node "
        "at minute 2 (or 20%% in) and at the end (target: under 10%% growth)",
    )
    p.add_argument("--soak-rate", type=float, default=200.0, help="soak: requests/s")
    p.add_argument("--soak-batch", type=int, default=10, help="soak: events per request")
    p.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="geostore as cluster up starts it by default: HTTPS, node certificates (mTLS "
        "between nodes) and a bearer token; --no-tls runs it --insecure (plain HTTP)",
    )
    p.add_argument("--soak-snapshot-entries", type=int, default=10_000,
                   help="soak: the nodes' raft.snapshot_threshold_entries, so snapshots are "
                   "taken during the soak (0: the configured default)")  # fmt: skip
    p.add_argument("--node-config", type=Path, default=None,
                   help="a node config TOML for every geostore node (e.g. to compare a "
                   "setting); replaces the soak's snapshot setting")  # fmt: skip
    p.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2.0, 0.5
    if args.soak_minutes is not None:
        total_s = args.soak_minutes * 60
        args.warmup = min(120.0, total_s * 0.2)
        args.duration = total_s - args.warmup
        args.phases = [f"open:{args.soak_rate:g}:{args.soak_batch}"]
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-region-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    docs: dict[str, dict[str, Any] | None] = {"geostore": None, "pysyncobj": None}
    errors: dict[str, str] = {}
    try:
        for system in args.systems:
            runner = run_geostore if system == "geostore" else run_pysyncobj
            try:
                docs[system] = runner(args, work)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                errors[system] = str(exc)
                print(f"[{system}] FAILED: {exc}", file=sys.stderr)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    config = {
        "nodes_per_system": 3,
        "phases": args.phases,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "workload": args.workload,
        "durability": DURABILITY,
        "pysyncobj_journal": "mmap file" if args.journal else "memory",
        "geostore_tls": args.tls,
        "geostore_node_config": None if args.node_config is None else args.node_config.read_text(),
        "pysyncobj_append_entries_use_batch": args.pysyncobj_batch,
        "client": (
            "bench.loadgen in its own process, to the geostore leader; "
            + ("lean keep-alive HTTP/1.1, JSON" if args.client == "raw" else "GeostoreClient")
        ),
        "errors": errors,
        "wall_s": round(time.time() - started, 1),
        "runs": {k: v["config"]["phases"] if v else None for k, v in docs.items()},
    }
    print(comparison_table(docs))
    print()
    if args.soak_minutes is not None:
        print(rss_table(docs))
        print()
    if args.soak_minutes is not None:
        config["soak_minutes"] = args.soak_minutes
        config["soak_snapshot_entries"] = args.soak_snapshot_entries
    emit(to_result(docs, config, soak=args.soak_minutes is not None), json_out=args.json_out)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
