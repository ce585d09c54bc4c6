"""A history recorder and checker for process-level runs of a real region (docs/testing.md).

Theory of operation: every client operation of a test run is recorded as an :class:`Op`:
its session (``process``), ``f`` (append or read), partition, invoke and complete times on the
harness's monotonic clock, and ``type``: ``ok`` (happened, with its result), ``fail``
(definitely not applied; only reads ever fail here) or ``info`` (unknown outcome). Appends
carry a unique value and their idempotent producer pair ``(pid, seq)``; reads carry their
mode (``regional`` = linearizable, ``local`` = follower read), the serving node, the offsets
asked for and the ``(offset, value)`` pairs returned. An explicit retry of an earlier append
(same producer pair and value, sent again later) is its own op that names the original in
``retry_of``. Faults are recorded beside the ops with their times, for the summary.

:func:`check` takes the history and the final state of the region after heal and quiescence
(the regional read of every partition, each node's local read and each node's
``/v1/debug/partitions``) and reports anomalies by the names of docs/testing.md (A and R):

- the regional (linearizable) part of the history, per partition, goes through the
  simulator's checker (:func:`geostore.sim.history.check_history`): A1 inconsistent-offsets,
  A2 duplicate, A3 lost-write, A4 phantom/aborted-read, A6 realtime-order, A7 stale-read and
  nonmonotonic-read, A9 nonmonotonic-send (per session). An append whose outcome was unknown
  and that a later retry resolved is fed to it as one op spanning from the original invoke to
  the retry's completion (the value was stored once, at some moment inside that span);
  retries that are not resolutions (a resend of an ok append) are checked by A10 only;
- local reads and every node's final local log join the version order (A1, A2, A4) but are
  exempt from the recency checks (A7), as the contract allows follower reads to lag;
- A5 int-poll-skip: every final log covers exactly ``0..n-1`` and every ok read returns a
  contiguous run from the offset it asked for;
- A9 producer-order: a producer's first attempts, in seq order, got increasing offsets;
- A10 retry-offset: all ok answers for one producer pair name the same offset;
- R1/R5 replica-divergence: after quiescence every node has applied the same index and holds,
  per partition, the same last seq, rolling hash and events as the regional read.

Times go to the simulator's checker as integer microseconds (its ``*_ms`` fields only ever
compare with each other), floored, which can hide an order but never invent one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import aiohttp

from bench.failover import cluster_down_reaping
from geostore.client import GeostoreClient, Producer, RequestFailed
from geostore.config import make_topology
from geostore.errors import ApiError, ErrorCode
from geostore.sim.history import Anomaly, OpKind, Outcome, check_history
from geostore.sim.history import Op as SimOp
from tests.integration import clusterkit

OpType = Literal["ok", "fail", "info"]
ReadMode = Literal["regional", "local"]


@dataclass(slots=True)
class Op:
    """One client operation of a real run (see the module docstring)."""

    process: str
    f: Literal["append", "read"]
    partition: int
    invoke_s: float
    complete_s: float | None = None
    type: OpType | None = None
    value: str | None = None  #: append: the unique value
    producer: tuple[str, int] | None = None  #: append: the idempotent producer pair
    offset: int | None = None  #: ok append: where it landed
    retry_of: int | None = None  #: append: index (in the history) of the op it resends
    mode: ReadMode = "regional"  #: read: consistency
    node: str | None = None  #: read: the node asked (local reads)
    start: int = 0  #: read: first offset asked for
    end: int | None = None  #: ok read: last offset the answer covers (next_seq - 1)
    observed: tuple[tuple[int, str], ...] = ()  #: ok read: the (offset, value) pairs returned
    error: str | None = None  #: fail/info: why


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float
    what: str


@dataclass(slots=True)
class History:
    """Ops in invoke order plus the faults injected (not thread-safe: one event loop)."""

    ops: list[Op] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    t0_s: float = 0.0  #: origin of the times printed by the summary

    def invoke(self, op: Op) -> int:
        self.ops.append(op)
        return len(self.ops) - 1

    def fault(self, at_s: float, what: str) -> None:
        self.faults.append(Fault(at_s, what))

    def summary(self) -> str:
        counts = Counter((op.f, op.mode if op.f == "read" else "", op.type) for op in self.ops)
        lines = [f"history: {len(self.ops)} ops"]
        for (f, mode, typ), n in sorted(counts.items(), key=lambda kv: str(kv[0])):
            label = f"{f} {mode}".strip()
            lines.append(f"  {label:<14} {typ or 'open':<5} {n}")
        errors = Counter(
            f"{op.f} {op.type}: {':'.join(op.error.split(':')[:2])[:70]}"
            for op in self.ops
            if op.error
        )
        for what, n in errors.most_common(8):
            lines.append(f"  ({n}x {what})")
        retries = [op for op in self.ops if op.retry_of is not None]
        if retries:
            lines.append(f"  explicit producer retries: {len(retries)}")
        lines.append("faults:")
        for fault in self.faults:
            lines.append(f"  t={fault.at_s - self.t0_s:7.2f} s  {fault.what}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class FinalState:
    """The region after heal and quiescence.

    ``regional``: partition -> offset -> value (a regional read). ``local``: node -> partition
    -> the ``(offset, value)`` list its local read returned. ``debug``: node -> its
    ``/v1/debug/partitions`` answer."""

    regional: Mapping[int, Mapping[int, str]]
    local: Mapping[str, Mapping[int, Sequence[tuple[int, str]]]]
    debug: Mapping[str, Mapping[str, Any]]


def _us(t_s: float | None) -> int:
    assert t_s is not None
    return int(t_s * 1_000_000)


def _sim_ops(ops: Sequence[Op], partition: int) -> list[SimOp]:
    """The regional part of one partition's history in the simulator's record type."""
    names: dict[str, int] = {}
    resolved: dict[int, Op] = {}  # original index -> the ok retry that resolved it
    for op in ops:
        if op.retry_of is not None and op.type == "ok" and ops[op.retry_of].type != "ok":
            resolved.setdefault(op.retry_of, op)
    out: list[SimOp] = []
    for i, op in enumerate(ops):
        if op.partition != partition or op.complete_s is None or op.type is None:
            continue
        # An op of unknown outcome leaves its session hung as far as ordering goes (the
        # Jepsen convention): it counts as the only op of a process of its own.
        process = op.process if op.type == "ok" else f"{op.process}#{i}"
        pid = names.setdefault(process, len(names))
        if op.f == "append":
            if op.retry_of is not None:
                continue  # a resend: folded into its original below, or checked by A10
            s = SimOp(pid, OpKind.APPEND, _us(op.invoke_s), value=op.value)
            fix = resolved.get(i)
            if op.type == "ok":
                s.outcome, s.offset, s.complete_ms = Outcome.OK, op.offset, _us(op.complete_s)
            elif fix is not None:
                s.outcome, s.offset, s.complete_ms = Outcome.OK, fix.offset, _us(fix.complete_s)
            else:
                s.outcome = Outcome.FAIL if op.type == "fail" else Outcome.INFO
                s.complete_ms = _us(op.complete_s)
            out.append(s)
        elif op.mode == "regional" and op.type == "ok":
            assert op.end is not None
            s = SimOp(pid, OpKind.READ, _us(op.invoke_s), start=op.start)
            s.outcome, s.end, s.complete_ms = Outcome.OK, op.end, _us(op.complete_s)
            s.observed = op.observed
            out.append(s)
    return out


def _contiguous(pairs: Sequence[tuple[int, str]], start: int) -> bool:
    return [o for o, _ in pairs] == list(range(start, start + len(pairs)))


def check(history: History | Sequence[Op], final: FinalState) -> list[Anomaly]:
    """Every anomaly of the history and the final state (empty when the run is correct)."""
    ops = history.ops if isinstance(history, History) else list(history)
    found: list[Anomaly] = []

    def add(name: str, detail: str) -> None:
        if len(found) < 100:
            found.append(Anomaly(name, detail))

    partitions = sorted(
        {op.partition for op in ops}
        | set(final.regional)
        | {p for logs in final.local.values() for p in logs}
    )
    appended = {op.value: op for op in ops if op.f == "append" and op.value is not None}
    for p in partitions:
        regional = final.regional.get(p, {})
        # A1-A4, A6, A7, A9 (per session) on the linearizable part: the simulator's checker.
        for a in check_history(_sim_ops(ops, p), regional).anomalies:
            add(a.name, f"partition {p}: {a.detail}")

        # A1, A2, A4 with follower reads and every node's final log joining the version order.
        value_at: dict[int, tuple[str, str]] = {}
        offset_of: dict[str, tuple[int, str]] = {}
        seeds: list[tuple[int, str, str]] = [
            (o, v, "regional final log") for o, v in sorted(regional.items())
        ]
        for op in ops:
            if op.partition == p and op.type == "ok" and op.f == "append":
                assert op.offset is not None and op.value is not None
                seeds.append((op.offset, op.value, f"ack to {op.process}"))
            elif op.partition == p and op.type == "ok" and op.mode == "regional":
                seeds.extend((o, v, f"regional read by {op.process}") for o, v in op.observed)
        local: list[tuple[int, str, str]] = []
        for op in ops:
            if op.partition == p and op.f == "read" and op.mode == "local" and op.type == "ok":
                where = f"local read of {op.node} by {op.process} at {op.complete_s}"
                local.extend((o, v, where) for o, v in op.observed)
        for node, logs in sorted(final.local.items()):
            local.extend((o, v, f"final local log of {node}") for o, v in logs.get(p, ()))
        for checked, (o, v, src) in itertools.chain(
            ((False, s) for s in seeds), ((True, s) for s in local)
        ):
            prior = value_at.setdefault(o, (v, src))
            if checked and prior[0] != v:
                add(
                    "inconsistent-offsets",
                    f"partition {p}: offset {o} holds {prior[0]!r} ({prior[1]}) and {v!r} ({src})",
                )
            seen_at = offset_of.setdefault(v, (o, src))
            if checked and seen_at[0] != o:
                add(
                    "duplicate",
                    f"partition {p}: value {v!r} at offsets {seen_at[0]} ({seen_at[1]}) and {o} ({src})",
                )
            if checked:
                origin = appended.get(v)
                if origin is None:
                    add("phantom", f"partition {p}: {v!r} at offset {o} ({src}) never appended")
                elif origin.type == "fail":
                    add("aborted-read", f"partition {p}: {v!r} ({src}) was from a failed append")

        # A5: dense final logs, contiguous reads.
        if sorted(regional) != list(range(len(regional))):
            add("int-poll-skip", f"partition {p}: regional final log offsets are not 0..n-1")
        for node, logs in sorted(final.local.items()):
            if not _contiguous(list(logs.get(p, ())), 0):
                add("int-poll-skip", f"partition {p}: final local log of {node} has a gap")
        for op in ops:
            if op.partition == p and op.f == "read" and op.type == "ok":
                if not _contiguous(op.observed, op.start):
                    add(
                        "int-poll-skip",
                        f"partition {p}: {op.mode} read by {op.process} from {op.start} "
                        f"returned offsets {[o for o, _ in op.observed][:20]}",
                    )
                elif op.observed and op.end != op.observed[-1][0]:
                    add(
                        "int-poll-skip",
                        f"partition {p}: read by {op.process} ends at {op.end} but its last "
                        f"event is at {op.observed[-1][0]}",
                    )

    # A9 with producers: first attempts, in seq order, land at increasing offsets.
    by_producer: dict[tuple[str, int], list[Op]] = defaultdict(list)
    for op in ops:
        if op.f == "append" and op.type == "ok" and op.producer and op.retry_of is None:
            by_producer[(op.producer[0], op.partition)].append(op)
    for (pid, p), sent in sorted(by_producer.items()):
        sent.sort(key=lambda op: op.producer[1] if op.producer else 0)
        for x, y in itertools.pairwise(sent):
            assert x.offset is not None and y.offset is not None
            if y.offset <= x.offset:
                add(
                    "nonmonotonic-send",
                    f"partition {p}: producer {pid} seq {y.producer} got offset {y.offset} "
                    f"after seq {x.producer} got {x.offset}",
                )

    # A10: one producer pair, one offset, however often it was sent.
    answers: dict[tuple[str, int], set[tuple[int, int]]] = defaultdict(set)
    for op in ops:
        if op.f == "append" and op.type == "ok" and op.producer is not None:
            assert op.offset is not None
            answers[op.producer].add((op.partition, op.offset))
    for pair, spots in sorted(answers.items()):
        if len(spots) > 1:
            add("retry-offset", f"producer {pair} answered with {sorted(spots)}")

    # R1 / R5: every node applied the same index and holds the same events per partition.
    found.extend(_check_replicas(final, partitions))
    return found


def _check_replicas(final: FinalState, partitions: Iterable[int]) -> list[Anomaly]:
    out: list[Anomaly] = []
    applied = {node: d.get("applied_index") for node, d in final.debug.items()}
    if len(set(applied.values())) > 1:
        out.append(Anomaly("replica-divergence", f"applied indexes differ: {applied}"))
    summaries: dict[int, dict[str, tuple[Any, Any]]] = defaultdict(dict)
    for node, d in final.debug.items():
        for part in d.get("partitions", []):
            summaries[int(part["partition"])][node] = (part.get("last_seq"), part.get("hash"))
    for p in partitions:
        if len(set(summaries[p].values())) > 1:
            out.append(
                Anomaly(
                    "replica-divergence",
                    f"partition {p}: (last_seq, rolling hash) per node differ: {summaries[p]}",
                )
            )
        regional = sorted(final.regional.get(p, {}).items())
        for node, logs in sorted(final.local.items()):
            mine = list(logs.get(p, ()))
            if mine != regional:
                first = next(
                    (i for i, (x, y) in enumerate(zip(mine, regional, strict=False)) if x != y),
                    min(len(mine), len(regional)),
                )
                out.append(
                    Anomaly(
                        "replica-divergence",
                        f"partition {p}: {node}'s local log ({len(mine)} events) differs from "
                        f"the regional read ({len(regional)}) from index {first}",
                    )
                )
    return out


def lost_acknowledged(
    ops: Sequence[Op], regional: Mapping[int, Mapping[int, str]], acked_before_s: float
) -> list[Anomaly]:
    """A3 alone (the power-loss tests): every append acknowledged before ``acked_before_s``
    is in the final log at its offset."""
    out = []
    for op in ops:
        if op.f != "append" or op.type != "ok" or op.complete_s is None:
            continue
        if op.complete_s >= acked_before_s:
            continue
        assert op.offset is not None
        got = regional.get(op.partition, {}).get(op.offset)
        if got != op.value:
            out.append(
                Anomaly(
                    "lost-write",
                    f"partition {op.partition}: acked {op.value!r} at offset {op.offset} "
                    f"(acked at {op.complete_s:.3f}) is {got!r} after the restart",
                )
            )
    return out


#: a read must return everything it covers (the server's largest page)
READ_LIMIT = 10_000
#: A session's producer id changes every this many seqs: below the server's dedup window
#: (1024 seqs per producer id), so a resend of any seq is still recognised.
PRODUCER_SPAN = 512

# --- the process harness: a real region started by ``geostore cluster up`` -----------------


class Region:
    """The node processes of a one-region cluster in ``root``, with the faults of docs/testing.md
    3.2 that a test injects from outside: SIGKILL (P1), SIGSTOP/SIGCONT (P2), a restart from
    the data dir with the exact command line the node was started with, and a power loss of
    every node (S1, :meth:`lose_power`)."""

    def __init__(self, root: Path, config_toml: str, *, unsafe_no_fsync: bool = False) -> None:
        self.root = root
        self.folder = root / "cluster"
        self.config_toml = config_toml
        self.unsafe_no_fsync = unsafe_no_fsync
        self.cluster: dict[str, Any] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.cmdlines: dict[str, list[str]] = {}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------------

    def up(self) -> None:
        topology = make_topology({"r1": ["n1", "n2", "n3"]}, 0.0, name="faults", intra_rtt_ms=0.0)
        (self.root / "topology.toml").write_text(topology.to_toml())
        (self.root / "config.toml").write_text(self.config_toml)
        args = ["cluster", "up", "--topology", str(self.root / "topology.toml"), "--dir",
                str(self.folder), "--config", str(self.root / "config.toml"), "--timeout", "120",
                "--insecure"]  # fmt: skip
        if self.unsafe_no_fsync:
            args.append("--unsafe-no-fsync")
        out = geostore(*args)
        assert out.returncode == 0, out.stdout + out.stderr
        self.cluster = json.loads((self.folder / "cluster.json").read_text())
        self.nodes = {n["id"]: n for n in self.cluster["regions"]["r1"]["nodes"]}
        for node_id, n in self.nodes.items():
            # the exact command line 'cluster up' used; a restart must not found a new cluster
            raw = Path(f"/proc/{n['pid']}/cmdline").read_bytes().split(b"\0")
            self.cmdlines[node_id] = [a.decode() for a in raw if a and a != b"--bootstrap"]

    def down(self) -> None:
        for node_id in list(self.stopped):
            self.signal(node_id, signal.SIGCONT)
        self._save()
        cluster_down_reaping(self.folder, list(self.children.values()))

    def _save(self) -> None:
        # so that 'cluster down' finds the restarted processes
        (self.folder / "cluster.json").write_text(json.dumps(self.cluster, indent=2))

    @property
    def urls(self) -> list[str]:
        return [n["api"] for n in self.nodes.values()]

    # -- faults -----------------------------------------------------------------------------

    def signal(self, node_id: str, sig: signal.Signals) -> None:
        os.kill(self.nodes[node_id]["pid"], sig)
        if sig is signal.SIGSTOP:
            self.stopped.add(node_id)
        elif sig is signal.SIGCONT:
            self.stopped.discard(node_id)

    def alive(self, node_id: str) -> bool:
        proc = self.children.get(node_id)
        if proc is not None and proc.pid == self.nodes[node_id]["pid"]:
            return proc.poll() is None
        try:  # a child of 'cluster up', now of init, which reaps it
            state = Path(f"/proc/{self.nodes[node_id]['pid']}/stat").read_text().split()[2]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"

    async def wait_dead(self, node_id: str, timeout_s: float = 60) -> None:
        await wait_for(f"{node_id} exited", lambda: True if not self.alive(node_id) else None,
                       timeout_s)  # fmt: skip

    def restart(self, node_id: str) -> None:
        """Start the node again from its data dir, with the command line it was started with."""
        assert not self.alive(node_id), f"{node_id} still runs"
        log = open(os.path.join(self.nodes[node_id]["dir"], "process.log"), "ab")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(self.cmdlines[node_id], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        old = self.children.pop(node_id, None)
        if old is not None:
            old.wait()
        self.children[node_id] = proc
        self.nodes[node_id]["pid"] = proc.pid
        self._save()

    # -- observation ------------------------------------------------------------------------

    async def get(self, node_id: str, path: str, timeout_s: float = 3.0) -> Any:
        """GET a node's JSON endpoint; None when it does not answer in time."""
        url = self.nodes[node_id]["api"] + path
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp,
            ):
                return await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    async def group(self, node_id: str) -> dict[str, Any] | None:
        st = await self.get(node_id, "/v1/status")
        g = st.get("groups", {}).get("data-r1") if isinstance(st, dict) else None
        return g if isinstance(g, dict) else None

    async def leader(self, timeout_s: float = 60) -> str:
        async def find() -> str | None:
            for node_id in self.nodes:
                if node_id not in self.stopped:
                    g = await self.group(node_id)
                    if g is not None and g.get("role") == "leader":
                        return node_id
            return None

        return str(await wait_for("a leader", find, timeout_s))

    async def quiescent(self, timeout_s: float = 120) -> dict[str, dict[str, Any]]:
        """Wait until every node runs, one leader leads the highest term and every node has
        applied its commit index; every node's group status then."""

        async def settled() -> dict[str, dict[str, Any]] | None:
            groups = {}
            for node_id in self.nodes:
                g = await self.group(node_id)
                if g is None:
                    return None
                groups[node_id] = g
            leaders = [g for g in groups.values() if g["role"] == "leader"]
            if len(leaders) != 1 or leaders[0]["term"] != max(g["term"] for g in groups.values()):
                return None
            commit = leaders[0]["commit"]
            if all(g["commit"] == commit and g["applied"] == commit for g in groups.values()):
                return groups
            return None

        result: dict[str, dict[str, Any]] = await wait_for("a quiescent region", settled, timeout_s)
        return result


class Workload:
    """Client sessions (one op at a time each) recording into one history."""

    def __init__(
        self,
        region: Region,
        history: History,
        run: str,
        stream: str,
        partitions: int,
        *,
        timeout_s: float = 15.0,
    ) -> None:
        #: how long one client call keeps retrying (over every node) before it gives up
        self.timeout_s = timeout_s
        self.stream = stream
        self.partitions = partitions
        self.region = region
        self.history = history
        self.run = run
        self.stop = asyncio.Event()
        #: highest offset acknowledged so far per partition (reads start at or below it)
        self.acked_high = [-1] * partitions

    def client(self, urls: list[str], **kw: object) -> GeostoreClient:
        opts: dict[str, object] = {
            "timeout_s": self.timeout_s,
            "attempt_timeout_s": 3.0,
            "attempts_max": 30,
        }
        opts.update(kw)
        return GeostoreClient(urls, "r1", **opts)  # type: ignore[arg-type]

    async def append(
        self, client: GeostoreClient, process: str, partition: int, value: str,
        producer: Producer, retry_of: int | None = None,
    ) -> Op:  # fmt: skip
        op = Op(process, "append", partition, time.monotonic(), value=value,
                producer=(producer.id, producer.seq), retry_of=retry_of)  # fmt: skip
        self.history.invoke(op)
        try:
            res = await client.append(
                self.stream, [{"body": value, "partition": partition}], producer
            )
            if res.errors or len(res.results) != 1:
                op.type, op.error = "info", str(res.errors)
            else:
                op.type, op.offset = "ok", res.results[0].first_seq
                self.acked_high[partition] = max(self.acked_high[partition], op.offset)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            # the client retried within its deadline; an earlier attempt may have been stored
            op.type, op.error = "info", f"{type(exc).__name__}: {exc}"
        op.complete_s = time.monotonic()
        return op

    async def appender(self, k: int, timeout_s: float | None = None) -> None:
        """Session ``a{k}``: appends one at a time; with ``timeout_s`` (and one node per
        attempt at most a third of it) an impatient one, whose appends often end unknown."""
        rng = random.Random(f"{self.run}-a{k}")
        kw: dict[str, object] = {}
        if timeout_s is not None:
            kw = {"timeout_s": timeout_s, "attempt_timeout_s": timeout_s / 3}
        async with self.client(self.region.urls, **kw) as client:
            for n in itertools.count(1):
                if self.stop.is_set():
                    return
                p = rng.randrange(self.partitions)
                producer = Producer(f"{self.run}-a{k}.{n // PRODUCER_SPAN}", n)
                await self.append(client, f"a{k}", p, f"a{k}-{n}", producer)

    async def reader(self, k: int, mode: str) -> None:
        rng = random.Random(f"{self.run}-{mode}{k}")
        urls = self.region.urls
        node_ids = list(self.region.nodes)
        async with contextlib.AsyncExitStack() as stack:
            regional = await stack.enter_async_context(self.client(urls))
            # one client per node, so a local read asks exactly that node, once
            local = [
                await stack.enter_async_context(self.client([u], attempts_max=1, timeout_s=3.0))
                for u in urls
            ]
            while not self.stop.is_set():
                p = rng.randrange(self.partitions)
                high = self.acked_high[p]
                start = rng.choice([0, max(0, high - rng.randrange(40))])
                node = rng.randrange(len(urls))
                op = Op(f"{mode[0]}{k}", "read", p, time.monotonic(), mode=mode,  # type: ignore[arg-type]
                        start=start, node=node_ids[node] if mode == "local" else None)  # fmt: skip
                self.history.invoke(op)
                try:
                    page = await (local[node] if mode == "local" else regional).read(
                        self.stream,
                        p,
                        from_seq=start,
                        limit=READ_LIMIT,
                        consistency=mode,  # type: ignore[arg-type]
                    )
                    if len(page.events) < READ_LIMIT:
                        op.type, op.end = "ok", page.next_seq - 1
                        op.observed = tuple((e.seq, str(e.body)) for e in page.events)
                    else:  # not a tail read: its end says nothing about recency; unchecked
                        op.type, op.error = "fail", "cut by the read limit"
                except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    op.type, op.error = (
                        "fail",
                        f"{type(exc).__name__}: {exc}",
                    )  # reads change nothing
                op.complete_s = time.monotonic()
                await asyncio.sleep(rng.uniform(0.01, 0.05))


async def final_state(
    region: Region, stream: str, partitions: int, *, missing_ok: bool = False
) -> FinalState:
    """Every partition read regionally through the leader and locally on every node, after
    quiescence. ``missing_ok``: a stream that no longer exists reads as empty (a power loss
    under ``--unsafe-no-fsync`` may lose the stream's creation too)."""
    groups = await region.quiescent()
    leader = next(n for n, g in groups.items() if g["role"] == "leader")

    async def read_all(url: str, consistency: Literal["regional", "local"]) -> dict[int, Any]:
        out: dict[int, Any] = {}
        async with GeostoreClient([url], "r1", timeout_s=60.0) as c:
            for p in range(partitions):
                out[p] = []
                nxt = 0
                while True:  # page on until a read returns nothing
                    try:
                        page = await c.read(
                            stream, p, from_seq=nxt, limit=READ_LIMIT,
                            consistency=consistency,
                        )  # fmt: skip
                    except RequestFailed as exc:
                        if not (missing_ok and exc.code is ErrorCode.UNKNOWN_STREAM):
                            raise
                        break
                    out[p].extend((e.seq, str(e.body)) for e in page.events)
                    if not page.events:
                        break
                    nxt = page.next_seq
        return out

    regional = {p: dict(pairs) for p, pairs in
                (await read_all(region.nodes[leader]["api"], "regional")).items()}  # fmt: skip
    # A leader elected after a restart may not have committed an entry of its term yet when
    # the region first looks quiescent; the regional read above waited for that commit (it
    # may carry older entries of the log's tail with it), so wait until every node applied
    # it too before reading their local copies.
    await region.quiescent()
    local = {n: await read_all(region.nodes[n]["api"], "local") for n in region.nodes}
    debug = {}
    for node_id in region.nodes:
        debug[node_id] = await region.get(node_id, "/v1/debug/partitions", 10)
        assert debug[node_id] is not None, f"{node_id}: no /v1/debug/partitions"
    return FinalState(regional, local, debug)


geostore = partial(clusterkit.geostore, timeout=180)


async def wait_for(what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
    """The first result of ``fn`` (sync or async) that is not None, polled every 0.2 s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = fn()
        if inspect.isawaitable(result):
            result = await result
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(0.2)
