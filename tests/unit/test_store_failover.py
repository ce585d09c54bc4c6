"""A change of home forks a partition's history: regions holding events past the fork move exactly those to a quarantine and then follow the new home to identical logs and hashes; positions past a fork are superseded; planned-move, lease and backpressure rules decide as documented."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geostore.errors import HTTP_STATUS, ApiError, ErrorCode
from geostore.geo import GeoEntry, make_batch, open_batch
from geostore.geo.batch import BatchError
from geostore.ids import Epoch, LogIndex, PartitionId, RegionId, Seq, StreamName
from geostore.store import (
    AppendResult,
    ApplyRemote,
    EventStore,
    MemoryBlockStore,
    Rejected,
    RemoteEntry,
    RemoteResult,
    RemoteVerdict,
    SetHome,
    StoreTuning,
    StoreWatermark,
    decode_command,
    encode_command,
)
from geostore.store.failover import (
    Admission,
    EpochHistory,
    LagPolicy,
    MovePhase,
    PlannedMove,
    admit_append,
    lag_refused,
    lease_expired,
    plan_failover,
)
from geostore.store.model import HomeResult

S = StreamName("s")
P0 = PartitionId(0)


class Region:
    """One region's store fed with encoded commands, as its Raft log would apply them."""

    def __init__(self, name: str, tuning: StoreTuning) -> None:
        self.name = RegionId(name)
        self.blocks = MemoryBlockStore()
        self.store = EventStore(self.blocks, tuning=tuning)
        self.apply(self.store.validate_create({"name": "s", "homes": {"0": "a"}}))

    def apply(self, cmd: Any) -> Any:
        index = LogIndex(self.store.applied_index + 1)
        return self.store.apply_entry(index, encode_command(cmd))

    def append(self, n: int, rng: random.Random, producer: Any = None) -> Any:
        events = [
            {
                "ts": rng.randrange(100),
                "key": rng.choice([None, "k"]),
                "body": {"x": "y" * rng.randrange(30), "n": rng.random()},
            }
            for _ in range(n)
        ]
        prep = self.store.validate_append("s", events, now_us=1, producer=producer)
        (res,) = [self.apply(b) for b in prep.batches]
        return res

    @property
    def last(self) -> int:
        return self.store.partition_info("s", 0).last_seq

    def info(self) -> Any:
        i = self.store.partition_info("s", 0)
        return (i.log_hash, i.last_seq, i.blocks_sealed)

    def events(self) -> Any:
        return self.store.read("s", 0, 0, 10_000).events


def ship(src: Region, dst: Region, through: int | None = None, chunk: int = 3) -> None:
    """Ship src's entries after dst's watermark up to ``through`` through the geo batch codec
    (GeoEntry -> make_batch -> open_batch -> RemoteEntry), as the runtime does."""
    epoch = src.store.home_of("s", 0).epoch
    through = src.last if through is None else through
    while dst.last < through:
        es = src.store.committed_entries("s", 0, dst.last + 1, through, chunk, 1 << 20)
        geo = [
            GeoEntry(e.seq, e.record_count, e.events, e.producer_id, e.producer_seq, e.epoch)
            for e in es
        ]
        batch = make_batch(S, P0, epoch, geo)
        opened = open_batch(batch)
        cmd = ApplyRemote(
            S,
            P0,
            batch.epoch,
            batch.src_start,
            batch.src_end,
            batch.crc,
            tuple(
                RemoteEntry(e.seq, e.record_count, e.events, e.producer_id, e.producer_seq, e.epoch)
                for e in opened
            ),
        )
        res = dst.apply(cmd)
        assert isinstance(res, RemoteResult) and res.applied, res


def move(region: Region, home: str, epoch: int, fork: int | None) -> HomeResult:
    res = region.apply(
        SetHome(S, P0, RegionId(home), Epoch(epoch), None if fork is None else Seq(fork))
    )
    assert isinstance(res, HomeResult), res
    return res


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    block_events=st.sampled_from([2, 3, 5, 16]),
    block_bytes=st.sampled_from([60, 200, 4096]),
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=12),
    fork_frac=st.floats(0.0, 1.0),
    third_frac=st.floats(0.0, 1.0),
    after=st.lists(st.integers(1, 5), max_size=5),
)
def test_failover_then_failback_quarantines_the_orphaned_suffix_and_converges(
    seed: int,
    block_events: int,
    block_bytes: int,
    sizes: list[int],
    fork_frac: float,
    third_frac: float,
    after: list[int],
) -> None:
    rng = random.Random(seed)
    tuning = StoreTuning(block_events_max=block_events, block_bytes_max=block_bytes)
    a, b, c = Region("a", tuning), Region("b", tuning), Region("c", tuning)
    for n, size in enumerate(sizes):
        res = a.append(size, rng, {"id": "p", "seq": n})
        assert isinstance(res, AppendResult)
    # b and c hold prefixes of a's log, at entry boundaries (shipping is by whole entries)
    bounds = [-1] + [
        e.last_seq for e in a.store.committed_entries("s", 0, 0, a.last, 10**6, 1 << 30)
    ]
    fork = bounds[int(fork_frac * (len(bounds) - 1))]
    third = bounds[int(third_frac * (len(bounds) - 1))]
    ship(a, b, fork)
    ship(a, c, third)
    orphaned = a.events()[fork + 1 :]
    # a is lost; b takes over at its watermark with epoch 2; every survivor learns it
    plan = plan_failover(
        S,
        P0,
        a.name,
        a.store.history("s", 0),
        {b.name: b.store.watermark("s", 0)},
        lost_last_seq=a.last,
    )
    assert plan.fork_seq == fork and plan.lost_events == len(orphaned)
    assert move(b, "b", 2, fork).quarantined == 0
    res_c = move(c, "b", 2, fork)
    assert res_c.quarantined == max(0, third - fork)
    for k, n in enumerate(after):
        assert isinstance(b.append(n, rng, {"id": "q", "seq": k}), AppendResult)
    # a returns and learns the new epoch: its suffix goes to quarantine, exactly
    res_a = move(a, "b", 2, fork)
    assert res_a.quarantined == len(orphaned)
    q = list(a.store.quarantine_events("s", 0))
    assert [(e["seq"], e["ts"], e["key"], e["body"]) for e in q] == [
        (e.seq, e.ts, e.key, e.body) for e in orphaned
    ]
    assert all(e["epoch"] == 1 and e["superseded_by"] == 2 and e["fork_seq"] == fork for e in q)
    json.dumps(q)  # exportable as JSON lines
    assert a.last == fork and a.store.watermark("s", 0).seq == fork
    # then it follows the new home from the fork, without a resync; so does c
    ship(b, a)
    ship(b, c)
    assert a.info() == b.info() == c.info()
    assert a.events() == b.events() == c.events()
    assert [e.epoch for e in b.events()] == [1] * (fork + 1) + [2] * sum(after)
    # positions past the fork under epoch 1 are superseded; before it, and epoch 2, are not
    for r in (a, b, c):
        if orphaned:
            with pytest.raises(ApiError) as err:
                r.store.check_position("s", 0, 1, fork + 1)
            assert err.value.code is ErrorCode.SUPERSEDED_EPOCH
        r.store.check_position("s", 0, 1, fork)
        r.store.check_position("s", 0, 2, b.last)
    # the quarantine survives snapshots, and so does the history
    for include_blocks in (True, False):
        copy = EventStore(MemoryBlockStore() if include_blocks else a.blocks, tuning=tuning)
        copy.restore_from_chunks(a.store.snapshot_chunks(101, include_blocks=include_blocks))
        assert copy.quarantine() == a.store.quarantine()
        assert copy.history("s", 0) == a.store.history("s", 0)
        assert copy.partition_info("s", 0) == a.store.partition_info("s", 0)


def test_a_producer_retry_of_a_quarantined_write_is_applied_anew() -> None:
    rng = random.Random(1)
    tuning = StoreTuning(block_events_max=4, block_bytes_max=4096)
    a, b = Region("a", tuning), Region("b", tuning)
    a.append(3, rng, {"id": "p", "seq": 1})
    ship(a, b)
    lost = a.append(2, rng, {"id": "p", "seq": 2})
    assert isinstance(lost, AppendResult) and (lost.first_seq, lost.last_seq) == (3, 4)
    inflight = a.store.validate_append("s", [{"body": 0}], now_us=1, producer={"id": "p", "seq": 3})
    move(b, "b", 2, 2)
    move(a, "b", 2, 2)
    # the old home refuses appends validated under the old epoch, and the retry goes to the
    # new home (the runtime refuses local appends for a partition homed elsewhere)...
    res = a.apply(inflight.batches[0])
    assert isinstance(res, Rejected) and res.error.code is ErrorCode.MOVING
    # ... where it is new; in the failed-back region too, once shipped, it is not a duplicate
    retry = b.append(2, rng, {"id": "p", "seq": 2})
    assert isinstance(retry, AppendResult) and not retry.duplicate and retry.epoch == 2
    ship(b, a)
    assert a.info() == b.info()
    again = a.store.validate_append("s", [{"body": 1}], now_us=1, producer={"id": "p", "seq": 2})
    dup = a.apply(again.batches[0])
    assert isinstance(dup, AppendResult) and dup.duplicate and dup.first_seq == 3


def test_a_batch_opening_an_unlearned_epoch_waits_for_the_set_home() -> None:
    rng = random.Random(2)
    tuning = StoreTuning(block_events_max=4, block_bytes_max=4096)
    a, b, c = Region("a", tuning), Region("b", tuning), Region("c", tuning)
    a.append(4, rng)
    ship(a, b, 1)  # b holds 0..1 (the fork)
    ship(a, c)  # c holds 0..3: two events past the fork
    move(b, "b", 2, 1)
    b.append(3, rng)
    es = b.store.committed_entries("s", 0, 4, b.last, 10, 1 << 20)
    cmd = ApplyRemote(S, P0, Epoch(2), es[0].seq, es[-1].last_seq, 0, tuple(es))
    res = c.apply(cmd)
    assert isinstance(res, RemoteResult) and res.verdict is RemoteVerdict.GAP
    assert c.last == 3
    assert move(c, "b", 2, 1).quarantined == 2
    ship(b, c)
    assert c.info() == b.info()


def test_set_home_encodes_its_fork_and_decodes_the_older_form() -> None:
    cmd = SetHome(S, P0, RegionId("b"), Epoch(3), Seq(41))
    assert decode_command(encode_command(cmd)) == cmd
    old = SetHome(S, P0, RegionId("b"), Epoch(3))
    assert decode_command(encode_command(old)) == old


def test_epoch_history_superseded_positions() -> None:
    h = EpochHistory.first(Epoch(1)).fork(Epoch(2), Seq(9)).fork(Epoch(4), Seq(14))
    assert h.starts == ((1, 0), (2, 10), (4, 15))
    assert [h.epoch_at(s) for s in (0, 9, 10, 14, 15, 99)] == [1, 1, 2, 2, 4, 4]
    assert h.end_of(Epoch(1)) == 9 and h.end_of(Epoch(4)) is None
    assert not h.superseded(1, 9) and h.superseded(1, 10)
    assert not h.superseded(2, 14) and h.superseded(2, 15)
    assert h.superseded(3, 0)  # epoch 3 was cut off entirely
    assert not h.superseded(4, 1000) and not h.superseded(7, 0)  # current, or not learned yet
    # a fork below an epoch's start drops that epoch
    assert h.fork(Epoch(5), Seq(5)).starts == ((1, 0), (5, 6))


def test_failover_waits_for_the_lease_and_picks_the_fullest_survivor() -> None:
    assert not lease_expired(1000, 200, 1199) and lease_expired(1000, 200, 1200)
    wms = {
        RegionId("b"): StoreWatermark(Epoch(1), Seq(7)),
        RegionId("c"): StoreWatermark(Epoch(1), Seq(9)),
    }
    h = EpochHistory.first(Epoch(1))
    plan = plan_failover(S, P0, RegionId("a"), h, wms, lost_last_seq=12)
    assert plan.survivor == "c" and plan.fork_seq == 9 and plan.lost_events == 3
    assert plan.set_home == SetHome(S, P0, RegionId("c"), Epoch(2), Seq(9))
    forced = plan_failover(S, P0, RegionId("a"), h, wms, to=RegionId("b"))
    assert forced.fork_seq == 7 and forced.lost_events == -1
    with pytest.raises(ApiError):
        plan_failover(S, P0, RegionId("a"), h, wms, to=RegionId("zz"))


def test_planned_move_phases_and_pauses() -> None:
    m = PlannedMove.start(S, P0, RegionId("a"), RegionId("b"), Epoch(3), 100)
    assert m.writes_paused
    with pytest.raises(ApiError) as err:
        m.check_append(RegionId("a"))
    assert err.value.code is ErrorCode.MOVING and HTTP_STATUS[err.value.code] == 503
    m.check_append(RegionId("c"))  # not involved
    m = m.fenced(Seq(41), 130)
    assert m.phase is MovePhase.DRAINING and m.fence_seq == 41
    assert m.on_target_watermark(Seq(40), 150) is m
    m = m.on_target_watermark(Seq(41), 180)
    assert m.phase is MovePhase.BUMPING
    assert m.set_home() == SetHome(S, P0, RegionId("b"), Epoch(4), Seq(41))
    m = m.bumped(200)
    assert m.phase is MovePhase.DONE and not m.writes_paused
    assert m.pauses_ms == (("fencing", 30), ("draining", 50), ("bumping", 20))
    m.check_append(RegionId("a"))
    aborted = PlannedMove.start(S, P0, RegionId("a"), RegionId("b"), Epoch(3), 0).abort(5)
    assert aborted.phase is MovePhase.ABORTED and not aborted.writes_paused


@given(lag=st.integers(0, 5000), rpo=st.integers(1, 3000))
def test_backpressure_is_monotonic_in_the_lag(lag: int, rpo: int) -> None:
    policy = LagPolicy(rpo_ms=rpo)
    adm, delay = admit_append(lag, policy)
    if lag >= rpo:
        assert adm is Admission.REFUSE
    elif lag < rpo / 2:
        assert (adm, delay) == (Admission.ADMIT, 0)
    else:
        assert adm is Admission.SLOW and 1 <= delay <= policy.delay_ms_max
        nxt, d2 = admit_append(lag + 1, policy)
        assert nxt is Admission.REFUSE or d2 >= delay
    assert admit_append(lag, None) == (Admission.ADMIT, 0)
    err = lag_refused("s", 0, lag, policy)
    assert err.code is ErrorCode.REPLICATION_LAG and HTTP_STATUS[err.code] == 503


def test_batch_entries_carry_their_epoch_and_older_entries_read_as_the_batch_epoch() -> None:
    es = [GeoEntry(Seq(0), 1, b"a", epoch=Epoch(1)), GeoEntry(Seq(1), 2, b"bb", "p", 3, Epoch(2))]
    b = make_batch(S, P0, Epoch(2), es)
    assert list(open_batch(b)) == es
    from geostore.codec import dumps_plain
    from geostore.geo.messages import CODEC_NONE

    old = make_batch(S, P0, Epoch(2), [GeoEntry(Seq(0), 1, b"a")], codec=CODEC_NONE)
    legacy = _recode(old, dumps_plain([[1, b"a", None, None]]))
    assert open_batch(legacy) == (GeoEntry(Seq(0), 1, b"a"),)
    for bad in ([[1, b"a", None, None, 3]], [[1, b"a", None, None, "x"]]):
        with pytest.raises(BatchError):
            open_batch(_recode(old, dumps_plain(bad)))
    two = make_batch(
        S, P0, Epoch(2), [GeoEntry(Seq(0), 1, b"a"), GeoEntry(Seq(1), 1, b"b")], codec=CODEC_NONE
    )
    with pytest.raises(BatchError):  # epochs go back along the batch
        open_batch(_recode(two, dumps_plain([[1, b"a", None, None, 2], [1, b"b", None, None, 1]])))


def _recode(b: Any, payload: bytes) -> Any:
    import dataclasses

    from geostore.geo import resealed

    return resealed(dataclasses.replace(b, payload=payload))


def test_a_fence_holds_appends_in_the_log_names_the_fork_and_the_move_lifts_it() -> None:
    from geostore.store import FenceHome

    rng = random.Random(4)
    tuning = StoreTuning(block_events_max=4, block_bytes_max=4096)
    a, b = Region("a", tuning), Region("b", tuning)
    a.append(3, rng)
    inflight = a.store.validate_append("s", [{"body": 1}], now_us=1)
    move = PlannedMove.start(S, P0, a.name, b.name, Epoch(1), 0)
    assert decode_command(encode_command(move.fence_command())) == move.fence_command()
    res = a.apply(move.fence_command())
    assert isinstance(res, HomeResult) and res.fork_seq == 2 and a.store.is_fenced("s", 0)
    late = a.apply(inflight.batches[0])  # validated before the fence, committed after
    assert isinstance(late, Rejected) and late.error.code is ErrorCode.MOVING
    # the fence is replicated state: it survives a snapshot
    copy = EventStore(MemoryBlockStore(), tuning=tuning)
    copy.restore_from_chunks(a.store.snapshot_chunks(64))
    assert copy.is_fenced("s", 0)
    stale = a.apply(FenceHome(S, P0, Epoch(7)))
    assert isinstance(stale, Rejected) and stale.error.code is ErrorCode.SUPERSEDED_EPOCH
    move = move.fenced(res.fork_seq, 5)
    ship(a, b)
    move = move.on_target_watermark(b.store.watermark("s", 0).seq, 9)
    for r in (a, b):
        assert move.set_home() == SetHome(S, P0, b.name, Epoch(2), Seq(2))
        assert r.apply(move.set_home()).quarantined == 0
    assert not a.store.is_fenced("s", 0)
    assert isinstance(b.append(2, rng), AppendResult)
    ship(b, a)
    assert a.info() == b.info()
    # an abandoned move lifts its fence
    c = Region("c", tuning)
    m2 = PlannedMove.start(S, P0, c.name, b.name, Epoch(1), 0)
    c.apply(m2.fence_command())
    c.apply(m2.unfence_command())
    assert not c.store.is_fenced("s", 0) and isinstance(c.append(1, rng), AppendResult)


@settings(max_examples=300, deadline=None)
@given(
    forks=st.lists(st.tuples(st.integers(1, 3), st.integers(-1, 60)), min_size=1, max_size=6),
    probe=st.tuples(st.integers(0, 30), st.integers(0, 80)),
)
def test_history_positions_agree_with_the_canonical_log(
    forks: list[tuple[int, int]], probe: tuple[int, int]
) -> None:
    """A model: replay forks on an explicit log of epochs; a position (epoch, seq) that an
    epoch wrote is superseded exactly when the canonical log no longer holds that epoch at
    that seq; epochs at or past the current one never are."""
    h = EpochHistory.first(Epoch(1))
    log: list[int] = [1] * 10  # the epoch of each event, canonical
    wrote: dict[int, tuple[int, int]] = {1: (0, 9)}  # epoch -> (first, last) seq it wrote
    epoch = 1
    for step, fork in forks:
        epoch += step
        fork = min(fork, len(log) - 1)
        h = h.fork(Epoch(epoch), Seq(fork))
        log = log[: fork + 1] + [epoch] * 5
        wrote[epoch] = (fork + 1, fork + 5)
    for seq, e in enumerate(log):
        assert h.epoch_at(seq) == e
    e, seq = probe
    if e >= h.current:
        assert not h.superseded(e, seq)
    elif e in wrote and wrote[e][0] <= seq <= wrote[e][1]:
        held = seq < len(log) and log[seq] == e
        assert h.superseded(e, seq) == (not held), (h.starts, log, e, seq)
