"""The core's view of its log: durable storage, plus an unstable tail, plus a pending snapshot.

Theory of operation: storage (a :class:`~geostore.raft.types.LogReader`) holds what the host
has persisted. Entries the core appended since (a leader's proposals, a follower's received
entries) live in ``unstable`` from index ``offset`` until the host confirms them durable
(:meth:`stable_to`, called from ``advance``). ``handed`` counts the unstable entries already
handed to the host in a Ready, so each entry is handed out once. A follower conflict may
rewind ``offset`` below entries storage holds: reads at or above ``offset`` always go to the
unstable tail, so the superseded durable entries are never read again, and the host's
``append`` replaces them. An installed-but-unconfirmed snapshot (``snap``) answers for its
own index and hides everything below it. Invariants: ``offset == last durable index + 1``
as far as the core may read storage; ``applied <= commit <= last_index``.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from geostore.ids import LogIndex
from geostore.raft.types import Entry, EntryKind, LogReader, SnapshotMeta


class RaftLog:
    """Storage plus unstable tail; all index arithmetic of the core goes through here."""

    __slots__ = (
        "applied",
        "commit",
        "handed",
        "offset",
        "snap",
        "storage",
        "unstable",
        "unstable_bytes",
    )

    def __init__(self, storage: LogReader) -> None:
        self.storage = storage
        #: an installed snapshot not yet confirmed persisted by ``advance``
        self.snap: SnapshotMeta | None = None
        self.offset: int = storage.last_index() + 1
        self.unstable: list[Entry] = []
        #: an upper bound on the data bytes in ``unstable`` (exact while only the leader
        #: appends; "unknown" after a follower append), reset when the tail empties; lets
        #: ``slice`` skip the per-entry byte count when everything fits anyway
        self.unstable_bytes = 0
        self.handed = 0
        base = storage.snapshot_meta().index
        self.commit: int = base
        #: the last committed index handed to the host to apply
        self.applied: int = base

    def last_index(self) -> int:
        return self.offset + len(self.unstable) - 1

    def first_index(self) -> int:
        snap = self.snap
        return snap.index + 1 if snap is not None else self.storage.first_index()

    def persisted_index(self) -> int:
        """Last index the host confirmed durable (the leader counts itself only up to it)."""
        return self.offset - 1

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted or beyond the end."""
        off = self.offset
        if index >= off:
            j = index - off
            u = self.unstable
            return u[j].term if j < len(u) else None
        snap = self.snap
        if snap is not None:
            return snap.term if index == snap.index else None
        if index < 0:
            return None
        return self.storage.term_at(LogIndex(index))

    def last_term(self) -> int:
        if self.unstable:
            return self.unstable[-1].term
        term = self.term_at(self.offset - 1)
        return term if term is not None else 0

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction: is (last_term, last_index) at least as recent as ours?"""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Entries ``lo <= index < hi`` (all readable), at least one, at most ``max_bytes``."""
        assert lo >= self.first_index(), (lo, self.first_index())
        assert hi <= self.last_index() + 1, (hi, self.last_index())
        if lo >= hi:
            return []
        off = self.offset
        out: list[Entry]
        if lo < off:
            stop = min(hi, off)
            out = self.storage.entries(LogIndex(lo), LogIndex(stop), max_bytes)
            if hi <= off or len(out) < stop - lo:
                return out
            if max_bytes is not None:
                used = sum(len(e.data) for e in out)
                if used >= max_bytes:
                    return out
                max_bytes -= used
            more = self.unstable[0 : hi - off]
            if max_bytes is not None and self.unstable_bytes > max_bytes:
                _trim_bytes(more, max_bytes, allow_empty=True)
            out.extend(more)
            return out
        out = self.unstable[lo - off : hi - off]
        if max_bytes is not None and self.unstable_bytes > max_bytes:
            _trim_bytes(out, max_bytes, allow_empty=False)
        return out

    # -- mutation ------------------------------------------------------------------------
    def append_leader(self, entries: Sequence[Entry]) -> None:
        assert not entries or entries[0].index == self.last_index() + 1
        self.unstable.extend(entries)
        self.unstable_bytes += sum(map(len, map(_data_of, entries)))

    def append_follower(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``, replacing everything from ``entries[0].index`` on."""
        first = entries[0].index
        assert first > self.commit, (first, self.commit)
        self.unstable_bytes = _UNKNOWN_BYTES
        off = self.offset
        end = off + len(self.unstable)
        assert first <= end, (first, end)
        if first == end:
            self.unstable.extend(entries)
        elif first <= off:
            # rewinds below what storage holds: storage entries >= first are superseded
            self.offset = first
            self.unstable = list(entries)
            self.handed = 0
        else:
            del self.unstable[first - off :]
            self.unstable.extend(entries)
            self.handed = min(self.handed, first - off)

    def take_unhanded(self) -> tuple[Entry, ...]:
        """The unstable entries not yet handed to the host, marking them handed."""
        if self.handed >= len(self.unstable):
            return ()
        out = tuple(self.unstable[self.handed :])
        self.handed = len(self.unstable)
        return out

    def stable_to(self, index: int, term: int) -> None:
        """The host persisted entries through (index, term); ignore if since overwritten."""
        if index < self.offset or self.term_at(index) != term:
            return  # overwritten after the Ready was taken (the "ABA" race): not confirmed
        n = index - self.offset + 1
        del self.unstable[:n]
        if not self.unstable:
            self.unstable_bytes = 0
        self.handed = max(0, self.handed - n)
        self.offset = index + 1

    def restore(self, meta: SnapshotMeta) -> None:
        """Adopt an installed snapshot: the log now starts after ``meta.index``."""
        self.snap = meta
        self.offset = meta.index + 1
        self.unstable = []
        self.unstable_bytes = 0
        self.handed = 0
        self.commit = max(self.commit, meta.index)
        self.applied = meta.index


_UNKNOWN_BYTES = 1 << 62
_data_of = attrgetter("data")

_new = object.__new__
_slot: dict[str, Any] = dict(vars(Entry))
_set_term = _slot["term"].__set__
_set_index = _slot["index"].__set__
_set_kind = _slot["kind"].__set__
_set_data = _slot["data"].__set__


def make_entry(term: int, index: int, kind: EntryKind, data: bytes) -> Entry:
    """``Entry(term, index, kind, data)`` without the frozen dataclass's per-field
    ``object.__setattr__`` calls: the slot descriptors set the fields directly. The result
    is an ordinary Entry (same class, equality and hash); about 40% cheaper on the hot path.
    """
    e: Entry = _new(Entry)
    _set_term(e, term)
    _set_index(e, index)
    _set_kind(e, kind)
    _set_data(e, data)
    return e


def _trim_bytes(entries: list[Entry], max_bytes: int, *, allow_empty: bool) -> None:
    total = 0
    for k, e in enumerate(entries):
        total += len(e.data)
        if total > max_bytes and (k > 0 or allow_empty):
            del entries[k:]
            return
