"""Records the Raft core hands to its host: results, read states, snapshots, status.

The core (:mod:`geostore.raft.core`) is sans-IO; everything it asks of the host is one of
these values, collected in a :class:`~geostore.raft.core.Ready`. They are frozen and
slotted so the host can keep them across a loop iteration without copying.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from geostore.ids import LogIndex, NodeId, Term
from geostore.raft.types import ConfState, SnapshotMeta


class Role(enum.Enum):
    """What a core currently is in its group."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class RejectReason(enum.Enum):
    """Why the core refused a host request (a typed answer, never an exception)."""

    NOT_LEADER = "not_leader"  #: only the leader accepts this; see ``leader_hint``
    TRANSFERRING = "transferring"  #: a leadership transfer is under way
    CONF_CHANGE_PENDING = "conf_change_pending"  #: an earlier change is not yet applied
    NO_COMMIT_IN_TERM = "no_commit_in_term"  #: the leader has not committed in its term yet
    INVALID_CONF_CHANGE = "invalid_conf_change"  #: e.g. adding an existing voter
    LEARNER_BEHIND = "learner_behind"  #: promote only a learner that has caught up
    NOT_MEMBER = "not_member"  #: transfer target is not a voter of this group
    OVERLOADED = "overloaded"  #: too many uncommitted entries; retry later
    STATE_LOST = "state_lost"  #: this node's durable state was wiped; it must rejoin anew


@dataclass(frozen=True, slots=True)
class Proposed:
    """An accepted proposal: entries ``index..last_index`` appended in ``term``.

    The host acknowledges the client only once the entry at ``index`` is applied *with this
    term* (the committed entry at that index may have another term if leadership changed and
    the proposal was lost: then the proposal failed).
    """

    index: LogIndex
    term: Term
    last_index: LogIndex


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refused request, with the leader this node believes in (None: unknown)."""

    reason: RejectReason
    leader_hint: NodeId | None = None


ProposeResult = Proposed | Rejected


class ConfChangeOp(enum.IntEnum):
    """A single-server membership change."""

    ADD_VOTER = 0
    ADD_LEARNER = 1
    REMOVE = 2
    PROMOTE = 3  #: learner -> voter


@dataclass(frozen=True, slots=True)
class ConfChange:
    """Change one server's membership (one change in flight at a time)."""

    op: ConfChangeOp
    node: NodeId

    def encode(self) -> bytes:
        """The bytes stored in a CONFIG log entry."""
        return f"{int(self.op)}:{self.node}".encode()

    @staticmethod
    def decode(data: bytes) -> ConfChange | None:
        """The change stored in ``data``; None for bytes this version cannot read."""
        try:
            text = data.decode()
            op_text, node = text.split(":", 1)
            return ConfChange(ConfChangeOp(int(op_text)), NodeId(node))
        except (UnicodeDecodeError, ValueError):
            return None

    def apply(self, conf: ConfState) -> ConfState:
        """The configuration after this change (idempotent, total: invalid changes no-op)."""
        voters, learners = set(conf.voters), set(conf.learners)
        if self.op is ConfChangeOp.ADD_VOTER:
            learners.discard(self.node)
            voters.add(self.node)
        elif self.op is ConfChangeOp.ADD_LEARNER:
            if self.node not in voters:
                learners.add(self.node)
        elif self.op is ConfChangeOp.REMOVE:
            voters.discard(self.node)
            learners.discard(self.node)
        elif self.op is ConfChangeOp.PROMOTE and self.node in learners:
            learners.discard(self.node)
            voters.add(self.node)
        return ConfState(voters=frozenset(voters), learners=frozenset(learners))


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed linearizable read: serve ``ctx`` once the host has applied ``index``."""

    ctx: bytes
    index: LogIndex


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """One received chunk of snapshot ``meta``, to be written at byte ``offset``.

    Chunks arrive in order, contiguous, each exactly once per transfer: ``offset == 0``
    starts a new transfer (discard any partial one), ``done`` marks the last (fsync it).
    """

    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class IncomingSnapshot:
    """A fully received snapshot to install before anything else in the same Ready.

    The host restores its state machine from the staged chunks, then makes its log start
    after ``meta.index`` (storage's ``compact_prefix(meta)`` drops a log that does not
    continue the snapshot) and persists ``meta``.
    """

    meta: SnapshotMeta


class SnapshotSource(Protocol):
    """Host port the leader reads snapshot bytes through (bounded memory: one chunk)."""

    def __call__(self, meta: SnapshotMeta, offset: int, max_bytes: int) -> bytes | None:
        """Up to ``max_bytes`` of snapshot ``meta`` from byte ``offset``.

        Fewer than ``max_bytes`` (possibly zero) means the snapshot ends there. None means
        this snapshot is no longer available (superseded): the core restarts the transfer
        with the log's current snapshot.
        """
        ...


class ProgressState(enum.Enum):
    """How the leader replicates to one peer (etcd's tracker states)."""

    PROBE = "probe"  #: one message at a time until the follower's position is known
    REPLICATE = "replicate"  #: pipelined, optimistic ``next``, bounded inflight window
    SNAPSHOT = "snapshot"  #: sending a snapshot in chunks


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    """A copy of the leader's view of one peer."""

    match: LogIndex
    next: LogIndex
    state: ProgressState
    recent_active: bool
    inflight: int


@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of a core's state for hosts, tests and checkers."""

    node_id: NodeId
    role: Role
    term: Term
    vote: NodeId | None
    leader: NodeId | None
    commit: LogIndex
    applied: LogIndex
    first_index: LogIndex
    last_index: LogIndex
    conf: ConfState
    transferee: NodeId | None
    wiped: bool
    #: leader only: per-peer progress (empty on other roles)
    progress: Mapping[NodeId, ProgressStatus] = field(default_factory=dict)
