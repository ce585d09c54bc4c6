"""A tiny in-process host for Raft cores: persist, send, apply, advance over memory stores.

The harness is the test's own host loop (separate from the node wiring the simulator uses):
each node owns a MemoryLogStore, a hard-state record, a state machine (the list of applied
entries) and its latest snapshot bytes. Messages wait in one FIFO queue until a test
delivers them, so a scenario decides exactly which message arrives when. After every
host-loop step the harness checks Raft's safety properties on the whole cluster, so no
expected-output rewrite can hide a safety bug.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from geostore.ids import GroupId, LogIndex, NodeId
from geostore.raft.core import RaftConfig, RaftCore, Ready, Role
from geostore.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from geostore.raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta
from geostore.storage.memory import MemoryLogStore

GROUP = GroupId("g")


class SafetyViolation(AssertionError):
    """A Raft safety property failed."""


def nid(n: int | str) -> NodeId:
    return NodeId(str(n))


@dataclass
class Node:
    id: NodeId
    store: MemoryLogStore
    hard_state: HardState = field(default_factory=HardState)
    #: applied (index, term, kind, data), survives nothing: rebuilt from the snapshot
    applied: list[Entry] = field(default_factory=list)
    snap_meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    snap_data: bytes = b""
    staging: bytearray = field(default_factory=bytearray)
    core: RaftCore | None = None
    read_states: list[tuple[bytes, int]] = field(default_factory=list)
    #: every hard state ever persisted (for the term/vote durability check)
    hs_history: list[HardState] = field(default_factory=list)
    wiped: bool = False

    @property
    def c(self) -> RaftCore:
        assert self.core is not None, f"node {self.id} is down"
        return self.core

    def applied_index(self) -> int:
        return self.snap_meta.index + len(self.applied)


def encode_sm(entries: list[Entry], base: bytes) -> bytes:
    """State-machine snapshot: the applied NORMAL data, one item per line."""
    items = [e.data for e in entries if e.kind is EntryKind.NORMAL]
    return b"\n".join([base, *items]) if base else b"\n".join(items)


class Cluster:
    """A group of cores joined by a scriptable in-memory network."""

    def __init__(
        self,
        ids: Iterable[NodeId],
        *,
        seed: int = 0,
        config: Callable[[NodeId], RaftConfig] | None = None,
        voters: Iterable[NodeId] | None = None,
        learners: Iterable[NodeId] = (),
    ) -> None:
        self.seed = seed
        self.make_config = config or (lambda n: RaftConfig(node_id=n, group=GROUP))
        self.nodes: dict[NodeId, Node] = {}
        self.queue: list[Message] = []
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.dropped = 0
        ids = list(ids)
        self.boot_conf = ConfState(
            voters=frozenset(voters if voters is not None else ids), learners=frozenset(learners)
        )
        #: ghost state for checkers: applied entry per index as first seen
        self.committed: dict[int, tuple[int, bytes]] = {}
        #: ghost: the term at each index some node ever called committed
        self.commit_terms: dict[int, int] = {}
        self._commit_checked: dict[NodeId, int] = {}
        self.leaders: dict[int, NodeId] = {}
        self.restarts: dict[NodeId, int] = {}
        #: Readies taken but not yet handled (to script races between ready and advance)
        self.held: dict[NodeId, Ready] = {}
        for n in ids:
            self.add_node(n, self.boot_conf)

    # -- lifecycle -----------------------------------------------------------------------
    def add_node(self, n: NodeId, conf: ConfState) -> Node:
        node = Node(n, MemoryLogStore())
        self.nodes[n] = node
        self._start(node, conf)
        return node

    def _start(self, node: Node, conf: ConfState) -> None:
        self._commit_checked.pop(node.id, None)
        k = self.restarts.get(node.id, 0)
        rng = random.Random(f"{self.seed}/{node.id}/{k}")
        node.core = RaftCore(
            self.make_config(node.id),
            node.store,
            node.hard_state,
            conf,
            rng,
            LogIndex(node.applied_index()),
            snapshot_source=lambda meta, off, size, node=node: self._read_snap(
                node, meta, off, size
            ),
            wiped=node.wiped,
        )

    def _read_snap(self, node: Node, meta: SnapshotMeta, off: int, size: int) -> bytes | None:
        if node.snap_meta != meta:
            return None
        return node.snap_data[off : off + size]

    def crash(self, n: NodeId) -> None:
        node = self.nodes[n]
        node.core = None
        self.held.pop(n, None)
        node.store.crash()
        node.applied = []  # the state machine is volatile: rebuilt from the snapshot
        node.staging = bytearray()
        self.queue = [m for m in self.queue if m.dst != n]

    def restart(self, n: NodeId) -> None:
        node = self.nodes[n]
        assert node.core is None
        self.restarts[n] = self.restarts.get(n, 0) + 1
        if node.snap_meta.index > node.store.snapshot_meta().index:
            # the snapshot is durable but the compaction it asked for was not: redo it, so the
            # log's snapshot is the one the snapshot source serves
            node.store.compact_prefix(node.snap_meta)
        self._start(node, self.boot_conf)

    def wipe(self, n: NodeId) -> None:
        """Lose every byte of n's durable state; it restarts knowing it was wiped."""
        node = self.nodes[n]
        self.crash(n)
        fresh = Node(n, MemoryLogStore(), wiped=True)
        self.nodes[n] = fresh
        self.restarts[n] = self.restarts.get(n, 0) + 1
        self._start(fresh, self.boot_conf)
        del node

    # -- host loop -----------------------------------------------------------------------
    def process(self, n: NodeId) -> bool:
        """Run n's host loop until it has nothing ready; True if anything happened."""
        node = self.nodes[n]
        core = node.core
        if core is None or n in self.held:
            return False
        did = False
        while core.has_ready():
            did = True
            rd = core.ready()
            self._handle_ready(node, rd)
            core.advance(rd)
            self.check()
        return did

    def hold(self, n: NodeId) -> Ready | None:
        """Take n's Ready now but handle it later (steps may happen in between)."""
        node = self.nodes[n]
        if n in self.held or not node.c.has_ready():
            return None
        rd = node.c.ready()
        self.held[n] = rd
        return rd

    def release(self, n: NodeId) -> None:
        rd = self.held.pop(n)
        node = self.nodes[n]
        self._handle_ready(node, rd)
        node.c.advance(rd)
        self.check()

    def duplicate(self, src: NodeId | None = None, dst: NodeId | None = None) -> int:
        extra = [
            m for m in self.queue if (src is None or m.src == src) and (dst is None or m.dst == dst)
        ]
        self.queue.extend(extra)
        return len(extra)

    def reorder(self, src: NodeId | None = None, dst: NodeId | None = None) -> None:
        """Reverse the order of the matching queued messages."""
        pos = [
            i
            for i, m in enumerate(self.queue)
            if (src is None or m.src == src) and (dst is None or m.dst == dst)
        ]
        picked = [self.queue[i] for i in pos]
        for i, m in zip(pos, reversed(picked), strict=True):
            self.queue[i] = m

    def _handle_ready(self, node: Node, rd: Ready) -> None:
        for ch in rd.snapshot_chunks:
            if ch.offset == 0:
                node.staging = bytearray()
            assert len(node.staging) == ch.offset, "chunks must arrive contiguous"
            node.staging += ch.data
        if rd.snapshot is not None:
            meta = rd.snapshot.meta
            node.snap_meta, node.snap_data = meta, bytes(node.staging)
            node.staging = bytearray()
            node.applied = []
            node.store.compact_prefix(meta)
        if rd.entries:
            node.store.append(rd.entries)
        if rd.hard_state is not None:
            hs = rd.hard_state
            node.hard_state = hs
            node.hs_history.append(hs)
        if rd.must_sync:
            node.store.sync()
        for m in rd.messages:
            self.send(m)
        for e in rd.committed:
            assert e.index == node.applied_index() + 1, (node.id, e.index, node.applied_index())
            node.applied.append(e)
            self._check_apply(node, e)
        for rs in rd.read_states:
            node.read_states.append((rs.ctx, rs.index))
        if rd.compact_to is not None:
            node.store.compact_prefix(rd.compact_to)

    def send(self, m: Message) -> None:
        if (m.src, m.dst) in self.blocked:
            self.dropped += 1
            return
        self.queue.append(m)

    def deliver(
        self, src: NodeId | None = None, dst: NodeId | None = None, *, count: int | None = None
    ) -> list[Message]:
        """Deliver queued messages (optionally only src->dst), in send order."""
        taken: list[Message] = []
        rest: list[Message] = []
        for m in self.queue:
            ok = (src is None or m.src == src) and (dst is None or m.dst == dst)
            if ok and (count is None or len(taken) < count):
                taken.append(m)
            else:
                rest.append(m)
        self.queue = rest
        for m in taken:
            node = self.nodes.get(m.dst)
            if node is None or node.core is None or (m.src, m.dst) in self.blocked:
                continue
            node.c.step(m)
        return taken

    def drop(self, src: NodeId | None = None, dst: NodeId | None = None) -> int:
        before = len(self.queue)
        self.queue = [
            m
            for m in self.queue
            if not ((src is None or m.src == src) and (dst is None or m.dst == dst))
        ]
        return before - len(self.queue)

    def partition(self, *groups: Iterable[NodeId]) -> None:
        sides = [set(g) for g in groups]
        every = set(self.nodes)
        listed = set().union(*sides)
        if every - listed:
            sides.append(every - listed)
        self.blocked = set()
        for a in every:
            for b in every:
                if a != b and not any(a in s and b in s for s in sides):
                    self.blocked.add((a, b))
        self.queue = [m for m in self.queue if (m.src, m.dst) not in self.blocked]

    def cut(self, a: NodeId, b: NodeId, *, both: bool = True) -> None:
        self.blocked.add((a, b))
        if both:
            self.blocked.add((b, a))

    def heal(self) -> None:
        self.blocked = set()

    def tick(self, n: NodeId, times: int = 1) -> None:
        for _ in range(times):
            self.nodes[n].c.tick()

    def tick_all(self, times: int = 1) -> None:
        for _ in range(times):
            for n in sorted(self.nodes):
                if self.nodes[n].core is not None:
                    self.nodes[n].c.tick()
            self.stabilize()

    def stabilize(self, max_rounds: int = 10_000) -> int:
        """Process and deliver until nothing moves; returns the rounds taken."""
        for rounds in range(max_rounds):
            moved = False
            for n in sorted(self.nodes):
                moved |= self.process(n)
            if self.queue:
                self.deliver()
                moved = True
            if not moved:
                return rounds
        raise AssertionError("cluster did not stabilize")

    def elect(self, n: NodeId) -> None:
        self.nodes[n].c.campaign()
        self.stabilize()
        assert self.nodes[n].c.role is Role.LEADER, self.nodes[n].c.status()

    def leader(self) -> NodeId | None:
        best: tuple[int, NodeId] | None = None
        for n, node in self.nodes.items():
            if node.core is not None and node.core.role is Role.LEADER:
                t = node.core.term
                if best is None or t > best[0]:
                    best = (t, n)
        return best[1] if best else None

    # -- safety checks -------------------------------------------------------------------
    def _check_apply(self, node: Node, e: Entry) -> None:
        seen = self.committed.get(e.index)
        if seen is None:
            self.committed[e.index] = (e.term, e.data)
        elif seen != (e.term, e.data):
            raise SafetyViolation(
                f"state machine safety: node {node.id} applied {e.index}={e.term}/{e.data!r}, "
                f"another applied {seen}"
            )

    def check(self) -> None:
        """Election safety, committed-prefix agreement, index sanity, term/vote durability."""
        for node in self.nodes.values():
            core = node.core
            if core is None:
                continue
            st = core.status()
            if st.role is Role.LEADER and st.term not in self.leaders:
                self.leaders[st.term] = node.id
                # leader completeness: a new leader holds every entry ever committed
                for idx, t in self.commit_terms.items():
                    if idx >= st.first_index and core.term_at(LogIndex(idx)) != t:
                        raise SafetyViolation(
                            f"leader completeness: leader {node.id} of term {st.term} lacks "
                            f"committed {idx}/{t}"
                        )
            elif st.role is Role.LEADER and self.leaders[st.term] != node.id:
                other = self.leaders[st.term]
                raise SafetyViolation(f"two leaders in term {st.term}: {other}, {node.id}")
            if not (st.applied <= st.commit <= st.last_index):
                raise SafetyViolation(f"index sanity on {node.id}: {st}")
            lo = max(self._commit_checked.get(node.id, 0), st.first_index - 1)
            for idx in range(lo + 1, st.commit + 1):
                t = core.term_at(LogIndex(idx))
                if t is None:
                    continue
                seen = self.commit_terms.setdefault(idx, t)
                if seen != t:
                    raise SafetyViolation(
                        f"committed-prefix agreement: {node.id} has {idx}/{t} committed, "
                        f"another node had {idx}/{seen} committed"
                    )
            self._commit_checked[node.id] = max(lo, st.commit)
        for node in self.nodes.values():
            hist = node.hs_history
            for a, b in itertools.pairwise(hist):
                if b.term < a.term or (
                    b.term == a.term and a.vote is not None and b.vote != a.vote
                ):
                    raise SafetyViolation(f"term/vote went back on {node.id}: {a} -> {b}")


def describe(m: Message) -> str:
    """One line per message, stable across runs (used in scenario output)."""
    head = f"{m.src}->{m.dst} t{m.term}"
    match m:
        case AppendEntries():
            ents = " ".join(_ent(e) for e in m.entries)
            return f"{head} App prev={m.prev_index}/{m.prev_term} commit={m.commit} [{ents}]"
        case AppendResponse():
            if m.success:
                return f"{head} AppOK match={m.match_index}"
            return (
                f"{head} AppReject rejected={m.match_index} "
                f"hint={m.reject_hint_index}/{m.reject_hint_term}"
            )
        case RequestVote():
            kind = "PreVote" if m.pre_vote else "Vote"
            extra = " transfer" if m.transfer else ""
            return f"{head} {kind} last={m.last_index}/{m.last_term}{extra}"
        case VoteResponse():
            kind = "PreVote" if m.pre_vote else "Vote"
            return f"{head} {kind}{'OK' if m.granted else 'Reject'}"
        case Heartbeat():
            return f"{head} Heartbeat commit={m.commit} read={m.read_seq}"
        case HeartbeatResponse():
            return f"{head} HeartbeatOK read={m.read_seq}"
        case InstallSnapshot():
            return (
                f"{head} Snap {m.meta.index}/{m.meta.term} off={m.offset} "
                f"len={len(m.chunk)}{' done' if m.done else ''}"
            )
        case SnapshotResponse():
            return f"{head} SnapOK {m.index} next={m.next_offset}{' reject' if m.reject else ''}"
        case TimeoutNow():
            return f"{head} TimeoutNow"
    raise AssertionError(m)


def _ent(e: Entry) -> str:
    if e.kind is EntryKind.NOOP:
        return f"{e.index}/{e.term}"
    if e.kind is EntryKind.CONFIG:
        return f"{e.index}/{e.term}:conf({e.data.decode(errors='replace')})"
    return f"{e.index}/{e.term}:{e.data.decode(errors='replace')}"
