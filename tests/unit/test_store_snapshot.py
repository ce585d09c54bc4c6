"""A store restored from its snapshot chunks answers every query, dedup verdict and later apply exactly like the original; damaged snapshots are refused without changing anything."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geostore.errors import CodecError, GeostoreError, StorageError
from geostore.ids import Epoch, LogIndex, PartitionId, RegionId, StreamName
from geostore.store import EventStore, MemoryBlockStore, Rejected, SetHome, StoreTuning

SCHEMA = {"attributes": [{"name": "v", "type": "int", "indexed": True}]}
TUNING = StoreTuning(block_events_max=3, block_bytes_max=64, producer_window=3, producers_max=3)


def new_store(blocks: MemoryBlockStore | None = None, tuning: StoreTuning = TUNING) -> EventStore:
    return EventStore(blocks if blocks is not None else MemoryBlockStore(), tuning=tuning)


def run_op(store: EventStore, op: tuple[Any, ...]) -> list[Any]:
    """Apply one workload step and return its answers in a comparable form."""
    index = store.applied_index + 1
    match op:
        case ("create", parts):
            cmds = [
                store.validate_create({"name": f"s{parts}", "partitions": parts, "schema": SCHEMA})
            ]
        case ("append", stream, events, producer):
            try:
                prep = store.validate_append(stream, events, now_us=index, producer=producer)
            except GeostoreError as err:
                return [("invalid", str(err.code))]
            cmds = list(prep.batches)
        case ("home", stream, partition):
            try:
                epoch = store.partition_info(stream, partition).epoch
            except GeostoreError as err:
                return [("invalid", str(err.code))]
            cmds = [
                SetHome(
                    StreamName(stream),
                    PartitionId(partition),
                    RegionId(f"r{index}"),
                    Epoch(epoch + 1),
                )
            ]
        case ("noop",):
            store.advance(LogIndex(index))
            return [("noop",)]
        case _:
            raise AssertionError(op)
    out: list[Any] = []
    for cmd in cmds:
        res = store.apply(LogIndex(store.applied_index + 1), cmd)
        out.append(
            ("rejected", str(res.error.code), res.error.message)
            if isinstance(res, Rejected)
            else res
        )
    return out


def observe(store: EventStore) -> list[Any]:
    """Every answer a client or an operator could get."""
    out: list[Any] = [
        store.applied_index,
        store.partitions(),
        store.streams(),
        store.producer_count(),
    ]
    out.append(store._producers.to_wire())
    for d in store.streams():
        out.append(store.stream_info(d.name))
        for p in range(d.partitions):
            out.append(store.read(d.name, p, 0, 10_000))
            out.append(store.read(d.name, p, 2, 3))
            for lo, hi in ((0, 50), (20, 21), (-10, 10**6)):
                out.append(store.read_time_range(d.name, p, lo, hi, 0, 5))
        for window in (None, 7):
            out.append(store.aggregate(d.name, "v", 0, 100, window_us=window))
            out.append(store.aggregate(d.name, "x", 0, 100, window_us=window, scan_limit=10_000))
    return out


event_st = st.fixed_dictionaries(
    {
        "ts": st.integers(0, 99),
        "body": st.fixed_dictionaries(
            {}, optional={"v": st.integers(-9, 9), "x": st.integers(0, 5)}
        ),
    },
    optional={"key": st.sampled_from(["a", "b", "c"])},
)
producer_st = st.one_of(
    st.none(),
    st.fixed_dictionaries({"id": st.sampled_from(["p", "q", "r", "z"]), "seq": st.integers(0, 8)}),
)
op_st = st.one_of(
    st.tuples(st.just("create"), st.integers(1, 2)),
    st.tuples(
        st.just("append"),
        st.sampled_from(["s1", "s2"]),
        st.lists(event_st, min_size=1, max_size=8),
        producer_st,
    ),
    st.tuples(st.just("home"), st.sampled_from(["s1", "s2"]), st.integers(0, 1)),
    st.tuples(st.just("noop")),
)
ops_st = st.lists(op_st, max_size=25).map(lambda ops: [("create", 1), ("create", 2), *ops])


@settings(max_examples=50)
@given(
    ops=ops_st,
    cut=st.integers(0, 30),
    chunk_bytes=st.sampled_from([1, 7, 100, 4096, 1 << 20]),
    include_blocks=st.booleans(),
)
def test_restored_store_answers_and_continues_identically(
    ops: list[tuple[Any, ...]], cut: int, chunk_bytes: int, include_blocks: bool
) -> None:
    a = new_store()
    for op in ops[:cut]:
        run_op(a, op)
    chunks = list(a.snapshot_chunks(chunk_bytes, include_blocks=include_blocks))
    assert all(len(c) == chunk_bytes for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk_bytes
    b = new_store(None if include_blocks else a.blocks)  # type: ignore[arg-type]
    b.restore_from_chunks(iter(chunks))
    assert observe(b) == observe(a)
    for op in ops[cut:]:
        assert run_op(b, op) == run_op(a, op)
    assert observe(b) == observe(a)


def populated(blocks: MemoryBlockStore | None = None) -> EventStore:
    s = new_store(blocks)
    ops: list[tuple[Any, ...]] = [("create", 2)]
    for i in range(12):
        evs = [
            {"ts": (i * 7 + j) % 50, "body": {"v": i - j}, "key": "abcd"[j % 4]}
            for j in range(i % 5 + 1)
        ]
        ops.append(("append", "s2", evs, {"id": f"p{i % 4}", "seq": i}))
    ops.append(("home", "s2", 1))
    for op in ops:
        run_op(s, op)
    return s


def test_snapshot_is_captured_when_taken_even_if_applies_continue() -> None:
    a = populated()
    before = observe(a)
    gen = a.snapshot_chunks(50)
    first = next(gen)
    run_op(a, ("append", "s2", [{"ts": 1, "body": {"v": 1}}] * 9, None))
    chunks = [first, *gen]
    b = new_store()
    b.restore_from_chunks(chunks)
    assert observe(b) == before != observe(a)


def test_restore_replaces_existing_state_and_wakes_tail_subscribers() -> None:
    a = populated()
    b = new_store()
    run_op(b, ("create", 2))
    run_op(b, ("append", "s2", [{"ts": 1, "body": {}, "key": "zz"}], None))
    calls: list[tuple[str, int, int]] = []
    for p in (0, 1):
        b.subscribe("s2", p, lambda s, p, seq: calls.append((s, p, seq)))
    b.restore_from_chunks(a.snapshot_chunks(1000))
    assert observe(b) == observe(a)
    last = [a.partition_info("s2", p).last_seq for p in (0, 1)]
    assert min(last) >= 0 and calls == [("s2", 0, last[0]), ("s2", 1, last[1])]


def _damaged(chunks: list[bytes]) -> list[tuple[str, list[bytes]]]:
    data = b"".join(chunks)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    return [
        ("empty", []),
        ("truncated", [data[:-1]]),
        ("cut in half", [data[: len(data) // 2]]),
        ("a byte flipped", [bytes(flipped)]),
        ("trailing data", [data + b"\x00\x00\x00\x01\x01"]),
        ("garbage", [b"\xff" * 64]),
    ]


def test_damaged_snapshots_are_refused_and_change_nothing() -> None:
    good = list(populated().snapshot_chunks(4096))
    target = populated()
    run_op(target, ("append", "s2", [{"ts": 3, "body": {"v": 100}}], None))
    before = observe(target)
    for what, chunks in _damaged(good):
        with pytest.raises((CodecError, StorageError)):
            target.restore_from_chunks(chunks)
        assert observe(target) == before, what


def test_reference_snapshot_needs_the_blocks_and_full_snapshot_carries_them() -> None:
    a = populated()
    ref = list(a.snapshot_chunks(4096, include_blocks=False))
    full = list(a.snapshot_chunks(4096, include_blocks=True))
    assert sum(map(len, ref)) < sum(map(len, full))
    with pytest.raises(StorageError, match="missing"):
        new_store().restore_from_chunks(ref)
    shared = new_store(a.blocks)  # type: ignore[arg-type]
    shared.restore_from_chunks(ref)
    assert observe(shared) == observe(a)
    fresh = new_store()
    fresh.restore_from_chunks(full)
    assert observe(fresh) == observe(a)
    assert isinstance(fresh.blocks, MemoryBlockStore) and len(fresh.blocks) == len(a.blocks)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "tuning",
    [
        StoreTuning(block_events_max=3, block_bytes_max=64, producer_window=99, producers_max=3),
        StoreTuning(block_events_max=50, block_bytes_max=64, producer_window=3, producers_max=3),
    ],
)
def test_restore_refuses_another_store_tuning(tuning: StoreTuning) -> None:
    chunks = list(populated().snapshot_chunks(4096))
    other = new_store(tuning=tuning)
    before = observe(other)
    with pytest.raises(StorageError, match="tuning"):
        other.restore_from_chunks(chunks)
    assert observe(other) == before
