"""Validate once: the column-wise fast path of validate_append encodes exactly what the per-event loop does (or defers to it), and apply trusts a validated batch only when its crc matches."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import geostore.store.state as state_mod
from geostore.errors import ApiError, ErrorCode
from geostore.ids import LogIndex
from geostore.store import (
    AppendBatch,
    AppendResult,
    EventStore,
    MemoryBlockStore,
    Rejected,
    decode_command,
    encode_command,
)
from geostore.store.blocks import decode_batch, encode_batch

_bodies = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_events = st.lists(
    st.fixed_dictionaries(
        {"body": _bodies},
        optional={
            "ts": st.none() | st.integers(-(2**64), 2**64) | st.just(True),
            "key": st.none() | st.text(max_size=6) | st.integers(0, 3),
            "partition": st.none() | st.integers(-1, 4),
        },
    )
    | st.just({"ts": 1})
    | st.just({"body": 1, "extra": 2})
    | st.integers(),
    min_size=1,
    max_size=6,
)


def _store(partitions: int) -> EventStore:
    store = EventStore(MemoryBlockStore())
    store.apply(LogIndex(1), store.validate_create({"name": "s", "partitions": partitions}))
    return store


def _outcome(store: EventStore, events: Any, rr: int) -> Any:
    try:
        prep = store.validate_append("s", events, now_us=77, rr_counter=rr)
    except ApiError as err:
        return ("error", err.code, err.message, err.details)
    return ("ok", prep)


@settings(max_examples=300, deadline=None)
@given(events=_events, partitions=st.integers(1, 3), rr=st.integers(0, 5))
def test_fast_path_agrees_with_the_per_event_loop(
    events: list[Any], partitions: int, rr: int
) -> None:
    store = _store(partitions)
    fast = _outcome(store, events, rr)
    original, single = state_mod._fast_columns, state_mod._single_event
    state_mod._fast_columns = lambda *args: None  # force the per-event loop
    state_mod._single_event = lambda *args: None
    try:
        slow = _outcome(store, events, rr)
        state_mod._fast_columns = original  # the column path, for single events too
        columns = _outcome(store, events, rr)
    finally:
        state_mod._fast_columns, state_mod._single_event = original, single
    assert fast == slow == columns
    if fast[0] == "ok":
        crcs = [b.crc for b in fast[1].batches]
        assert crcs == [b.crc for b in slow[1].batches] and None not in crcs


def test_a_validated_batch_round_trips_with_its_crc_and_applies() -> None:
    store = _store(1)
    prep = store.validate_append("s", [{"body": {"a": 1}}, {"body": 2}], now_us=5)
    (batch,) = prep.batches
    decoded = decode_command(encode_command(batch))
    assert isinstance(decoded, AppendBatch) and decoded.crc == batch.crc is not None
    res = store.apply_entry(LogIndex(2), encode_command(batch))
    assert isinstance(res, AppendResult) and (res.first_seq, res.last_seq) == (0, 1)


def test_a_batch_whose_crc_does_not_match_is_refused_and_changes_nothing() -> None:
    store = _store(1)
    prep = store.validate_append("s", [{"body": {"a": 1}}], now_us=5)
    (batch,) = prep.batches
    assert batch.crc is not None
    forged = dataclasses.replace(batch, crc=batch.crc ^ 1)
    res = store.apply_entry(LogIndex(2), encode_command(forged))
    assert isinstance(res, Rejected) and res.error.code is ErrorCode.MALFORMED
    assert "checksum" in res.error.message
    assert store.partition_info("s", 0).last_seq == -1


def test_a_validated_batch_of_the_wrong_shape_is_refused() -> None:
    store = _store(1)
    prep = store.validate_append("s", [{"body": 1}, {"body": 2}], now_us=5)
    (batch,) = prep.batches
    wrong_count = dataclasses.replace(batch, record_count=3)
    res = store.apply_entry(LogIndex(2), encode_command(wrong_count))
    assert isinstance(res, Rejected) and res.error.code is ErrorCode.MALFORMED


@settings(max_examples=300, deadline=None)
@given(
    event=_events.map(lambda evs: evs[0]),
    partitions=st.integers(1, 3),
    rr=st.integers(0, 5),
    producer=st.none()
    | st.fixed_dictionaries({"id": st.text(max_size=4), "seq": st.integers(0, 9)}),
)
def test_the_single_event_path_agrees_with_the_per_event_loop(
    event: Any, partitions: int, rr: int, producer: Any
) -> None:
    store = _store(partitions)

    def outcome() -> Any:
        try:
            prep = store.validate_append("s", [event], now_us=77, rr_counter=rr, producer=producer)
        except ApiError as err:
            return ("error", err.code, err.message, err.details)
        return ("ok", prep)

    single = outcome()
    original, path = state_mod._fast_columns, state_mod._single_event
    state_mod._fast_columns = lambda *args: None
    state_mod._single_event = lambda *args: None
    try:
        slow = outcome()
    finally:
        state_mod._fast_columns, state_mod._single_event = original, path
    assert single == slow


def test_the_single_event_path_runs_for_a_plain_event() -> None:
    single = state_mod._single_event({"key": "k", "body": {"v": 1}}, 5, 3, 0, 1 << 20, 1024)
    assert single is not None
    store = _store(3)
    prep = store.validate_append("s", [{"key": "k", "body": {"v": 1}}], now_us=5)
    assert single[0] == prep.batches[0].partition and single[1] == prep.batches[0].events


@pytest.mark.parametrize("n", [1, 1000])
def test_the_fast_path_runs_for_plain_events(n: int) -> None:
    events = [{"ts": i, "key": f"k{i % 7}", "body": {"v": i}} for i in range(n)]
    fast = state_mod._fast_columns(events, 0, 1, 0, 1 << 20, 1024)
    assert fast is not None
    parts, ts, keys, bodies, rr = fast
    assert keys[0] == "k0" and len(keys) == n
    assert parts == [0] * n and ts == list(range(n)) and rr == 0 and len(bodies) == n


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(-(2**63), 2**63 - 1), st.none() | st.text(max_size=4),
                  st.binary(min_size=1, max_size=8)),
        min_size=1, max_size=3,
    )
)  # fmt: skip
def test_an_encoded_batch_decodes_to_its_columns(rows: list[tuple[int, str | None, bytes]]) -> None:
    """One event (encode_batch's shortcut) or several: decode reads back what was encoded."""
    ts, keys, bodies = (list(c) for c in zip(*rows, strict=True))
    cols = decode_batch(encode_batch(ts, keys, bodies), len(rows), ())
    assert (cols.ts, cols.keys, bytes(cols.bodies)) == (ts, keys, b"".join(bodies))
    assert [cols.body_bytes(i) for i in range(len(rows))] == bodies
