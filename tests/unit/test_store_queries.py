"""Time-range reads and aggregates agree with a brute-force model, find out-of-order events, and read only boundary blocks (one million events included)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from geostore.errors import ApiError, ErrorCode
from geostore.ids import LogIndex, PartitionId, StreamName
from geostore.store import (
    AppendBatch,
    AppendResult,
    EventStore,
    MemoryBlockStore,
    StoreLimits,
    StoreTuning,
    encode_batch,
)

SCHEMA = {
    "attributes": [
        {"name": "v", "type": "int", "indexed": True},
        {"name": "f", "type": "float", "indexed": True},
        {"name": "u", "type": "int"},
        {"name": "s", "type": "str"},
    ]
}

Event = tuple[int, int, Any]  # seq, ts, body


def build(
    batches: Sequence[Sequence[dict[str, Any]]],
    partitions: int,
    tuning: StoreTuning,
    limits: StoreLimits | None = None,
) -> tuple[EventStore, dict[int, list[Event]]]:
    """Apply the batches through validate + apply; return the store and the model."""
    store = EventStore(MemoryBlockStore(), tuning=tuning, limits=limits)
    index = 1
    store.apply(
        LogIndex(index),
        store.validate_create({"name": "s", "partitions": partitions, "schema": SCHEMA}),
    )
    model: dict[int, list[Event]] = {p: [] for p in range(partitions)}
    rr = 0
    for evs in batches:
        prep = store.validate_append("s", list(evs), now_us=0, rr_counter=rr)
        rr = prep.rr_counter
        for cmd, pos in zip(prep.batches, prep.positions, strict=True):
            index += 1
            res = store.apply(LogIndex(index), cmd)
            assert isinstance(res, AppendResult)
            for k, i in enumerate(pos):
                model[res.partition].append((res.first_seq + k, evs[i]["ts"], evs[i]["body"]))
    return store, model


def body_strategy() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "v": st.integers(-50, 50),
            # binary fractions: sums are exact, so answers compare exactly
            "f": st.integers(-40, 40).map(lambda x: x / 4),
            "u": st.integers(-9, 9),
            "s": st.sampled_from(["a", "bb"]),
        },
    )


event_strategy = st.fixed_dictionaries(
    {"ts": st.integers(0, 300), "body": body_strategy()},
    optional={"partition": st.integers(0, 1)},
)
batches_strategy = st.lists(st.lists(event_strategy, min_size=1, max_size=12), max_size=14)
tuning_strategy = st.builds(
    StoreTuning,
    block_events_max=st.sampled_from([1, 2, 3, 5, 8, 1024]),
    block_bytes_max=st.sampled_from([20, 64, 262_144]),
    index_fanout=st.sampled_from([1, 2, 3, 64]),
)


def model_agg(events: list[Event], field: str, lo: int, hi: int) -> tuple[int, Any, Any, Any]:
    vals = [b[field] for _, t, b in events if lo <= t < hi and b.get(field) is not None]
    if not vals:
        return (0, None, None, 0)
    return (len(vals), min(vals), max(vals), sum(vals))


def as_tuple(agg: Any) -> tuple[int, Any, Any, Any]:
    return (agg.count, agg.min, agg.max, agg.sum)


@settings(max_examples=60)
@given(
    batches=batches_strategy,
    tuning=tuning_strategy,
    lo=st.integers(-5, 310),
    span=st.integers(0, 320),
    from_seq=st.integers(0, 60),
    limit=st.integers(1, 40),
)
def test_time_range_reads_match_the_model(
    batches: list[list[dict[str, Any]]],
    tuning: StoreTuning,
    lo: int,
    span: int,
    from_seq: int,
    limit: int,
) -> None:
    store, model = build(batches, 2, tuning)
    hi = lo + span
    for p in (0, 1):
        want = [e for e in model[p] if e[0] >= from_seq and lo <= e[1] < hi][:limit]
        page = store.read_time_range("s", p, lo, hi, from_seq, limit)
        assert [(e.seq, e.ts, e.body) for e in page.events] == want
        end = len(model[p])
        if len(want) == limit:
            assert page.next_seq == want[-1][0] + 1
        else:
            assert page.next_seq == max(from_seq, end)
        assert page.stats.events_decoded <= max(0, end - from_seq)


@settings(max_examples=40)
@given(
    batches=batches_strategy,
    tuning=tuning_strategy,
    lo=st.integers(0, 300),
    span=st.integers(0, 300),
)
def test_time_range_paging_with_a_block_budget_finds_every_event(
    batches: list[list[dict[str, Any]]], tuning: StoreTuning, lo: int, span: int
) -> None:
    limits = StoreLimits(read_blocks_max=1)
    store, model = build(batches, 2, tuning, limits)
    for p in (0, 1):
        got: list[Event] = []
        nxt = 0
        for _ in range(1000):
            page = store.read_time_range("s", p, lo, lo + span, nxt, 3)
            assert page.stats.blocks_read <= 1
            got.extend((e.seq, e.ts, e.body) for e in page.events)
            assert page.next_seq >= nxt
            if page.next_seq == nxt:
                break
            nxt = page.next_seq
        assert got == [e for e in model[p] if lo <= e[1] < lo + span]
        assert nxt == len(model[p])


@settings(max_examples=60)
@given(
    batches=batches_strategy,
    tuning=tuning_strategy,
    lo=st.integers(-5, 300),
    span=st.integers(0, 320),
    window_us=st.one_of(st.none(), st.integers(1, 120)),
    field=st.sampled_from(["v", "f", "u", "s2"]),
    partition=st.sampled_from([None, 0, 1]),
)
def test_aggregates_match_the_model(
    batches: list[list[dict[str, Any]]],
    tuning: StoreTuning,
    lo: int,
    span: int,
    window_us: int | None,
    field: str,
    partition: int | None,
) -> None:
    store, model = build(batches, 2, tuning)
    hi = lo + span
    events = model[0] + model[1] if partition is None else model[partition]
    scan = field in ("u", "s2")
    if scan:
        try:
            store.aggregate("s", field, lo, hi, partition=partition, window_us=window_us)
        except ApiError as err:
            assert err.code is ErrorCode.FIELD_NOT_INDEXED
        else:
            raise AssertionError("a non-indexed field needs scan_limit")
    res = store.aggregate(
        "s",
        field,
        lo,
        hi,
        partition=partition,
        window_us=window_us,
        scan_limit=10_000 if scan else None,
    )
    assert as_tuple(res.value) == model_agg(events, field, lo, hi)
    n, _, _, total = model_agg(events, field, lo, hi)
    assert res.value.avg == (total / n if n else None)
    if window_us is None:
        assert res.windows is None
    else:
        assert res.windows is not None
        starts = list(range(lo, hi, window_us))
        assert [w.start_ts for w in res.windows] == starts
        assert [w.end_ts for w in res.windows] == [min(s + window_us, hi) for s in starts]
        for w in res.windows:
            assert as_tuple(w.value) == model_agg(events, field, w.start_ts, w.end_ts)
    if scan:
        assert res.stats.summaries_used == 0


def test_aggregate_scan_is_refused_over_its_limit_before_any_work() -> None:
    store, _ = build(
        [[{"ts": t, "body": {"u": t}} for t in range(50)]], 1, StoreTuning(block_events_max=10)
    )
    blocks = store.blocks
    assert isinstance(blocks, MemoryBlockStore)
    gets = blocks.gets
    try:
        store.aggregate("s", "u", 0, 50, scan_limit=49)
    except ApiError as err:
        assert err.code is ErrorCode.TOO_LARGE and "scan_limit" in err.message
    else:
        raise AssertionError("expected TOO_LARGE")
    assert blocks.gets == gets
    assert store.aggregate("s", "u", 0, 50, scan_limit=50).value.sum == sum(range(50))
    try:
        store.aggregate("s", "s", 0, 50, scan_limit=50)
    except ApiError as err:
        assert err.code is ErrorCode.MALFORMED and "not a number" in err.message
    else:
        raise AssertionError("a str attribute is not aggregatable")


def test_stream_without_schema_aggregates_by_bounded_scan_only() -> None:
    store = EventStore(MemoryBlockStore())
    store.apply(LogIndex(1), store.validate_create({"name": "n"}))
    prep = store.validate_append(
        "n",
        [
            {"ts": 1, "body": {"x": 2}},
            {"ts": 2, "body": {"x": 3.5}},
            {"ts": 3, "body": [1]},
            {"ts": 4, "body": {"x": True}},
        ],
        now_us=0,
    )
    store.apply(LogIndex(2), prep.batches[0])
    try:
        store.aggregate("n", "x", 0, 10)
    except ApiError as err:
        assert err.code is ErrorCode.FIELD_NOT_INDEXED
        assert err.http_status == 400
    else:
        raise AssertionError("expected FIELD_NOT_INDEXED")
    res = store.aggregate("n", "x", 0, 10, scan_limit=100)
    assert (res.value.count, res.value.sum, res.value.min, res.value.max) == (2, 5.5, 2, 3.5)


def test_out_of_order_events_are_found_and_summaries_stay_exact() -> None:
    # a late event (ts 5) arrives after block-sized runs of later times
    evs = [{"ts": 100 + i, "body": {"v": i}} for i in range(20)]
    evs.insert(13, {"ts": 5, "body": {"v": 1000}})
    store, _ = build([evs], 1, StoreTuning(block_events_max=4))
    page = store.read_time_range("s", 0, 0, 10)
    assert [(e.seq, e.ts) for e in page.events] == [(13, 5)]
    assert page.stats.blocks_read == 1  # only the block whose [min_ts, max_ts] covers ts 5
    agg = store.aggregate("s", "v", 0, 200)
    assert (agg.value.count, agg.value.max, agg.value.sum) == (21, 1000, 1000 + sum(range(20)))
    assert agg.stats.blocks_read == 0  # every block lies inside the range: summaries only


def _bulk_store(events_n: int, batch_n: int, ts_step_us: int) -> EventStore:
    """Apply ``events_n`` in-order events (v = i % 1000) in batches, encoding bodies once."""
    store = EventStore(MemoryBlockStore())
    store.apply(LogIndex(1), store.validate_create({"name": "s", "schema": SCHEMA}))
    bodies = [cbor2.dumps({"v": v}) for v in range(1000)]
    index = 1
    for start in range(0, events_n, batch_n):
        idx = range(start, min(start + batch_n, events_n))
        data = encode_batch(
            [i * ts_step_us for i in idx],
            [None] * len(idx),
            [bodies[i % 1000] for i in idx],
            {"f": [None] * len(idx), "v": [i % 1000 for i in idx]},
        )
        index += 1
        res = store.apply(
            LogIndex(index), AppendBatch(StreamName("s"), PartitionId(0), data, len(idx))
        )
        assert isinstance(res, AppendResult)
    return store


def test_aggregate_over_a_million_events_reads_at_most_two_blocks_per_window() -> None:
    n, step = 1_000_000, 1_000  # one event per millisecond: 1,000 s of events
    store = _bulk_store(n, 20_000, step)
    info = store.partition_info("s", 0)
    assert info.last_seq == n - 1 and info.blocks_sealed == n // 1024
    lo, hi = 123_456_789, 987_654_321  # not aligned to blocks or to events
    first, last = -(-lo // step), (hi - 1) // step  # events i with lo <= i*step < hi

    def model(a: int, b: int) -> tuple[int, int, int, int]:
        vals = [i % 1000 for i in range(max(a, first), min(b, last + 1))]
        return (len(vals), min(vals), max(vals), sum(vals))

    res = store.aggregate("s", "v", lo, hi)
    assert as_tuple(res.value) == model(first, last + 1)
    assert res.stats.blocks_read <= 2
    assert res.stats.events_decoded <= 2 * 1024
    # the upper index level answers whole segments of 64 blocks: few summaries, not ~840
    blocks_in_range = (last - first) // 1024
    assert 1 <= res.stats.summaries_used <= blocks_in_range // 64 + 2 * 64

    window_us = 60_000_000  # 60 s: about 59 blocks per window
    res = store.aggregate("s", "v", lo, hi, window_us=window_us)
    assert res.windows is not None
    windows = len(res.windows)
    assert windows == -(-(hi - lo) // window_us) == 15
    assert res.stats.blocks_read <= 2 * windows
    assert res.stats.events_decoded <= 2 * windows * 1024
    assert as_tuple(res.value) == model(first, last + 1)
    for w in res.windows:
        a, b = -(-w.start_ts // step), -(-w.end_ts // step)
        assert as_tuple(w.value) == model(a, b)
    # without an index the same query must not scan a million events by accident
    try:
        store.aggregate("s", "u", lo, hi, scan_limit=1000)
    except ApiError as err:
        assert err.code is ErrorCode.TOO_LARGE
    else:
        raise AssertionError("expected TOO_LARGE")
    # a time-range read deep in the partition reads only the blocks that hold its events
    page = store.read_time_range("s", 0, 500_000_000, 500_010_000)
    assert [e.seq for e in page.events] == list(range(500_000, 500_010))
    assert page.stats.blocks_read == 1


@settings(max_examples=40)
@given(
    batches=batches_strategy,
    tuning=tuning_strategy,
    from_seq=st.integers(0, 70),
    limit=st.integers(1, 30),
)
def test_seq_range_reads_match_the_model(
    batches: list[list[dict[str, Any]]], tuning: StoreTuning, from_seq: int, limit: int
) -> None:
    store, model = build(batches, 2, tuning)
    for p in (0, 1):
        want = [e for e in model[p] if e[0] >= from_seq][:limit]
        page = store.read("s", p, from_seq, limit)
        assert [(e.seq, e.ts, e.body) for e in page.events] == want
        assert all(e.epoch == 1 and e.key is None for e in page.events)
        assert page.next_seq == (want[-1][0] + 1 if want else from_seq)
        assert page.stats.blocks_read <= len(page.events)  # every block read gives events
