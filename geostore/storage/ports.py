"""The storage ports: what the Raft core and the node wiring may ask of durable storage.

Theory of operation (after hashicorp/raft's LogStore, StableStore and SnapshotStore):

- **Ownership.** One node owns one data dir and one instance of each store; nothing else writes
  to it. The Raft core only *reads* the log, through :class:`~geostore.raft.types.LogReader`.
  The node wiring is the single writer: it persists what the core's Ready asks for, in the
  order *hard state and entries first, then messages* (a vote or an append ack never leaves
  before the state it depends on is durable).
- **Volatile vs durable.** :meth:`LogStore.append` is buffered: the entries are readable at
  once but survive a crash only once :meth:`LogStore.sync` has returned. ``durable_index``
  says how far the current log is covered. :meth:`HardStateStore.save`,
  :meth:`LogStore.truncate_suffix`, :meth:`LogStore.compact_prefix` and
  :meth:`SnapshotWriter.commit` are durable and atomic when they return.
- **Failures.** ``DiskFullError``: the write was refused and rolled back, reads keep working,
  a later write may succeed once space is freed. ``FsyncFailedError``: sticky - the store
  refuses every later write, because after a failed fsync the kernel may have dropped dirty
  pages silently (PostgreSQL's "fsyncgate"); the node must stop and recover from disk.
  ``CorruptLogError``: a checksum failed where no torn write can explain it; the node must not
  start on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from geostore.ids import LogIndex
from geostore.raft.types import Entry, HardState, LogReader, SnapshotMeta


class LogStore(LogReader, Protocol):
    """The Raft log: readable by the core, written by the node wiring only.

    Index arithmetic: entries are contiguous; ``first_index() == snapshot_meta().index + 1``;
    ``last_index() == first_index() - 1`` when the log holds no entry.
    """

    def append(self, entries: Sequence[Entry]) -> None:
        """Append contiguous entries (buffered, not yet durable).

        ``entries[0].index`` must be in ``[first_index, last_index + 1]``; when it is at or
        below ``last_index`` the suffix from there is replaced (truncate, then append: Raft's
        conflict rule; the caller decides that the terms differ).
        """
        ...

    def truncate_suffix(self, from_index: LogIndex) -> None:
        """Drop every entry with ``index >= from_index`` (durable when it returns)."""
        ...

    def compact_prefix(self, snapshot: SnapshotMeta) -> None:
        """Drop entries through ``snapshot.index``, covered by a committed snapshot.

        Afterwards ``first_index() == snapshot.index + 1`` and ``term_at(snapshot.index)`` is
        ``snapshot.term``. When the log holds ``snapshot.index`` with another term, or ends
        before it, the whole log is dropped (it does not continue the snapshot). Durable when
        it returns. Call it only after the snapshot itself is committed.
        """
        ...

    def sync(self) -> None:
        """Make everything appended so far durable (raises FsyncFailedError, DiskFullError)."""
        ...

    def durable_index(self) -> LogIndex:
        """The last index of the current log known durable (``first_index - 1`` at least)."""
        ...

    def close(self) -> None:
        """Release files; unsynced entries may be lost (as in a crash)."""
        ...


class HardStateStore(Protocol):
    """Term, vote and commit: saved before any message that depends on them leaves the node."""

    def load(self) -> HardState:
        """The last saved state (``HardState()`` when never saved)."""
        ...

    def save(self, hs: HardState) -> None:
        """Durable and atomic when it returns: after a crash ``load`` gives old or new, whole."""
        ...


class SnapshotWriter(Protocol):
    """One snapshot being written; invisible to readers until :meth:`commit`."""

    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> SnapshotMeta:
        """Make the snapshot durable and the latest one; older ones are deleted afterwards."""
        ...

    def abort(self) -> None:
        """Discard what was written (idempotent)."""
        ...


class SnapshotStore(Protocol):
    """Keeps the newest committed snapshot; written and read in chunks with bounded memory."""

    def begin(self, meta: SnapshotMeta) -> SnapshotWriter: ...

    def latest(self) -> SnapshotMeta | None:
        """Meta of the newest committed snapshot, None if there is none."""
        ...

    def read_chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """The newest committed snapshot's bytes, ``chunk_bytes`` at a time.

        Raises CorruptLogError (at the latest after the last chunk) if its checksum fails.
        """
        ...
