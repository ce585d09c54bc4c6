"""Dictionary training reads its samples in chunks with the event loop free in between,
and the chunks add up to what one read would give (at most one whole entry more): the first committed entries of
the partitions homed in this region, whole, within the event and byte bounds."""

from __future__ import annotations

import asyncio

import pytest

from geostore.ids import LogIndex, PartitionId, RegionId, Seq, StreamName
from geostore.runtime.geo import StoreLog, read_training_entries
from geostore.store import EventStore, MemoryBlockStore, encode_command

S = StreamName("s")


def store_with_entries() -> EventStore:
    store = EventStore(MemoryBlockStore())
    create = store.validate_create({"name": "s", "partitions": 3, "homes": {"0": "a", "1": "b"}})
    store.apply(LogIndex(1), create)
    index = 2
    for k in range(40):  # partition 0 (home a): entries of 1, 2 and 3 events in turn
        for part, n in ((0, 1 + k % 3), (1, 2), (2, 1)):
            events = [{"partition": part, "body": {"k": k, "j": j}} for j in range(n)]
            for batch in store.validate_append("s", events, now_us=1).batches:
                store.apply_entry(LogIndex(index), encode_command(batch))
                index += 1
    return store


@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("events_max", [1, 50, 10_000])
def test_chunks_add_up_to_one_read_of_the_home_partitions(chunk: int, events_max: int) -> None:
    store = store_with_entries()
    yields = 0

    async def read() -> list[object]:
        nonlocal yields

        async def count() -> None:
            nonlocal yields
            while True:
                await asyncio.sleep(0)
                yields += 1

        counter = asyncio.get_running_loop().create_task(count())
        got = await read_training_entries(store, S, RegionId("a"), events_max, chunk, 1 << 20)
        counter.cancel()
        return list(got)

    got = asyncio.run(read())
    last = store.watermark(S, 0).seq
    whole = StoreLog(store).read_committed(S, PartitionId(0), Seq(0), last, events_max, 1 << 20)
    # partition 0 only (1 is homed in b, 2 has no home), as one read gives it; a chunk
    # always reads a whole entry, so the chunks may take one entry more than one read,
    # which stops before an entry that would pass events_max
    assert got[: len(whole)] == list(whole) and len(got) - len(whole) in (0, 1)
    if len(got) > len(whole):
        assert sum(e.record_count for e in whole) < events_max
    assert sum(e.record_count for e in got) >= min(events_max, 79)  # 79 events there
    reads = -(-sum(e.record_count for e in got) // chunk)  # at least one read per chunk
    assert yields >= min(reads, len(got)) - 1  # the loop ran between the chunks


def test_the_byte_bound_stops_the_reading() -> None:
    store = store_with_entries()
    got = asyncio.run(read_training_entries(store, S, RegionId("a"), 10_000, 5, 200))
    assert got and sum(len(e.events) for e in got[:-1]) < 200
    assert sum(e.record_count for e in got) < 79


def test_a_region_homing_nothing_reads_nothing() -> None:
    store = store_with_entries()
    assert asyncio.run(read_training_entries(store, S, RegionId("c"), 100, 10, 1 << 20)) == []
