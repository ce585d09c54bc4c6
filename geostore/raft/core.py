"""The Raft consensus core: a deterministic, sans-IO state machine (etcd-io/raft style).

Theory of operation
-------------------
The core never touches a disk, socket, clock or global random. Time enters as :meth:`tick`
calls (election and heartbeat timeouts are counted in ticks, per group, so a group spanning
regions can use WAN-sized timeouts); randomness only from the injected ``random.Random``;
network input through :meth:`step`; client input through :meth:`propose`,
:meth:`propose_conf_change`, :meth:`read_index` and :meth:`transfer_leadership`. Everything
the host must do comes out of :meth:`ready` as one :class:`Ready` value, and the host confirms
it with :meth:`advance` (see :class:`Ready` for the order the host must follow).

Roles: FOLLOWER -> (election timeout) PRE_CANDIDATE -> (pre-vote quorum) CANDIDATE ->
(vote quorum) LEADER; any role -> FOLLOWER on seeing a higher term (with the exceptions for
pre-votes and leader leases below). Rules kept, each with its reason:

* Terms and votes: a node votes at most once per term; the new term and vote go out in
  ``Ready.hard_state`` in the same Ready as the vote or request that depends on them, and the
  host persists before it sends, so a restarted node never votes twice in one term.
* Election restriction: a vote (or pre-vote) is granted only to a candidate whose last entry
  is at least as up to date as ours (higher last term, or same last term and index >= ours).
* Pre-vote: a node that timed out first asks for pre-votes at ``term + 1`` without changing its
  term; only with a quorum of pre-votes does it start a real election. A node cut off from
  the group therefore cannot inflate its term and depose a healthy leader on its return.
* Check-quorum and leader lease: a leader that has not heard from a quorum of voters within an
  election timeout steps down; a follower that heard from its leader within the election
  timeout ignores (pre-)vote requests (unless they come from a leadership transfer).
* Log matching: AppendEntries carries ``(prev_index, prev_term)``; a follower accepts only if
  it holds that entry, and truncates only from the first entry whose term differs (stale,
  duplicated or reordered messages never truncate). Rejections carry conflict hints.
* Commit (Raft paper, Figure 8): a leader advances its commit index by counting replicas only
  to an entry of its *current* term; older entries commit indirectly. A new leader appends a
  NOOP entry at once so this happens without client traffic.
* Persist before count: the leader counts its own log toward a quorum only through entries the
  host has confirmed durable (:meth:`advance`); followers answer only after persisting (their
  answers are in the same Ready as the entries, and the host persists before sending).
* Replication flow control: per follower a PROBE state (one message, then wait for an answer
  or a heartbeat answer) and a REPLICATE state (pipelined, optimistic ``next``, at most
  ``max_inflight_msgs`` unacknowledged messages, each at most ``max_entries_per_msg`` entries
  and ``max_bytes_per_msg`` bytes). Every heartbeat broadcast is a numbered round
  (``read_seq``). A heartbeat answer always unblocks a probe; a follower in REPLICATE that
  answers a heartbeat round started after our last AppendEntries to it, while that
  AppendEntries is still unacknowledged, lost it (or restarted): it falls back to PROBE. So no
  follower stalls for good.
* ReadIndex (Diss. 6.4): a read is accepted only by a leader that committed an entry of its
  term (reads arriving earlier are queued until it has); it records the commit index, then a
  heartbeat round started after the read arrived must be answered by a quorum; then the read
  comes out as a :class:`ReadState`; the host serves it once applied >= its index.
* Leadership transfer: the leader stops accepting proposals, brings the target up to date,
  sends TimeoutNow; the target campaigns at once (no pre-vote, voters ignore their lease).
  The transfer is aborted after an election timeout.
* Snapshots: :meth:`snapshot_taken` lets the core ask the host (``Ready.compact_to``) to drop
  the log prefix. A follower whose next entry was compacted receives the snapshot in chunks
  of ``snapshot_chunk_bytes``, one chunk in flight, read through the host's
  :class:`SnapshotSource`; the follower hands each chunk to the host in
  ``Ready.snapshot_chunks`` (never keeping the bytes itself) and installs on the last chunk
  (``Ready.snapshot``). Resumable: the follower remembers (snapshot, next offset) and answers
  any chunk that is not the next one, including a restart at offset 0 of the same snapshot,
  with the offset it expects; the leader continues from whatever offset the follower names,
  and resends the outstanding chunk when heartbeat answers show no progress (a lost chunk).
  A snapshot not newer than the follower's commit is ignored; one that the log already
  contains only fast-forwards commit. The host must keep the log's snapshot (its
  ``snapshot_meta``) the one the source serves, e.g. by redoing an interrupted compaction
  at start-up.
* Membership: one server at a time (Diss. 4.1). Choice: a configuration takes effect when its
  entry is *applied* (handed out in ``Ready.committed``), as in etcd's ConfChange v1, not
  when appended. This is safe for single-server changes because any majority of the old
  configuration intersects any majority of the new one, provided that at most one change is
  unapplied at a time and a leader first commits an entry of its own term (the R12 bug fix):
  both are enforced in :meth:`propose_conf_change`. Quorums count only the voters of the
  active configuration; learners replicate but never count (they may still cast a vote,
  which a candidate ignores unless it is a voter in the candidate's configuration). A node
  that is not a voter never campaigns; a leader that removes itself steps down.
* Wiped node (Diss. 3.8): a node that lost its durable state may have voted or acknowledged
  entries it no longer has, so it must never vote or campaign under its old identity. The
  host detects this (it persists a random incarnation id with the hard state at first boot;
  a data directory without it, for a node that the configuration lists as a member, is a
  wipe) and constructs the core with ``wiped=True``: the core then replicates but never votes
  nor campaigns, until the operator re-adds the machine under a new node id.

Invalid or stale input (wrong group or destination, old terms, out-of-range indexes,
non-contiguous entries, answers from nodes without progress) is ignored by rule, never
raised: :meth:`step` accepts anything. Programmer errors (host breaking the Ready contract)
are assertions.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from geostore.ids import INDEX_ZERO, GroupId, LogIndex, NodeId, Term
from geostore.raft.log import RaftLog, make_entry
from geostore.raft.messages import (
    MESSAGE_TYPES,
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
from geostore.raft.records import (
    ConfChange,
    ConfChangeOp,
    IncomingSnapshot,
    ProgressState,
    ProgressStatus,
    Proposed,
    ReadState,
    Rejected,
    RejectReason,
    Role,
    SnapshotChunk,
    SnapshotSource,
    Status,
)
from geostore.raft.types import ConfState, Entry, EntryKind, HardState, LogReader, SnapshotMeta

__all__ = [
    "ConfChange",
    "ConfChangeOp",
    "IncomingSnapshot",
    "ProgressState",
    "ProgressStatus",
    "Proposed",
    "RaftConfig",
    "RaftCore",
    "ReadState",
    "Ready",
    "RejectReason",
    "Rejected",
    "Role",
    "SnapshotChunk",
    "SnapshotSource",
    "Status",
]

_kind_of = attrgetter("kind")
_NORMAL = EntryKind.NORMAL
_CONFIG = EntryKind.CONFIG
_NOOP = EntryKind.NOOP
_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Per-group settings of one core. Timeouts are in ticks (the host picks the tick length).

    The ``unsafe_*`` switches break safety on purpose (negative controls): a checker that
    never sees them fail proves nothing. Never enable them outside tests.
    """

    node_id: NodeId
    group: GroupId
    #: base election timeout; each node draws its timeout from [election_ticks, 2*election_ticks)
    election_ticks: int = 10
    #: the leader sends heartbeats every heartbeat_ticks (must be < election_ticks)
    heartbeat_ticks: int = 1
    max_entries_per_msg: int = 1024
    max_bytes_per_msg: int = 1 << 20
    #: REPLICATE window: unacknowledged AppendEntries per follower
    max_inflight_msgs: int = 64
    #: a follower that has every entry learns a new commit index at the next tick (or from
    #: the next AppendEntries, which carries it) instead of from a message of its own: under
    #: load that halves the messages of a round; a follower applies at most a tick later
    lazy_commit: bool = False
    #: proposals are refused (OVERLOADED) while this many entries are uncommitted
    max_uncommitted_entries: int = 1 << 16
    #: bound on the entries in Ready.committed (the rest comes in later Readies)
    max_apply_entries_per_ready: int = 4096
    pre_vote: bool = True
    check_quorum: bool = True
    snapshot_chunk_bytes: int = 256 << 10
    #: NEGATIVE CONTROL: the leader commits as soon as it appends locally
    unsafe_commit_without_quorum: bool = False
    #: NEGATIVE CONTROL: commit entries of earlier terms by counting replicas (Figure 8 bug)
    unsafe_ignore_figure8: bool = False
    #: NEGATIVE CONTROL: candidates ask learners too and count their votes
    unsafe_count_learner_votes: bool = False
    #: NEGATIVE CONTROL: Ready.hard_state never carries the vote (as if it were not persisted)
    unsafe_forget_vote: bool = False

    def __post_init__(self) -> None:
        assert self.heartbeat_ticks >= 1, self.heartbeat_ticks
        assert self.election_ticks > self.heartbeat_ticks, (
            self.election_ticks,
            self.heartbeat_ticks,
        )
        assert self.max_entries_per_msg >= 1
        assert self.max_bytes_per_msg >= 1
        assert self.max_inflight_msgs >= 1
        assert self.snapshot_chunk_bytes >= 1
        assert self.max_uncommitted_entries >= 1


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the core needs done, handed out by :meth:`RaftCore.ready`.

    The host loop contract, in this order (each step only after the previous one finished):

    1. ``snapshot_chunks``: write each chunk of the incoming snapshot at its offset (offset 0
       starts a new staging area); a ``done`` chunk is fsynced.
    2. ``snapshot``: if set, restore the state machine from the staged snapshot and make the
       log start after ``snapshot.meta.index`` (``compact_prefix(meta)``); persist the meta.
    3. ``entries``: append to the log; they may replace a suffix starting at
       ``entries[0].index``. Then persist ``hard_state`` (when not None). If ``must_sync``,
       fsync both before going on.
    4. ``messages``: send them (only now: they may depend on the term, vote and entries just
       persisted: a vote, or an answer acknowledging the entries).
    5. ``committed``: apply in order. They are committed, and durable locally once step 3 ran.
       Acknowledge a client's proposal only when the entry at its index is applied with the
       proposal's term. ``read_states``: serve each read once applied >= its index.
    6. ``compact_to``: the log prefix through this snapshot may be dropped (optional, any time).
    7. call :meth:`RaftCore.advance` with this Ready. Only then may :meth:`RaftCore.ready`
       be called again (``step``/``tick``/``propose`` between ``ready`` and ``advance`` are
       allowed: the core copes with entries overwritten in between).

    The leader counts its own log toward a commit quorum only through entries confirmed by
    ``advance`` (persisted), never through entries it merely appended.
    """

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot_chunks: tuple[SnapshotChunk, ...]
    snapshot: IncomingSnapshot | None
    messages: tuple[Message, ...]
    committed: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    compact_to: SnapshotMeta | None
    must_sync: bool


class _Progress:
    """The leader's view of one peer (or of itself: only ``match`` is used)."""

    __slots__ = (
        "append_round",
        "inflight",
        "match",
        "next",
        "probe_sent",
        "read_acked",
        "recent_active",
        "sent_commit",
        "snap_meta",
        "snap_moved",
        "snap_offset",
        "state",
    )

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = _PROBE
        self.probe_sent = False
        #: last index of each unacknowledged AppendEntries (REPLICATE only)
        self.inflight: deque[int] = deque()
        self.recent_active = False
        #: highest commit index sent to this peer
        self.sent_commit = 0
        #: heartbeat round current when we last sent it entries (REPLICATE loss detection)
        self.append_round = 0
        self.snap_meta: SnapshotMeta | None = None
        self.snap_offset = 0
        self.snap_moved = False
        #: highest read round (``read_seq``) this peer confirmed
        self.read_acked = 0

    def become_probe(self) -> None:
        self._restart_from_match(_PROBE)

    def become_replicate(self) -> None:
        self._restart_from_match(_REPLICATE)

    def _restart_from_match(self, state: ProgressState) -> None:
        """Enter ``state`` sending from the entry after ``match``, with nothing in flight
        and no snapshot pending."""
        self.state = state
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()
        self.snap_meta = None


class _PendingRead:
    __slots__ = ("ctx", "index", "seq")

    def __init__(self, seq: int, index: int, ctx: bytes) -> None:
        self.seq = seq
        self.index = index
        self.ctx = ctx


class RaftCore:
    """One node's Raft state machine for one group. See the module docstring for the rules."""

    def __init__(
        self,
        config: RaftConfig,
        log: LogReader,
        hard_state: HardState,
        conf: ConfState,
        rng: random.Random,
        applied: LogIndex = INDEX_ZERO,
        *,
        snapshot_source: SnapshotSource | None = None,
        wiped: bool = False,
    ) -> None:
        """Build a core over durable state the host loaded.

        ``log``: storage's reader (the core reads durable entries through it, never writes).
        ``hard_state``: as last persisted. ``conf``: the configuration at the log's snapshot
        (the bootstrap configuration when there is no snapshot; ignored when
        ``log.snapshot_meta().index > 0``, whose ``conf`` is used instead); configuration
        entries after it up to ``applied`` are replayed from the log. ``applied``: the index
        the host's state machine has applied (entries after it come out again in
        ``Ready.committed``). ``snapshot_source``: reads snapshot bytes for followers that
        need a snapshot (required if the host ever compacts). ``wiped``: the host found this
        node's durable state lost (see the module docstring): never vote nor campaign.
        """
        self.cfg = config
        self.id = config.node_id
        self._rng = rng
        self._log = RaftLog(log)
        self._source = snapshot_source
        self._wiped = wiped
        snap = log.snapshot_meta()
        self.term: int = hard_state.term
        self.vote: NodeId | None = hard_state.vote
        lg = self._log
        last = lg.last_index()
        # commit is persisted lazily, applied may be ahead of it; neither may pass the log end
        lg.commit = max(snap.index, min(max(hard_state.commit, applied), last))
        lg.applied = max(snap.index, min(applied, lg.commit))
        self.conf: ConfState = snap.conf if snap.index > 0 else conf
        lo = snap.index + 1
        while lo <= lg.applied:
            chunk = lg.slice(lo, lg.applied + 1, 1 << 20)
            for e in chunk:
                if e.kind is _CONFIG:
                    self._adopt_conf_entry(e)
            lo += len(chunk)
        self._prev_hs = HardState(Term(self.term), self.vote, LogIndex(lg.commit))
        #: the hard state handed out in the outstanding Ready (before any negative control)
        self._hs_out: HardState | None = None
        self.role = Role.FOLLOWER
        self.leader: NodeId | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_ticks
        self._msgs: list[Message] = []
        self._progress: dict[NodeId, _Progress] = {}
        self._votes: dict[NodeId, bool] = {}
        self._read_states: list[ReadState] = []
        self._pending_reads: deque[_PendingRead] = deque()
        self._reads_waiting: list[bytes] = []
        self._read_seq = 0
        self._read_round_due = False
        self._transferee: NodeId | None = None
        self._transfer_elapsed = 0
        self._pending_conf_index = 0
        self._snapshot_chunks: list[SnapshotChunk] = []
        self._incoming: IncomingSnapshot | None = None
        #: follower side of a snapshot transfer: (meta, next expected offset)
        self._recv: tuple[SnapshotMeta, int] | None = None
        self._compact_to: SnapshotMeta | None = None
        self._ready_out = False
        self._bcast = False
        self._unsafe_commit = config.unsafe_commit_without_quorum
        self._reset_election_timer()

    # ------------------------------------------------------------------ host inputs
    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, check-quorum, transfer)."""
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            if self._promotable():
                self._hup(transfer=False)

    def step(self, msg: Message) -> None:
        """Take one message from a peer. Invalid or stale input is ignored by rule."""
        if (
            type(msg) not in _STEP_TYPES
            or msg.group != self.cfg.group
            or msg.dst != self.id
            or msg.src == self.id
            or not isinstance(msg.term, int)
            or msg.term < 0
        ):
            return
        t = msg.term
        if t > self.term:
            if type(msg) is RequestVote:
                if self._in_lease() and not msg.transfer:
                    return  # a live leader: do not let a (pre-)candidate disrupt it
                if msg.pre_vote:
                    self._handle_vote(msg)  # a pre-vote never changes our term
                    return
                self._become_follower(t, None)
            elif type(msg) is VoteResponse and msg.pre_vote and msg.granted:
                pass  # a granted pre-vote echoes the term we will campaign in
            elif type(msg) in (AppendEntries, Heartbeat, InstallSnapshot):
                self._become_follower(t, msg.src)
            else:
                self._become_follower(t, None)
        elif t < self.term:
            if type(msg) in (AppendEntries, Heartbeat):
                # a stale leader: tell it our term so it steps down (frees a node stuck at a
                # higher term when pre-vote or check-quorum keeps it from campaigning)
                self._send(
                    AppendResponse(
                        self.cfg.group,
                        self.id,
                        msg.src,
                        Term(self.term),
                        False,
                        LogIndex(0),
                        LogIndex(0),
                        Term(0),
                    )
                )
            elif type(msg) is RequestVote and msg.pre_vote:
                self._send(
                    VoteResponse(self.cfg.group, self.id, msg.src, Term(self.term), False, True)
                )
            return
        self._dispatch(msg)

    def propose(self, data: bytes) -> Proposed | Rejected:
        """Append one NORMAL entry (leader only). Acknowledge the client after apply."""
        lg = self._log
        unstable = lg.unstable
        index = lg.offset + len(unstable)
        if (
            self.role is not Role.LEADER
            or self._transferee is not None
            or index - lg.commit > self.cfg.max_uncommitted_entries
            or self._unsafe_commit
        ):
            return self.propose_batch((data,))  # the general path (and its rejections)
        # hot path: one entry, no per-call allocation beyond the entry and the answer
        t = self.term
        unstable.append(make_entry(t, index, _NORMAL, data))
        lg.unstable_bytes += len(data)
        self._bcast = True
        return _make_proposed(index, t)

    def propose_batch(self, datas: tuple[bytes, ...] | list[bytes]) -> Proposed | Rejected:
        """Append several NORMAL entries in one go; ``Proposed`` spans index..last_index."""
        assert len(datas) > 0
        reject = self._check_proposal(len(datas))
        if reject is not None:
            return reject
        lg = self._log
        first = lg.last_index() + 1
        n = len(datas)
        t = Term(self.term)
        entries = list(map(make_entry, [t] * n, range(first, first + n), [_NORMAL] * n, datas))
        self._append_as_leader(entries)
        return Proposed(LogIndex(first), t, LogIndex(first + n - 1))

    def propose_conf_change(self, change: ConfChange) -> Proposed | Rejected:
        """Propose a single-server membership change (leader only, one at a time).

        Refused unless the leader has committed an entry of its current term and every
        earlier configuration entry has been applied (Ongaro's single-server-change fix).
        """
        reject = self._check_proposal(1)
        if reject is not None:
            return reject
        lg = self._log
        if self._pending_conf_index > lg.applied:
            return Rejected(RejectReason.CONF_CHANGE_PENDING, self.id)
        if lg.term_at(lg.commit) != self.term:
            return Rejected(RejectReason.NO_COMMIT_IN_TERM, self.id)
        voters, learners = self.conf.voters, self.conf.learners
        node, op = change.node, change.op
        invalid = (
            (op is ConfChangeOp.ADD_VOTER and node in voters)
            or (op is ConfChangeOp.ADD_LEARNER and (node in voters or node in learners))
            or (op is ConfChangeOp.REMOVE and node not in voters and node not in learners)
            or (op is ConfChangeOp.REMOVE and voters == frozenset({node}))
            or (op is ConfChangeOp.PROMOTE and node not in learners)
        )
        if invalid:
            return Rejected(RejectReason.INVALID_CONF_CHANGE, self.id)
        if op is ConfChangeOp.PROMOTE:
            pr = self._progress.get(node)
            if pr is None or pr.match < lg.commit:
                return Rejected(RejectReason.LEARNER_BEHIND, self.id)
        index = lg.last_index() + 1
        self._append_as_leader([Entry(Term(self.term), LogIndex(index), _CONFIG, change.encode())])
        self._pending_conf_index = index
        return Proposed(LogIndex(index), Term(self.term), LogIndex(index))

    def read_index(self, ctx: bytes) -> Rejected | None:
        """Ask for a linearizable read; the answer comes later as ``ReadState(ctx, index)``.

        Leader only. Before the leader has committed an entry of its term the read waits;
        then it takes the commit index and needs a quorum to answer a heartbeat round that
        started after it arrived. Reads die silently if the leader loses leadership (the
        client times out and retries).
        """
        if self.role is not Role.LEADER:
            return Rejected(RejectReason.NOT_LEADER, self.leader)
        lg = self._log
        if lg.term_at(lg.commit) != self.term:
            self._reads_waiting.append(ctx)
            return None
        self._start_read(ctx)
        return None

    def transfer_leadership(self, to: NodeId) -> Rejected | None:
        """Hand leadership to voter ``to``; proposals are refused until done or aborted.

        Aborted after an election timeout. Transferring to oneself is a no-op.
        """
        if self.role is not Role.LEADER:
            return Rejected(RejectReason.NOT_LEADER, self.leader)
        if to == self.id:
            return None
        if to not in self.conf.voters or to not in self._progress:
            return Rejected(RejectReason.NOT_MEMBER, self.id)
        if self._transferee == to:
            return None
        self._transferee = to
        self._transfer_elapsed = 0
        pr = self._progress[to]
        if pr.match == self._log.last_index():
            self._send_timeout_now(to)
        else:
            self._bcast = True
        return None

    def campaign(self) -> None:
        """Start an election now (pre-vote first when enabled). No-op unless promotable."""
        if self.role is Role.LEADER or not self._promotable():
            return
        self._hup(transfer=False)

    def snapshot_taken(self, meta: SnapshotMeta) -> None:
        """The host durably saved a state-machine snapshot at ``meta.index`` (<= applied).

        ``meta.conf`` must be the configuration at that index (``status().conf`` when the
        host's applied index equals ``meta.index``). The core answers with
        ``Ready.compact_to``; followers behind it then receive this snapshot.
        """
        assert meta.index <= self._log.applied, (meta.index, self._log.applied)
        if meta.index <= self._log.storage.snapshot_meta().index:
            return
        self._compact_to = meta

    # ------------------------------------------------------------------ ready / advance
    def has_ready(self) -> bool:
        """Whether :meth:`ready` would hand out anything."""
        lg = self._log
        return bool(
            self._msgs
            or self._bcast
            or self._read_round_due
            or lg.handed < len(lg.unstable)
            or lg.commit > lg.applied
            or self._read_states
            or self._snapshot_chunks
            or self._incoming is not None
            or self._compact_to is not None
            or self.term != self._prev_hs.term
            or self.vote != self._prev_hs.vote
            or lg.commit != self._prev_hs.commit
        )

    def ready(self) -> Ready:
        """Collect what the host must do now; see :class:`Ready` for the order."""
        assert not self._ready_out, "advance() the previous Ready before asking for another"
        lg = self._log
        committed: tuple[Entry, ...] = ()
        if lg.commit > lg.applied and (self._incoming is None):
            hi = min(lg.commit, lg.applied + self.cfg.max_apply_entries_per_ready)
            got = lg.slice(lg.applied + 1, hi + 1, None)
            committed = tuple(got)
            lg.applied = got[-1].index
            if _CONFIG in map(_kind_of, got):
                for e in got:
                    if e.kind is _CONFIG:
                        self._apply_conf_entry(e)
        if self.role is Role.LEADER:
            if self._bcast:
                self._bcast = False
                self._flush_appends()
            if self._read_round_due:
                self._read_round_due = False
                self._bcast_heartbeat()
        self._bcast = False
        self._read_round_due = False
        hs: HardState | None = None
        prev = self._prev_hs
        term_changed = self.term != prev.term or self.vote != prev.vote
        if term_changed or lg.commit != prev.commit:
            hs = HardState(Term(self.term), self.vote, LogIndex(lg.commit))
            self._hs_out = hs
            if self.cfg.unsafe_forget_vote:
                hs = HardState(hs.term, None, hs.commit)  # NEGATIVE CONTROL
        entries = lg.take_unhanded()
        chunks = tuple(self._snapshot_chunks)
        self._snapshot_chunks = []
        incoming = self._incoming
        self._incoming = None
        rd = Ready(
            hard_state=hs,
            entries=entries,
            snapshot_chunks=chunks,
            snapshot=incoming,
            messages=tuple(self._msgs),
            committed=committed,
            read_states=tuple(self._read_states),
            compact_to=self._compact_to,
            must_sync=bool(entries) or term_changed or incoming is not None,
        )
        self._msgs = []
        self._read_states = []
        self._compact_to = None
        self._ready_out = True
        return rd

    def advance(self, ready: Ready) -> None:
        """The host finished ``ready`` (persisted, sent, applied)."""
        assert self._ready_out, "advance() without a matching ready()"
        self._ready_out = False
        lg = self._log
        if ready.hard_state is not None:
            assert self._hs_out is not None
            self._prev_hs = self._hs_out
            self._hs_out = None
        if ready.snapshot is not None and lg.snap == ready.snapshot.meta:
            lg.snap = None  # storage holds the snapshot now
        if ready.entries:
            last = ready.entries[-1]
            lg.stable_to(last.index, last.term)
        if self.role is Role.LEADER:
            me = self._progress.get(self.id)
            persisted = lg.persisted_index()
            if me is not None and persisted > me.match:
                me.match = persisted
                me.next = persisted + 1
                if self._maybe_commit():
                    self._bcast = True

    # ------------------------------------------------------------------ introspection
    def status(self) -> Status:
        """A copy of the core's state (progress only on a leader)."""
        lg = self._log
        progress = {
            nid: ProgressStatus(
                LogIndex(pr.match), LogIndex(pr.next), pr.state, pr.recent_active, len(pr.inflight)
            )
            for nid, pr in self._progress.items()
        }
        return Status(
            node_id=self.id,
            role=self.role,
            term=Term(self.term),
            vote=self.vote,
            leader=self.leader,
            commit=LogIndex(lg.commit),
            applied=LogIndex(lg.applied),
            first_index=LogIndex(lg.first_index()),
            last_index=LogIndex(lg.last_index()),
            conf=self.conf,
            transferee=self._transferee,
            wiped=self._wiped,
            progress=progress,
        )

    def term_at(self, index: LogIndex) -> Term | None:
        """Term of the local entry at ``index`` (unstable entries included); for checkers."""
        t = self._log.term_at(index)
        return None if t is None else Term(t)

    # ------------------------------------------------------------------ roles
    def _promotable(self) -> bool:
        return not self._wiped and self.id in self.conf.voters

    def _in_lease(self) -> bool:
        return (
            self.cfg.check_quorum
            and self.leader is not None
            and self._election_elapsed < self.cfg.election_ticks
        )

    def _reset_election_timer(self) -> None:
        self._election_elapsed = 0
        e = self.cfg.election_ticks
        self._randomized_timeout = e + self._rng.randrange(e)

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        if term != self.term:
            assert term > self.term, (term, self.term)
            self.term = term
            self.vote = None
        self.role = Role.FOLLOWER
        self.leader = leader
        self._reset_election_timer()
        self._reset_leader_state()

    def _reset_leader_state(self) -> None:
        self._progress = {}
        self._votes = {}
        self._transferee = None
        self._pending_reads.clear()
        self._reads_waiting = []
        self._read_round_due = False
        self._bcast = False

    def _hup(self, *, transfer: bool) -> None:
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, *, pre: bool, transfer: bool) -> None:
        assert self._promotable()
        self._reset_leader_state()
        self.leader = None
        if pre:
            self.role = Role.PRE_CANDIDATE
            vote_term = self.term + 1
        else:
            self.role = Role.CANDIDATE
            self.term += 1
            self.vote = self.id
            vote_term = self.term
        self._reset_election_timer()
        self._votes = {self.id: True}
        if self._tally() > 0:
            self._won(pre)
            return
        lg = self._log
        last_index, last_term = LogIndex(lg.last_index()), Term(lg.last_term())
        targets = set(self.conf.voters)
        if self.cfg.unsafe_count_learner_votes:
            targets |= self.conf.learners
        for nid in sorted(targets):
            if nid != self.id:
                self._send(
                    RequestVote(
                        self.cfg.group,
                        self.id,
                        nid,
                        Term(vote_term),
                        last_index,
                        last_term,
                        pre,
                        transfer,
                    )
                )

    def _tally(self) -> int:
        """1: won, -1: lost, 0: undecided."""
        voters = self.conf.voters
        q = len(voters) // 2 + 1
        count_all = self.cfg.unsafe_count_learner_votes
        granted = sum(1 for nid, g in self._votes.items() if g and (count_all or nid in voters))
        rejected = sum(1 for nid, g in self._votes.items() if not g and nid in voters)
        if granted >= q:
            return 1
        if rejected > len(voters) - q:
            return -1
        return 0

    def _won(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False, transfer=False)
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        assert self.role is Role.CANDIDATE
        lg = self._log
        self.role = Role.LEADER
        self.leader = self.id
        self._reset_leader_state()
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        last = lg.last_index()
        for nid in sorted(self.conf.voters | self.conf.learners):
            self._progress[nid] = _Progress(last + 1)
        me = self._progress.get(self.id)
        if me is None:  # cannot happen for a promotable node; keep the leader's own row
            me = self._progress[self.id] = _Progress(last + 1)
        me.match = lg.persisted_index()
        me.next = me.match + 1
        me.state = _REPLICATE
        me.recent_active = True
        # no configuration change until everything in the log so far is applied (R12)
        self._pending_conf_index = last
        self._append_as_leader([Entry(Term(self.term), LogIndex(last + 1), _NOOP, b"")])

    def _tick_leader(self) -> None:
        cfg = self.cfg
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= cfg.election_ticks:
                self._transferee = None  # abort: the target did not take over in time
        if self._election_elapsed >= cfg.election_ticks:
            self._election_elapsed = 0
            if cfg.check_quorum:
                if not self._quorum_active():
                    self._become_follower(self.term, None)
                    return
                for nid, pr in self._progress.items():
                    if nid != self.id:
                        pr.recent_active = False
        if self._heartbeat_elapsed >= cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat()  # carries the commit index too
        elif cfg.lazy_commit:
            me = self.id
            commit = self._log.commit
            for nid, pr in self._progress.items():
                # the test first: this runs on every tick of every leader, mostly to no end
                due = pr.sent_commit < commit and pr.sent_commit < pr.match
                if due and nid != me and pr.state is _REPLICATE:
                    self._send_append(nid, pr, commit_only=True)

    def _quorum_active(self) -> bool:
        voters = self.conf.voters
        active = 0
        for nid in voters:
            pr = self._progress.get(nid)
            if nid == self.id or (pr is not None and pr.recent_active):
                active += 1
        return active >= len(voters) // 2 + 1

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, m: Message) -> None:
        role = self.role
        if type(m) is AppendEntries:
            if role is Role.LEADER:
                return  # same-term leader cannot exist (election safety); ignore
            self._follow(m.src)
            self._handle_append(m)
        elif type(m) is Heartbeat:
            if role is Role.LEADER:
                return
            self._follow(m.src)
            self._handle_heartbeat(m)
        elif type(m) is InstallSnapshot:
            if role is Role.LEADER:
                return
            self._follow(m.src)
            self._handle_snapshot(m)
        elif type(m) is RequestVote:
            self._handle_vote(m)
        elif type(m) is VoteResponse:
            self._handle_vote_response(m)
        elif role is Role.LEADER:
            pr = self._progress.get(m.src)
            if pr is None:
                return
            if type(m) is AppendResponse:
                self._handle_append_response(m, pr)
            elif type(m) is HeartbeatResponse:
                self._handle_heartbeat_response(m, pr)
            elif type(m) is SnapshotResponse:
                self._handle_snapshot_response(m, pr)
        elif (
            type(m) is TimeoutNow
            and role is Role.FOLLOWER
            and self.leader in (None, m.src)
            and self._promotable()
        ):
            self._campaign(pre=False, transfer=True)

    def _follow(self, leader: NodeId) -> None:
        """A message from this term's leader: be its follower and restart the timer."""
        if self.role is not Role.FOLLOWER or self.leader != leader:
            self.role = Role.FOLLOWER
            self.leader = leader
            self._reset_leader_state()
            self._reset_election_timer()
        self._election_elapsed = 0

    # ------------------------------------------------------------------ follower side
    def _handle_append(self, m: AppendEntries) -> None:
        lg = self._log
        prev: int = m.prev_index
        ents = m.entries
        n = len(ents)
        if not isinstance(prev, int) or prev < 0 or not isinstance(m.commit, int):
            return
        if n and (
            ents[0].index != prev + 1
            or ents[-1].index != prev + n
            or ents[-1].term > m.term
            or ents[0].term < m.prev_term
        ):
            return  # malformed: ignore
        commit = lg.commit
        if prev < commit:
            # entries through our commit are known to match any current leader's log
            skip = commit - prev
            if skip >= n:
                self._send_append_ok(m.src, commit)
                return
            ents = ents[skip:]
            prev = commit
            n = len(ents)
        elif lg.term_at(prev) != m.prev_term:
            self._reject_append(m)
            return
        if n:
            last = lg.last_index()
            if ents[0].index <= last:
                k = 0
                term_at = lg.term_at
                while k < n:
                    e = ents[k]
                    if e.index > last or term_at(e.index) != e.term:
                        break
                    k += 1
                if k < n:
                    lg.append_follower(ents[k:])  # truncate only from the first conflict
            else:
                lg.append_follower(ents)
        last_new = prev + n
        new_commit = min(m.commit, last_new)
        if new_commit > lg.commit:
            lg.commit = new_commit
        self._send_append_ok(m.src, last_new)

    def _send_append_ok(self, to: NodeId, match: int) -> None:
        msgs = self._msgs
        if msgs:
            tail = msgs[-1]
            # coalesce: one answer per Ready is enough, the newest carries the most
            if type(tail) is AppendResponse and tail.success and tail.dst == to:
                if tail.term == self.term and tail.match_index >= match:
                    return
                if tail.term == self.term:
                    msgs.pop()
        msgs.append(
            AppendResponse(
                self.cfg.group,
                self.id,
                to,
                Term(self.term),
                True,
                LogIndex(match),
                LogIndex(0),
                Term(0),
            )
        )

    def _reject_append(self, m: AppendEntries) -> None:
        lg = self._log
        floor = max(lg.commit, lg.first_index() - 1)
        hint = min(m.prev_index, lg.last_index())
        while hint > floor:
            t = lg.term_at(hint)
            if t is None or t <= m.prev_term:
                break
            hint -= 1
        hint_term = lg.term_at(hint) or 0
        self._send(
            AppendResponse(
                self.cfg.group,
                self.id,
                m.src,
                Term(self.term),
                False,
                m.prev_index,
                LogIndex(hint),
                Term(hint_term),
            )
        )

    def _handle_heartbeat(self, m: Heartbeat) -> None:
        lg = self._log
        if isinstance(m.commit, int):
            new_commit = min(m.commit, lg.last_index())
            if new_commit > lg.commit:
                lg.commit = new_commit
        self._send(HeartbeatResponse(self.cfg.group, self.id, m.src, Term(self.term), m.read_seq))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        lg = self._log
        meta = m.meta
        g = self.cfg.group
        if meta.index <= lg.commit:
            self._recv = None  # stale: we already have all of it
            self._send_append_ok(m.src, lg.commit)
            return
        if lg.term_at(meta.index) == meta.term:
            # our log already continues this snapshot: only learn the commit
            self._recv = None
            lg.commit = meta.index
            self._send_append_ok(m.src, meta.index)
            return
        recv = self._recv
        if m.offset == 0 and (recv is None or recv[0] != meta or recv[1] == 0):
            recv = (meta, 0)  # a new transfer (a partial one of the same snapshot resumes)
        elif recv is None or recv[0] != meta or recv[1] != m.offset:
            expected = recv[1] if recv is not None and recv[0] == meta else 0
            self._send(
                SnapshotResponse(g, self.id, m.src, Term(self.term), meta.index, expected, False)
            )
            return
        self._snapshot_chunks.append(SnapshotChunk(meta, m.offset, m.chunk, m.done))
        next_offset = m.offset + len(m.chunk)
        if not m.done:
            self._recv = (meta, next_offset)
            self._send(
                SnapshotResponse(g, self.id, m.src, Term(self.term), meta.index, next_offset, False)
            )
            return
        self._recv = None
        lg.restore(meta)
        self.conf = meta.conf
        self._incoming = IncomingSnapshot(meta)
        self._send_append_ok(m.src, meta.index)

    def _handle_vote(self, m: RequestVote) -> None:
        lg = self._log
        up_to_date = lg.is_up_to_date(m.last_index, m.last_term)
        g = self.cfg.group
        if m.pre_vote:
            grant = m.term > self.term and up_to_date and not self._wiped
            term = m.term if grant else Term(self.term)
            self._send(VoteResponse(g, self.id, m.src, term, grant, True))
            return
        can_vote = self.vote == m.src or (self.vote is None and self.leader is None)
        grant = can_vote and up_to_date and not self._wiped
        if grant:
            self.vote = m.src
            self._election_elapsed = 0
        self._send(VoteResponse(g, self.id, m.src, Term(self.term), grant, False))

    def _handle_vote_response(self, m: VoteResponse) -> None:
        role = self.role
        if m.pre_vote:
            if role is not Role.PRE_CANDIDATE:
                return
            if m.granted and m.term != self.term + 1:
                return
        elif role is not Role.CANDIDATE or m.term != self.term:
            return
        self._votes[m.src] = bool(m.granted)
        result = self._tally()
        if result > 0:
            self._won(m.pre_vote)
        elif result < 0:
            self._become_follower(self.term, None)

    # ------------------------------------------------------------------ leader side
    def _check_proposal(self, n: int) -> Rejected | None:
        if self.role is not Role.LEADER:
            return Rejected(RejectReason.NOT_LEADER, self.leader)
        if self._transferee is not None:
            return Rejected(RejectReason.TRANSFERRING, self.id)
        lg = self._log
        if lg.last_index() - lg.commit + n > self.cfg.max_uncommitted_entries:
            return Rejected(RejectReason.OVERLOADED, self.id)
        return None

    def _append_as_leader(self, entries: list[Entry]) -> None:
        lg = self._log
        lg.append_leader(entries)
        self._bcast = True
        if self._unsafe_commit:
            lg.commit = lg.last_index()  # NEGATIVE CONTROL: no quorum, not even our own fsync

    def _flush_appends(self) -> None:
        me = self.id
        for nid, pr in self._progress.items():
            if nid != me:
                while self._send_append(nid, pr):
                    pass

    def _send_append(self, nid: NodeId, pr: _Progress, commit_only: bool = False) -> bool:
        """Send what ``nid`` needs next; True if another message could follow at once.

        ``commit_only``: the tick of ``lazy_commit`` (a message only when the follower's
        commit index is behind; entries wait for the next flush)."""
        state = pr.state
        if state is _SNAPSHOT:
            return False
        if state is _PROBE:
            if pr.probe_sent:
                return False
        elif len(pr.inflight) >= self.cfg.max_inflight_msgs:
            return False
        lg = self._log
        last = lg.last_index()
        nxt = min(pr.next, last + 1)
        prev = nxt - 1
        prev_term = lg.term_at(prev)
        if prev_term is None or nxt < lg.first_index():
            self._start_snapshot(nid, pr)
            return False
        commit = lg.commit
        if nxt <= last and not commit_only:
            ents = lg.slice(
                nxt, min(last + 1, nxt + self.cfg.max_entries_per_msg), self.cfg.max_bytes_per_msg
            )
        else:
            if state is _REPLICATE:
                if pr.sent_commit >= min(commit, pr.match):
                    return False  # nothing new for it
                if self.cfg.lazy_commit and not commit_only:
                    return False  # the next tick (or AppendEntries) tells it
                # only the commit index to tell: anchor the message at what the follower is
                # known to hold, so it cannot race (and be rejected) ahead of entries in flight
                anchor = lg.term_at(pr.match)
                if anchor is None:
                    return False  # compacted; the next heartbeat carries the commit
                prev, prev_term = pr.match, anchor
            ents = []
        self._msgs.append(
            AppendEntries(
                self.cfg.group,
                self.id,
                nid,
                Term(self.term),
                LogIndex(prev),
                Term(prev_term),
                tuple(ents),
                LogIndex(commit),
            )
        )
        if commit > pr.sent_commit:
            pr.sent_commit = commit
        if state is _PROBE:
            pr.probe_sent = True
            return False
        if ents:
            pr.next = ents[-1].index + 1
            pr.inflight.append(pr.next - 1)
            pr.append_round = self._read_seq
            return pr.next <= last
        return False

    def _start_snapshot(self, nid: NodeId, pr: _Progress) -> None:
        if self._source is None:
            return  # host never compacts without a source; nothing we can send
        pr.state = _SNAPSHOT
        pr.inflight.clear()
        pr.probe_sent = False
        pr.snap_meta = self._log.storage.snapshot_meta()
        pr.snap_offset = 0
        self._send_snapshot_chunk(nid, pr)

    def _send_snapshot_chunk(self, nid: NodeId, pr: _Progress) -> None:
        assert self._source is not None and pr.snap_meta is not None
        size = self.cfg.snapshot_chunk_bytes
        data = self._source(pr.snap_meta, pr.snap_offset, size)
        if data is None:
            current = self._log.storage.snapshot_meta()
            if current == pr.snap_meta or current.index == 0:
                pr.become_probe()
                return
            pr.snap_meta = current  # superseded: start over with the newest snapshot
            pr.snap_offset = 0
            data = self._source(current, 0, size)
            if data is None:
                pr.become_probe()
                return
        pr.snap_moved = True
        self._msgs.append(
            InstallSnapshot(
                self.cfg.group,
                self.id,
                nid,
                Term(self.term),
                pr.snap_meta,
                pr.snap_offset,
                data,
                len(data) < size,
            )
        )

    def _handle_append_response(self, m: AppendResponse, pr: _Progress) -> None:
        pr.recent_active = True
        lg = self._log
        if m.success:
            match = m.match_index
            if not isinstance(match, int) or match > lg.last_index():
                return
            advanced = match > pr.match
            if advanced:
                pr.match = match
                if pr.next <= match:
                    pr.next = match + 1
            inflight = pr.inflight
            while inflight and inflight[0] <= pr.match:
                inflight.popleft()
            if pr.state is _PROBE:
                pr.become_replicate()
            elif pr.state is _SNAPSHOT:
                assert pr.snap_meta is not None
                if pr.match >= pr.snap_meta.index:
                    pr.become_probe()
            if advanced and self._maybe_commit():
                pass
            if self._transferee == m.src and pr.match == lg.last_index():
                self._send_timeout_now(m.src)
            self._bcast = True
            return
        # a rejection: back up using the follower's hint
        rejected = m.match_index
        if pr.state is _REPLICATE:
            if rejected <= pr.match:
                return  # stale
        elif pr.state is _PROBE:
            if rejected != pr.next - 1:
                return  # stale
        else:
            return
        guess = self._find_conflict(m.reject_hint_index, m.reject_hint_term)
        pr.become_probe()
        pr.next = max(pr.match + 1, min(guess + 1, rejected))
        self._bcast = True

    def _find_conflict(self, hint_index: int, hint_term: int) -> int:
        """Largest index <= hint_index whose term <= hint_term in our log (or compacted)."""
        lg = self._log
        i = min(hint_index, lg.last_index())
        while i > 0:
            t = lg.term_at(i)
            if t is None or t <= hint_term:
                break
            i -= 1
        return max(i, 0)

    def _handle_heartbeat_response(self, m: HeartbeatResponse, pr: _Progress) -> None:
        seq: object = m.read_seq
        if not isinstance(seq, int):
            return  # malformed
        pr.recent_active = True
        lg = self._log
        if pr.state is _PROBE:
            pr.probe_sent = False
        elif pr.state is _SNAPSHOT:
            if not pr.snap_moved:
                self._send_snapshot_chunk(m.src, pr)  # the chunk or its answer was lost
            pr.snap_moved = False
        elif pr.inflight and m.read_seq > pr.append_round and pr.match < lg.last_index():
            # it answered a round that started after our last AppendEntries, which is still
            # unacknowledged: lost (or the follower restarted). Restart from what we know.
            pr.become_probe()
        if pr.match < lg.last_index() or pr.sent_commit < lg.commit:
            self._bcast = True
        if m.read_seq > pr.read_acked:
            pr.read_acked = m.read_seq
            self._release_reads()

    def _handle_snapshot_response(self, m: SnapshotResponse, pr: _Progress) -> None:
        pr.recent_active = True
        if pr.state is not _SNAPSHOT or pr.snap_meta is None or m.index != pr.snap_meta.index:
            return
        if m.reject:
            pr.become_probe()
            self._bcast = True
            return
        if m.next_offset != pr.snap_offset and m.next_offset >= 0:
            # the follower says where it is (ahead after an ack, behind after a loss or a
            # restart): continue from there; an answer we already acted on changes nothing
            pr.snap_offset = m.next_offset
            self._send_snapshot_chunk(m.src, pr)

    def _maybe_commit(self) -> bool:
        """Advance commit to the highest index a quorum of voters holds, if of our term."""
        voters = self.conf.voters
        if not voters:
            return False
        progress = self._progress
        matches = sorted((progress[v].match if v in progress else 0 for v in voters), reverse=True)
        idx = matches[len(voters) // 2]
        lg = self._log
        if idx <= lg.commit:
            return False
        if not self.cfg.unsafe_ignore_figure8 and lg.term_at(idx) != self.term:
            return False  # Figure 8: earlier terms commit only under an entry of this term
        first_in_term = lg.term_at(lg.commit) != self.term
        lg.commit = idx
        if first_in_term and self._reads_waiting and lg.term_at(idx) == self.term:
            waiting, self._reads_waiting = self._reads_waiting, []
            for ctx in waiting:
                self._start_read(ctx)
        self._bcast = True
        return True

    def _bcast_heartbeat(self) -> None:
        self._read_seq += 1  # a new round: it confirms reads that arrived before it
        lg = self._log
        commit = lg.commit
        for nid, pr in self._progress.items():
            if nid != self.id:
                c = min(pr.match, commit)
                self._msgs.append(
                    Heartbeat(
                        self.cfg.group,
                        self.id,
                        nid,
                        Term(self.term),
                        LogIndex(c),
                        self._read_seq,
                    )
                )

    def _start_read(self, ctx: bytes) -> None:
        lg = self._log
        voters = self.conf.voters
        if voters == frozenset({self.id}):
            self._read_states.append(ReadState(ctx, LogIndex(lg.commit)))
            return
        # confirmed by the next heartbeat round, which starts after this read arrived
        self._pending_reads.append(_PendingRead(self._read_seq + 1, lg.commit, ctx))
        self._read_round_due = True

    def _release_reads(self) -> None:
        pending = self._pending_reads
        voters = self.conf.voters
        q = len(voters) // 2 + 1
        progress = self._progress
        while pending:
            seq = pending[0].seq
            acks = sum(
                1
                for v in voters
                if v == self.id or (v in progress and progress[v].read_acked >= seq)
            )
            if acks < q:
                return
            r = pending.popleft()
            self._read_states.append(ReadState(r.ctx, LogIndex(r.index)))

    def _send_timeout_now(self, to: NodeId) -> None:
        self._send(TimeoutNow(self.cfg.group, self.id, to, Term(self.term)))

    # ------------------------------------------------------------------ configuration
    def _adopt_conf_entry(self, e: Entry) -> None:
        cc = ConfChange.decode(e.data)
        if cc is not None:
            self.conf = cc.apply(self.conf)

    def _apply_conf_entry(self, e: Entry) -> None:
        """A configuration entry is being applied: it takes effect now."""
        self._adopt_conf_entry(e)
        if self.role is not Role.LEADER:
            return
        members = self.conf.voters | self.conf.learners
        last = self._log.last_index()
        for nid in sorted(members):
            if nid not in self._progress:
                self._progress[nid] = _Progress(last + 1)
        commit = self._log.commit
        for nid in [n for n in self._progress if n not in members and n != self.id]:
            # a last word so the removed node learns the commit of its removal (best effort:
            # if it misses it, pre-vote and the leader lease keep it from disrupting)
            pr = self._progress.pop(nid)
            self._msgs.append(
                Heartbeat(
                    self.cfg.group,
                    self.id,
                    nid,
                    Term(self.term),
                    LogIndex(min(pr.match, commit)),
                    self._read_seq,
                )
            )
        if self._transferee is not None and self._transferee not in self.conf.voters:
            self._transferee = None
        if self.id not in self.conf.voters:
            self._become_follower(self.term, None)  # removed: step down, never campaign
            return
        self._maybe_commit()
        self._release_reads()
        self._bcast = True

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)


_slot: dict[str, Any] = dict(vars(Proposed))
_set_p_index = _slot["index"].__set__
_set_p_term = _slot["term"].__set__
_set_p_last = _slot["last_index"].__set__


def _make_proposed(index: int, term: int) -> Proposed:
    """``Proposed(index, term, index)`` built through the slot descriptors (hot path)."""
    p: Proposed = object.__new__(Proposed)
    _set_p_index(p, index)
    _set_p_term(p, term)
    _set_p_last(p, index)
    return p


#: Every message a Raft core accepts in :meth:`RaftCore.step`: all it sends.
_STEP_TYPES = frozenset(MESSAGE_TYPES)
