"""In-memory storage for the deterministic simulator: volatile vs durable, and crashes.

Theory of operation: each store keeps the state a running process sees (volatile) and knows
which part of it would survive a power loss (durable). The log's durable part is always a
prefix of its volatile entries, because the contract makes truncation and compaction durable
when they return and ``append`` durable only at the next ``sync``; so a single counter,
``durable_count``, describes it. :meth:`MemoryLogStore.crash` forgets everything past that
prefix; given a ``random.Random`` it may keep a random prefix of the unsynced entries (a torn
write that reached the disk partly, in order) but never anything beyond what was appended.
No threads, no clock: the simulator drives everything, and counters (``syncs``, ``appended``)
let it charge simulated time for IO.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from geostore.errors import StorageError
from geostore.ids import LogIndex, Term
from geostore.raft.types import Entry, HardState, SnapshotMeta


def _take_bounded(entries: Sequence[Entry], max_bytes: int | None) -> list[Entry]:
    """Leading entries whose data fits ``max_bytes`` (at least one when non-empty)."""
    if max_bytes is None:
        return list(entries)
    out: list[Entry] = []
    total = 0
    for e in entries:
        total += len(e.data)
        if out and total > max_bytes:
            break
        out.append(e)
    return out


class MemoryLogStore:
    """A :class:`~geostore.storage.ports.LogStore` in memory with crash semantics."""

    def __init__(self) -> None:
        self._snap = SnapshotMeta()
        self._entries: list[Entry] = []
        #: how many leading entries of ``_entries`` are durable
        self._durable_count = 0
        self.syncs = 0
        self.appended = 0
        self.appended_bytes = 0
        self.truncations = 0
        self.compactions = 0
        self.crashes = 0

    # -- LogReader -------------------------------------------------------------------------
    def first_index(self) -> LogIndex:
        return LogIndex(self._snap.index + 1)

    def last_index(self) -> LogIndex:
        return LogIndex(self._snap.index + len(self._entries))

    def term_at(self, index: LogIndex) -> Term | None:
        if index == self._snap.index:
            return self._snap.term
        pos = index - self._snap.index - 1
        if 0 <= pos < len(self._entries):
            return self._entries[pos].term
        return None

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[Entry]:
        first = self._snap.index + 1
        assert first <= lo <= hi <= self.last_index() + 1, (lo, hi, first, self.last_index())
        return _take_bounded(self._entries[lo - first : hi - first], max_bytes)

    def snapshot_meta(self) -> SnapshotMeta:
        return self._snap

    # -- LogStore --------------------------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        start = entries[0].index
        assert self.first_index() <= start <= self.last_index() + 1, (start, self.last_index())
        for prev, cur in itertools.pairwise(entries):
            assert cur.index == prev.index + 1, "entries must be contiguous"
        if start <= self.last_index():
            self.truncate_suffix(start)
        self._entries.extend(entries)
        self.appended += len(entries)
        self.appended_bytes += sum(len(e.data) for e in entries)

    def truncate_suffix(self, from_index: LogIndex) -> None:
        assert from_index >= self.first_index(), (from_index, self.first_index())
        pos = from_index - self._snap.index - 1
        if pos >= len(self._entries):
            return
        del self._entries[pos:]
        # durable when it returns: the durable prefix is cut too
        self._durable_count = min(self._durable_count, pos)
        self.truncations += 1

    def compact_prefix(self, snapshot: SnapshotMeta) -> None:
        if snapshot.index <= self._snap.index:
            return
        held = self.term_at(snapshot.index)
        if held is None or held != snapshot.term:
            # the log does not continue this snapshot: drop all of it
            self._entries = []
            self._durable_count = 0
        else:
            drop = snapshot.index - self._snap.index
            del self._entries[:drop]
            self._durable_count = max(0, self._durable_count - drop)
        self._snap = snapshot
        self.compactions += 1

    def sync(self) -> None:
        self._durable_count = len(self._entries)
        self.syncs += 1

    def durable_index(self) -> LogIndex:
        return LogIndex(self._snap.index + self._durable_count)

    def close(self) -> None:
        pass

    # -- simulator hooks -------------------------------------------------------------------
    def unsynced_count(self) -> int:
        return len(self._entries) - self._durable_count

    def crash(self, rng: random.Random | None = None) -> int:
        """Lose unsynced entries (a torn write may keep a prefix of them); returns the kept."""
        unsynced = self.unsynced_count()
        kept = rng.randint(0, unsynced) if rng is not None and unsynced else 0
        del self._entries[self._durable_count + kept :]
        self._durable_count = len(self._entries)
        self.crashes += 1
        return kept


class MemoryHardStateStore:
    """A :class:`~geostore.storage.ports.HardStateStore`: ``save`` is durable at once."""

    def __init__(self) -> None:
        self._state = HardState()
        self.saves = 0

    def load(self) -> HardState:
        return self._state

    def save(self, hs: HardState) -> None:
        self._state = hs
        self.saves += 1

    def crash(self, rng: random.Random | None = None) -> None:
        """Nothing to lose: a save either returned (durable) or did not happen."""


@dataclass(slots=True)
class _MemSnapshot:
    meta: SnapshotMeta
    data: bytes


class MemorySnapshotWriter:
    """Collects chunks; visible to readers only after :meth:`commit`."""

    def __init__(self, store: MemorySnapshotStore, meta: SnapshotMeta, generation: int) -> None:
        self._store = store
        self._meta = meta
        self._chunks: list[bytes] = []
        self._generation = generation
        self._done = False

    def write(self, chunk: bytes) -> None:
        self._check()
        self._chunks.append(bytes(chunk))

    def commit(self) -> SnapshotMeta:
        self._check()
        self._done = True
        self._store._latest = _MemSnapshot(self._meta, b"".join(self._chunks))
        self._store.commits += 1
        return self._meta

    def abort(self) -> None:
        self._done = True
        self._chunks = []

    def _check(self) -> None:
        if self._done:
            raise StorageError("snapshot writer already committed or aborted")
        if self._generation != self._store._generation:
            raise StorageError("snapshot writer lost in a crash")


class MemorySnapshotStore:
    """A :class:`~geostore.storage.ports.SnapshotStore`: keeps the last committed snapshot."""

    def __init__(self) -> None:
        self._latest: _MemSnapshot | None = None
        self._generation = 0
        self.commits = 0

    def begin(self, meta: SnapshotMeta) -> MemorySnapshotWriter:
        return MemorySnapshotWriter(self, meta, self._generation)

    def latest(self) -> SnapshotMeta | None:
        return self._latest.meta if self._latest is not None else None

    def read_chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        assert chunk_bytes > 0
        snap = self._latest
        if snap is None:
            return
        view = memoryview(snap.data)
        for off in range(0, len(view), chunk_bytes):
            yield bytes(view[off : off + chunk_bytes])

    def crash(self, rng: random.Random | None = None) -> None:
        """Writers that had not committed are lost; the committed snapshot survives."""
        self._generation += 1
