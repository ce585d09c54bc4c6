"""Shipped batches apply contiguously and idempotently with their watermark and producers, a remote copy built from the home's committed entries is identical to it (hash, reads, aggregates), and the store's apply rule agrees with the geo layer's."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from geostore.errors import ErrorCode
from geostore.geo import GeoApply, GeoEntry, Watermark, apply_geo_batch
from geostore.ids import Epoch, LogIndex, PartitionId, RegionId, Seq, StreamName
from geostore.store import (
    WATERMARK_NONE,
    AppendBatch,
    AppendResult,
    ApplyRemote,
    EventStore,
    MemoryBlockStore,
    Rejected,
    RemoteEntry,
    RemoteResult,
    RemoteVerdict,
    SetHome,
    StoreLimits,
    StoreTuning,
    StoreWatermark,
    decide_remote,
    decode_command,
    encode_command,
)
from geostore.store.snapshot import FrameWriter, read_records

SCHEMA = {
    "attributes": [
        {"name": "v", "type": "int", "indexed": True},
        {"name": "f", "type": "float", "indexed": True},
    ]
}
TUNING = StoreTuning(block_events_max=4, block_bytes_max=90)
S = StreamName("s")
P0 = PartitionId(0)


class Region:
    """One region's store fed with encoded commands, as its Raft log would apply them."""

    def __init__(self, tuning: StoreTuning = TUNING, limits: StoreLimits | None = None) -> None:
        self.blocks = MemoryBlockStore()
        self.store = EventStore(self.blocks, tuning=tuning, limits=limits)
        self.batches: list[AppendBatch] = []  # what this region appended locally, in order
        self.apply(self.store.validate_create({"name": "s", "partitions": 2, "schema": SCHEMA}))

    def apply(self, cmd: Any) -> Any:
        index = LogIndex(self.store.applied_index + 1)
        return self.store.apply_entry(index, encode_command(cmd))

    def append(self, events: list[dict[str, Any]], producer: Any = None) -> list[Any]:
        prep = self.store.validate_append("s", events, now_us=5, producer=producer)
        out = []
        for b in prep.batches:
            res = self.apply(b)
            if isinstance(res, AppendResult) and not res.duplicate:
                self.batches.append(b)
            out.append(res)
        return out

    def set_home(self, partition: int, home: str, epoch: int) -> None:
        res = self.apply(SetHome(S, PartitionId(partition), RegionId(home), Epoch(epoch)))
        assert not isinstance(res, Rejected), res

    def entries(
        self, partition: int, from_seq: int, events_max: int = 1000, bytes_max: int = 1 << 20
    ) -> list[RemoteEntry]:
        info = self.store.partition_info("s", partition)
        return self.store.committed_entries(
            "s", partition, from_seq, info.last_seq, events_max, bytes_max
        )

    def view(self, partition: int) -> Any:
        """Everything a client sees of a partition: hash, events, aggregates."""
        st = self.store
        info = st.partition_info("s", partition)
        events = st.read("s", partition, 0, 10_000).events
        aggs = [
            st.aggregate("s", f, -100, 100, partition=partition, window_us=7).value
            for f in ("v", "f")
        ]
        return (info.log_hash, info.last_seq, info.blocks_sealed, events, aggs)


def make_events(rng: random.Random, n: int) -> list[dict[str, Any]]:
    return [
        {
            "ts": rng.randrange(-50, 50),
            "key": rng.choice([None, "a", "b"]),
            "partition": 0,
            "body": {"v": rng.randrange(100), "f": rng.random(), "pad": "x" * rng.randrange(40)},
        }
        for _ in range(n)
    ]


def apply_cmd(region: Region, entries: list[RemoteEntry], epoch: int, crc: int = 7) -> Any:
    cmd = ApplyRemote(
        S, P0, Epoch(epoch), entries[0].seq, entries[-1].last_seq, crc, tuple(entries)
    )
    return region.apply(cmd)


def ship_all(home: Region, remote: Region, epoch: int, rng: random.Random) -> None:
    """Ship everything the home applied, in batches of random size, as the shipper would."""
    last = home.store.partition_info("s", 0).last_seq
    while (wm := remote.store.watermark("s", 0)).seq < last:
        es = home.entries(0, wm.seq + 1, rng.randrange(1, 12), rng.randrange(1, 400))
        res = apply_cmd(remote, es, epoch)
        assert isinstance(res, RemoteResult) and res.verdict is RemoteVerdict.APPLIED, res
        assert res.watermark == StoreWatermark(Epoch(epoch), es[-1].last_seq)


def test_apply_remote_round_trips_through_the_command_encoding() -> None:
    cmd = ApplyRemote(
        S,
        P0,
        Epoch(3),
        Seq(5),
        Seq(7),
        123,
        (RemoteEntry(Seq(5), 2, b"ab", "p", 9, Epoch(2)), RemoteEntry(Seq(7), 1, b"c")),
    )
    assert decode_command(encode_command(cmd)) == cmd


@given(
    st.integers(0, 4),
    st.integers(-1, 12),
    st.integers(0, 5),
    st.integers(0, 14),
    st.integers(0, 4),
    st.integers(0, 4),
)
def test_the_store_rule_agrees_with_geo_apply_geo_batch(
    wm_epoch: int, wm_seq: int, epoch: int, start: int, length: int, below: int
) -> None:
    end = start + length
    known = max(wm_epoch - below, 0)  # a partition epoch the watermark already passed
    mark, verdict = decide_remote(
        StoreWatermark(Epoch(wm_epoch), Seq(wm_seq)),
        Epoch(epoch),
        Seq(start),
        Seq(end),
        Epoch(known),
    )
    entries = (GeoEntry(Seq(start), length + 1, b""),)
    geo = apply_geo_batch(
        Watermark(Epoch(wm_epoch), Seq(wm_seq)),
        GeoApply(S, P0, Epoch(epoch), Seq(start), Seq(end), 0, entries),
    )
    assert verdict.value == geo.verdict.value
    assert (mark.epoch, mark.seq) == (geo.watermark.epoch, geo.watermark.seq)


def test_the_store_applies_what_geo_applies_on_random_shipments() -> None:
    """Whole stores: random, repeated, reordered and stale batches, verdicts as geo's rule."""
    rng = random.Random(11)
    home = Region()
    for n in range(40):
        home.append(make_events(rng, rng.randrange(1, 6)), {"id": "p", "seq": n})
    all_entries = home.entries(0, 0)
    assert len(all_entries) == 40
    remote = Region()
    geo_wm = Watermark(Epoch(0), Seq(-1))
    seen: set[RemoteVerdict] = set()
    for _ in range(300):
        i = rng.randrange(len(all_entries))
        j = min(len(all_entries), i + rng.randrange(1, 5))
        epoch = rng.choice([1, 1, 1, 2, 2, 3]) if geo_wm.epoch else rng.choice([1, 2])
        es = all_entries[i:j]
        before = remote.view(0)
        res = apply_cmd(remote, es, epoch)
        geo = apply_geo_batch(
            geo_wm,
            GeoApply(
                S,
                P0,
                Epoch(epoch),
                es[0].seq,
                es[-1].last_seq,
                0,
                tuple(GeoEntry(e.seq, e.record_count, e.events) for e in es),
            ),
        )
        assert isinstance(res, RemoteResult)
        assert res.verdict.value == geo.verdict.value
        seen.add(res.verdict)
        assert (res.watermark.epoch, res.watermark.seq) == (geo.watermark.epoch, geo.watermark.seq)
        if not res.applied:
            assert remote.view(0) == before  # G3: nothing changes
        geo_wm = geo.watermark
        if rng.random() < 0.1 and geo_wm.epoch and geo_wm.seq < all_entries[-1].last_seq:
            # the shipper catches up from the watermark: the copy is a prefix all along (G1)
            es = home.entries(0, geo_wm.seq + 1, 3)
            geo_wm = Watermark(geo_wm.epoch, es[-1].last_seq)
            res = apply_cmd(remote, es, geo_wm.epoch)
            assert isinstance(res, RemoteResult) and res.applied
        got = remote.store.read("s", 0, 0, 10_000).events
        assert got == home.store.read("s", 0, 0, len(got) or 1).events[: len(got)]
    assert seen == set(RemoteVerdict)


def test_a_copy_built_from_committed_entries_is_identical_to_the_home() -> None:
    rng = random.Random(3)
    home, remote = Region(), Region()
    for n in range(60):
        producer = {"id": f"p{n % 3}", "seq": n} if n % 4 else None
        home.append(make_events(rng, rng.randrange(1, 9)), producer)
        if n == 30:  # a new home epoch (a failback, say): its events carry the new epoch
            home.set_home(0, "eu", 2)
        if n % 13 == 0:
            ship_all(home, remote, 1 if n < 30 else 2, rng)
    ship_all(home, remote, 2, rng)
    assert remote.view(0) == home.view(0)
    assert home.store.partition_info("s", 0).blocks_sealed > 20
    # the entries' own epochs are what make it so: shipped under the batch epoch alone, the
    # events written before the change of home would come out under epoch 2
    bare = Region()
    es = [replace(e, epoch=None) for e in home.entries(0, 0)]
    assert isinstance(apply_cmd(bare, es, 2), RemoteResult)
    assert bare.view(0)[0] != home.view(0)[0]
    assert (
        remote.store.partition_info("s", 1).log_hash == home.store.partition_info("s", 1).log_hash
    )
    # the copy holds the same batch index: it can ship on from any point after a move of home
    assert remote.entries(0, 0) == home.entries(0, 0)
    # the home's watermark is its own last write; the copy's the last batch's epoch
    assert home.store.watermark("s", 0) == StoreWatermark(Epoch(2), home.view(0)[1])
    assert remote.store.watermark("s", 0) == StoreWatermark(Epoch(2), home.view(0)[1])


def test_entries_are_the_original_batches_byte_for_byte_with_their_producers() -> None:
    rng = random.Random(5)
    home = Region()
    for n in range(25):
        home.append(make_events(rng, rng.randrange(1, 7)), {"id": "p", "seq": n})
    home.append(make_events(rng, 3))  # no producer
    es = home.entries(0, 0)
    assert [e.events for e in es] == [b.events for b in home.batches]
    assert [e.record_count for e in es] == [b.record_count for b in home.batches]
    assert [(e.producer_id, e.producer_seq) for e in es] == [("p", n) for n in range(25)] + [
        (None, None)
    ]
    assert all(e.epoch == 1 for e in es)
    seqs = [e.seq for e in es]
    assert seqs[0] == 0 and all(a.last_seq + 1 == b.seq for a, b in itertools.pairwise(es))
    assert seqs == sorted(seqs)
    # each sealed block is read once for a whole scan (blocks are cut, not re-read per entry)
    gets = home.blocks.gets
    home.entries(0, 0)
    assert home.blocks.gets - gets == home.store.partition_info("s", 0).blocks_sealed


def test_committed_entries_respect_budgets_and_the_applied_end() -> None:
    rng = random.Random(8)
    home = Region()
    counts = [3, 1, 4, 1, 5, 2]
    for n, c in enumerate(counts):
        home.append(make_events(rng, c), {"id": "p", "seq": n})
    st = home.store
    assert st.committed_entries("s", 0, 0, 100, 1, 1 << 20)[0].record_count == 3  # at least one
    assert [e.record_count for e in st.committed_entries("s", 0, 0, 100, 8, 1 << 20)] == [3, 1, 4]
    assert [e.record_count for e in st.committed_entries("s", 0, 3, 100, 6, 1 << 20)] == [1, 4, 1]
    assert len(st.committed_entries("s", 0, 0, 100, 100, 1)) == 1  # bytes bound
    # none past through_seq (whole entries), nothing past what was applied
    assert [e.record_count for e in st.committed_entries("s", 0, 0, 7, 100, 1 << 20)] == [3, 1, 4]
    assert [e.record_count for e in st.committed_entries("s", 0, 0, 9, 100, 1 << 20)] == [
        3,
        1,
        4,
        1,
    ]
    assert sum(e.record_count for e in st.committed_entries("s", 0, 0, 10**9, 100, 1 << 20)) == 16
    assert st.committed_entries("s", 0, 16, 100, 100, 1 << 20) == []
    assert st.committed_entries("s", 1, 0, 100, 100, 1 << 20) == []
    # starting inside a batch: the rest of it, without the producer (its outcome is the batch)
    (part, *_) = st.committed_entries("s", 0, 5, 100, 1, 1 << 20)
    assert (part.seq, part.record_count, part.producer_id) == (5, 3, None)


def test_ranges_older_than_the_batch_index_ship_without_producers_and_still_match() -> None:
    rng = random.Random(9)
    limits = StoreLimits(geo_batches_max=4)
    home, remote = Region(limits=limits), Region(limits=limits)
    for n in range(30):
        home.append(make_events(rng, rng.randrange(1, 6)), {"id": "p", "seq": n})
        if n == 12:
            home.set_home(0, "eu", 2)
    es = home.entries(0, 0, events_max=3)
    assert es and es[0].producer_id is None and all(e.record_count <= 3 for e in es)
    # old entries are cut at blocks and epoch runs: each has one epoch, in order
    everything = home.entries(0, 0, events_max=10**6, bytes_max=1 << 30)
    stored = home.store.read("s", 0, 0, 10_000).events
    for e in everything:
        assert {ev.epoch for ev in stored[e.seq : e.last_seq + 1]} == {e.epoch}
    assert {e.epoch for e in everything} == {1, 2}
    assert everything[-1].producer_id == "p"  # the recent batches keep theirs
    ship_all(home, remote, 2, rng)
    assert remote.view(0) == home.view(0)


def test_duplicates_gaps_overlaps_and_fencing_change_nothing() -> None:
    rng = random.Random(4)
    home = Region()
    for n in range(6):
        home.append(make_events(rng, 2), {"id": "p", "seq": n})
    es = home.entries(0, 0)
    remote = Region()
    first = apply_cmd(remote, es[:2], 2)
    assert isinstance(first, RemoteResult) and first.applied
    wm = StoreWatermark(Epoch(2), Seq(3))
    before = remote.view(0)
    cases = [
        (es[:2], 2, RemoteVerdict.DUPLICATE),  # the same batch again
        (es[1:2], 3, RemoteVerdict.DUPLICATE),  # covered, from a newer epoch
        (es[3:5], 2, RemoteVerdict.GAP),  # a hole
        (es[1:3], 2, RemoteVerdict.GAP),  # an overlap
        (es[2:3], 1, RemoteVerdict.FENCED),  # an older home
    ]
    for batch, epoch, verdict in cases:
        res = apply_cmd(remote, batch, epoch)
        assert isinstance(res, RemoteResult) and res.verdict is verdict, (batch, epoch)
        assert res.watermark == wm
        assert remote.view(0) == before
    assert remote.store.producer_count() == 1
    # the region learns of a newer home (epoch 4): batches of epoch 3 are fenced from now on
    remote.set_home(0, "us", 4)
    res = apply_cmd(remote, es[2:3], 3)
    assert isinstance(res, RemoteResult) and res.verdict is RemoteVerdict.FENCED
    res = apply_cmd(remote, es[2:3], 4)  # a new epoch continuing at the right place applies
    assert isinstance(res, RemoteResult) and res.applied
    assert res.watermark == StoreWatermark(Epoch(4), Seq(5))


def test_malformed_or_damaged_batches_are_rejected_whole() -> None:
    rng = random.Random(6)
    home = Region()
    for n in range(4):
        home.append(make_events(rng, 3), {"id": "p", "seq": n})
    es = home.entries(0, 0)
    remote = Region()
    before = remote.view(0)
    damaged = [es[0], replace(es[1], events=es[1].events[:-3])]  # G10: never half-applied
    bad_cmds = [
        damaged,
        [es[0], es[2]],  # not dense
        [es[0], replace(es[1], seq=Seq(2))],
        [es[0], replace(es[1], producer_seq=None)],
        [replace(es[0], record_count=2)],  # count does not match the events
        [replace(es[0], epoch=Epoch(5))],  # entry epoch above the batch's
    ]
    for entries in bad_cmds:
        res = apply_cmd(remote, entries, 1)
        assert isinstance(res, Rejected) and res.error.code is ErrorCode.MALFORMED, res
        assert remote.view(0) == before
        assert remote.store.watermark("s", 0) == WATERMARK_NONE
    wrong_end = ApplyRemote(S, P0, Epoch(1), Seq(0), Seq(7), 0, (es[0],))
    assert isinstance(remote.apply(wrong_end), Rejected)
    assert remote.store.producer_count() == 0


def test_producer_dedup_travels_with_shipped_batches() -> None:
    rng = random.Random(2)
    home, remote = Region(), Region()
    (orig,) = home.append(make_events(rng, 3), {"id": "client", "seq": 41})
    home.append(make_events(rng, 2), {"id": "other", "seq": 1})
    ship_all(home, remote, 1, rng)
    # the home moves to the remote region (epoch 2), and the client's retry lands there
    remote.set_home(0, "remote", 2)
    assert remote.store.home_of("s", 0).home == "remote"
    assert remote.store.home_of("s", 0).epoch == 2
    (retry,) = remote.append(make_events(rng, 3), {"id": "client", "seq": 41})
    assert isinstance(retry, AppendResult) and retry.duplicate
    assert (retry.first_seq, retry.last_seq, retry.epoch) == (
        orig.first_seq,
        orig.last_seq,
        orig.epoch,
    )
    assert remote.store.partition_info("s", 0).last_seq == 4  # nothing stored twice
    (fresh,) = remote.append(make_events(rng, 1), {"id": "client", "seq": 42})
    assert isinstance(fresh, AppendResult) and not fresh.duplicate and fresh.first_seq == 5
    assert remote.store.watermark("s", 0) == StoreWatermark(Epoch(2), Seq(5))


def test_a_region_holding_a_newer_homes_data_refuses_stale_local_appends() -> None:
    rng = random.Random(1)
    home, remote = Region(), Region()
    home.set_home(0, "home", 2)
    home.append(make_events(rng, 2))
    ship_all(home, remote, 2, rng)  # the remote region has not applied the SetHome yet
    (res,) = remote.append(make_events(rng, 1))
    assert isinstance(res, Rejected) and res.error.code is ErrorCode.MOVING
    assert remote.view(0) == home.view(0)


def test_watermarks_and_the_batch_index_survive_snapshots() -> None:
    rng = random.Random(7)
    home, remote = Region(), Region()
    for n in range(20):
        home.append(make_events(rng, rng.randrange(1, 5)), {"id": "p", "seq": n})
    ship_all(home, remote, 3, rng)
    info = remote.store.partitions()
    assert info[0].watermark == StoreWatermark(Epoch(3), info[0].last_seq)
    assert info[1].watermark == WATERMARK_NONE
    assert info[0].to_json()["watermark"] == {"epoch": 3, "seq": info[0].last_seq}
    for include_blocks in (True, False):
        chunks = list(remote.store.snapshot_chunks(97, include_blocks=include_blocks))
        blocks = MemoryBlockStore() if include_blocks else remote.blocks
        copy = EventStore(blocks, tuning=TUNING)
        copy.restore_from_chunks(chunks)
        assert copy.partitions() == info
        assert copy.watermarks() == remote.store.watermarks()
        assert copy.committed_entries("s", 0, 0, 10**6, 10**6, 1 << 30) == remote.entries(
            0, 0, 10**6, 1 << 30
        )
        # and it goes on applying shipped batches where the original would
        home.append(make_events(rng, 2), {"id": "p", "seq": 100 + include_blocks})
        es = home.entries(0, info[0].last_seq + 1)
        cmd = ApplyRemote(S, P0, Epoch(3), es[0].seq, es[-1].last_seq, 0, tuple(es))
        res = copy.apply(LogIndex(copy.applied_index + 1), cmd)
        assert isinstance(res, RemoteResult) and res.applied
    # a snapshot from before watermarks (no mark or batch records) restores a derived mark
    old = [
        r
        for r in read_records(remote.store.snapshot_chunks(1 << 20))
        if r[0] not in ("mark", "runs")
    ]
    out = FrameWriter(1 << 20)
    legacy = [c for r in old for c in out.add(r)] + list(out.finish())
    copy = EventStore(MemoryBlockStore(), tuning=TUNING)
    copy.restore_from_chunks(legacy)
    assert copy.watermark("s", 0) == StoreWatermark(Epoch(1), info[0].last_seq)
    assert copy.committed_entries("s", 0, 0, 10**6, 10**6, 1 << 30)[0].producer_id is None
