"""The synchronous host loop around one Raft core: Ready in, port calls out.

Theory of operation (etcd-raft's host contract, hashicorp/raft's ports):

- The host owns one :class:`~geostore.raft.core.RaftCore` and its ports: a LogStore, a
  HardStateStore and a SnapshotStore (:mod:`geostore.storage.ports`), a message sender
  (:mod:`geostore.transport.port`) and a :class:`~geostore.node.ports.StateMachine`.
- Every input (``tick``, ``step``, ``propose``, ``read``, admin calls) ends by draining the
  core: while it has a Ready, the host (1) installs an incoming snapshot and writes snapshot
  chunks, (2) persists entries and the hard state, and syncs when the Ready says so,
  (3) sends the messages, (4) applies committed entries and answers clients, (5) advances.
  Messages leave only after what they depend on is durable (a vote, an append ack), with one
  exception the Raft dissertation (section 10.2.1) allows: a leader's own AppendEntries and
  heartbeats leave before its log write and fsync, so the fsync overlaps the replication round
  trip. They depend on no newly persisted state (the term is durable since the campaign; a
  Ready that changes term or vote sends nothing early), and the core counts the leader toward
  a quorum only through entries ``advance`` confirmed as persisted.
- With a :class:`~geostore.node.ports.SyncRunner` the fsync runs off the caller's loop: the
  host stops after step (2), keeps taking inputs (they queue in the core, which allows steps
  between ``ready`` and ``advance``) and finishes the Ready in :meth:`RaftHost.sync_done`;
  the next Ready then covers everything that arrived meanwhile (group commit).
- Client proposals are remembered by (index, term). When the entry at that index is applied
  with that term the client gets :class:`Committed`; when an entry of another term lands
  there the proposal was overwritten and definitely not committed: :class:`Lost`. A snapshot
  that jumps over a pending index leaves its fate :class:`Unknown`.
- Linearizable reads go through ReadIndex: the core confirms leadership and names an index;
  the host answers once it has applied that far.
- No clock, no threads, no asyncio: time arrives as ``tick()``, so the simulator and the
  asyncio runtime drive the very same object.
- Negative-control switches (never for production): ``unsafe_ack_before_fsync`` skips every
  log sync, so a crash loses acknowledged entries; ``unsafe_forget_vote`` never saves the hard
  state, so a restarted node forgets its term and vote.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from geostore.ids import INDEX_ZERO, LogIndex, NodeId, Term
from geostore.node.ports import HostObserver, MessageSender, StateMachine, SyncRunner
from geostore.raft.core import RaftConfig, RaftCore, Ready
from geostore.raft.messages import AppendEntries, Heartbeat, Message
from geostore.raft.records import (
    ConfChange,
    ConfChangeOp,
    Proposed,
    Rejected,
    Role,
    SnapshotChunk,
    Status,
)
from geostore.raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta
from geostore.storage.ports import HardStateStore, LogStore, SnapshotStore, SnapshotWriter


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Host-side knobs. Snapshot thresholds are in applied entries."""

    snapshot_every_entries: int = 10_000
    snapshot_chunk_bytes: int = 64 * 1024
    #: snapshots kept in memory for followers' transfers (>= compact_lag_snapshots + 1)
    snapshots_cached: int = 3
    #: compact the log only to the snapshot this many snapshots before the newest
    compact_lag_snapshots: int = 1
    unsafe_ack_before_fsync: bool = False
    unsafe_forget_vote: bool = False

    def __post_init__(self) -> None:
        assert self.snapshot_every_entries >= 1
        assert self.snapshot_chunk_bytes >= 1
        assert self.snapshots_cached >= self.compact_lag_snapshots + 1 >= 1


@dataclass(frozen=True, slots=True)
class Committed:
    """The proposal's entries were committed and applied; ``index`` is its last entry's
    index and ``result`` the machine's answer for that entry."""

    index: LogIndex
    term: Term
    result: object


@dataclass(frozen=True, slots=True)
class Lost:
    """Another term's entry was applied at the proposal's index: it was never committed."""

    index: LogIndex
    term: Term


@dataclass(frozen=True, slots=True)
class Unknown:
    """The fate cannot be told here (e.g. a snapshot covered the index)."""

    index: LogIndex
    reason: str


ProposalOutcome = Committed | Lost | Unknown
OnProposal = Callable[[ProposalOutcome], None]


@dataclass(frozen=True, slots=True)
class ReadReady:
    """A linearizable read may be served now: ``index`` was confirmed, and it is applied."""

    index: LogIndex


@dataclass(frozen=True, slots=True)
class ReadFailed:
    """The read was not confirmed (leadership lost or refused); it may be retried."""

    reason: str


ReadOutcome = ReadReady | ReadFailed
OnRead = Callable[[ReadOutcome], None]


@dataclass(slots=True)
class _Pending:
    index: LogIndex
    last_index: LogIndex
    term: Term
    on_done: OnProposal | None


def bootstrap_storage(
    log: LogStore,
    hard_state: HardStateStore,
    voters: Iterable[NodeId],
    learners: Iterable[NodeId] = (),
) -> bool:
    """Write a new group's initial configuration into empty storage; False if not empty.

    Every founding member writes the same committed prefix: one ADD_VOTER entry per voter
    (sorted, term 1, indexes 1..n), then one ADD_LEARNER entry per learner (sorted), and a
    hard state at term 1 committing them, as etcd bootstraps. The configuration is thereby
    part of the log, so a node that joins later learns it by replication (or from a
    snapshot) like any other state.
    """
    if log.last_index() > INDEX_ZERO or hard_state.load() != HardState():
        return False
    members = sorted(voters)
    assert members, "a group needs at least one voter"
    watchers = sorted(set(learners) - set(members))
    changes = [ConfChange(ConfChangeOp.ADD_VOTER, n) for n in members] + [
        ConfChange(ConfChangeOp.ADD_LEARNER, n) for n in watchers
    ]
    entries = [
        Entry(Term(1), LogIndex(i), EntryKind.CONFIG, c.encode())
        for i, c in enumerate(changes, start=1)
    ]
    log.append(entries)
    log.sync()
    hard_state.save(HardState(term=Term(1), vote=None, commit=LogIndex(len(entries))))
    return True


class RaftHost:
    """One Raft group member: the core, its ports, and the persist/send/apply/advance loop."""

    def __init__(
        self,
        config: RaftConfig,
        host_config: HostConfig,
        log: LogStore,
        hard_state: HardStateStore,
        snapshots: SnapshotStore,
        sender: MessageSender,
        machine: StateMachine,
        rng: random.Random,
        observer: HostObserver | None = None,
    ) -> None:
        self.node_id: NodeId = config.node_id
        self.host_config = host_config
        self.log = log
        self.hard_state = hard_state
        self.snapshots = snapshots
        self.sender = sender
        self.machine = machine
        self.observer = observer or HostObserver()
        #: set by the runtime after construction (recovery drains inline)
        self.sync_runner: SyncRunner | None = None
        #: the Ready whose fsync is running, with the messages still to send after it
        self._awaiting_sync: tuple[Ready, list[Message]] | None = None
        self._pending: dict[int, _Pending] = {}
        self._reads_unconfirmed: dict[bytes, tuple[OnRead, Term]] = {}
        self._reads_confirmed: list[tuple[LogIndex, bytes, OnRead]] = []
        self._read_seq = 0
        self._snapshot_writer: SnapshotWriter | None = None
        #: recent snapshots (oldest first), so a transfer in flight can finish after a newer
        #: snapshot was taken, and the log can keep one snapshot interval of entries
        self._snapshot_cache: list[tuple[SnapshotMeta, bytes]] = []

        # Recovery: the newest durable snapshot restores the machine; the log continues it.
        hs = hard_state.load()
        snap = snapshots.latest()
        applied = INDEX_ZERO
        conf = ConfState()  # the configuration lives in the log (see bootstrap_storage)
        if snap is not None and snap.index > INDEX_ZERO:
            data = b"".join(snapshots.read_chunks(host_config.snapshot_chunk_bytes))
            machine.restore(data, snap)
            self._remember(snap, data)
            if snap.index > log.snapshot_meta().index:
                # crashed between committing the snapshot and compacting the log
                log.compact_prefix(snap)
            applied = snap.index
            conf = snap.conf
        self.applied: LogIndex = applied
        self.applied_conf: ConfState = conf
        self._last_snapshot_index: LogIndex = applied
        self.core = RaftCore(
            config,
            log,
            hs,
            conf,
            rng,
            applied,
            snapshot_source=self._snapshot_source,
        )
        self._drain()

    # -- inputs ----------------------------------------------------------------------------

    def tick(self) -> None:
        self.core.tick()
        self._drain()

    def step(self, msg: Message) -> None:
        self.core.step(msg)
        self._drain()

    def campaign(self) -> None:
        self.core.campaign()
        self._drain()

    def transfer_leadership(self, to: NodeId) -> Rejected | None:
        result = self.core.transfer_leadership(to)
        self._drain()
        return result

    def propose(self, data: bytes, on_done: OnProposal | None = None) -> Proposed | Rejected:
        """Propose one entry; ``on_done`` hears its outcome once it is decided here."""
        return self._track(self.core.propose(data), on_done)

    def propose_batch(
        self, datas: list[bytes], on_done: OnProposal | None = None
    ) -> Proposed | Rejected:
        """Propose several entries at once; ``on_done`` hears the outcome of the whole batch
        (they share one term, so the last entry's fate is every entry's)."""
        return self._track(self.core.propose_batch(datas), on_done)

    def propose_conf_change(
        self, change: ConfChange, on_done: OnProposal | None = None
    ) -> Proposed | Rejected:
        return self._track(self.core.propose_conf_change(change), on_done)

    def _track(
        self, result: Proposed | Rejected, on_done: OnProposal | None
    ) -> Proposed | Rejected:
        if isinstance(result, Proposed):
            prior = self._pending.get(result.last_index)
            if prior is not None and prior.on_done is not None:
                # our own log no longer holds the earlier proposal there: a leader of a later
                # term overwrote it, which leader completeness forbids for committed entries
                prior.on_done(Lost(prior.index, prior.term))
            self._pending[result.last_index] = _Pending(
                result.index, result.last_index, result.term, on_done
            )
        self._drain()
        return result

    def read(self, on_done: OnRead) -> Rejected | None:
        """Start a linearizable read; ``on_done`` hears when it may be served (or failed)."""
        self._read_seq += 1
        ctx = f"{self.node_id}:{self._read_seq}".encode()
        result = self.core.read_index(ctx)
        if isinstance(result, Rejected):
            return result
        self._reads_unconfirmed[ctx] = (on_done, Term(self.core.term))
        self._drain()
        return None

    def status(self) -> Status:
        return self.core.status()

    def take_pending(self) -> list[OnProposal]:
        """Forget every undecided proposal and return their callbacks (a failing runtime
        answers them with its error: their fate is unknown once storage failed)."""
        callbacks = [p.on_done for p in self._pending.values() if p.on_done is not None]
        self._pending.clear()
        return callbacks

    # -- the loop --------------------------------------------------------------------------

    @property
    def syncing(self) -> bool:
        """A Ready waits for its fsync (the runner's ``done`` has not come yet)."""
        return self._awaiting_sync is not None

    def sync_done(self) -> None:
        """The runner's fsync finished: finish the Ready that waited and drain on."""
        assert self._awaiting_sync is not None, "sync_done without a sync running"
        rd, late = self._awaiting_sync
        self._awaiting_sync = None
        self._after_sync(rd, late)
        self._drain()

    def _drain(self) -> None:
        while self._awaiting_sync is None and self.core.has_ready():
            self._handle(self.core.ready())
        self._fail_unconfirmed_reads()

    def _split_early(self, rd: Ready) -> list[Message]:
        """Send the leader's own replication messages now; return the rest (see the module
        docstring: they depend on nothing this Ready persists)."""
        if not rd.messages:
            return []
        core = self.core
        if core.role is not Role.LEADER:
            return list(rd.messages)
        hs = rd.hard_state
        if hs is not None:
            durable = self.hard_state.load()
            if hs.term != durable.term or hs.vote != durable.vote:
                return list(rd.messages)
        term = core.term
        late: list[Message] = []
        send = self.sender.send
        for msg in rd.messages:
            kind = type(msg)
            if (kind is AppendEntries or kind is Heartbeat) and msg.term == term:
                send(msg.dst, msg)
            else:
                late.append(msg)
        return late

    def _handle(self, rd: Ready) -> None:
        obs = self.observer
        # 1-2. snapshots from the leader: stage chunks, install a finished one first.
        for chunk in rd.snapshot_chunks:
            self._write_chunk(chunk)
        if rd.snapshot is not None:
            self._install(rd.snapshot.meta)
        # a leader's AppendEntries leave before its own write and fsync (section 10.2.1)
        late = self._split_early(rd)
        # committed entries durable here before this Ready's write (not replaced by it) may be
        # applied before its fsync: they wait for nothing it persists
        durable = self.log.durable_index()
        if rd.entries:
            durable = min(durable, LogIndex(rd.entries[0].index - 1))
        # 3. persist entries and hard state; sync before anything else leaves.
        if rd.entries:
            prior_last = self.log.last_index()
            self.log.append(rd.entries)
            obs.on_log_write(self, rd.entries, prior_last)
        if rd.hard_state is not None:
            if not self.host_config.unsafe_forget_vote:
                self.hard_state.save(rd.hard_state)
            obs.on_hard_state(self, rd.hard_state)
        if rd.must_sync and not self.host_config.unsafe_ack_before_fsync:
            for entry in rd.committed:
                if entry.index > durable:
                    break
                self._apply(entry)
            runner = self.sync_runner
            if runner is not None:
                self._awaiting_sync = (rd, late)
                runner.start(self.sync_done)
                return
            self.log.sync()
        self._after_sync(rd, late)

    def _after_sync(self, rd: Ready, late: list[Message]) -> None:
        obs = self.observer
        # 4. send.
        for msg in late:
            self.sender.send(msg.dst, msg)
        # 5. apply (what was not applied before the fsync), answer clients and reads.
        applied = self.applied
        for entry in rd.committed:
            if entry.index > applied:
                self._apply(entry)
        for rs in rd.read_states:
            pending = self._reads_unconfirmed.pop(rs.ctx, None)
            if pending is not None:
                self._reads_confirmed.append((rs.index, rs.ctx, pending[0]))
        self._serve_reads()
        # 6. compaction the core asked for (after a snapshot we took).
        if rd.compact_to is not None:
            self._compact(rd.compact_to)
        # 7. advance; then take a snapshot if the machine moved far enough since the last.
        self.core.advance(rd)
        self._maybe_snapshot()
        obs.on_ready_done(self)

    def _apply(self, entry: Entry) -> None:
        assert entry.index == self.applied + 1, (entry.index, self.applied)
        result = self.machine.apply(entry)
        self.applied = entry.index
        if entry.kind is EntryKind.CONFIG:
            change = ConfChange.decode(entry.data)
            if change is not None:
                self.applied_conf = change.apply(self.applied_conf)
        self.observer.on_apply(self, entry)
        pending = self._pending.pop(entry.index, None)
        if pending is None or pending.on_done is None:
            return
        if entry.term == pending.term:
            self.observer.on_ack(self, entry.index, entry.term)
            pending.on_done(Committed(entry.index, entry.term, result))
        else:
            pending.on_done(Lost(pending.index, pending.term))

    def _serve_reads(self) -> None:
        if not self._reads_confirmed:
            return
        waiting: list[tuple[LogIndex, bytes, OnRead]] = []
        for index, ctx, on_done in self._reads_confirmed:
            if index <= self.applied:
                self.observer.on_read_served(self, index)
                on_done(ReadReady(index))
            else:
                waiting.append((index, ctx, on_done))
        self._reads_confirmed = waiting

    def _fail_unconfirmed_reads(self) -> None:
        """Reads the core has not confirmed are dropped when this node stops leading."""
        if not self._reads_unconfirmed:
            return
        core = self.core
        if core.role is Role.LEADER:
            stale = [c for c, (_, term) in self._reads_unconfirmed.items() if term != core.term]
        else:
            stale = list(self._reads_unconfirmed)
        for ctx in stale:
            on_done, _ = self._reads_unconfirmed.pop(ctx)
            on_done(ReadFailed("leadership lost"))

    # -- snapshots -------------------------------------------------------------------------

    def _snapshot_source(self, meta: SnapshotMeta, offset: int, max_bytes: int) -> bytes | None:
        for cached_meta, data in self._snapshot_cache:
            if cached_meta == meta:
                return data[offset : offset + max_bytes]
        return None

    def _remember(self, meta: SnapshotMeta, data: bytes) -> None:
        cache = self._snapshot_cache
        cache.append((meta, data))
        if len(cache) > self.host_config.snapshots_cached:
            del cache[0]

    def _compact(self, newest: SnapshotMeta) -> None:
        """Drop the log prefix, keeping ``compact_lag_snapshots`` snapshot intervals of entries.

        Followers a little behind then catch up from the log instead of needing a snapshot
        transfer, which under steady load could otherwise never finish before the next
        snapshot supersedes it (etcd keeps a catch-up tail for the same reason).
        """
        lag = self.host_config.compact_lag_snapshots
        cache = self._snapshot_cache
        candidates = [m for m, _ in cache if m.index <= newest.index]
        if len(candidates) <= lag:
            return
        target = candidates[-1 - lag]
        if target.index > self.log.snapshot_meta().index:
            self.log.compact_prefix(target)

    def _write_chunk(self, chunk: SnapshotChunk) -> None:
        if chunk.offset == 0:
            if self._snapshot_writer is not None:
                self._snapshot_writer.abort()
            self._snapshot_writer = self.snapshots.begin(chunk.meta)
        writer = self._snapshot_writer
        assert writer is not None, "snapshot chunk without a start"
        writer.write(chunk.data)
        if chunk.done:
            writer.commit()
            self._snapshot_writer = None

    def _install(self, meta: SnapshotMeta) -> None:
        latest = self.snapshots.latest()
        assert latest == meta, f"installing {meta} but the store holds {latest}"
        data = b"".join(self.snapshots.read_chunks(self.host_config.snapshot_chunk_bytes))
        self.machine.restore(data, meta)
        self.log.compact_prefix(meta)
        self._snapshot_cache.clear()
        self._remember(meta, data)
        self.applied = meta.index
        self.applied_conf = meta.conf
        self._last_snapshot_index = meta.index
        for index in sorted(i for i in self._pending if i <= meta.index):
            pending = self._pending.pop(index)
            if pending.on_done is not None:
                pending.on_done(Unknown(pending.index, "covered by an installed snapshot"))
        self.observer.on_snapshot_installed(self, meta)

    def _maybe_snapshot(self) -> None:
        every = self.host_config.snapshot_every_entries
        if self.applied - self._last_snapshot_index < every:
            return
        term = self.log.term_at(self.applied)
        assert term is not None, f"applied index {self.applied} is not in the log"
        meta = SnapshotMeta(index=self.applied, term=term, conf=self.applied_conf)
        data = self.machine.snapshot()
        writer = self.snapshots.begin(meta)
        step = self.host_config.snapshot_chunk_bytes
        for off in range(0, len(data), step):
            writer.write(data[off : off + step])
        writer.commit()
        self._remember(meta, data)
        self._last_snapshot_index = meta.index
        # the core answers with Ready.compact_to, handled by the drain loop
        self.core.snapshot_taken(meta)
        self.observer.on_snapshot_taken(self, meta)
