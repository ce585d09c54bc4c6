"""Idempotent producers: a retried (id, seq) is applied at most once and answers the original result; the dedup state is bounded by a window, by log-index expiry and by LRU eviction, all deterministic."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from geostore.errors import ApiError, ErrorCode
from geostore.ids import Epoch, LogIndex, PartitionId, RegionId, StreamName
from geostore.store import (
    AppendResult,
    EventStore,
    MemoryBlockStore,
    Rejected,
    SetHome,
    StoreTuning,
)
from geostore.store.dedup import ProducerTable


class Node:
    """A store fed one entry at a time, as the runtime would."""

    def __init__(self, tuning: StoreTuning | None = None, partitions: int = 1) -> None:
        self.store = EventStore(MemoryBlockStore(), tuning=tuning)
        self.index = 0
        self.apply(self.store.validate_create({"name": "s", "partitions": partitions}))

    def apply(self, cmd: Any) -> Any:
        self.index += 1
        return self.store.apply(LogIndex(self.index), cmd)

    def send(self, pid: str, seq: int, bodies: list[Any], **ev: Any) -> list[Any]:
        prep = self.store.validate_append(
            "s",
            [{"body": b, **ev} for b in bodies],
            now_us=self.index,
            producer={"id": pid, "seq": seq},
        )
        return [self.apply(b) for b in prep.batches]

    def count(self, partition: int = 0) -> int:
        return self.store.partition_info("s", partition).last_seq + 1


def test_a_retry_is_applied_once_and_answers_the_original_result() -> None:
    n = Node()
    (first,) = n.send("p", 1, ["a", "b"])
    assert isinstance(first, AppendResult) and not first.duplicate
    n.send("q", 1, ["c"])
    h = n.store.partition_info("s", 0).log_hash
    # the retry differs in its event time (the node filled it again): still a duplicate
    (again,) = n.send("p", 1, ["a", "b"])
    assert isinstance(again, AppendResult) and again.duplicate
    assert (again.first_seq, again.last_seq, again.epoch) == (
        first.first_seq,
        first.last_seq,
        first.epoch,
    )
    assert again.to_json() == first.to_json()
    assert n.count() == 3 and n.store.partition_info("s", 0).log_hash == h


def test_a_multi_partition_request_is_deduplicated_per_partition() -> None:
    n = Node(partitions=3)
    first = n.send("p", 7, list(range(8)))
    assert {r.partition for r in first} == {0, 1, 2}
    retry = n.send("p", 7, list(range(8)))
    assert [r.duplicate for r in retry] == [True] * 3
    assert [r.to_json() for r in retry] == [r.to_json() for r in first]
    assert sum(n.count(p) for p in range(3)) == 8


def test_a_retry_after_a_home_change_is_still_recognised() -> None:
    n = Node()
    (first,) = n.send("p", 1, ["x"])
    prep = n.store.validate_append("s", [{"body": "x"}], now_us=0, producer={"id": "p", "seq": 1})
    n.apply(SetHome(StreamName("s"), PartitionId(0), RegionId("eu"), Epoch(2)))
    (again,) = [n.apply(b) for b in prep.batches]  # proposed under epoch 1, applied under 2
    assert isinstance(again, AppendResult) and again.duplicate and again.epoch == 1
    assert again.to_json() == first.to_json()
    (fresh,) = [
        n.apply(b)
        for b in n.store.validate_append(
            "s", [{"body": "y"}], now_us=0, producer={"id": "p", "seq": 2}
        ).batches
    ]
    assert isinstance(fresh, AppendResult) and fresh.epoch == 2 and fresh.first_seq == 1


def test_seqs_inside_the_window_may_arrive_out_of_order_older_ones_are_refused() -> None:
    n = Node(StoreTuning(producer_window=4))
    for seq in (10, 8, 12):  # gaps and reordering inside the window are fine
        (r,) = n.send("p", seq, [seq])
        assert isinstance(r, AppendResult) and not r.duplicate
    (r,) = n.send("p", 9, [9])  # 12 - 4 < 9: inside the window, new
    assert isinstance(r, AppendResult) and not r.duplicate
    (r,) = n.send("p", 8, [8])  # remembered: duplicate
    assert isinstance(r, AppendResult) and r.duplicate
    before = n.count()
    (r,) = n.send("p", 7, [7])  # never seen, but older than the window: refused
    assert isinstance(r, Rejected) and r.error.code is ErrorCode.CONFLICT
    assert r.error.details["reason"] == "producer_seq_too_old" and "window" in r.error.message
    assert n.count() == before
    n.send("p", 20, [20])
    (r,) = n.send("p", 12, [12])  # was applied, has left the window: refused, not re-applied
    assert isinstance(r, Rejected) and n.count() == before + 1


def test_idle_producers_expire_by_log_index_not_by_clock() -> None:
    n = Node(StoreTuning(producer_idle_entries=5, producer_window=2))
    n.send("p", 1, ["a"])
    n.send("p", 2, ["b"])
    n.send("p", 3, ["c"])
    assert n.store.producer_count() == 1
    last_use = n.index
    while n.index < last_use + 5:  # five more entries (no-ops count: they are log entries)
        n.index += 1
        n.store.advance(LogIndex(n.index))
    assert n.store.producer_count() == 1
    n.index += 1
    n.store.advance(LogIndex(n.index))
    assert n.store.producer_count() == 0
    # forgotten: seq 1 is now new again (the documented cost of expiry)
    (r,) = n.send("p", 1, ["a"])
    assert isinstance(r, AppendResult) and not r.duplicate


def test_beyond_producers_max_the_least_recently_used_is_evicted() -> None:
    n = Node(StoreTuning(producers_max=2))
    n.send("a", 1, [1])
    n.send("b", 1, [1])
    n.send("a", 1, [1])  # a duplicate counts as use: b is now least recent
    n.send("c", 1, [1])
    assert n.store.producer_count() == 2
    (ra,) = n.send("a", 1, [1])
    (rc,) = n.send("c", 1, [1])
    (rb,) = n.send("b", 1, [1])  # b was evicted: its seq 1 is applied again
    assert ra.duplicate and rc.duplicate and not rb.duplicate


def test_producer_table_raises_for_too_old_seqs() -> None:
    t = ProducerTable(window=3, producers_max=10, idle_entries=100)
    key = (StreamName("s"), PartitionId(0), "p")
    t.record(key, 5, (0, 0, 1), LogIndex(1))
    assert t.lookup(key, 5) == (0, 0, 1) and t.lookup(key, 3) is None
    try:
        t.lookup(key, 2)
    except ApiError as err:
        assert err.code is ErrorCode.CONFLICT and err.details["max_seq"] == 5
    else:
        raise AssertionError("expected a refusal")


@settings(max_examples=100)
@given(st.lists(st.integers(0, 60), max_size=200), st.integers(1, 8))
def test_producer_table_keeps_at_most_window_seqs_and_never_admits_a_repeat(
    seqs: list[int], window: int
) -> None:
    t = ProducerTable(window=window, producers_max=10, idle_entries=10**9)
    key = (StreamName("s"), PartitionId(0), "p")
    applied: set[int] = set()
    for i, seq in enumerate(seqs):
        try:
            hit = t.lookup(key, seq)
        except ApiError:
            continue
        if hit is None:
            assert seq not in applied, "a seq applied twice"
            applied.add(seq)
            t.record(key, seq, (seq, seq, 1), LogIndex(i + 1))
        else:
            assert hit == (seq, seq, 1)
        (_, st_) = t.producers()[0]
        assert len(st_.results) <= window
        assert set(st_.results) <= applied and st_.max_seq == max(applied)


def test_remembered_outcomes_are_bounded_over_all_producers() -> None:
    n = Node(StoreTuning(producer_window=4, producer_outcomes_max=10))
    for seq in range(6):
        n.send("a", seq, [seq])  # a keeps 4 outcomes
    for seq in range(4):
        n.send("b", seq, [seq])  # 8
    n.send("c", 0, [0])  # 9
    n.send("c", 1, [1])  # 10: still fits
    assert n.store.producer_count() == 3
    n.send("c", 2, [2])  # 11: a, the least recently used, is forgotten
    assert n.store.producer_count() == 2 and n.store._producers.outcomes == 7
    (r,) = n.send("b", 3, [3])
    assert isinstance(r, AppendResult) and r.duplicate
    (r,) = n.send("a", 5, [5])
    assert isinstance(r, AppendResult) and not r.duplicate
