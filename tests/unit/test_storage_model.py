"""Proves the file log behaves like the in-memory model (MemoryLogStore) across random
appends, conflicting appends, truncations, compactions, syncs, clean reopens and power losses
(segment files cut to their fsync watermarks, or torn anywhere past them): what survives is
always a prefix of what was written that contains everything synced."""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from geostore.ids import LogIndex, Term
from geostore.raft.types import Entry, EntryKind, SnapshotMeta
from geostore.storage import FileLogStore, MemoryLogStore
from geostore.storage.faults import lose_unsynced_writes

SEGMENT_BYTES_MAX = 320


class FileLogMatchesModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="gs-model-"))
        self.log = FileLogStore(self.dir, segment_bytes_max=SEGMENT_BYTES_MAX)
        self.model = MemoryLogStore()
        self.term = 1
        self.counter = 0

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _entries(self, start: int, n: int, size: int) -> list[Entry]:
        out = []
        for i in range(n):
            self.counter += 1
            data = (b"%d:" % self.counter) + bytes([self.counter % 256]) * size
            out.append(Entry(Term(self.term), LogIndex(start + i), EntryKind.NORMAL, data))
        return out

    @rule(n=st.integers(1, 12), size=st.integers(0, 60), bump=st.booleans())
    def append(self, n: int, size: int, bump: bool) -> None:
        if bump:
            self.term += 1
        es = self._entries(self.model.last_index() + 1, n, size)
        self.log.append(es)
        self.model.append(es)

    @precondition(lambda self: self.model.last_index() >= self.model.first_index())
    @rule(data=st.data(), n=st.integers(1, 6))
    def append_conflict(self, data: st.DataObject, n: int) -> None:
        start = data.draw(st.integers(self.model.first_index(), self.model.last_index()))
        self.term += 1
        es = self._entries(start, n, 5)
        self.log.append(es)
        self.model.append(es)

    @precondition(lambda self: self.model.last_index() >= self.model.first_index())
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        at = LogIndex(data.draw(st.integers(self.model.first_index(), self.model.last_index())))
        self.log.truncate_suffix(at)
        self.model.truncate_suffix(at)

    @rule(data=st.data(), mismatch=st.booleans(), beyond=st.integers(0, 3))
    def compact(self, data: st.DataObject, mismatch: bool, beyond: int) -> None:
        lo, hi = self.model.first_index(), self.model.last_index()
        index = LogIndex(data.draw(st.integers(lo, hi)) + beyond if hi >= lo else lo + beyond)
        held = self.model.term_at(index)
        if mismatch or held is None:
            self.term += 1
            term = Term(self.term)
        else:
            term = held
        meta = SnapshotMeta(index, term)
        self.log.compact_prefix(meta)
        self.model.compact_prefix(meta)

    @rule()
    def sync(self) -> None:
        self.log.sync()
        self.model.sync()

    @rule()
    def clean_reopen(self) -> None:
        self.log.close()
        self.log = FileLogStore(self.dir, segment_bytes_max=SEGMENT_BYTES_MAX)
        assert not self.log.recovery.cut
        self.model.sync()  # reopening fsyncs what it read back

    @rule(torn=st.booleans(), seed=st.integers(0, 2**16))
    def power_loss(self, torn: bool, seed: int) -> None:
        marks = self.log.durable_watermarks()
        self.log.close()
        lose_unsynced_writes(self.dir / "log", marks, random.Random(seed) if torn else None)
        self.log = FileLogStore(self.dir, segment_bytes_max=SEGMENT_BYTES_MAX)
        # what survived: everything the model calls durable, plus a prefix of the rest
        durable, last = self.model.durable_index(), self.model.last_index()
        got = self.log.last_index()
        assert durable <= got <= last, (durable, got, last)
        if got >= self.log.first_index():
            expect = self.model.entries(self.log.first_index(), LogIndex(got + 1))
            assert self.log.entries(self.log.first_index(), LogIndex(got + 1)) == expect
        # the model forgets the rest
        self.model.truncate_suffix(LogIndex(got + 1)) if got < last else None
        self.model.sync()

    @invariant()
    def same_log(self) -> None:
        log, model = self.log, self.model
        assert log.first_index() == model.first_index()
        assert log.last_index() == model.last_index()
        assert log.snapshot_meta().index == model.snapshot_meta().index
        assert log.durable_index() >= model.durable_index()
        lo, hi = model.first_index(), LogIndex(model.last_index() + 1)
        assert log.entries(lo, hi) == model.entries(lo, hi)
        for i in range(model.first_index() - 1, model.last_index() + 2):
            assert log.term_at(LogIndex(i)) == model.term_at(LogIndex(i)), i


FileLogMatchesModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None
)
TestFileLogMatchesModel = FileLogMatchesModel.TestCase
