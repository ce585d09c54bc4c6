"""Value types of the Raft core shared with storage, the node wiring and the simulator.

These records are the contract between the pure core (``geostore.raft``) and the storage
ports (``geostore.storage``): storage persists exactly these values and hands them back.
Fields are fixed; add new fields only with defaults.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from geostore.ids import INDEX_ZERO, TERM_ZERO, LogIndex, NodeId, Term


class EntryKind(enum.IntEnum):
    """What an entry's ``data`` holds."""

    NORMAL = 0  #: opaque application bytes (the state machine decodes them)
    CONFIG = 1  #: an encoded membership change (the core decodes it)
    NOOP = 2  #: the empty entry a new leader commits in its own term


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``index`` starts at 1; ``data`` is opaque to storage."""

    term: Term
    index: LogIndex
    kind: EntryKind
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it leaves the node.

    ``vote`` is the candidate voted for in ``term`` (None: no vote yet in this term).
    ``commit`` may be persisted lazily (it is recoverable), term and vote may not.
    """

    term: Term = TERM_ZERO
    vote: NodeId | None = None
    commit: LogIndex = INDEX_ZERO


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership of a group: voters count toward quorums, learners only replicate."""

    voters: frozenset[NodeId] = field(default_factory=frozenset)
    learners: frozenset[NodeId] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Identifies a snapshot: the state machine's state through ``index`` (of ``term``)."""

    index: LogIndex = INDEX_ZERO
    term: Term = TERM_ZERO
    conf: ConfState = field(default_factory=ConfState)


class LogReader(Protocol):
    """Read-only view of the durable log that the core consults (storage implements it).

    ``first_index`` is the first entry still held (``snapshot.index + 1`` after compaction),
    ``last_index`` the last one appended (``first_index - 1`` when empty). ``term_at`` answers
    for ``snapshot.index`` too (the snapshot's term) and None outside the held range.
    """

    def first_index(self) -> LogIndex: ...

    def last_index(self) -> LogIndex: ...

    def term_at(self, index: LogIndex) -> Term | None: ...

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[Entry]:
        """Entries with ``lo <= index < hi``; at least one when non-empty, even over max_bytes."""
        ...

    def snapshot_meta(self) -> SnapshotMeta: ...
