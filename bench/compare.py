"""The mode comparison runner: one mode on one topology under the emulated WAN, one result file.

Theory of operation
-------------------
:func:`run_mode` brings a real cluster up (``geostore cluster up`` in a child process, in a
fresh folder under the output folder) in the mode asked for, with one extra stream
``compare`` appended to the topology: one partition per region, partition *i* homed in
region *i*. In multi-leader mode each region's partition is led from its own region and
shipped to the others by the geo layer; in single-leader mode the same stream lives in the
one global group led from the preferred region. Then it starts one load-generator *process*
per region (``python -m bench.compare worker``: the closed loop of bench/loadgen.py, N
requests outstanding, every event pinned to the region's own partition, or with
``remote_write_share`` to another region's), lets them prime their workload, and starts them
all at once by a line on their stdin. A worker sends through ``LeanAppender``: lean
keep-alive HTTP/1.1 (TLS and token as the cluster asks) to the node GeostoreClient picked,
with the client's idempotent producer, and anything but a clean answer retried through
GeostoreClient itself with the same producer pair, so leader changes and refusals are
handled as a user's client handles them, while the common path costs the shared cores a
fraction of an aiohttp request. Every worker prints its completed-request count twice a
second (the live throughput the progress line shows) and writes its measured window (the
loadgen's HDR histogram, encoded) as JSON at the end.

While the workers run, the runner samples, once a second, the replication lag per link from
the home leaders' ``/v1/status`` (multi-leader: the age of the oldest committed event the
destination has not acknowledged), and at the measured window's two edges: CPU seconds of
every node process (``/proc/PID/stat``) and the time its threads waited for a core
(``/proc/PID/task/*/schedstat``), the machine's busy share (``/proc/stat``), every
node's ``geostore_fsync_seconds`` histogram (``/metrics``), the shippers' raw and compressed
byte counters and the WAN emulator's wire bytes per directed link. Window deltas of these
go into the result. The cluster always comes down (``finally``). The document is checked
with ``validate_comparison`` before it is written.

The functions that turn samples into the schema (``machine_cpu_pct``, ``fsync_percentiles``,
``link_results``, ``build_result``...) are pure, so they are tested on their own.

WAN bytes per link: the emulator's proxies count the bytes they carry per proxy and
direction; ``wan_bytes_wire`` of link SRC -> DST is every byte that crossed it that way
(requests on connections SRC opened, answers on those DST opened; :func:`wire_bytes_per_link`),
so it includes framing, heartbeats, acks and, in single-leader mode, all Raft traffic and
forwarded client requests. The shipper's raw (CBOR) and compressed (zstd) payload counters
are per directed link: the home leader's ``/v1/status`` gives them per destination region
(``geo.shipper.destinations``), as the shipper builds every batch for one destination.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.compare_schema import (
    CPU_BOUND_PCT,
    SCHEMA,
    validate_comparison,
)
from bench.geo import apply_lag_buckets_of
from bench.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent
STREAM = "compare"
#: seconds between lag samples and progress lines
SAMPLE_S = 1.0
#: how long the stream may take to appear in every region after cluster up
STREAM_WAIT_S = 60.0
#: cluster up: seconds to wait for leaders, and how often to try a start
UP_TIMEOUT_S = 90
UP_ATTEMPTS = 2
#: open loop: requests in flight per region at most (a send that finds no slot is "late")
OPEN_OUTSTANDING_MAX = 256

Progress = Callable[[str], None]


# --- pure parts ---------------------------------------------------------------------------


def parse_proc_stat(text: str) -> tuple[float, float]:
    """(busy, total) jiffies of all cores from the text of /proc/stat (its ``cpu`` line)."""
    first = text.split("\n", 1)[0].split()
    assert first and first[0] == "cpu", first[:1]
    fields = [float(x) for x in first[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


def machine_cpu_pct(start: tuple[float, float], end: tuple[float, float]) -> float:
    """Busy share of all cores between two ``parse_proc_stat`` samples, percent."""
    busy = end[0] - start[0]
    total = end[1] - start[1]
    if total <= 0:
        return 0.0
    return max(0.0, min(100.0, 100.0 * busy / total))


def parse_proc_pid_stat(text: str, clk_tck: float) -> float:
    """User + system CPU seconds from the text of /proc/PID/stat."""
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / clk_tck


def parse_histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram ``name`` in Prometheus text, summed over labels."""
    out: dict[float, float] = {}
    prefix = f"{name}_bucket"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, value = line[line.index("{") + 1 :].rsplit("} ", 1) if "{" in line else ("", "0")
        le_text = ""
        for item in labels.split(","):
            key, _, v = item.partition("=")
            if key.strip() == "le":
                le_text = v.strip().strip('"')
        if not le_text:
            continue
        le = math.inf if le_text == "+Inf" else float(le_text)
        out[le] = out.get(le, 0.0) + float(value)
    return out


def bucket_delta(start: Mapping[float, float], end: Mapping[float, float]) -> dict[float, float]:
    return {le: end[le] - start.get(le, 0.0) for le in end}


def bucket_quantile_ms(buckets: Mapping[float, float], q: float) -> float | None:
    """The q-quantile (ms) of cumulative buckets in seconds, linear inside its bucket."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    target = q * total
    low, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= target:
            if math.isinf(le):
                return low * 1000
            inside = count - below
            frac = 1.0 if inside <= 0 else (target - below) / inside
            return (low + (le - low) * frac) * 1000
        low, below = le, count
    return low * 1000


def fsync_percentiles(buckets: Mapping[float, float]) -> dict[str, float] | None:
    """p50/p90/p99 of the fsync histogram's window delta, ms; None when no fsync ran."""
    values = {f"p{int(q * 100)}": bucket_quantile_ms(buckets, q) for q in (0.5, 0.9, 0.99)}
    if any(v is None for v in values.values()):
        return None
    return {k: float(v) for k, v in values.items() if v is not None}


def percentiles_of(values: Sequence[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99/max of ``values`` (not empty)."""
    data = sorted(values)
    assert data, "no values"

    def rank(q: float) -> float:
        return float(data[max(0, min(len(data) - 1, math.ceil(q * len(data)) - 1))])

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": float(data[-1])}


def link_results(
    lag_samples: Mapping[tuple[str, str], Sequence[tuple[float, float]]],
    geo_bytes: Mapping[tuple[str, str], tuple[int, int]],
    destinations: Mapping[str, Sequence[str]],
    wire_bytes: Mapping[tuple[str, str], int],
    apply_lag: Mapping[tuple[str, str], Mapping[float, float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The ``links`` object: per directed link, lag samples and percentiles, the shipper's
    raw/compressed bytes for that link (``geo_bytes`` by (home, destination)), emulator
    wire bytes and, from ``apply_lag`` (the window's cumulative buckets in seconds), the
    per-event apply lag: each event's home commit to its apply at the destination."""
    apply_lag = apply_lag or {}
    keys = set(lag_samples) | set(wire_bytes) | set(apply_lag)
    keys |= {
        (src, dst) for src, dsts in destinations.items() for dst in dsts if (src, dst) in geo_bytes
    }
    out: dict[str, dict[str, Any]] = {}
    for src, dst in sorted(keys):
        link: dict[str, Any] = {"src": src, "dst": dst}
        samples = list(lag_samples.get((src, dst), ()))
        if samples:
            link["lag_samples"] = [[round(t, 3), float(ms)] for t, ms in samples]
            link["lag_ms"] = percentiles_of([ms for _, ms in samples])
        if (src, dst) in geo_bytes and dst in destinations.get(src, ()):
            raw, compressed = geo_bytes[(src, dst)]
            link["wan_bytes_raw"] = int(raw)
            link["wan_bytes_compressed"] = int(compressed)
        if (src, dst) in wire_bytes:
            link["wan_bytes_wire"] = int(wire_bytes[(src, dst)])
        buckets = apply_lag.get((src, dst))
        events = max(buckets.values()) if buckets else 0.0
        if buckets and events > 0:
            q = {f"p{int(x * 100)}": bucket_quantile_ms(buckets, x) for x in (0.5, 0.9, 0.99)}
            if all(v is not None for v in q.values()):
                link["apply_lag_ms"] = {k: round(float(v or 0.0), 3) for k, v in q.items()}
                link["apply_lag_events"] = int(events)
        out[f"{src}->{dst}"] = link
    return out


def cpu_result(
    start: Mapping[str, float],
    end: Mapping[str, float],
    machine_start: tuple[float, float],
    machine_end: tuple[float, float],
    window_s: float,
    runq_start: Mapping[str, float] | None = None,
    runq_end: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The ``cpu`` object: CPU seconds (and % of one core) per process, machine CPU%, and
    when given (``parse_schedstat`` sums) the seconds each process's threads were ready to
    run but waited for a core: on an overloaded machine that wait, not the code, is where a
    request's time goes."""
    procs: dict[str, dict[str, float]] = {
        name: {
            "cpu_s": round(end[name] - start[name], 3),
            "cpu_pct": round(100.0 * (end[name] - start[name]) / window_s, 1) if window_s else 0.0,
        }
        for name in sorted(start)
        if name in end
    }
    for name, proc in procs.items():
        if runq_start and runq_end and name in runq_start and name in runq_end:
            proc["runq_wait_s"] = round(max(0.0, runq_end[name] - runq_start[name]), 3)
    pct = machine_cpu_pct(machine_start, machine_end)
    return {"processes": procs, "machine_cpu_pct": round(pct, 1), "cpu_bound": pct > CPU_BOUND_PCT}


def build_result(
    config: Mapping[str, Any],
    environment: Mapping[str, Any],
    regions: Mapping[str, Any],
    *,
    links: Mapping[str, Any] | None = None,
    cpu: Mapping[str, Any] | None = None,
    fsync_ms: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """A comparison document (bench/compare_schema.py), validated."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "config": dict(config),
        "environment": dict(environment),
        "regions": {name: dict(r) for name, r in regions.items()},
    }
    if links:
        doc["links"] = {k: dict(v) for k, v in links.items()}
    if cpu:
        doc["cpu"] = dict(cpu)
    if fsync_ms:
        doc["fsync_ms"] = dict(fsync_ms)
    validate_comparison(doc)
    return doc


def compare_topology_toml(topology_toml: str, regions: Sequence[str]) -> str:
    """The topology with the ``compare`` stream: partition i homed in region i."""
    homes = ", ".join(f'{i} = "{r}"' for i, r in enumerate(regions))
    return (
        topology_toml.rstrip()
        + "\n\n# added by bench/compare.py: one partition homed per region\n"
        + f'[[streams]]\nname = "{STREAM}"\npartitions = {len(regions)}\n'
        + f"homes = {{ {homes} }}\n"
    )


def summary_line(mode: str, region: str, r: Mapping[str, Any]) -> str:
    lat = r["latency_ms"]
    failed = r.get("requests_failed", 0)
    return (
        f"{mode:>13} {region:<16} {r['throughput_events_per_s']:9.1f} events/s  "
        f"p50 {lat['p50']:8.1f} ms  p99 {lat['p99']:8.1f} ms"
        + (f"  {failed} failed" if failed else "")
    )


# --- IO helpers ---------------------------------------------------------------------------


#: The CA and admin token of the cluster under test (cluster up's TLS default), set by
#: :class:`_Cluster`; (None, None) for a plain cluster.
_CREDS: tuple[Any, str | None] = (None, None)


def _get(url: str, timeout_s: float = 5.0) -> str:
    ctx, token = _CREDS
    req = urllib.request.Request(url)
    if token is not None and url.startswith("https://"):  # nodes, not the netem API
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout_s, context=ctx) as r:
        text: str = r.read().decode()
        return text


def _status(url: str) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(_get(f"{url}/v1/status"))
        return doc
    except (OSError, ValueError):
        return None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _geostore(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geostore", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env=_env(),
    )


def parse_schedstat(text: str) -> float:
    """Seconds spent waiting on a run queue, from the text of /proc/PID/task/TID/schedstat
    (three numbers: ns on a CPU, ns waiting to run, time slices)."""
    return int(text.split()[1]) / 1e9


def _read_runq(pids: Mapping[str, int]) -> dict[str, float]:
    """Per process: run-queue wait summed over its threads (the fsync and HTTP threads too)."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        total = 0.0
        for tid in tasks:
            try:
                total += parse_schedstat(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended meanwhile
        out[name] = total
    return out


def _read_cpu(pids: Mapping[str, int]) -> dict[str, float]:
    tck = float(os.sysconf("SC_CLK_TCK"))
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            out[name] = parse_proc_pid_stat(Path(f"/proc/{pid}/stat").read_text(), tck)
        except (OSError, ValueError, IndexError):
            continue
    return out


def wire_bytes_per_link(
    metrics_text: str, node_region: Mapping[str, str]
) -> dict[tuple[str, str], int]:
    """Bytes the emulator carried per directed region pair, from its Prometheus text.

    Proxy ``"SRC->NODE"`` carries the connections region SRC opens to NODE (of region DST):
    what it read on its ``upstream`` stream went SRC -> DST (requests), what it read on its
    ``downstream`` stream went DST -> SRC (answers). Both count, so a link's figure is every
    byte that crossed the emulated WAN in that direction, whoever opened the connection."""
    out: dict[tuple[str, str], int] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("toxiproxy_proxy_received_bytes_total{"):
            continue
        labels_text, value = line[line.index("{") + 1 :].rsplit("} ", 1)
        labels = dict(
            item.split("=", 1) for item in labels_text.replace('"', "").split(",") if "=" in item
        )
        if "->" not in labels.get("proxy", ""):
            continue
        src, node = labels["proxy"].split("->", 1)
        dst = node_region.get(node)
        direction = labels.get("direction")
        if dst is None or direction not in ("upstream", "downstream"):
            continue
        key = (src, dst) if direction == "upstream" else (dst, src)
        out[key] = out.get(key, 0) + int(float(value))
    return out


def _netem_wire(
    netem_url: str | None, node_region: Mapping[str, str]
) -> dict[tuple[str, str], int]:
    if not netem_url:
        return {}
    try:
        text = _get(f"{netem_url}/metrics")
    except OSError:
        return {}
    return wire_bytes_per_link(text, node_region)


class _Cluster:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.doc: dict[str, Any] = json.loads((folder / "cluster.json").read_text())
        global _CREDS
        from geostore.client.cluster import load_cluster
        from geostore.client.tls import client_ssl

        found = load_cluster(folder)
        _CREDS = (client_ssl(found.ca) if found.tls and found.ca else None, found.read_token())
        self.regions: list[str] = list(self.doc["regions"])
        self.urls = {r: [n["api"] for n in v["nodes"]] for r, v in self.doc["regions"].items()}
        self.node_region = {n["id"]: r for r, v in self.doc["regions"].items() for n in v["nodes"]}
        self._leader_url: dict[str, str] = {}

    def pids(self) -> dict[str, int]:
        out = {n["id"]: int(n["pid"]) for v in self.doc["regions"].values() for n in v["nodes"]}
        if self.doc.get("netem_pid"):
            out["netem"] = int(self.doc["netem_pid"])
        return out

    def all_urls(self) -> list[str]:
        return [u for r in self.regions for u in self.urls[r]]

    def home_status(self, region: str) -> dict[str, Any] | None:
        """The status of ``region``'s geo-shipping leader (cached; rescanned when it moved)."""
        cached = self._leader_url.get(region)
        order = ([cached] if cached else []) + [u for u in self.urls[region] if u != cached]
        for url in order:
            st = _status(url)
            if st is not None and (st.get("geo") or {}).get("role") == "leader":
                self._leader_url[region] = url
                return st
        return None

    def has_stream(self, region: str) -> bool:
        for url in self.urls[region]:
            st = _status(url)
            if st and any(p.get("stream") == STREAM for p in st.get("partitions", [])):
                return True
        return False


def _node_histograms(cluster: _Cluster) -> tuple[dict[float, float], dict[Any, Any]]:
    """From every node's /metrics: the fsync histogram summed over nodes, and per link
    (source, destination) the per-event apply lag histogram summed over the destination's
    nodes (each counts what it applied while it led the receiver)."""
    fsync: dict[float, float] = {}
    apply: dict[tuple[str, str], dict[float, float]] = {}
    for region in cluster.regions:
        for url in cluster.urls[region]:
            try:
                text = _get(f"{url}/metrics")
            except OSError:
                continue
            for le, v in parse_histogram(text, "geostore_fsync_seconds").items():
                fsync[le] = fsync.get(le, 0.0) + v
            # per (partition, source) on the node: summed per source here
            for (_, src), buckets in apply_lag_buckets_of(text, STREAM).items():
                per = apply.setdefault((src, region), {})
                for le, v in buckets.items():
                    per[le] = per.get(le, 0.0) + v
    return fsync, apply


def _geo_bytes(cluster: _Cluster) -> dict[tuple[str, str], tuple[int, int]]:
    """Per link (home, destination): raw and compressed bytes shipped so far, summed over
    the region's nodes (each counts what it shipped while it led, for its lifetime), so a
    leader change inside the window neither loses bytes nor makes the difference negative."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for region in cluster.regions:
        for url in cluster.urls[region]:
            st = _status(url)
            shipper = ((st or {}).get("geo") or {}).get("shipper") or {}
            for dst, d in (shipper.get("destinations") or {}).items():
                raw, comp = out.get((region, str(dst)), (0, 0))
                out[(region, str(dst))] = (
                    raw + int(d["bytes_raw"]),
                    comp + int(d["bytes_compressed"]),
                )
    return out


def _lag_sample(cluster: _Cluster) -> dict[tuple[str, str], float]:
    """Per link home -> destination: the oldest unacknowledged committed event's age, ms."""
    out: dict[tuple[str, str], float] = {}
    for region in cluster.regions:
        st = cluster.home_status(region)
        for row in (st or {}).get("replication_lag") or []:
            if row.get("stream") != STREAM or row.get("direction", "out") != "out":
                continue
            key = (region, str(row["destination"]))
            out[key] = max(out.get(key, 0.0), float(row.get("ms") or 0.0))
    return out


class _Worker:
    """One load-generator process and a thread that reads its progress lines."""

    def __init__(self, region: str, argv: list[str], log: Path) -> None:
        self.region = region
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=_env(),
        )
        self.ready = threading.Event()
        self.count = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "ready":
                self.ready.set()
            elif word == "n":
                self.count = int(rest)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


# --- the run ------------------------------------------------------------------------------


def _print(line: str) -> None:
    print(line, flush=True)


def run_mode(
    topology_path: str | Path,
    mode: str,
    *,
    duration_s: float,
    warmup_s: float,
    concurrency_per_region: int,
    batch: int,
    workload: str,
    leader_region: str | None = None,
    out_dir: str | Path,
    progress: Progress | None = _print,
    loop: str = "closed",
    rate_per_region: float | None = None,
    rtt_scale: float = 1.0,
    remote_write_share: float = 0.0,
    config: Mapping[str, Any] | None = None,
    seed: int = 1,
    keep_work: bool = False,
) -> dict[str, Any]:
    """Run ``mode`` on the topology; return the comparison result (also written as JSON to
    ``out_dir/<topology>[-xSCALE]-<mode>.json``). ``config`` overrides the result's config.
    ``loop="open"`` offers ``rate_per_region`` requests/s in every region on a fixed schedule
    (latency from each request's intended send time) instead of the closed loop's
    ``concurrency_per_region`` outstanding requests.
    The run's folder (cluster data, node and load-generator logs) is removed after a
    successful run unless ``keep_work``; after a failure it stays for its logs."""
    from bench.results import environment
    from geostore.config import load_topology

    assert mode in ("multi-leader", "single-leader"), mode
    assert loop in ("closed", "open"), loop
    assert loop == "closed" or (rate_per_region is not None and rate_per_region > 0), (
        rate_per_region
    )
    say = progress or (lambda _line: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    topology = load_topology(topology_path)
    regions = [str(r) for r in topology.region_names()]
    work = Path(tempfile.mkdtemp(prefix=f"compare-{mode}-", dir=out))
    topo_file = work / "topology.toml"
    topo_file.write_text(compare_topology_toml(Path(topology_path).read_text(), regions))
    cfg: dict[str, Any] = {
        "topology": topology.name,
        "rtt_scale": rtt_scale,
        "mode": mode,
        "workload": workload,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "loop": loop,
        "batch": batch,
        "remote_write_share": remote_write_share,
        "topology_toml": Path(topology_path).read_text(),
    }
    if loop == "closed":
        cfg["concurrency_per_region"] = concurrency_per_region
    else:
        cfg["rate_per_region"] = rate_per_region
    if mode == "single-leader":
        cfg["leader_region"] = leader_region or regions[0]
    cfg.update(config or {})
    cluster_dir = work / "cluster"
    extra = ["--mode", mode, "--timeout", str(UP_TIMEOUT_S)]
    if mode == "single-leader":
        extra += ["--leader-region", str(cfg["leader_region"])]
    say(f"[{mode}] cluster up: {topology.name}, {len(regions)} regions ...")
    workers: list[_Worker] = []
    started = time.monotonic()
    try:
        for attempt in range(1, UP_ATTEMPTS + 1):
            # a node that lost the race for its free port (another process bound it between
            # cluster up's pick and the node's bind) fails the start: retry in a new folder
            up = _geostore("cluster", "up", "--topology", str(topo_file), "--dir",
                           str(cluster_dir), *extra)  # fmt: skip
            if up.returncode == 0:
                break
            _geostore("cluster", "down", "--dir", str(cluster_dir), "--timeout", "10")
            if attempt == UP_ATTEMPTS:
                raise RuntimeError(f"cluster up failed:\n{up.stdout}{up.stderr}")
            say(f"[{mode}] cluster up failed (attempt {attempt}); trying again")
            cluster_dir = work / f"cluster-{attempt + 1}"
        cluster = _Cluster(cluster_dir)
        say(f"[{mode}] cluster ready in {time.monotonic() - started:.0f} s; waiting for stream")
        deadline = time.monotonic() + STREAM_WAIT_S
        for region in regions:
            while not cluster.has_stream(region):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stream {STREAM!r} never appeared in {region}")
                time.sleep(0.5)
        for i, region in enumerate(regions):
            argv = [
                sys.executable, "-m", "bench.compare", "worker",
                "--cluster", str(cluster_dir), "--region", region,
                "--partition", str(i), "--partitions", str(len(regions)),
                "--concurrency", str(concurrency_per_region), "--batch", str(batch),
                "--loop", loop, "--rate", str(rate_per_region or 0),
                "--duration", str(duration_s), "--warmup", str(warmup_s),
                "--workload", workload, "--seed", str(seed + i),
                "--remote-share", str(remote_write_share),
                "--out", str(work / f"worker-{region}.json"),
            ]  # fmt: skip
            workers.append(_Worker(region, argv, work / f"worker-{region}.log"))
        for w in workers:
            while not w.ready.wait(0.5):
                if w.proc.poll() is not None:
                    raise RuntimeError(f"load generator of {w.region} exited: see {w.log.name}")
        for w in workers:
            w.go()
        t0 = time.monotonic()
        window = (t0 + warmup_s, t0 + warmup_s + duration_s)
        # the load generators are processes of the run too: their CPU is in the report, so
        # a reader sees how much of the machine the nodes had
        pids = {**cluster.pids(), **{f"loadgen-{w.region}": w.proc.pid for w in workers}}
        lag: dict[tuple[str, str], list[tuple[float, float]]] = {}
        snap: dict[str, Any] = {}
        last_counts = {w.region: 0 for w in workers}
        last_t = t0
        total_s = warmup_s + duration_s
        while any(w.proc.poll() is None for w in workers):
            now = time.monotonic()
            if now > window[1] + SAMPLE_S:
                snap.setdefault("end", _snapshot(cluster, pids))
                time.sleep(0.1)  # the workers are writing their results
                continue
            if "start" not in snap and now >= window[0]:
                snap["start"] = _snapshot(cluster, pids)
            if "end" not in snap and now >= window[1]:
                snap["end"] = _snapshot(cluster, pids)
            if mode == "multi-leader" and window[0] <= now <= window[1]:
                for key, ms in _lag_sample(cluster).items():
                    lag.setdefault(key, []).append((now - window[0], ms))
            counts = {w.region: w.count for w in workers}
            rate = sum(counts.values()) - sum(last_counts.values())
            dt = max(1e-6, now - last_t)
            phase = "warm-up" if now < window[0] else "measuring"
            elapsed = min(total_s, now - t0)
            say(
                f"[{mode}] {_bar(elapsed / total_s)} {elapsed:4.0f}/{total_s:.0f} s {phase}: "
                f"{rate * batch / dt:8.0f} events/s"
            )
            last_counts, last_t = counts, now
            time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - now)))
        if "start" not in snap:
            raise RuntimeError("the load generators ended before the measured window began")
        snap.setdefault("end", _snapshot(cluster, pids))
        region_results: dict[str, Any] = {}
        for w in workers:
            path = work / f"worker-{w.region}.json"
            if w.proc.returncode != 0 or not path.exists():
                raise RuntimeError(f"load generator of {w.region} failed: see {w.log.name}")
            region_results[w.region] = json.loads(path.read_text())
        s, e = snap["start"], snap["end"]
        window_s = e["at"] - s["at"]
        geo = {
            k: (
                e["geo"][k][0] - s["geo"].get(k, (0, 0))[0],
                e["geo"][k][1] - s["geo"].get(k, (0, 0))[1],
            )
            for k in e["geo"]
        }
        wire = {k: v - s["wire"].get(k, 0) for k, v in e["wire"].items()}
        apply = {k: bucket_delta(s["apply"].get(k, {}), v) for k, v in e["apply"].items()}
        dests = (
            {r: [d for d in regions if d != r] for r in regions} if mode == "multi-leader" else {}
        )
        doc = build_result(
            cfg,
            environment(),
            region_results,
            links=link_results(lag, geo, dests, wire, apply),
            cpu=cpu_result(
                s["cpu"], e["cpu"], s["machine"], e["machine"], window_s, s["runq"], e["runq"]
            ),
            fsync_ms=fsync_percentiles(bucket_delta(s["fsync"], e["fsync"])),
        )
    finally:
        for w in workers:
            w.stop()
        if cluster_dir.exists():
            _geostore("cluster", "down", "--dir", str(cluster_dir), "--timeout", "20", timeout_s=90)
    # the configured (unscaled) topology name: a scaled file is named NAME-xSCALE already
    path = out / result_name(str(cfg["topology"]), mode, rtt_scale, remote_write_share)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    for region in regions:
        say(summary_line(mode, region, doc["regions"][region]))
    return doc


def one_region_baseline(
    topology_path: str | Path,
    region: str,
    *,
    duration_s: float,
    warmup_s: float,
    concurrency_per_region: int,
    batch: int,
    workload: str,
    out_dir: str | Path,
    progress: Progress | None = _print,
) -> dict[str, Any]:
    """The one-region figure the multi-leader local append is held against: ``region``'s
    nodes alone (the topology cut to that region: no WAN, no geo layer), the same closed
    loop from one load generator, on the same machine just after. Returns the ``one_region``
    object of a comparison result (bench/compare_schema.py)."""
    from geostore.config import load_topology

    base = load_topology(topology_path)
    folder = Path(tempfile.mkdtemp(prefix="one-region-", dir=out_dir))
    try:
        sub = folder / f"{base.name}.toml"
        sub.write_text(base.subset([region]).to_toml())
        doc = run_mode(
            sub,
            "multi-leader",
            duration_s=duration_s,
            warmup_s=warmup_s,
            concurrency_per_region=concurrency_per_region,
            batch=batch,
            workload=workload,
            out_dir=folder,
            progress=progress,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    measured = doc["regions"][region]
    out: dict[str, Any] = {
        "region": region,
        "duration_s": duration_s,
        "concurrency": concurrency_per_region,
        "throughput_events_per_s": measured["throughput_events_per_s"],
        "latency_ms": measured["latency_ms"],
    }
    if "fsync_ms" in doc:
        out["fsync_ms"] = doc["fsync_ms"]
    if "machine_cpu_pct" in (doc.get("cpu") or {}):
        out["machine_cpu_pct"] = doc["cpu"]["machine_cpu_pct"]
    return out


def attach_one_region(result_path: str | Path, baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Add the ``one_region`` baseline to a multi-leader result file (validated, rewritten)."""
    path = Path(result_path)
    doc: dict[str, Any] = json.loads(path.read_text())
    doc["one_region"] = dict(baseline)
    validate_comparison(doc, str(path))
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc


def result_name(topology: str, mode: str, rtt_scale: float = 1.0, share: float = 0.0) -> str:
    """The file name run_mode writes its result under."""
    scale = f"-x{rtt_scale:g}" if rtt_scale != 1.0 else ""
    remote = f"-remote{share:g}" if share else ""
    return f"{topology}{scale}{remote}-{mode}.json"


def _bar(frac: float, width: int = 24) -> str:
    full = int(max(0.0, min(1.0, frac)) * width)
    return "[" + "#" * full + "." * (width - full) + "]"


def _snapshot(cluster: _Cluster, pids: Mapping[str, int]) -> dict[str, Any]:
    fsync, apply = _node_histograms(cluster)
    return {
        "at": time.monotonic(),
        "cpu": _read_cpu(pids),
        "runq": _read_runq(pids),
        "machine": parse_proc_stat(Path("/proc/stat").read_text()),
        "fsync": fsync,
        "apply": apply,
        "geo": _geo_bytes(cluster),
        "wire": _netem_wire(cluster.doc.get("netem"), cluster.node_region),
    }


def run_experiment(
    path: str | Path,
    out_dir: str | Path,
    *,
    duration_s: float | None = None,
    warmup_s: float | None = None,
    progress: Progress | None = _print,
) -> list[Path]:
    """Run every RunSpec of the experiment file; returns the result files written.
    ``duration_s`` / ``warmup_s`` override the file's (the quick form of a sweep)."""
    from bench.experiments import load_experiment

    exp = load_experiment(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    runs = exp.runs()
    for i, spec in enumerate(runs, 1):
        if progress:
            progress(
                f"run {i}/{len(runs)}: {spec.topology.name} x{spec.rtt_scale:g} {spec.mode}"
                + (f", {spec.remote_write_share:.0%} remote" if spec.remote_write_share else "")
            )
        topo_dir = Path(tempfile.mkdtemp(prefix="topology-", dir=out))
        topo_path = topo_dir / f"{spec.topology.name}.toml"
        topo_path.write_text(spec.scaled_topology().to_toml())
        config = spec.config()
        duration = duration_s if duration_s is not None else spec.duration_s
        config["duration_s"] = duration
        warmup = warmup_s if warmup_s is not None else spec.warmup_s
        config["warmup_s"] = warmup
        concurrency = spec.workload.concurrency_per_region or 4
        run_mode(
            topo_path,
            spec.mode,
            duration_s=duration,
            warmup_s=warmup,
            concurrency_per_region=concurrency,
            batch=spec.workload.batch,
            workload=spec.workload.name,
            leader_region=spec.leader_region,
            out_dir=out,
            progress=progress,
            loop=spec.workload.loop,
            rate_per_region=spec.workload.rate_per_region,
            rtt_scale=spec.rtt_scale,
            remote_write_share=spec.remote_write_share,
            config=config,
        )
        written.append(
            out / result_name(spec.topology.name, spec.mode, spec.rtt_scale,
                              spec.remote_write_share)
        )  # fmt: skip
        if spec.mode == "multi-leader" and exp.one_region_baseline_s > 0:
            region = str(spec.topology.region_names()[0])
            if progress:
                progress(f"one-region baseline: {region} alone, same load")
            baseline = one_region_baseline(
                topo_path,
                region,
                duration_s=min(exp.one_region_baseline_s, duration),
                warmup_s=warmup,
                concurrency_per_region=concurrency,
                batch=spec.workload.batch,
                workload=spec.workload.name,
                out_dir=out,
                progress=progress,
            )
            attach_one_region(written[-1], baseline)
    return written


# --- the load-generator process -----------------------------------------------------------


def _events(workload: str, seed: int) -> Iterator[dict[str, Any]]:
    from bench.workloads import endless

    events = endless(workload, seed)  # ValueError for a workload bench/workloads lacks
    first = next(events)  # load the data set before the measured window

    def chain() -> Iterator[dict[str, Any]]:
        yield first
        yield from events

    return chain()


async def _worker(args: argparse.Namespace) -> int:
    from bench.compare_schema import region_from_phase
    from bench.loadgen import LeanAppender, LoopClock, Phase, run_phase
    from geostore.client import GeostoreClient

    events = _events(args.workload, args.seed)
    rng = random.Random(args.seed)
    others = [p for p in range(args.partitions) if p != args.partition]
    client = GeostoreClient.from_cluster(args.cluster, args.region, timeout_s=30.0)
    completed = 0
    appender: LeanAppender | None = None

    async def op(batch: int) -> int:
        nonlocal completed
        chunk = []
        for _ in range(batch):
            part = args.partition
            if others and args.remote_share > 0 and rng.random() < args.remote_share:
                part = rng.choice(others)
            chunk.append({**next(events), "partition": part})
        assert appender is not None
        count = await appender.append(chunk)
        completed += 1
        return count

    async def report() -> None:
        while True:
            print(f"n {completed}", flush=True)
            await asyncio.sleep(0.5)

    # send to the region's leader of the data group when it is in this region (multi-leader:
    # always; single-leader: only in the leader's region, elsewhere a local node forwards
    # over the WAN as it must), saving every request the forwarding hop inside the region
    await client.find_leader(timeout_s=10.0)
    # lean HTTP/1.1 to that node, the client library on any refusal or broken connection
    appender = LeanAppender(client, STREAM)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # "go": every region starts together
    reporter = asyncio.ensure_future(report())
    try:
        level = float(args.concurrency) if args.loop == "closed" else args.rate
        phase = Phase(args.loop, level, args.batch)
        # open loop: at most OPEN_OUTSTANDING_MAX in flight; a send that waits counts late
        stats = await run_phase(
            op, phase, args.duration, args.warmup, LoopClock(), OPEN_OUTSTANDING_MAX
        )
    finally:
        reporter.cancel()
        await appender.close()
        await client.close()
    print(f"n {completed}", flush=True)
    if appender.fallbacks:  # into the worker's log (stderr), beside its other output
        total = appender.lean + appender.fallbacks
        print(f"{appender.fallbacks} of {total} appends went through the client", file=sys.stderr)
    Path(args.out).write_text(json.dumps(region_from_phase(stats)))
    return 0


def _worker_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare worker")
    p.add_argument("--cluster", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--partition", type=int, required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--loop", choices=("closed", "open"), default="closed")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: requests/s")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--workload", default="flights")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--remote-share", type=float, default=0.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_worker(args))


def main(argv: Sequence[str] | None = None) -> int:
    """``worker ...`` (one region's load generator) or ``TOPOLOGY MODE`` (one run)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"]:
        return _worker_main(args[1:])
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    p.add_argument("topology")
    p.add_argument("mode", choices=("multi-leader", "single-leader"))
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--workload", default="flights", choices=WORKLOADS)
    p.add_argument("--leader-region", default=None)
    p.add_argument("--out", default="bench-results")
    a = p.parse_args(args)
    run_mode(
        a.topology,
        a.mode,
        duration_s=a.duration,
        warmup_s=a.warmup,
        concurrency_per_region=a.concurrency,
        batch=a.batch,
        workload=a.workload,
        leader_region=a.leader_region,
        out_dir=a.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
