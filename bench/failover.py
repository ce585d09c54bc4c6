"""Planned moves and region failovers on three continents through the WAN emulator: the pause of
a move per phase, and the RPO of a failover (events and seconds) next to the replication lag
at the moment of loss.

What it runs, on this machine, in one go:

1. ``cluster up --topology regions/three-continents.toml`` (9 node processes, the netem
   proxies with the real RTTs and jitter, TLS and the admin token as ``cluster up`` makes
   them), a stream ``failover`` with one partition homed per region, and one writer per
   partition: one single-event append at a time, paced to ``--rate`` appends/s, always to
   the partition's current home region (moved with it), each with its own idempotent
   producer pair. Every acknowledged append is kept: partition, seq, epoch, value, ack time.
2. ``--moves`` planned moves of partition 0 around the regions
   (``POST /v1/admin/partitions/failover/0/move``), ``--move-gap-s`` apart, under that
   load. Per move: the answer's pause per phase (fencing, draining, bumping, opening) and
   in all, the 503 ``moving`` answers the writer saw, and the writer's largest gap between
   two acknowledgements around the move (the pause as a client sees it).
3. ``--failovers`` region failovers, the victim rotating over the regions: SIGKILL of every
   process of the victim region under load, ``POST /v1/admin/regions/VICTIM/failover`` to the
   next region (asked again while it answers 409 ``lease_held``, until the victim's home
   lease plus the drift margin ran out; it then forks each partition at the watermark the
   survivor holds), the victim's restart from its data dirs, the wait until every node of
   it mirrored the new epoch (failback: its orphaned suffix goes to quarantine), then a
   planned move of the partition back home (the failback move).
   Per failover and partition: the acknowledged appends lost (those acknowledged under the
   old epoch beyond the fork, counted by the writer) and the RPO in seconds (the kill's time
   minus the acknowledgement time of the oldest lost append, 0 when nothing was lost), next
   to the replication lag p99 at the moment of loss: the survivor's data-group leader's
   per-event apply lag of that partition (home commit wall clock to its own apply, one
   machine, one clock: ``geostore_geo_apply_lag_seconds``), p99 interpolated within the
   histogram's buckets over the ``--load-before-loss-s`` window just before the kill (the
   difference of two ``/metrics`` snapshots; the p99 since that leader started, from
   ``/v1/status``, is shown beside it). The issue's bound: RPO <= that p99 + 100 ms. Also
   shown: the failover answer's own ``lost_events`` and ``rpo_ms``, the lease wait, and how
   long the failback took.
4. At the end the writers stop, every node of every region must hold the same partitions
   (``/v1/debug/partitions``: home, epoch, last seq, rolling hash), and every acknowledged
   append must be in the final log at its seq, except exactly those a failover orphaned
   (their count is ``failover_lost_not_suffix``'s check: a lost append at or below a fork,
   or one beyond a fork still served, counts as a violation).

``--quick``: 3 moves and 1 failover (about a minute; the full run about 2.5). The default lease (10 s) is the
configuration's; ``--lease-ms`` shortens it (renewal and drift scaled) for a faster run.

Output: the result table and one JSON line (bench/results.py; ``--json-out``), then a table
per move and per failover; the JSON's ``config.runs`` holds those rows.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.geo import _interpolated_quantile, apply_lag_buckets_of
from bench.results import Metric, Result, emit, percentiles

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = ROOT / "regions" / "three-continents.toml"
STREAM = "failover"
#: the issue's allowance of RPO above the replication lag p99 at the moment of loss
RPO_SLACK_MS = 100.0
#: the issue's target for a planned move's pause, p50
MOVE_PAUSE_P50_MS = 1000.0
#: the phases of a planned move as its answer names them (pauses_ms)
PHASES = ("fencing", "draining", "bumping", "opening")
#: bound of every wait for the cluster (9 nodes and the emulator on a shared machine)
DEADLINE_S = 120.0
APPEND_TIMEOUT_S = 10.0


def _geostore(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "geostore", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)  # fmt: skip


# --- the cluster -------------------------------------------------------------------------------


class Cluster:
    """The node processes of ``cluster up``; SIGKILL of a whole region and its restart from
    the same data dirs with the command lines ``cluster up`` recorded in cluster.json.

    The restarted nodes are this process's children (reaped here, also while ``down``
    stops them); tests/integration/test_failover_netem.py uses this class too."""

    def __init__(self, folder: Path) -> None:
        from geostore.client.cluster import load_cluster
        from geostore.client.tls import client_ssl

        self.folder = folder
        self.doc: dict[str, Any] = json.loads((folder / "cluster.json").read_text())
        found = load_cluster(folder)
        self.ssl = client_ssl(found.ca) if found.tls and found.ca else None
        token = found.read_token()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.regions: list[str] = list(self.doc["regions"])
        self.nodes: dict[str, dict[str, Any]] = {}
        self.region_of: dict[str, str] = {}
        self.cmdlines: dict[str, list[str]] = {}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        for region, spec in self.doc["regions"].items():
            for n in spec["nodes"]:
                self.nodes[n["id"]] = n
                self.region_of[n["id"]] = region
                # without --bootstrap: a restart must not found a new cluster
                self.cmdlines[n["id"]] = list(n["cmd"])

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl if self.ssl else True, limit=64),
            headers=self.headers,
        )

    def region_nodes(self, region: str) -> list[str]:
        return [n for n, r in self.region_of.items() if r == region]

    def apis(self, region: str) -> list[str]:
        return [self.nodes[n]["api"] for n in self.region_nodes(region)]

    def alive(self, node_id: str) -> bool:
        proc = self.children.get(node_id)
        if proc is not None and proc.pid == self.nodes[node_id]["pid"]:
            return proc.poll() is None
        try:
            state = Path(f"/proc/{self.nodes[node_id]['pid']}/stat").read_text().split()[2]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"

    def kill_region(self, region: str) -> None:
        for node_id in self.region_nodes(region):
            os.kill(self.nodes[node_id]["pid"], signal.SIGKILL)

    async def wait_dead(self, region: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(self.alive(n) for n in self.region_nodes(region)):
            if time.monotonic() > deadline:
                alive = [n for n in self.region_nodes(region) if self.alive(n)]
                raise RuntimeError(f"{region}: still running after SIGKILL: {alive}")
            await asyncio.sleep(0.02)

    def restart_region(self, region: str) -> None:
        for node_id in self.region_nodes(region):
            self.restart_node(node_id)

    def restart_node(self, node_id: str) -> None:
        """Start the (killed) node again from its data dir with its recorded command line,
        and write its new pid to cluster.json so that ``cluster down`` finds it."""
        if self.alive(node_id):
            raise RuntimeError(f"{node_id} still runs: kill it before the restart")
        with open(Path(self.nodes[node_id]["dir"]) / "process.log", "ab") as out:
            proc = subprocess.Popen(self.cmdlines[node_id], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        old = self.children.pop(node_id, None)
        if old is not None:
            old.wait()
        self.children[node_id] = proc
        self.nodes[node_id]["pid"] = proc.pid
        (self.folder / "cluster.json").write_text(json.dumps(self.doc, indent=2))

    def down(self) -> None:
        cluster_down_reaping(self.folder, list(self.children.values()))


def cluster_down_reaping(folder: Path, children: list[subprocess.Popen[bytes]]) -> None:
    """``cluster down`` of ``folder`` while reaping ``children``, the node processes this
    process restarted itself (else 'cluster down' would wait for their zombies until its
    timeout); any child still running afterwards is killed."""
    down = subprocess.Popen(
        [sys.executable, "-m", "geostore", "cluster", "down", "--dir", str(folder),
         "--timeout", "20"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while down.poll() is None:
        for proc in children:
            proc.poll()
        time.sleep(0.05)
    for proc in children:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, timeout_s: float = 10.0
) -> tuple[int, Any]:
    """One request; (status, decoded JSON body or None). Network errors propagate."""
    async with http.request(
        method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as r:
        try:
            return r.status, await r.json(content_type=None)
        except ValueError:
            return r.status, None


async def _until_ok(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    timeout_s: float = DEADLINE_S,
    call_timeout_s: float = 10.0,
) -> Any:
    """The first 200/201 answer, past 503s and unreachable nodes, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, answer = await call(http, method, url, body, call_timeout_s)
            if status in (200, 201):
                return answer
            if status != 503:
                raise RuntimeError(f"{method} {url} {body}: {status} {answer}")
            last = (status, answer)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{method} {url}: no answer within {timeout_s:g} s; last {last}")


async def _any_ok(
    http: aiohttp.ClientSession, apis: list[str], method: str, path: str, body: Any = None,
    *, call_timeout_s: float = 10.0,
) -> Any:  # fmt: skip
    """The first 200 answer of any of ``apis`` (tried in turn), within DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    last: object = None
    while time.monotonic() < deadline:
        for api in apis:
            try:
                status, answer = await call(http, method, api + path, body, call_timeout_s)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = repr(exc)
                continue
            if status in (200, 201):
                return answer
            if status != 503:
                raise RuntimeError(f"{method} {path} {body}: {status} {answer}")
            last = (status, answer)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{method} {path}: no answer within {DEADLINE_S:g} s; last {last}")


# --- the load ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    partition: int
    seq: int
    epoch: int
    value: str
    ack_s: float


@dataclass
class Load:
    """One paced writer per partition, sending to the partition's current home region."""

    cluster: Cluster
    rate: float
    homes: dict[int, str]
    acks: list[Ack] = field(default_factory=list)
    #: (partition, status, error code) of every append not acknowledged
    refused: Counter[tuple[int, int, str]] = field(default_factory=Counter)
    #: (time, partition, code) of every 503 moving
    moving: list[tuple[float, int]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def writer(self, http: aiohttp.ClientSession, partition: int) -> None:
        pace_s = 1.0 / self.rate
        n = 0
        turn = 0
        while not self.stop.is_set():
            started = time.monotonic()
            n += 1
            value = f"p{partition}-{n}"
            apis = self.cluster.apis(self.homes[partition])
            url = apis[turn % len(apis)]
            body = {
                "events": [{"partition": partition, "body": value}],
                "producer": {"id": f"bench-p{partition}", "seq": n},
            }
            try:
                status, answer = await call(
                    http, "POST", f"{url}/v1/streams/{STREAM}/events", body, APPEND_TIMEOUT_S
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.refused[(partition, 0, type(exc).__name__)] += 1
                turn += 1
                await asyncio.sleep(0.05)
                continue
            result = answer.get("results", [{}])[0] if isinstance(answer, dict) else {}
            err = answer.get("error") if isinstance(answer, dict) else None
            if status == 200 and isinstance(result.get("error"), dict):
                err = result["error"]
            if status == 200 and err is None:
                self.acks.append(
                    Ack(
                        partition,
                        int(result["first_seq"]),
                        int(result["epoch"]),
                        value,
                        time.monotonic(),
                    )
                )
            else:
                code = str(err.get("code")) if isinstance(err, dict) else str(answer)[:40]
                self.refused[(partition, status, code)] += 1
                if code == "moving":
                    self.moving.append((time.monotonic(), partition))
                else:
                    turn += 1
            await asyncio.sleep(max(0.0, pace_s - (time.monotonic() - started)))

    def largest_gap_ms(self, partition: int, t0: float, t1: float) -> float:
        """The longest time between two acknowledgements of ``partition`` across a move
        called at t0 and answered at t1: among the last ack before t0, the acks in between
        and the first ack after t1."""
        times = sorted(a.ack_s for a in self.acks if a.partition == partition)
        before = [t for t in times if t <= t0][-1:]
        inside = [t for t in times if t0 < t <= t1]
        after = [t for t in times if t > t1][:1]
        points = before + inside + after
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0) * 1000


# --- moves and failovers -----------------------------------------------------------------------


@dataclass
class MoveRow:
    partition: int
    source: str
    target: str
    epoch: int
    fork_seq: int
    pauses_ms: dict[str, float]
    pause_ms: float
    call_ms: float
    client_gap_ms: float
    moving_503: int
    kind: str = "planned"


@dataclass
class FailoverRow:
    episode: int
    victim: str
    target: str
    partition: int
    old_epoch: int
    epoch: int
    fork_seq: int
    acked_lost: int
    rpo_ms: float
    lag_p99_ms: float | None  #: window before the loss (the bound's base)
    lag_p99_total_ms: float | None
    lag_out_ms: float | None
    server_lost_events: int
    server_rpo_ms: float
    waited_ms: float
    failover_call_ms: float
    mirrored_after_restart_ms: float
    quarantined: int | None

    @property
    def bound_ms(self) -> float:
        """The issue's RPO bound: the lag p99 at the loss + 100 ms (an unknown lag, when the
        survivor never measured one, counts as 0: the strictest bound)."""
        return (self.lag_p99_ms or 0.0) + RPO_SLACK_MS


async def move(
    c: Cluster, http: aiohttp.ClientSession, load: Load, partition: int, target: str, kind: str
) -> MoveRow:
    source = load.homes[partition]
    moving_before = len(load.moving)
    t0 = time.monotonic()
    answer = await _any_ok(http, c.apis(source) + c.apis(target), "POST",
                           f"/v1/admin/partitions/{STREAM}/{partition}/move",
                           {"to": target}, call_timeout_s=60.0)  # fmt: skip
    t1 = time.monotonic()
    load.homes[partition] = target
    await asyncio.sleep(1.0)  # the writer's first acks at the new home close the gap
    return MoveRow(
        partition, source, target, int(answer["epoch"]), int(answer["fork_seq"]),
        {k: float(v) for k, v in answer["pauses_ms"].items()}, float(answer["pause_ms"]),
        (t1 - t0) * 1000, load.largest_gap_ms(partition, t0, t1),
        sum(1 for _, p in load.moving[moving_before:] if p == partition), kind,
    )  # fmt: skip


async def leader_status(c: Cluster, http: aiohttp.ClientSession, region: str) -> tuple[str, Any]:
    """The API address and ``/v1/status`` of ``region``'s data-group leader."""
    for _ in range(50):
        for api in c.apis(region):
            try:
                status, body = await call(http, "GET", f"{api}/v1/status", timeout_s=5.0)
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue
            if status == 200 and body["groups"].get(f"data-{region}", {}).get("role") == "leader":
                return api, body
        await asyncio.sleep(0.2)
    raise RuntimeError(f"no data-group leader in {region}")


LagBuckets = dict[tuple[int, str], dict[float, float]]


async def apply_lag_buckets(c: Cluster, http: aiohttp.ClientSession, region: str) -> LagBuckets:
    """Cumulative buckets of ``region``'s leader's ``geostore_geo_apply_lag_seconds`` of the
    bench stream, by (partition, source region)."""
    api, _ = await leader_status(c, http, region)
    async with http.get(f"{api}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
        text = await r.text()
    return {(int(p), src): b for (p, src), b in apply_lag_buckets_of(text, STREAM).items()}


def window_p99_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """p99 (ms) of the events counted between two snapshots of one cumulative histogram
    (interpolated within its bucket); None when no event fell in the window."""
    delta = {le: n - before.get(le, 0.0) for le, n in after.items()}
    if any(n < 0 for n in delta.values()):  # another leader's counters: the window is lost
        return None
    return _interpolated_quantile(delta, 0.99)


@dataclass(frozen=True, slots=True)
class LagAtLoss:
    """A partition's replication lag to the survivor just before the kill, ms."""

    p99_window_ms: float | None  #: per-event apply lag p99 over the window before the loss
    p99_total_ms: float | None  #: the same since the survivor's leader started
    out_ms: float | None  #: the home's shipping lag: age of the oldest unacknowledged event


async def before_loss(
    c: Cluster,
    http: aiohttp.ClientSession,
    victim: str,
    target: str,
    partitions: list[int],
    window_start: LagBuckets,
) -> tuple[dict[int, LagAtLoss], dict[int, int]]:
    """Per partition, read just before the kill: the survivor leader's per-event apply lag
    of events from ``victim`` (p99 over the window since ``window_start`` and since it
    started) and the victim leader's shipping lag to the survivor; and the epoch the victim
    writes under."""
    window_end = await apply_lag_buckets(c, http, target)
    _, into = await leader_status(c, http, target)
    _, out_of = await leader_status(c, http, victim)
    lag: dict[int, LagAtLoss] = {}
    for p in partitions:
        rows_in = [r for r in into["replication_lag"] if r["direction"] == "in"
                   and r["stream"] == STREAM and r["partition"] == p and r["source"] == victim]  # fmt: skip
        rows_out = [r for r in out_of["replication_lag"] if r["direction"] == "out"
                    and r["stream"] == STREAM and r["partition"] == p
                    and r["destination"] == target]  # fmt: skip
        key = (p, victim)
        lag[p] = LagAtLoss(
            window_p99_ms(window_start.get(key, {}), window_end.get(key, {})),
            float(rows_in[0]["p99_ms"]) if rows_in else None,
            float(rows_out[0]["ms"]) if rows_out else None,
        )
    epochs = {int(r["partition"]): int(r["epoch"]) for r in out_of["partitions"]
              if r["stream"] == STREAM and r["partition"] in partitions}  # fmt: skip
    return lag, epochs


async def mirrored(
    c: Cluster, http: aiohttp.ClientSession, region: str, epochs: dict[int, int]
) -> None:
    """Wait until every node of ``region`` holds each partition at its new epoch."""
    deadline = time.monotonic() + DEADLINE_S
    last: object = None
    while time.monotonic() < deadline:
        done = True
        for api in c.apis(region):
            try:
                status, doc = await call(http, "GET", f"{api}/v1/debug/partitions", timeout_s=5.0)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                done, last = False, repr(exc)
                break
            rows = {r["partition"]: r["epoch"] for r in doc.get("partitions", [])
                    if r["stream"] == STREAM} if status == 200 else {}  # fmt: skip
            if any(rows.get(p) != e for p, e in epochs.items()):
                done, last = False, (api, rows)
                break
        if done:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{region} did not mirror the epochs {epochs}; last {last}")


async def quarantine_count(
    c: Cluster, http: aiohttp.ClientSession, region: str, partition: int
) -> int | None:
    """Events of ``partition`` in ``region``'s quarantine (``GET /v1/quarantine``, answered
    by its leader); None when the node has no quarantine API."""
    for api in c.apis(region):
        try:
            status, doc = await call(
                http, "GET", f"{api}/v1/quarantine?stream={STREAM}&partition={partition}"
            )
        except (aiohttp.ClientError, OSError, TimeoutError):
            continue
        if status == 404 and isinstance(doc, dict) and doc["error"]["code"] == "not_found":
            return None
        if status == 200:
            return int(doc["events_total"])
    return None


async def failover_call(
    c: Cluster, http: aiohttp.ClientSession, victim: str, target: str
) -> tuple[dict[str, Any], float]:
    """``POST /v1/admin/regions/VICTIM/failover`` to a node of ``target`` until it is done,
    waiting out 409 ``lease_held`` (``remaining_ms``) as the CLI does; the answer and the
    time spent waiting for the lease, ms."""
    started = time.monotonic()
    waited_s = 0.0
    last: object = None
    while time.monotonic() - started < DEADLINE_S:
        for api in c.apis(target):
            try:
                status, answer = await call(http, "POST", f"{api}/v1/admin/regions/{victim}"
                                             "/failover", {"to": target}, 60.0)  # fmt: skip
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = repr(exc)
                continue
            err = answer.get("error", {}) if isinstance(answer, dict) else {}
            if status == 200:
                return answer, waited_s * 1000
            if status == 409 and err.get("code") == "lease_held":
                pause = min(1.0, max(0.05, int(err.get("remaining_ms", 200)) / 1000))
                await asyncio.sleep(pause)
                waited_s = time.monotonic() - started
                break
            if status != 503:
                raise RuntimeError(f"failover of {victim} to {target}: {status} {answer}")
            last = (status, answer)
        else:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"failover of {victim} to {target} not done in {DEADLINE_S:g} s: {last}")


async def failover(
    c: Cluster,
    http: aiohttp.ClientSession,
    load: Load,
    episode: int,
    victim: str,
    target: str,
    window_start: LagBuckets,
) -> tuple[list[FailoverRow], list[MoveRow]]:
    parts = sorted(p for p, r in load.homes.items() if r == victim)
    lag, old_epochs = await before_loss(c, http, victim, target, parts, window_start)
    killed_s = time.monotonic()
    c.kill_region(victim)
    await c.wait_dead(victim)
    print(f"[failover {episode}] killed {victim}; failing over to {target}", file=sys.stderr)
    t0 = time.monotonic()
    answer, waited_ms = await failover_call(c, http, victim, target)
    call_ms = (time.monotonic() - t0) * 1000
    moved = {int(r["partition"]): r for r in answer["partitions"] if r["stream"] == STREAM}
    for p in moved:
        load.homes[p] = target
    await asyncio.sleep(1.0)
    restarted_s = time.monotonic()
    c.restart_region(victim)
    await mirrored(c, http, victim, {p: int(r["epoch"]) for p, r in moved.items()})
    mirrored_ms = (time.monotonic() - restarted_s) * 1000
    rows = []
    for p, r in sorted(moved.items()):
        fork = int(r["fork_seq"])
        lost = [a for a in load.acks
                if a.partition == p and a.epoch == old_epochs.get(p) and a.seq > fork]  # fmt: skip
        rpo_ms = (killed_s - min(a.ack_s for a in lost)) * 1000 if lost else 0.0
        at_loss = lag.get(p, LagAtLoss(None, None, None))
        rows.append(
            FailoverRow(
                episode,
                victim,
                target,
                p,
                old_epochs.get(p, 0),
                int(r["epoch"]),
                fork,
                len(lost),
                rpo_ms,
                at_loss.p99_window_ms,
                at_loss.p99_total_ms,
                at_loss.out_ms,
                int(r.get("lost_events", -1)),
                float(r.get("rpo_ms", -1)),
                waited_ms,
                call_ms,
                mirrored_ms,
                await quarantine_count(c, http, victim, p),
            )
        )
    backs = [await move(c, http, load, p, victim, "failback") for p in sorted(moved)]
    return rows, backs


# --- the run -----------------------------------------------------------------------------------


def lease_config(lease_ms: int) -> str:
    """A ``[geo]`` section with a shorter lease, renewal and drift scaled from the defaults."""
    renew = max(100, lease_ms * 3 // 10)
    drift = max(50, lease_ms // 20)
    return f"[geo]\nlease_ms = {lease_ms}\nlease_renew_ms = {renew}\nlease_drift_ms = {drift}\n"


async def final_check(
    c: Cluster, http: aiohttp.ClientSession, load: Load, orphaned: set[tuple[int, int, int]]
) -> dict[str, Any]:
    """Wait until every node holds the same partitions; count acknowledged appends missing
    outside the failovers' orphaned suffixes and orphaned ones still served."""
    deadline = time.monotonic() + DEADLINE_S
    views: dict[str, Any] = {}
    while True:
        for node_id, n in c.nodes.items():
            doc = await _until_ok(http, "GET", f"{n['api']}/v1/debug/partitions")
            views[node_id] = sorted(
                (r["partition"], r["home"], r["epoch"], r["last_seq"], r["hash"])
                for r in doc["partitions"] if r["stream"] == STREAM
            )  # fmt: skip
        first = next(iter(views.values()))
        if all(v == first for v in views.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"regions did not converge: {views}")
        await asyncio.sleep(0.5)
    api = c.apis(c.regions[0])[0]
    final: dict[int, dict[int, str]] = {}
    for p in sorted(load.homes):
        final[p] = {}
        nxt = 0
        while True:
            page = await _until_ok(http, "GET", f"{api}/v1/streams/{STREAM}/events?partition={p}"
                                   f"&from_seq={nxt}&limit=10000&consistency=local")  # fmt: skip
            final[p].update((e["seq"], str(e["body"])) for e in page["events"])
            if not page["events"]:
                break
            nxt = page["next_seq"]
    missing = sum(
        1 for a in load.acks
        if (a.partition, a.epoch, a.seq) not in orphaned and final[a.partition].get(a.seq) != a.value
    )  # fmt: skip
    served = sum(
        1 for a in load.acks
        if (a.partition, a.epoch, a.seq) in orphaned and final[a.partition].get(a.seq) == a.value
    )  # fmt: skip
    gaps = sum(1 for p, log in final.items() if sorted(log) != list(range(len(log))))
    found: dict[str, Any] = {
        "missing": missing,
        "served_orphans": served,
        "gappy_partitions": gaps,
        "events": sum(len(v) for v in final.values()),
    }
    return found


async def run(args: argparse.Namespace, work: Path) -> tuple[list[MoveRow], list[FailoverRow],
                                                             list[MoveRow], dict[str, Any]]:  # fmt: skip
    extra: list[str] = []
    if args.lease_ms:
        (work / "lease.toml").write_text(lease_config(args.lease_ms))
        extra = ["--config", str(work / "lease.toml")]
    folder = work / "cluster"
    up = _geostore("cluster", "up", "--topology", str(args.topology), "--dir", str(folder),
                   "--timeout", "120", *extra)  # fmt: skip
    if up.returncode != 0:
        raise RuntimeError(f"cluster up failed:\n{up.stdout}{up.stderr}")
    c = Cluster(folder)
    try:
        async with c.session() as http:
            homes = {p: r for p, r in enumerate(c.regions)}
            await _any_ok(http, c.apis(c.regions[0]), "POST", "/v1/streams", {
                "name": STREAM, "partitions": len(homes),
                "homes": {str(p): r for p, r in homes.items()}})  # fmt: skip
            # every region holds the stream before its writer starts
            for region in c.regions:
                await mirrored(c, http, region, {p: 1 for p in homes})
            load = Load(c, args.rate, dict(homes))
            writers = [asyncio.create_task(load.writer(http, p)) for p in homes]
            try:
                await asyncio.sleep(args.warmup_s)
                moves: list[MoveRow] = []
                for k in range(args.moves):
                    target = c.regions[(c.regions.index(load.homes[0]) + 1) % len(c.regions)]
                    row = await move(c, http, load, 0, target, "planned")
                    print(f"[move {k + 1}/{args.moves}] {row.source} -> {row.target}: "
                          f"{row.pause_ms:.0f} ms", file=sys.stderr)  # fmt: skip
                    moves.append(row)
                    await asyncio.sleep(args.move_gap_s)
                failovers: list[FailoverRow] = []
                failbacks: list[MoveRow] = []
                for k in range(args.failovers):
                    victim = c.regions[k % len(c.regions)]
                    target = c.regions[(k + 1) % len(c.regions)]
                    window_start = await apply_lag_buckets(c, http, target)
                    await asyncio.sleep(args.load_before_loss_s)
                    rows, backs = await failover(c, http, load, k + 1, victim, target, window_start)
                    failovers += rows
                    failbacks += backs
            finally:
                load.stop.set()
                await asyncio.gather(*writers)
            orphaned = {
                (a.partition, a.epoch, a.seq)
                for f in failovers
                for a in load.acks
                if a.partition == f.partition and a.epoch == f.old_epoch and a.seq > f.fork_seq
            }
            check = await final_check(c, http, load, orphaned)
            check["acked"] = len(load.acks)
            check["refused"] = sum(load.refused.values())
            check["refused_by_code"] = {f"p{p} {s} {code}": n
                                        for (p, s, code), n in load.refused.items()}  # fmt: skip
            return moves, failovers, failbacks, check
    finally:
        c.down()


def to_result(
    args: argparse.Namespace,
    moves: list[MoveRow],
    failovers: list[FailoverRow],
    failbacks: list[MoveRow],
    check: dict[str, Any],
) -> Result:
    metrics: list[Metric] = []
    if moves:
        pause = percentiles([m.pause_ms for m in moves])
        metrics += [
            Metric("move_pause_p50_ms", pause["p50"], "ms", MOVE_PAUSE_P50_MS, "lower"),
            Metric("move_pause_p99_ms", pause["p99"], "ms", better="lower"),
        ]
        for phase in PHASES:
            got = percentiles([m.pauses_ms.get(phase, 0.0) for m in moves])
            metrics += [
                Metric(f"move_{phase}_p50_ms", got["p50"], "ms", better="lower"),
                Metric(f"move_{phase}_p99_ms", got["p99"], "ms", better="lower"),
            ]
        gap = percentiles([m.client_gap_ms for m in moves])
        metrics += [
            Metric("move_client_gap_p50_ms", gap["p50"], "ms", better="lower"),
            Metric("move_client_gap_p99_ms", gap["p99"], "ms", better="lower"),
            Metric("move_moving_503", sum(m.moving_503 for m in moves), "answers", better="lower"),
        ]
    if failovers:
        over = [f.rpo_ms - f.bound_ms for f in failovers]
        metrics += [
            Metric("failover_rpo_events_max", max(f.acked_lost for f in failovers), "events",
                   better="lower"),
            Metric("failover_rpo_ms_max", max(f.rpo_ms for f in failovers), "ms", better="lower"),
            Metric("failover_lag_p99_at_loss_ms_max",
                   max((f.lag_p99_ms or 0.0) for f in failovers), "ms", better="lower"),
            Metric("failover_rpo_over_bound_ms_max", max(over, default=0.0), "ms", 0.0, "lower"),
            Metric("failover_lease_wait_ms_p50",
                   percentiles([f.waited_ms for f in failovers])["p50"], "ms", better="lower"),
            Metric("failback_mirrored_ms_p50",
                   percentiles([f.mirrored_after_restart_ms for f in failovers])["p50"], "ms",
                   better="lower"),
        ]  # fmt: skip
    if failbacks:
        metrics.append(
            Metric(
                "failback_move_pause_p50_ms",
                percentiles([m.pause_ms for m in failbacks])["p50"],
                "ms",
                better="lower",
            )
        )
    metrics += [
        Metric("acked_lost_outside_failovers", check["missing"], "events", 0, "lower"),
        Metric("failover_lost_not_suffix", check["served_orphans"], "events", 0, "lower"),
        Metric("partitions_with_gaps", check["gappy_partitions"], "partitions", 0, "lower"),
        Metric("acked_appends", check["acked"], "events"),
    ]
    config = {
        "topology": str(Path(args.topology).name),
        "moves": args.moves,
        "failovers": args.failovers,
        "rate_per_partition": args.rate,
        "lease_ms": args.lease_ms or "default",
        "runs": {
            "moves": [asdict(m) for m in moves],
            "failovers": [asdict(f) | {"bound_ms": f.bound_ms} for f in failovers],
            "failbacks": [asdict(m) for m in failbacks],
            "check": check,
        },
    }
    return Result("failover", config, metrics)


def tables(moves: list[MoveRow], failovers: list[FailoverRow], failbacks: list[MoveRow]) -> str:
    head = "".join(f"{p:>9}" for p in PHASES)
    lines = ["", f"{'moves (ms)':<32}{head}    pause   client gap  503 moving"]
    for m in [*moves, *failbacks]:
        cells = "".join(f"{m.pauses_ms.get(p, 0):9.0f}" for p in PHASES)
        lines.append(
            f"{m.kind:<8} p{m.partition} {m.source[:9]:>9}->{m.target[:9]:<9}"
            f"{cells} {m.pause_ms:8.0f} {m.client_gap_ms:12.0f} {m.moving_503:11d}"
        )
    if failovers:
        lines += [
            "",
            "failovers        fork  lost(acked) lost(server)  RPO ms  server RPO  lag p99"
            " (total)  bound  met  lease wait  mirrored  quarantined",
        ]
        for f in failovers:
            bound = f"{f.bound_ms:.0f}"
            met = "yes" if f.rpo_ms <= f.bound_ms else "NO"
            lag = "-" if f.lag_p99_ms is None else f"{f.lag_p99_ms:.0f}"
            total = "-" if f.lag_p99_total_ms is None else f"{f.lag_p99_total_ms:.0f}"
            quar = "-" if f.quarantined is None else str(f.quarantined)
            lines.append(
                f"{f.episode} {f.victim[:7]:>7}->{f.target[:7]:<7} p{f.partition} {f.fork_seq:6d}"
                f" {f.acked_lost:11d} {f.server_lost_events:12d} {f.rpo_ms:7.0f}"
                f" {f.server_rpo_ms:11.0f} {lag:>8} {total:>8} {bound:>6} {met:>4} {f.waited_ms:11.0f}"
                f" {f.mirrored_after_restart_ms:9.0f} {quar:>12}"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topology", type=Path, default=TOPOLOGY)
    ap.add_argument("--moves", type=int, default=6, help="planned moves of partition 0")
    ap.add_argument("--failovers", type=int, default=3, help="region failovers (victim rotates)")
    ap.add_argument("--rate", type=float, default=20.0, help="appends/s per partition (max)")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--move-gap-s", type=float, default=2.0, help="load between two moves")
    ap.add_argument("--load-before-loss-s", type=float, default=5.0)
    ap.add_argument("--lease-ms", type=int, default=0,
                    help="shorter home lease (renewal and drift scaled); 0: the config's")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="3 moves, 1 failover")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the cluster folder")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.moves, args.failovers = 3, 1
    work = Path(tempfile.mkdtemp(prefix="geostore-bench-failover-"))
    try:
        moves, failovers, failbacks, check = asyncio.run(run(args, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    emit(to_result(args, moves, failovers, failbacks, check), json_out=args.json_out)
    print(tables(moves, failovers, failbacks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
