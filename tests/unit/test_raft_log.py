"""The core's log view (durable storage plus unstable tail) always reads like a plain list.

A model-based test: random leader appends, follower appends that replace a suffix, hand-outs
to a host that persists them (sometimes late, after the tail was overwritten: the ABA race),
and snapshot restores, compared after every step with a list model of the log. It also
checks byte-bounded slices and the slot-built entries.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from geostore.ids import LogIndex, Term
from geostore.raft.log import RaftLog, make_entry
from geostore.raft.types import ConfState, Entry, EntryKind, SnapshotMeta
from geostore.storage.memory import MemoryLogStore

N = EntryKind.NORMAL

ops = st.lists(
    st.one_of(
        st.tuples(st.just("leader"), st.integers(1, 4), st.integers(0, 3)),
        st.tuples(st.just("follower"), st.integers(0, 6), st.integers(1, 4)),
        st.tuples(st.just("take"), st.just(0), st.just(0)),
        st.tuples(st.just("persist"), st.just(0), st.just(0)),
        st.tuples(st.just("commit"), st.integers(0, 3), st.just(0)),
        st.tuples(st.just("restore"), st.integers(1, 3), st.just(0)),
    ),
    max_size=40,
)


@given(ops)
def test_log_view_matches_a_list_model(script: list[tuple[str, int, int]]) -> None:
    store = MemoryLogStore()
    log = RaftLog(store)
    model: list[Entry] = []  # entries 1..n
    base = 0  # snapshot index of the model
    base_term = 0
    term = 1
    held: tuple[Entry, ...] | None = None
    for op, a, b in script:
        if op == "leader":
            term += b
            first = log.last_index() + 1
            new = [make_entry(term, first + k, N, b"x" * k) for k in range(a)]
            log.append_leader(new)
            model.extend(new)
        elif op == "follower":
            # replace from somewhere after commit (never at or below it)
            start = max(log.commit + 1, min(base + 1 + a, log.last_index() + 1))
            term += 1
            new = [make_entry(term, start + k, N, b"y") for k in range(b)]
            log.append_follower(new)
            del model[start - base - 1 :]
            model.extend(new)
        elif op == "take" and held is None:
            held = log.take_unhanded()
        elif op == "persist" and held is not None:
            if held:
                store.append(held)
                store.sync()
                log.stable_to(held[-1].index, held[-1].term)
            held = None
        elif op == "commit":
            log.commit = min(log.last_index(), max(log.commit, log.persisted_index() - a))
        elif op == "restore" and held is None:
            idx = log.last_index() + a
            meta = SnapshotMeta(LogIndex(idx), Term(term), ConfState())
            log.restore(meta)
            store.compact_prefix(meta)
            log.snap = None
            model, base, base_term = [], idx, term
        # the view reads exactly like the model
        assert log.last_index() == base + len(model)
        assert log.term_at(base) == (base_term if base else 0)
        for e in model:
            assert log.term_at(e.index) == e.term
        assert log.term_at(log.last_index() + 1) is None
        if model:
            got = log.slice(model[0].index, log.last_index() + 1, None)
            assert got == model
        assert log.persisted_index() <= log.last_index()


def test_byte_bounded_slices_return_at_least_one_entry() -> None:
    log = RaftLog(MemoryLogStore())
    log.append_leader([make_entry(1, i, N, b"z" * 10) for i in range(1, 11)])
    assert len(log.slice(1, 11, 25)) == 2
    assert len(log.slice(1, 11, 5)) == 1
    assert len(log.slice(1, 11, None)) == 10


def test_slot_built_entries_equal_ordinary_ones() -> None:
    e = make_entry(3, 7, N, b"d")
    assert e == Entry(Term(3), LogIndex(7), N, b"d")
    assert hash(e) == hash(Entry(Term(3), LogIndex(7), N, b"d"))
    assert type(e) is Entry
