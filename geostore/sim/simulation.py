"""The deterministic simulator: one seed fixes the network, the disks, the faults and the load.

Theory of operation:

- **One seed, many streams.** Each subsystem (network, disks, faults, clients, each core) gets
  its own ``random.Random`` seeded from ``"{seed}:{name}"``, so adding draws to one never
  shifts another. Events run in (virtual time in microseconds, sequence number) order from
  one heap; nothing iterates a set or a dict where the order would decide behaviour.
- **Nodes** are :class:`~geostore.node.raft_host.RaftHost` objects, the same wiring the
  runtime uses, over the in-memory stores of :mod:`geostore.storage.memory`. A crash drops
  the host (volatile state) and calls each store's ``crash`` (unsynced writes are lost, the
  last one may tear); a restart builds a new host from the stores. A pause stops a node's
  ticks and queues the messages sent to it, as SIGSTOP does with a socket buffer.
- **Network**: :class:`~geostore.sim.network.SimNetwork` gives each message its fate (delay
  from the RTT matrix, loss, duplication, reordering, cuts).
- **Load**: client sessions issue appends of unique values and linearizable reads, retrying
  on "not leader" rejections until a deadline; every op lands in the history with its
  outcome. Administrative operations (membership changes, leadership transfers) follow the
  fault plan; snapshot thresholds are tiny so compaction and InstallSnapshot happen.
- **Checks**: the :class:`~geostore.sim.checker.InvariantChecker` watches every send, write,
  role change, commit, apply and ack; at the end the history checker runs (with the final
  log in liveness mode, after heal and convergence). Liveness mode heals every fault at
  ``heal_ms`` and then requires a leader within 3 election timeouts (L1) and a committed
  proposal within 10 (L2), and converged replicas at the end (R5).
- **Trace hash**: a digest over every event, so two runs of a seed can be compared (C3).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import heapq
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from geostore.config.topology import Topology, load_topology
from geostore.ids import GroupId, LogIndex, NodeId, Term
from geostore.node.ports import HostObserver
from geostore.node.raft_host import (
    Committed,
    HostConfig,
    Lost,
    ProposalOutcome,
    RaftHost,
    ReadOutcome,
    ReadReady,
    bootstrap_storage,
)
from geostore.raft.core import RaftConfig
from geostore.raft.messages import InstallSnapshot, Message, RequestVote, TimeoutNow, VoteResponse
from geostore.raft.records import ConfChange, ConfChangeOp, Proposed, Rejected, Role
from geostore.raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta
from geostore.sim.checker import EntryKey, InvariantChecker
from geostore.sim.faults import (
    AdminEvent,
    AdminKind,
    FaultEvent,
    FaultKind,
    FaultPlan,
    PlanSpec,
    draw_plan,
)
from geostore.sim.history import Op, OpKind, Outcome, check_history
from geostore.sim.machine import LogMachine
from geostore.sim.network import SimNetwork, draw_rtt_matrix
from geostore.storage.memory import MemoryHardStateStore, MemoryLogStore, MemorySnapshotStore

MODES: tuple[str, ...] = ("safety", "liveness")
UNSAFE_SWITCHES: tuple[str, ...] = (
    "ack_before_fsync",
    "commit_without_quorum",
    "ignore_figure8",
    "forget_vote",
    "count_learner_votes",
)

GROUP = GroupId("sim")
US_PER_MS = 1000
TICK_MS = 10
#: L1: a leader within this many election timeouts of the heal at p99 over seeds ...
L1_TIMEOUTS_P99 = 3.0
#: ... and in every single run within this many (L2's bound for a committed proposal)
L1_TIMEOUTS_MAX_ONE_RUN = 10.0
#: a run that needs more events than this is stuck in a message storm (a livelock)
MAX_EVENTS = 200_000


@dataclass(frozen=True, slots=True)
class SeedSpec:
    """Everything that fixes a run."""

    seed: int
    nodes: int = 3
    mode: str = "safety"
    unsafe: str | None = None
    topology: str | None = None  #: a topology file whose RTT matrix the network uses


@dataclass(slots=True)
class SeedOutcome:
    """A run's verdict and what it covered; small, so worker processes can send it back."""

    spec: SeedSpec
    passed: bool
    violations: list[str]
    plan: str
    coverage: dict[str, int]
    trace_hash: str
    virtual_ms: int
    events: int
    ops: int
    cpu_s: float
    #: liveness mode: election timeouts from heal to the first leader (L1 is a p99 bound
    #: over seeds, see :func:`l1_p99`); None in safety mode or without a leader
    l1_timeouts: float | None = None


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Sizes of a run; tests shrink or stretch them, the CLI uses the defaults."""

    ops_min: int = 200
    clients_min: int = 3
    clients_max: int = 6
    fault_window_ms: int = 3000
    quiesce_ms: int = 1500
    plan: PlanSpec = field(default_factory=PlanSpec)
    max_entries_per_msg: int | None = None  #: None: the seed draws it
    rule_checks: bool = True  #: False: only outcome checks (see InvariantChecker.rule_checks)


def control_settings(unsafe: str | None) -> SimSettings:
    """Settings whose fault mix exposes the bug each negative-control switch plants.

    Without a switch: the defaults. A checker must catch each switch within a few seeds.
    """
    if unsafe == "forget_vote":
        return SimSettings(plan=PlanSpec(forced_kinds=(FaultKind.CRASH,)))
    if unsafe == "ignore_figure8":
        # leaders change often while followers lag, and small messages leave old-term
        # entries acknowledged on a majority before the new leader's own entry is
        kinds: tuple[FaultKind, ...] = (FaultKind.CRASH, FaultKind.ISOLATE, FaultKind.PARTITION)
        return SimSettings(
            plan=PlanSpec(forced_kinds=kinds, only_forced=True, faults_min=8, faults_max=16),
            max_entries_per_msg=1,
        )
    if unsafe == "count_learner_votes":
        # a learner stays a learner while crashes take voters down: a candidate that counts
        # the learner's vote wins without a quorum of voters
        kinds = (FaultKind.CRASH, FaultKind.ISOLATE)
        return SimSettings(
            plan=PlanSpec(
                forced_kinds=kinds,
                only_forced=True,
                membership=True,
                promote=False,
                faults_min=8,
                faults_max=16,
            )
        )
    return SimSettings()


def _entry_key(entry: Entry) -> EntryKey:
    return (entry.term, int(entry.kind), entry.data)


class _CrashPoint(Exception):
    """Raised inside a host to crash its node at that point (entries written, not synced)."""


class SimNode:
    """One simulated server: durable stores that outlive crashes, and a host while it runs."""

    __slots__ = (
        "backlog",
        "bootstrap",
        "commit_seen",
        "crashes",
        "hard",
        "host",
        "log",
        "machine",
        "node_id",
        "paused",
        "snaps",
        "started",
        "was_leader_term",
    )

    def __init__(self, node_id: NodeId, bootstrap: ConfState | None) -> None:
        self.node_id = node_id
        self.bootstrap = bootstrap
        self.log = MemoryLogStore()
        self.hard = MemoryHardStateStore()
        self.snaps = MemorySnapshotStore()
        self.machine = LogMachine()
        self.host: RaftHost | None = None
        self.started = False
        self.paused = False
        self.backlog: list[object] = []
        self.crashes = 0
        self.was_leader_term: int | None = None
        #: the commit index of the last hard state the host persisted
        self.commit_seen = 0

    @property
    def live(self) -> bool:
        return self.host is not None and not self.paused


@dataclass(slots=True)
class _Client:
    cid: int
    rng: random.Random
    leader_guess: NodeId | None = None
    op: Op | None = None
    attempt: int = 0
    counter: int = 0
    node: NodeId | None = None  #: where the in-flight op waits for an answer


class _Sender:
    """The transport port of one node: hands messages to the simulation."""

    __slots__ = ("node_id", "sim")

    def __init__(self, sim: Simulation, node_id: NodeId) -> None:
        self.sim = sim
        self.node_id = node_id

    def send(self, peer: NodeId, msg: object) -> bool:
        self.sim._send(self.node_id, peer, cast(Message, msg))
        return True


class _Observer(HostObserver):
    """Feeds host events to the checker and the coverage counters."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def on_log_write(self, host: RaftHost, entries: Sequence[Entry], prior_last: LogIndex) -> None:
        self.sim._on_log_write(host, entries, prior_last)
        self.sim.maybe_crash_point()

    def on_apply(self, host: RaftHost, entry: Entry) -> None:
        self.sim._on_apply(host, entry)

    def on_ack(self, host: RaftHost, index: LogIndex, term: Term) -> None:
        self.sim._on_ack(host, index, term)

    def on_snapshot_taken(self, host: RaftHost, meta: SnapshotMeta) -> None:
        self.sim.coverage["snapshot_taken"] += 1

    def on_snapshot_installed(self, host: RaftHost, meta: SnapshotMeta) -> None:
        self.sim.coverage["snapshot_install"] += 1
        self.sim.checker.on_snapshot_restored(host.node_id, meta.index)

    def on_read_served(self, host: RaftHost, index: LogIndex) -> None:
        self.sim.coverage["read_index_served"] += 1

    def on_hard_state(self, host: RaftHost, hs: HardState) -> None:
        self.sim.nodes[host.node_id].commit_seen = hs.commit

    def on_ready_done(self, host: RaftHost) -> None:
        self.sim._on_ready_done(host)


class Simulation:
    """One seeded run. ``run()`` returns its :class:`SeedOutcome`."""

    def __init__(self, spec: SeedSpec, settings: SimSettings | None = None) -> None:
        assert spec.nodes in (3, 5), spec.nodes
        assert spec.mode in MODES, spec.mode
        assert spec.unsafe is None or spec.unsafe in UNSAFE_SWITCHES, spec.unsafe
        self.spec = spec
        self.settings = settings or SimSettings()
        self.liveness = spec.mode == "liveness"

        def rng(name: str) -> random.Random:
            return random.Random(f"{spec.seed}:{name}")

        self.rng_disk = rng("disk")
        self.rng_admin = rng("admin")
        self.rng_cores = rng("cores")
        voters = [NodeId(f"n{i}") for i in range(1, spec.nodes + 1)]
        spares = [NodeId(f"n{spec.nodes + 1}")]
        self.voters0 = voters
        self.all_ids = voters + spares
        if spec.topology is None:
            rtt = draw_rtt_matrix(rng("topology"), self.all_ids)
        else:
            rtt = topology_rtt_matrix(_topology(spec.topology), rng("topology"), self.all_ids)
        self.network = SimNetwork(rng("network"), rtt)
        max_rtt = max(self.network.rtt_ms.values())
        self.election_ticks = 10 + int(3 * max_rtt / TICK_MS)
        self.heartbeat_ticks = 2
        self.election_ms = self.election_ticks * TICK_MS
        cfg_rng = rng("config")
        self.max_entries_per_msg = cfg_rng.choice((1, 2, 4, 16, 64))
        if self.settings.max_entries_per_msg is not None:
            self.max_entries_per_msg = self.settings.max_entries_per_msg
        self.snapshot_chunk_bytes = cfg_rng.choice((256, 1024, 4096))
        self.lazy_commit = cfg_rng.random() < 0.5
        window = self.settings.fault_window_ms
        end_ms = window + self.settings.quiesce_ms + (10 * self.election_ms if self.liveness else 0)
        self.plan: FaultPlan = draw_plan(
            rng("faults"), voters, spares, self.liveness, self.settings.plan, end_ms
        )
        self.host_config = HostConfig(
            snapshot_every_entries=self.plan.profile.snapshot_every_entries,
            snapshot_chunk_bytes=self.snapshot_chunk_bytes,
            unsafe_ack_before_fsync=spec.unsafe == "ack_before_fsync",
            unsafe_forget_vote=spec.unsafe == "forget_vote",
        )
        bootstrap = ConfState(voters=frozenset(voters))
        self.nodes: dict[NodeId, SimNode] = {n: SimNode(n, bootstrap) for n in voters}
        for n in spares:
            self.nodes[n] = SimNode(n, None)
        self.checker = InvariantChecker(rule_checks=self.settings.rule_checks)
        self.coverage: Counter[str] = Counter()
        self.history: list[Op] = []
        client_rng = rng("clients")
        count = client_rng.randint(self.settings.clients_min, self.settings.clients_max)
        self.clients = [_Client(i, random.Random(f"{spec.seed}:client:{i}")) for i in range(count)]
        self.observer = _Observer(self)
        self.now_us = 0
        self._seq = 0
        self._heap: list[tuple[int, int, Callable[[Any], None], object]] = []
        self._trace = hashlib.blake2b(digest_size=16)
        self.events = 0
        self.ops_issued = 0
        self.clients_stop_ms = window  # clients keep going until ops_min are issued, too
        self.heal_ms = self.plan.heal_ms
        self.leader_after_heal_ms: int | None = None
        self.probe_ok_ms: int | None = None
        self.liveness_failures: list[str] = []
        self.end_ms = end_ms
        self.max_acked_offset = 0
        #: (index, configuration from there on), from every configuration entry applied
        self.conf_history: list[tuple[int, ConfState]] = [(0, ConfState())]
        self.draining = False  #: the end: no new client ops, let replication settle

    # -- event plumbing --------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        return self.now_us // US_PER_MS

    def at(self, delay_us: int, fn: Callable[[Any], None], arg: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now_us + max(0, delay_us), self._seq, fn, arg))

    def trace(self, text: str) -> None:
        self._trace.update(f"{self.now_us}|{text}\n".encode())

    # -- nodes -----------------------------------------------------------------------------

    def _raft_config(self, node_id: NodeId) -> RaftConfig:
        unsafe = self.spec.unsafe
        return RaftConfig(
            node_id=node_id,
            group=GROUP,
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            max_entries_per_msg=self.max_entries_per_msg,
            lazy_commit=self.lazy_commit,
            snapshot_chunk_bytes=self.snapshot_chunk_bytes,
            unsafe_commit_without_quorum=unsafe == "commit_without_quorum",
            unsafe_ignore_figure8=unsafe == "ignore_figure8",
            unsafe_count_learner_votes=unsafe == "count_learner_votes",
        )

    def _start(self, node: SimNode) -> None:
        assert node.host is None
        if node.bootstrap is not None and not node.started:
            bootstrap_storage(node.log, node.hard, node.bootstrap.voters)
        hs = node.hard.load()
        if node.started:
            self.checker.on_restart(node.node_id, hs.term, hs.vote)
        node.started = True
        node.machine = LogMachine()
        node.was_leader_term = None
        node.commit_seen = 0
        try:
            node.host = RaftHost(
                self._raft_config(node.node_id),
                self.host_config,
                node.log,
                node.hard,
                node.snaps,
                _Sender(self, node.node_id),
                node.machine,
                random.Random(f"{self.spec.seed}:core:{node.node_id}:{node.crashes}"),
                observer=self.observer,
            )
        except _CrashPoint:
            self._crash_point(node)
            return
        self.trace(f"start {node.node_id} term={hs.term}")

    def _crash_point(self, node: SimNode) -> None:
        """A crash point fired inside the node's host: crash now, restart a little later."""
        self.coverage["fault_crash_point"] += 1
        self._crash(node, force=True)
        self.at(self.rng_disk.randint(20, 300) * US_PER_MS, self._restart, node)

    def _restart(self, node: SimNode) -> None:
        if node.host is None and node.started:
            self._start(node)

    def maybe_crash_point(self) -> None:
        """Called by hosts between writing entries and syncing them (BUGGIFY-style)."""
        p = self.plan.profile.crash_point_p
        before_heal = self.heal_ms is None or self.now_ms < self.heal_ms
        if p and before_heal and self.rng_disk.random() < p:
            raise _CrashPoint

    def _crash(self, node: SimNode, force: bool = False) -> None:
        if node.host is None and not force:
            return
        node.host = None
        node.paused = False
        node.backlog.clear()
        node.crashes += 1
        kept = node.log.crash(self.rng_disk)
        node.hard.crash(self.rng_disk)
        node.snaps.crash(self.rng_disk)
        if kept:
            self.coverage["torn_write"] += 1
        self.checker.on_not_leader(node.node_id)
        self.trace(f"crash {node.node_id} kept={kept}")
        for client in self.clients:
            if client.op is not None and client.node == node.node_id:
                self._complete(client, Outcome.INFO)

    # -- messages --------------------------------------------------------------------------

    def _send(self, src: NodeId, dst: NodeId, msg: Message) -> None:
        if type(msg) is VoteResponse or type(msg) is RequestVote:
            # a pre-vote carries the term its sender would campaign in, not a durable one
            if not msg.pre_vote:
                self.checker.on_send(src, msg.term)
                if type(msg) is VoteResponse and msg.granted:
                    self.checker.on_vote_granted(src, msg.term, dst)
        else:
            self.checker.on_send(src, msg.term)
        for delay_ms in self.network.fate(src, dst):
            self.at(int(delay_ms * US_PER_MS), self._deliver, msg)

    def _deliver(self, msg: Message) -> None:
        dst = msg.dst
        node = self.nodes.get(dst)
        if node is None or node.host is None:
            return
        if node.paused:
            node.backlog.append(msg)
            return
        kind = type(msg)
        self.trace(f"msg {kind.__name__} {msg.src}>{dst} t={msg.term}")
        if type(msg) is VoteResponse and msg.pre_vote and not msg.granted:
            self.coverage["prevote_rejected"] += 1
        elif kind is TimeoutNow:
            self.coverage["leader_transfer"] += 1
        elif kind is InstallSnapshot:
            self.coverage["snapshot_chunk"] += 1
        try:
            node.host.step(msg)
        except _CrashPoint:
            self._crash_point(node)

    # -- host observation ------------------------------------------------------------------

    def _held(self, node: SimNode) -> Callable[[int], EntryKey | None]:
        log = node.log

        def held(index: int) -> EntryKey | None:
            if index < log.first_index() or index > log.last_index():
                return None
            return _entry_key(log.entries(LogIndex(index), LogIndex(index + 1))[0])

        return held

    def _on_log_write(self, host: RaftHost, entries: Sequence[Entry], prior_last: LogIndex) -> None:
        node = self.nodes[host.node_id]
        is_leader = host.core.role is Role.LEADER
        first = entries[0].index
        if first <= prior_last and not is_leader:
            self.coverage["log_truncated"] += 1
        self.checker.on_log_write(
            host.node_id,
            first,
            prior_last,
            is_leader,
            [(e.index, e.term, _entry_key(e)) for e in entries],
        )
        if is_leader and any(e.kind is EntryKind.CONFIG for e in entries):
            log = node.log
            lo = max(node.commit_seen + 1, log.first_index())
            tail = (
                log.entries(LogIndex(lo), LogIndex(log.last_index() + 1))
                if lo <= log.last_index()
                else []
            )
            self.checker.on_config_entries(
                host.node_id, [e.index for e in tail if e.kind is EntryKind.CONFIG]
            )

    def _on_apply(self, host: RaftHost, entry: Entry) -> None:
        fresh = entry.index not in self.checker.applied
        self.checker.on_apply(host.node_id, entry.index, _entry_key(entry))
        if fresh and entry.kind is EntryKind.CONFIG:
            change = ConfChange.decode(entry.data)
            if change is not None:
                self.conf_history.append((entry.index, change.apply(self.conf_history[-1][1])))
                name = {
                    ConfChangeOp.ADD_LEARNER: "membership_add_learner",
                    ConfChangeOp.PROMOTE: "membership_promote",
                    ConfChangeOp.ADD_VOTER: "membership_add_voter",
                    ConfChangeOp.REMOVE: "membership_remove",
                }[change.op]
                self.coverage[name] += 1

    def _durable(self, voter: NodeId, index: int, term: int) -> bool:
        node = self.nodes.get(voter)
        if node is None or not node.started:
            return False
        log = node.log
        if index <= log.snapshot_meta().index:
            return True
        return index <= log.durable_index() and log.term_at(LogIndex(index)) == term

    def _on_ack(self, host: RaftHost, index: LogIndex, term: Term) -> None:
        # A configuration takes effect when the leader applies it, and at most one is
        # unapplied at a time, so the entry was committed under the configuration before the
        # last change at or below ``index``, the one at ``index``, or the one after the next
        # change: R4 holds if a quorum of any of them holds the entry durably.
        hist = self.conf_history
        pos = bisect.bisect_right([h[0] for h in hist], index) - 1
        confs = [hist[p][1] for p in (pos - 1, pos, pos + 1) if 0 <= p < len(hist)]
        if pos + 1 >= len(hist):
            log = self.nodes[host.node_id].log
            if index < log.last_index():
                for e in log.entries(LogIndex(index + 1), LogIndex(log.last_index() + 1)):
                    if e.kind is EntryKind.CONFIG:
                        change = ConfChange.decode(e.data)
                        if change is not None:
                            confs.append(change.apply(hist[-1][1]))
                        break
        best = max(
            confs,
            key=lambda c: (
                2 * sum(1 for v in c.voters if self._durable(v, index, term)) - len(c.voters)
            ),
        )
        self.checker.on_ack(host.node_id, index, term, best.voters, self._durable)

    def _on_ready_done(self, host: RaftHost) -> None:
        # Read the core's public fields, not status(): this runs after every Ready.
        node = self.nodes[host.node_id]
        core = host.core
        checker = self.checker
        role = core.role
        term = Term(core.term)
        if role is Role.LEADER:
            if node.was_leader_term != term:
                node.was_leader_term = term
                self.coverage["election"] += 1
                self.trace(f"leader {host.node_id} t={term}")
                checker.on_leader(
                    host.node_id, term, core.conf.voters, self._held(node), node.log.first_index()
                )
                if (
                    self.heal_ms is not None
                    and self.leader_after_heal_ms is None
                    and self.now_ms >= self.heal_ms
                ):
                    self.leader_after_heal_ms = self.now_ms
        elif node.was_leader_term is not None:
            if term == node.was_leader_term and host.node_id in core.conf.voters:
                self.coverage["checkquorum_stepdown"] += 1
            node.was_leader_term = None
            checker.on_not_leader(host.node_id)
        if node.commit_seen != checker.commit_of(host.node_id):
            checker.on_commit(
                host.node_id,
                node.commit_seen,
                host.applied,
                node.log.last_index(),
                term,
                role is Role.LEADER,
                self._held(node),
                node.log.first_index(),
            )

    # -- faults ----------------------------------------------------------------------------

    def _links_of(self, event: FaultEvent) -> list[tuple[NodeId, NodeId]]:
        ids = self.all_ids
        kind = event.kind
        if kind is FaultKind.ISOLATE:
            (x,) = event.nodes
            return [(x, y) for y in ids if y != x] + [(y, x) for y in ids if y != x]
        if kind in (FaultKind.PARTITION, FaultKind.ONE_WAY):
            side = set(event.nodes)
            a = [n for n in ids if n in side]
            b = [n for n in ids if n not in side]
            links = [(x, y) for x in a for y in b]
            if kind is FaultKind.PARTITION:
                links += [(y, x) for x in a for y in b]
            return links
        if kind is FaultKind.BRIDGE:
            # order[0] is the bridge; the rest split in two halves that only it joins
            bridge, rest = event.nodes[0], event.nodes[1:]
            half = len(rest) // 2
            left, right = rest[:half], rest[half:]
            assert bridge not in left and bridge not in right
            return [(x, y) for x in left for y in right] + [(y, x) for x in left for y in right]
        if kind is FaultKind.RING:
            order = list(event.nodes)
            n = len(order)
            near = {(order[i], order[(i + 1) % n]) for i in range(n)}
            near |= {(b, a) for a, b in near}
            return [(x, y) for x in order for y in order if x != y and (x, y) not in near]
        return []

    def _fault_start(self, event: FaultEvent) -> None:
        kind = event.kind
        self.trace(f"fault+ {event.describe()}")
        self.coverage[f"fault_{kind}"] += 1
        if kind is FaultKind.CRASH:
            node = self.nodes[event.nodes[0]]
            if node.host is None:
                return
            self._crash(node)
        elif kind is FaultKind.PAUSE:
            node = self.nodes[event.nodes[0]]
            if node.host is None or node.paused:
                return
            node.paused = True
        elif kind is FaultKind.LOSS:
            self.network.loss_p += event.rate
        elif kind is FaultKind.DUPLICATE:
            self.network.dup_p += event.rate
        elif kind is FaultKind.REORDER:
            self.network.reorder_p += event.rate
        else:
            for src, dst in self._links_of(event):
                self.network.cut(src, dst)
        self.at(event.duration_ms * US_PER_MS, self._fault_end, event)

    def _fault_end(self, event: FaultEvent) -> None:
        kind = event.kind
        self.trace(f"fault- {event.describe()}")
        if kind is FaultKind.CRASH:
            node = self.nodes[event.nodes[0]]
            if node.host is None and node.started:
                self._start(node)
        elif kind is FaultKind.PAUSE:
            self._resume(self.nodes[event.nodes[0]])
        elif kind is FaultKind.LOSS:
            self.network.loss_p = max(0.0, self.network.loss_p - event.rate)
        elif kind is FaultKind.DUPLICATE:
            self.network.dup_p = max(0.0, self.network.dup_p - event.rate)
        elif kind is FaultKind.REORDER:
            self.network.reorder_p = max(0.0, self.network.reorder_p - event.rate)
        else:
            for src, dst in self._links_of(event):
                if self.network.is_cut(src, dst):
                    self.network.uncut(src, dst)

    def _resume(self, node: SimNode) -> None:
        if not node.paused:
            return
        node.paused = False
        backlog, node.backlog = node.backlog, []
        for msg in backlog:
            self.at(0, self._deliver, msg)

    def _heal(self, _: object) -> None:
        """Liveness mode: end every fault at once."""
        self.trace("heal")
        self.network.heal()
        for nid in self.all_ids:
            node = self.nodes[nid]
            if node.paused:
                self._resume(node)
            elif node.host is None and node.started:
                self._start(node)
        if self._leader() is not None:
            self.leader_after_heal_ms = self.now_ms  # a leader survived: L1 holds from here
        self._probe(None)

    # -- admin -----------------------------------------------------------------------------

    def _leader(self) -> SimNode | None:
        """The live node that leads the highest term, if any."""
        best: tuple[int, SimNode] | None = None
        for nid in self.all_ids:
            node = self.nodes[nid]
            if node.live and node.host is not None:
                st = node.host.core.status()
                if st.role is Role.LEADER and (best is None or st.term > best[0]):
                    best = (st.term, node)
        return best[1] if best else None

    def _admin(self, arg: tuple[AdminEvent, int]) -> None:
        event, deadline_ms = arg
        if self.now_ms > deadline_ms:
            return
        leader = self._leader()
        retry = True
        if leader is not None and leader.host is not None:
            host = leader.host
            st = host.core.status()
            conf = st.conf
            if event.kind is AdminKind.TRANSFER:
                voters = sorted(v for v in conf.voters if v != leader.node_id)
                if voters:
                    target = voters[self.rng_admin.randrange(len(voters))]
                    self.trace(f"admin transfer {leader.node_id}>{target}")
                    try:
                        retry = host.transfer_leadership(target) is not None
                    except _CrashPoint:
                        self._crash_point(leader)
                else:
                    retry = False
            else:
                change = self._conf_change(event, conf, leader.node_id)
                if change is None:
                    retry = False
                else:
                    if event.kind is AdminKind.ADD_LEARNER:
                        spare = self.nodes[change.node]
                        if not spare.started:
                            self._start(spare)
                    try:
                        result = host.propose_conf_change(change)
                    except _CrashPoint:
                        self._crash_point(leader)
                    else:
                        self.trace(f"admin {event.kind} {change.node} -> {type(result).__name__}")
                        retry = not isinstance(result, Proposed)
        if retry:
            self.at(50 * US_PER_MS, self._admin, (event, deadline_ms))

    def _conf_change(self, event: AdminEvent, conf: ConfState, leader: NodeId) -> ConfChange | None:
        if event.kind is AdminKind.ADD_LEARNER:
            assert event.node is not None
            if event.node in conf.voters or event.node in conf.learners:
                return None
            return ConfChange(ConfChangeOp.ADD_LEARNER, event.node)
        if event.kind is AdminKind.PROMOTE:
            assert event.node is not None
            if event.node not in conf.learners:
                return None
            return ConfChange(ConfChangeOp.PROMOTE, event.node)
        if event.kind is AdminKind.REMOVE_VOTER:
            if len(conf.voters) <= len(self.voters0):
                return None
            voters = sorted(conf.voters)
            return ConfChange(ConfChangeOp.REMOVE, voters[self.rng_admin.randrange(len(voters))])
        return None

    # -- clients ---------------------------------------------------------------------------

    def _client_next(self, client: _Client) -> None:
        if self.draining or (
            self.now_ms >= self.clients_stop_ms and self.ops_issued >= self.settings.ops_min
        ):
            return
        rng = client.rng
        self.ops_issued += 1
        if rng.random() < 0.7:
            client.counter += 1
            op = Op(client.cid, OpKind.APPEND, self.now_ms, value=f"c{client.cid}-{client.counter}")
        else:
            start = max(0, self.max_acked_offset - rng.randint(0, 30))
            op = Op(client.cid, OpKind.READ, self.now_ms, start=start)
            op.committed_at_invoke = self.checker.max_committed
        self.history.append(op)
        client.op = op
        client.attempt = 0
        self.at(self._op_timeout_ms() * US_PER_MS, self._client_deadline, (client, op))
        self._client_try((client, op, 0))

    def _op_timeout_ms(self) -> int:
        return 4 * self.election_ms

    def _client_retry(self, client: _Client, delay_ms: int) -> None:
        self.at(delay_ms * US_PER_MS, self._client_try, (client, client.op, client.attempt))

    def _client_try(self, arg: tuple[_Client, Op | None, int]) -> None:
        client, want_op, want_attempt = arg
        op = client.op
        if op is None or op is not want_op or client.attempt != want_attempt:
            return  # a stale retry timer: that op completed, or another attempt runs
        client.attempt += 1
        attempt = client.attempt
        rng = client.rng
        target = client.leader_guess
        if target is None or not self.nodes[target].live:
            live = [n for n in self.all_ids if self.nodes[n].live]
            if not live:
                self._client_retry(client, 20)
                return
            target = live[rng.randrange(len(live))]
        node = self.nodes[target]
        host = node.host
        assert host is not None
        client.node = target

        if op.kind is OpKind.APPEND:
            assert op.value is not None

            def on_proposal(outcome: ProposalOutcome) -> None:
                if client.op is not op:
                    return
                if isinstance(outcome, Committed):
                    op.offset = outcome.index
                    self.max_acked_offset = max(self.max_acked_offset, outcome.index)
                    self._complete(client, Outcome.OK)
                elif isinstance(outcome, Lost):
                    self.coverage["proposal_overwritten"] += 1
                    self._complete(client, Outcome.FAIL)
                else:
                    self._complete(client, Outcome.INFO)

            try:
                result = host.propose(op.value.encode(), on_proposal)
            except _CrashPoint:
                self._crash_point(node)
                return
            if isinstance(result, Rejected):
                self.coverage["proposal_rejected"] += 1
                client.leader_guess = result.leader_hint
                self._client_retry(client, 5)
            else:
                client.leader_guess = target
        else:
            committed_at_invoke = op.committed_at_invoke

            def on_read(outcome: ReadOutcome) -> None:
                if client.op is not op or client.attempt != attempt:
                    return
                if isinstance(outcome, ReadReady):
                    machine = node.machine
                    self.checker.on_read(
                        target, outcome.index, machine.applied_index, committed_at_invoke
                    )
                    op.end = machine.applied_index
                    op.observed = machine.read(op.start)
                    self._complete(client, Outcome.OK)
                else:
                    self._client_retry(client, 5)

            try:
                rejected = host.read(on_read)
            except _CrashPoint:
                self._crash_point(node)
                return
            if rejected is not None:
                client.leader_guess = rejected.leader_hint
                self._client_retry(client, 5)
            else:
                client.leader_guess = target

    def _client_deadline(self, arg: tuple[_Client, Op]) -> None:
        client, op = arg
        if client.op is op:
            self._complete(client, Outcome.INFO)

    def _complete(self, client: _Client, outcome: Outcome) -> None:
        op = client.op
        assert op is not None
        op.outcome = outcome
        op.complete_ms = self.now_ms
        client.op = None
        client.node = None
        self.trace(f"op {op.process} {op.kind} {op.value} {outcome} {op.offset} {op.end}")
        think_ms = client.rng.randint(0, self._think_ms_max())
        self.at(think_ms * US_PER_MS, self._client_next, client)

    def _think_ms_max(self) -> int:
        # spread ops_min over the fault window across the clients
        per_client = max(1, self.settings.ops_min // len(self.clients))
        return max(1, 2 * self.settings.fault_window_ms // per_client)

    # -- liveness probe --------------------------------------------------------------------

    def _probe(self, _: object) -> None:
        """After heal: propose to the leader until one proposal commits (L2)."""
        if self.probe_ok_ms is not None:
            return
        leader = self._leader()
        if leader is not None and leader.host is not None:
            op = Op(-1, OpKind.APPEND, self.now_ms, value=f"probe-{self.now_ms}")

            def on_done(outcome: ProposalOutcome) -> None:
                op.complete_ms = self.now_ms
                if isinstance(outcome, Committed):
                    op.outcome = Outcome.OK
                    op.offset = outcome.index
                    if self.probe_ok_ms is None:
                        self.probe_ok_ms = self.now_ms
                else:
                    op.outcome = Outcome.FAIL if isinstance(outcome, Lost) else Outcome.INFO

            assert op.value is not None
            try:
                if isinstance(leader.host.propose(op.value.encode(), on_done), Proposed):
                    self.history.append(op)
            except _CrashPoint:
                self._crash_point(leader)
        self.at(self.election_ms * US_PER_MS // 2, self._probe, None)

    # -- ticks and the run -----------------------------------------------------------------

    def _tick(self, _: object) -> None:
        for nid in self.all_ids:
            node = self.nodes[nid]
            if node.host is not None and not node.paused:
                try:
                    node.host.tick()
                except _CrashPoint:
                    self._crash_point(node)
        self.at(TICK_MS * US_PER_MS, self._tick, None)

    def _schedule(self) -> None:
        for nid in self.voters0:
            self._start(self.nodes[nid])
        self.at(0, self._tick, None)
        for event in self.plan.faults:
            self.at(event.start_ms * US_PER_MS, self._fault_start, event)
        deadline = self.settings.fault_window_ms + 2000
        for admin in self.plan.admin:
            self.at(admin.at_ms * US_PER_MS, self._admin, (admin, deadline))
        for client in self.clients:
            self.at(client.rng.randint(0, 50) * US_PER_MS, self._client_next, client)
        if self.heal_ms is not None:
            self.at(self.heal_ms * US_PER_MS, self._heal, None)

    def run(self) -> SeedOutcome:
        began = time.process_time()
        self._schedule()
        end_us = self.end_ms * US_PER_MS
        heap = self._heap
        checker = self.checker
        # a planted bug can leave replicas that disagree forever and retry without end
        budget = MAX_EVENTS if self.spec.unsafe is None else MAX_EVENTS // 4
        while heap:
            t, _, fn, arg = heapq.heappop(heap)
            if t > end_us:
                if not self.draining:
                    if not self._clients_done() or self.ops_issued < self.settings.ops_min:
                        end_us = t  # keep going until every op is issued and answered
                    else:
                        # settle: a few heartbeats so followers learn the last commit (R5)
                        self.draining = True
                        end_us = t + 10 * self.heartbeat_ticks * TICK_MS * US_PER_MS
                else:
                    break
            self.now_us = t
            checker.now_ms = t // US_PER_MS
            self.events += 1
            fn(arg)
            if checker.violations and (
                self.spec.unsafe is not None or len(checker.violations) >= checker.max_violations
            ):
                break  # a negative control needs only the first; a real bug, a few
            if self.events > budget:
                checker.fail("harness", f"event budget of {budget} exceeded (message storm?)")
                break
        violations = [str(v) for v in checker.violations]
        violations += self._final_checks()
        ops = len(self.history)
        outcome = SeedOutcome(
            spec=self.spec,
            passed=not violations,
            violations=violations,
            plan=self.plan.describe(),
            coverage=dict(self._coverage()),
            trace_hash=self._trace.hexdigest(),
            virtual_ms=self.now_ms,
            events=self.events,
            ops=ops,
            cpu_s=time.process_time() - began,
            l1_timeouts=self._l1_timeouts(),
        )
        return outcome

    def _l1_timeouts(self) -> float | None:
        if self.heal_ms is None or self.leader_after_heal_ms is None:
            return None
        return (self.leader_after_heal_ms - self.heal_ms) / self.election_ms

    def _clients_done(self) -> bool:
        return all(c.op is None for c in self.clients)

    def _coverage(self) -> Counter[str]:
        cov = Counter(self.coverage)
        stats = self.network.stats
        cov["msg_dropped"] += stats.dropped_cut + stats.dropped_loss
        cov["msg_duplicated"] += stats.duplicated
        cov["msg_reordered"] += stats.reordered
        cov["ops"] += len(self.history)
        return cov

    def _final_checks(self) -> list[str]:
        out: list[str] = []
        if self.ops_issued < self.settings.ops_min:
            out.append(f"harness: only {self.ops_issued} client ops issued")
        final: dict[int, str] | None = None
        if self.liveness and not self.checker.violations:
            assert self.heal_ms is not None
            # L1 is "k = 3 election timeouts at p99 over seeds" (split votes can take a seed
            # past 3), so one run fails only past L2's bound; runners check the p99.
            limit_leader = self.heal_ms + L1_TIMEOUTS_MAX_ONE_RUN * self.election_ms
            if self.leader_after_heal_ms is None:
                out.append(f"L1: no leader after heal at {self.heal_ms} ms")
            elif self.leader_after_heal_ms > limit_leader:
                out.append(
                    f"L1: first leader {self.leader_after_heal_ms - self.heal_ms} ms after heal, "
                    f"limit {L1_TIMEOUTS_MAX_ONE_RUN * self.election_ms} ms"
                )
            limit_probe = self.heal_ms + 10 * self.election_ms
            if self.probe_ok_ms is None or self.probe_ok_ms > limit_probe:
                out.append(
                    f"L2: no committed proposal within {10 * self.election_ms} ms of heal "
                    f"(first at {self.probe_ok_ms})"
                )
            final, problems = self._converged()
            out += problems
        report = check_history(self.history, final)
        out += [f"history {a}" for a in report.anomalies]
        return out

    def _converged(self) -> tuple[dict[int, str] | None, list[str]]:
        """R5: every member applied the leader's commit index and holds the same values."""
        leader = self._leader()
        if leader is None or leader.host is None:
            return None, ["R5: no leader at the end of a liveness run"]
        st = leader.host.core.status()
        members = sorted(st.conf.voters | st.conf.learners)
        final = dict(leader.machine.values)
        problems: list[str] = []
        for nid in members:
            node = self.nodes[nid]
            if node.host is None:
                problems.append(f"R5: member {nid} is down at the end")
                continue
            if node.host.applied != st.commit:
                problems.append(
                    f"R5: {nid} applied {node.host.applied}, leader {leader.node_id} "
                    f"committed {st.commit}"
                )
            elif node.machine.values != final:
                problems.append(f"R5: {nid} state differs from leader {leader.node_id}")
        return final, problems


@functools.cache
def _topology(path: str) -> Topology:
    return load_topology(path)


def topology_rtt_matrix(
    topo: Topology, rng: random.Random, nodes: list[NodeId]
) -> dict[tuple[NodeId, NodeId], float]:
    """Spread ``nodes`` over the topology's regions (round robin, seed-shuffled) and take each
    pair's RTT from its matrix: the group then spans regions like the metadata group."""
    regions = list(topo.region_names())
    rng.shuffle(regions)
    region_of = {n: regions[i % len(regions)] for i, n in enumerate(nodes)}
    return {
        (a, b): max(0.05, topo.rtt_ms(region_of[a], region_of[b]))
        for a in nodes
        for b in nodes
        if a != b
    }


def l1_p99(outcomes: Sequence[SeedOutcome]) -> float | None:
    """The 99th percentile (nearest rank) of heal-to-leader times, in election timeouts."""
    times = sorted(o.l1_timeouts for o in outcomes if o.l1_timeouts is not None)
    if not times:
        return None
    rank = max(1, -(-99 * len(times) // 100))  # ceil(0.99 n)
    return times[rank - 1]


def run_seed(spec: SeedSpec) -> SeedOutcome:
    """Run one seed (the entry point of worker processes); a negative control gets the fault
    mix that exposes its bug."""
    return Simulation(spec, control_settings(spec.unsafe)).run()


def run_seed_with(spec: SeedSpec, settings: SimSettings) -> SeedOutcome:
    return Simulation(spec, settings).run()


__all__ = [
    "MODES",
    "UNSAFE_SWITCHES",
    "HardState",
    "SeedOutcome",
    "SeedSpec",
    "SimSettings",
    "Simulation",
    "run_seed",
    "run_seed_with",
]
