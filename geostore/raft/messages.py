"""The messages Raft peers exchange, as frozen slotted records.

Every message names its group, sender (``src``), receiver (``dst``) and the sender's term; the
receiving core (:meth:`geostore.raft.core.RaftCore.step`) first compares terms, then acts by
type. Messages are plain data: the transport encodes them, the simulator delays, drops,
duplicates and reorders them, and the core must stay safe under all of that. A message that
is malformed or stale is ignored by rule (see the core's theory of operation), never raised.

Index and term fields use the NewTypes of :mod:`geostore.ids` so a swap is a type error.
"""

from __future__ import annotations

from dataclasses import dataclass

from geostore.ids import GroupId, LogIndex, NodeId, Term
from geostore.raft.types import Entry, SnapshotMeta


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Leader -> follower: entries after ``(prev_index, prev_term)``, and the leader's commit.

    ``entries`` are contiguous from ``prev_index + 1``; an empty tuple is a probe or carries
    only ``commit``. ``commit`` never exceeds what the leader knows this follower holds in
    agreement with it, so a follower may adopt ``min(commit, prev_index + len(entries))``.
    """

    group: GroupId
    src: NodeId
    dst: NodeId
    term: Term
    prev_index: LogIndex
    prev_term: Term
    entries: tuple[Entry, ...]
    commit: LogIndex


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """Follower -> leader: the answer to an AppendEntries (or a finished snapshot install).

    On success the follower's log agrees with the leader's through ``match_index`` (and the
    entries are durable there: responses leave only after the follower's Ready is persisted).
    On rejection ``match_index`` echoes the rejected ``prev_index`` (so the leader can tell a
    stale rejection from a current one) and the hints name the follower's best guess of the
    last agreeing position: the largest index ``<= prev_index`` whose term is ``<= prev_term``
    in the follower's log, with that term (fast backtracking, one round trip per term).
    """

    group: GroupId
    src: NodeId
    dst: NodeId
    term: Term
    success: bool
    match_index: LogIndex
    reject_hint_index: LogIndex
    reject_hint_term: Term


@dataclass(frozen=True, slots=True)
class RequestVote:
    """Candidate -> voter: a (pre-)vote request for ``term`` with the candidate's last entry.

    ``pre_vote`` marks a pre-vote round: ``term`` is the term the candidate *would* use, and
    nobody changes its term or vote for it. ``transfer`` marks an election started by a
    leadership transfer (TimeoutNow): voters then disregard their current leader's lease.
    """

    group: GroupId
    src: NodeId
    dst: NodeId
    term: Term
    last_index: LogIndex
    last_term: Term
    pre_vote: bool
    transfer: bool


@dataclass(frozen=True, slots=True)
class VoteResponse:
    """Voter -> candidate: the (pre-)vote decision. A granted pre-vote echoes the asked term."""

    group: GroupId
    src: NodeId
    dst: NodeId
    term: Term
    granted: bool
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader -> follower: "I am still leader"; carries a safe commit and a read round.

    ``commit`` is ``min(leader commit, follower match)``. ``read_seq`` numbers the leader's
    heartbeat rounds; the follower echoes it, which confirms every ReadIndex request that
    arrived before that round started, and tells the leader the follower has seen everything
    sent to it before that round (so a still-unacknowledged AppendEntries was lost).
    """

    group: GroupId
    src: NodeId
    dst: NodeId
    term: Term
    commit: LogIndex
    read_seq: int


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    """Follower -> leader: acknowledges a heartbeat (and thereby its ``read_seq`` round)."""

    group: GroupId
    src: NodeId
    dst: NodeId
    term: Term
    read_seq: int


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader -> follower: one chunk of the snapshot ``meta``, starting at byte ``offset``.

    Chunks are sent one at a time and resumed from the follower's ``next_offset``; ``done``
    marks the last chunk (the follower installs the snapshot after it).
    """

    group: GroupId
    src: NodeId
    dst: NodeId
    term: Term
    meta: SnapshotMeta
    offset: int
    chunk: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    """Follower -> leader: chunk acknowledgement for snapshot ``index``.

    ``next_offset`` is the byte offset the follower expects next (0: start over). ``reject``
    means the follower will not take this snapshot; the leader goes back to probing.
    A finished install is answered with an :class:`AppendResponse` instead.
    """

    group: GroupId
    src: NodeId
    dst: NodeId
    term: Term
    index: LogIndex
    next_offset: int
    reject: bool


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader -> transfer target: campaign at once (the target's log is up to date)."""

    group: GroupId
    src: NodeId
    dst: NodeId
    term: Term


Message = (
    AppendEntries
    | AppendResponse
    | RequestVote
    | VoteResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | SnapshotResponse
    | TimeoutNow
)
"""Every message a Raft core sends or accepts."""

MESSAGE_TYPES: tuple[type[Message], ...] = (
    AppendEntries,
    AppendResponse,
    RequestVote,
    VoteResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
)
