"""Proves the in-memory stores model a crash the way a disk does: synced entries, hard
state and committed snapshots survive, unsynced entries are lost (or, with an rng, a prefix
of them survives, never more), and the index arithmetic matches the LogStore contract."""

from __future__ import annotations

import random

import pytest

from geostore.errors import StorageError
from geostore.ids import LogIndex, NodeId, Term
from geostore.raft.types import Entry, EntryKind, HardState, SnapshotMeta
from geostore.storage import MemoryHardStateStore, MemoryLogStore, MemorySnapshotStore


def es(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(Term(term), LogIndex(i), EntryKind.NORMAL, b"%d" % i) for i in range(lo, hi)]


def test_empty_and_basic_arithmetic() -> None:
    log = MemoryLogStore()
    assert (log.first_index(), log.last_index(), log.durable_index()) == (1, 0, 0)
    assert log.term_at(LogIndex(0)) == 0 and log.term_at(LogIndex(1)) is None
    log.append(es(1, 6))
    assert log.last_index() == 5 and log.durable_index() == 0
    assert log.entries(LogIndex(2), LogIndex(4)) == es(2, 4)
    assert log.entries(LogIndex(1), LogIndex(6), max_bytes=1) == es(1, 2)
    log.sync()
    assert log.durable_index() == 5 and log.syncs == 1 and log.appended == 5


def test_crash_loses_unsynced_entries_only() -> None:
    log = MemoryLogStore()
    log.append(es(1, 4))
    log.sync()
    log.append(es(4, 9))
    assert log.crash() == 0
    assert log.last_index() == 3 and log.entries(LogIndex(1), LogIndex(4)) == es(1, 4)


def test_torn_crash_keeps_a_prefix_never_more() -> None:
    rng = random.Random(7)
    kept_counts = set()
    for _ in range(200):
        log = MemoryLogStore()
        log.append(es(1, 4))
        log.sync()
        log.append(es(4, 9))
        kept = log.crash(rng)
        kept_counts.add(kept)
        assert log.last_index() == 3 + kept
        assert log.entries(LogIndex(1), LogIndex(log.last_index() + 1)) == es(1, 4 + kept)
        assert log.durable_index() == log.last_index()
    assert kept_counts == set(range(6))


def test_truncation_is_durable_and_conflicting_append_replaces() -> None:
    log = MemoryLogStore()
    log.append(es(1, 11))
    log.sync()
    log.append(es(6, 9, term=2))
    assert log.durable_index() == 5
    assert log.entries(LogIndex(1), LogIndex(9)) == es(1, 6) + es(6, 9, term=2)
    log.crash()
    assert log.last_index() == 5  # the old 6..10 do not come back


def test_compaction() -> None:
    log = MemoryLogStore()
    log.append(es(1, 11))
    log.sync()
    log.compact_prefix(SnapshotMeta(LogIndex(4), Term(1)))
    assert (log.first_index(), log.last_index(), log.durable_index()) == (5, 10, 10)
    assert log.term_at(LogIndex(4)) == 1 and log.term_at(LogIndex(3)) is None
    log.compact_prefix(SnapshotMeta(LogIndex(20), Term(3)))  # beyond the log: all dropped
    assert (log.first_index(), log.last_index(), log.term_at(LogIndex(20))) == (21, 20, 3)
    log.append(es(21, 23, term=3))
    log.compact_prefix(SnapshotMeta(LogIndex(21), Term(4)))  # term differs: all dropped
    assert (log.first_index(), log.last_index()) == (22, 21)
    with pytest.raises(AssertionError):
        log.entries(LogIndex(1), LogIndex(2))


def test_hard_state_survives_crash() -> None:
    hs = MemoryHardStateStore()
    assert hs.load() == HardState()
    state = HardState(Term(3), NodeId("n2"), LogIndex(7))
    hs.save(state)
    hs.crash(random.Random(1))
    assert hs.load() == state and hs.saves == 1


def test_snapshot_store_commit_crash_and_chunks() -> None:
    snaps = MemorySnapshotStore()
    assert snaps.latest() is None and list(snaps.read_chunks(4)) == []
    meta = SnapshotMeta(LogIndex(10), Term(2))
    w = snaps.begin(meta)
    w.write(b"hello ")
    w.write(b"world")
    assert snaps.latest() is None  # invisible until commit
    assert w.commit() == meta
    assert snaps.latest() == meta
    assert list(snaps.read_chunks(4)) == [b"hell", b"o wo", b"rld"]
    lost = snaps.begin(SnapshotMeta(LogIndex(20), Term(2)))
    lost.write(b"x")
    snaps.crash()
    with pytest.raises(StorageError, match="crash"):
        lost.commit()
    assert snaps.latest() == meta
    aborted = snaps.begin(SnapshotMeta(LogIndex(30), Term(2)))
    aborted.abort()
    with pytest.raises(StorageError):
        aborted.write(b"y")
    assert snaps.latest() == meta
