"""The leader's in-memory copy of its recent log entries (``TimedLog``) answers every read
exactly as the segment files do, through appends, overwriting appends, suffix truncations,
compactions and its own trimming (a seeded random walk over a real file log)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from geostore.ids import LogIndex, Term
from geostore.raft.types import Entry, EntryKind, SnapshotMeta
from geostore.runtime import group as group_mod
from geostore.runtime.group import TimedLog
from geostore.runtime.metrics import NodeMetrics
from geostore.storage import open_storage


@pytest.mark.parametrize("seed", range(6))
def test_recent_entries_read_like_the_file(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small bounds, so the copy trims itself often during the walk
    monkeypatch.setattr(group_mod, "RECENT_ENTRIES_MAX", 24)
    monkeypatch.setattr(group_mod, "RECENT_BYTES_MAX", 600)
    rng = random.Random(seed)
    storage = open_storage(tmp_path, segment_bytes_max=2048)
    log = TimedLog(storage.log, NodeMetrics(), "g")
    term = 1
    served = 0
    try:
        for step in range(400):
            last, first = int(log.last_index()), int(log.first_index())
            op = rng.random()
            if op < 0.55 or last < first:
                start = last + 1
                if last >= first and rng.random() < 0.15:  # a follower's overwriting append
                    start = rng.randint(first, last)
                    term += 1
                n = rng.randint(1, 6)
                log.append(
                    [
                        Entry(
                            Term(term),
                            LogIndex(start + i),
                            EntryKind.NORMAL,
                            rng.randbytes(rng.randint(0, 60)),
                        )
                        for i in range(n)
                    ]
                )
            elif op < 0.65:
                log.truncate_suffix(LogIndex(rng.randint(first, last)))
            elif op < 0.72:
                at = rng.randint(first, last)
                t = log.term_at(LogIndex(at))
                assert t is not None
                log.compact_prefix(SnapshotMeta(LogIndex(at), t))
            elif op < 0.74:  # an installed snapshot past the end replaces the log
                term += 1
                log.compact_prefix(SnapshotMeta(LogIndex(last + rng.randint(1, 5)), Term(term)))
            last, first = int(log.last_index()), int(log.first_index())
            for _ in range(4):
                if last < first:
                    break
                lo = rng.randint(first, last)
                hi = rng.randint(lo, last + 1)
                max_bytes = rng.choice([None, 0, 30, 100, 400])
                got = log.entries(LogIndex(lo), LogIndex(hi), max_bytes)
                want = storage.log.entries(LogIndex(lo), LogIndex(hi), max_bytes)
                assert got == want, (seed, step, lo, hi, max_bytes)
                recent = log._recent
                served += bool(recent) and lo >= recent[0].index and hi <= recent[-1].index + 1
            recent = log._recent
            assert len(recent) <= group_mod.RECENT_ENTRIES_MAX + (group_mod.RECENT_ENTRIES_MAX >> 3)
            assert log._recent_bytes == sum(len(e.data) for e in recent)
            if recent:
                assert recent[-1].index == log.last_index()
                assert [e.index for e in recent] == list(
                    range(recent[0].index, recent[-1].index + 1)
                )
        assert served > 100, "the walk must exercise reads the copy answers"
    finally:
        storage.close()
