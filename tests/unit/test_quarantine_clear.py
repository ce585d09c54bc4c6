"""The quarantine's bound and its clear: quarantined event bytes live in the block store (memory
keeps per-run metadata only), a ClearQuarantine command drops exactly the runs it names (by
partition, stream, epoch, or all; nothing matched answers 0; an unknown stream is refused) on
every replica alike, also after a snapshot and restore, without touching any served event or
hash; cleared bodies leave the disk only once no snapshot the host keeps names them; a
failback past many batches merges them into a bounded number of runs without losing an event
or its producer; each failback logs the quarantine's size, as a warning over the configured
threshold; a damaged or missing body fails a restore without changing anything; and snapshots
of the older form (bodies inline) still restore."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from geostore.errors import CodecError, ErrorCode, StorageError
from geostore.ids import Epoch, LogIndex, PartitionId, RegionId, Seq, StreamName, Term
from geostore.node.raft_host import HostConfig
from geostore.raft.types import Entry, EntryKind
from geostore.runtime.machine import StoreMachine
from geostore.store import (
    ClearQuarantine,
    EventStore,
    MemoryBlockStore,
    QuarantineCleared,
    Rejected,
    SetHome,
    StoreTuning,
    decode_command,
    encode_command,
    state,
)
from geostore.store._cbor import dumps
from geostore.store.blocks import quarantine_block_no
from geostore.store.failover import QuarantinedRun
from geostore.store.snapshot import FrameWriter, read_records
from geostore.store.state import SNAPSHOTS_HELD

TUNING = StoreTuning(block_events_max=4, block_bytes_max=4096)


class Node:
    """One replica: a store fed with encoded commands, as its Raft log would apply them."""

    def __init__(self, blocks: MemoryBlockStore | None = None) -> None:
        self.blocks = blocks if blocks is not None else MemoryBlockStore()
        self.store = EventStore(self.blocks, tuning=TUNING)

    def apply(self, cmd: Any) -> Any:
        return self.store.apply_entry(LogIndex(self.store.applied_index + 1), encode_command(cmd))

    def state(self) -> Any:
        """Everything a client or operator can see of the quarantine and the partitions."""
        s = self.store
        return (
            s.quarantine(),
            list(s.quarantine_events()),
            s.quarantine_size(),
            s.partitions(),
            [s.read(d.name, p, 0, 10_000).events for d in s.streams() for p in range(d.partitions)],
        )


def history() -> list[Any]:
    """Commands of one region: two streams, appends in several batches, two failbacks of
    ``s/0`` (epochs 2 and 3), one of ``s/1`` and one of ``t/0``."""
    out: list[Any] = []
    scratch = Node()

    def add(cmd: Any) -> None:
        scratch.apply(cmd)
        out.append(cmd)

    def append(stream: str, partition: int, n: int, producer: Any = None) -> None:
        events = [
            {"partition": partition, "ts": 10 + i, "key": f"k{i}", "body": {"i": i, "x": "y" * i}}
            for i in range(n)
        ]
        prep = scratch.store.validate_append(stream, events, now_us=1, producer=producer)
        for b in prep.batches:
            add(b)

    def fork(stream: str, partition: int, epoch: int, seq: int) -> None:
        sh = SetHome(StreamName(stream), PartitionId(partition), RegionId("b"), Epoch(epoch),
                     Seq(seq))  # fmt: skip
        add(sh)

    add(scratch.store.validate_create({"name": "s", "partitions": 2}))
    add(scratch.store.validate_create({"name": "t"}))
    append("s", 0, 3)
    append("s", 0, 4, {"id": "p", "seq": 1})
    append("s", 1, 5)
    append("t", 0, 6)
    fork("s", 0, 2, 1)  # 5 events of epoch 1 quarantined (two runs)
    append("s", 0, 3)  # epoch 2 at seqs 2..4 (the home moved: validate takes the epoch)
    fork("s", 0, 3, 3)  # seq 4 of epoch 2 quarantined
    fork("s", 1, 2, 2)  # seqs 3..4
    fork("t", 0, 2, -1)  # all 6
    return out


def fed(cmds: list[Any]) -> Node:
    n = Node()
    for c in cmds:
        assert not isinstance(n.apply(c), Rejected)
    return n


def test_clear_command_encodes_and_decodes() -> None:
    for cmd in (
        ClearQuarantine(),
        ClearQuarantine(StreamName("s")),
        ClearQuarantine(StreamName("s"), PartitionId(3), Epoch(7)),
        ClearQuarantine(through_epoch=Epoch(0)),
    ):
        assert decode_command(encode_command(cmd)) == cmd
    for bad in (
        [1, "qclear", None, 0, None],  # a partition without a stream
        [1, "qclear", "s", -1, None],
        [1, "qclear", "s", None, "2"],
        [1, "qclear", "s", None],
    ):
        with pytest.raises(CodecError):
            decode_command(dumps(bad))


def test_memory_keeps_metadata_only_the_bodies_are_in_the_block_store() -> None:
    n = fed(history())
    runs = n.store.quarantine()
    assert n.store.quarantine_size() == (
        len(runs),
        sum(q.record_count for q in runs),
        sum(q.size_bytes for q in runs),
    )
    assert n.store.quarantine_size()[1] == 5 + 1 + 2 + 6
    for q in runs:
        assert not any(type(getattr(q, f.name)) is bytes for f in dataclasses.fields(q))
        assert n.blocks.has(q.stream, q.partition, quarantine_block_no(q.slot))
    # every slot of a partition is its own
    assert len({(q.stream, q.partition, q.slot) for q in runs}) == len(runs)
    # a damaged body is an error, never a silent short export
    q = runs[0]
    n.blocks._blocks[(q.stream, q.partition, quarantine_block_no(q.slot))] = b"\x00" * q.size_bytes
    with pytest.raises(StorageError):
        list(n.store.quarantine_events())


def test_clear_by_partition_stream_epoch_and_all() -> None:
    n = fed(history())
    before = n.state()
    size = n.store.quarantine_size()
    s0 = n.store.quarantine("s", 0)
    assert {q.superseded_by for q in s0} == {2, 3}

    # nothing matches: 0, and nothing changes
    res = n.apply(ClearQuarantine(StreamName("s"), PartitionId(0), Epoch(1)))
    assert res == QuarantineCleared(0, 0, 0, *size)
    assert n.state() == before

    # s/0 through epoch 2: the runs the epoch-2 fork orphaned, not the epoch-3 one
    res = n.apply(ClearQuarantine(StreamName("s"), PartitionId(0), Epoch(2)))
    gone = [q for q in s0 if q.superseded_by <= 2]
    assert isinstance(res, QuarantineCleared)
    assert (res.runs, res.events) == (len(gone), 5)
    assert res.bytes == sum(q.size_bytes for q in gone)
    assert (res.runs_left, res.events_left) == (size[0] - len(gone), size[1] - 5)
    assert n.store.quarantine("s", 0) == [q for q in s0 if q.superseded_by == 3]
    assert n.store.quarantine_size() == (res.runs_left, res.events_left, res.bytes_left)

    # the stream s: what is left of s/0 and all of s/1; t is untouched
    t_runs = n.store.quarantine("t")
    res = n.apply(ClearQuarantine(StreamName("s")))
    assert isinstance(res, QuarantineCleared) and res.events == 1 + 2
    assert n.store.quarantine("s") == [] and n.store.quarantine() == t_runs

    # everything
    res = n.apply(ClearQuarantine())
    assert isinstance(res, QuarantineCleared) and (res.events, res.events_left) == (6, 0)
    assert n.store.quarantine() == [] and list(n.store.quarantine_events()) == []
    assert n.store.quarantine_size() == (0, 0, 0)
    # served events, partitions and hashes never moved
    assert n.state()[3:] == before[3:]
    # an empty quarantine clears to 0 again
    assert n.apply(ClearQuarantine()) == QuarantineCleared(0, 0, 0, 0, 0, 0)


def test_clear_of_an_unknown_stream_or_partition_is_refused_alike() -> None:
    n = fed(history())
    before = n.state()
    res = n.apply(ClearQuarantine(StreamName("nope")))
    assert isinstance(res, Rejected) and res.error.code is ErrorCode.UNKNOWN_STREAM
    res = n.apply(ClearQuarantine(StreamName("s"), PartitionId(2)))
    assert isinstance(res, Rejected) and res.error.code is ErrorCode.UNKNOWN_PARTITION
    assert n.state() == before


@pytest.mark.parametrize("include_blocks", [True, False])
def test_replicas_decide_alike_across_a_snapshot_and_restore(include_blocks: bool) -> None:
    cmds = history()
    later = [
        ClearQuarantine(StreamName("s"), PartitionId(0), Epoch(2)),
        ClearQuarantine(StreamName("t")),
        ClearQuarantine(),
    ]
    for cut in range(len(cmds) - 3, len(cmds) + 1):
        a = fed(cmds)
        b = fed(cmds[:cut])
        c = Node(None if include_blocks else b.blocks)
        c.store.restore_from_chunks(b.store.snapshot_chunks(97, include_blocks=include_blocks))
        for cmd in cmds[cut:]:
            c.apply(cmd)
        assert c.state() == a.state()
        for cmd in later:
            assert c.apply(cmd) == a.apply(cmd)
            assert c.state() == a.state()


def test_cleared_bodies_leave_the_disk_once_no_kept_snapshot_names_them() -> None:
    # more snapshots than the host keeps for restarts and transfers
    assert HostConfig().snapshots_cached < SNAPSHOTS_HELD
    n = fed(history())
    t_runs = n.store.quarantine("t")
    keys = [(q.stream, q.partition, quarantine_block_no(q.slot)) for q in t_runs]
    snap = b"".join(n.store.snapshot_chunks(1 << 20, include_blocks=False))
    n.apply(ClearQuarantine(StreamName("t")))
    for k in range(SNAPSHOTS_HELD):
        assert all(n.blocks.has(*key) for key in keys), k  # an older snapshot may name them
        # the snapshot taken before the clear still restores (over the same block store)
        Node(n.blocks).store.restore_from_chunks([snap])
        last = b"".join(n.store.snapshot_chunks(1 << 20, include_blocks=False))
    assert not any(n.blocks.has(*key) for key in keys)
    # the other bodies stay, and the newest snapshot restores
    for q in n.store.quarantine():
        assert n.blocks.has(q.stream, q.partition, quarantine_block_no(q.slot))
    r = Node(n.blocks)
    r.store.restore_from_chunks([last])
    assert r.state() == n.state()


def test_a_restore_deletes_the_bodies_its_snapshot_says_were_cleared() -> None:
    n = fed(history())
    keys = [(q.stream, q.partition, quarantine_block_no(q.slot)) for q in n.store.quarantine()]
    n.apply(ClearQuarantine())
    snap = b"".join(n.store.snapshot_chunks(1 << 20, include_blocks=False))
    assert all(n.blocks.has(*key) for key in keys)
    r = Node(n.blocks)  # a restart over the same block files
    r.store.restore_from_chunks([snap])
    assert not any(n.blocks.has(*key) for key in keys)
    assert r.state() == n.state()


def test_slots_are_never_reused_after_a_clear() -> None:
    cmds = history()
    n = fed(cmds)
    used = {q.slot for q in n.store.quarantine("s", 0)}
    n.apply(ClearQuarantine())
    r = Node()
    r.store.restore_from_chunks(n.store.snapshot_chunks(1 << 20))
    # a new failback of s/0 (epoch 3 wrote seqs 4..; fork below them)
    events = [{"partition": 0, "body": {"z": i}} for i in range(3)]
    for node in (n, r):
        prep = node.store.validate_append("s", events, now_us=1)
        assert not isinstance(node.apply(prep.batches[0]), Rejected)
        node.apply(SetHome(StreamName("s"), PartitionId(0), RegionId("c"), Epoch(4), Seq(3)))
    new = n.store.quarantine("s", 0)
    assert new and not {q.slot for q in new} & used
    assert r.store.quarantine() == new
    assert list(r.store.quarantine_events()) == list(n.store.quarantine_events())


def test_a_snapshot_of_the_older_form_with_inline_bodies_restores() -> None:
    n = fed(history())
    new_form = b"".join(n.store.snapshot_chunks(1 << 20, include_blocks=True))
    out = FrameWriter(1 << 20)
    old: list[bytes] = []
    runs: dict[tuple[Any, Any, Any], QuarantinedRun] = {
        (q.stream, q.partition, q.slot): q for q in n.store.quarantine()
    }
    for rec in read_records([new_form]):
        if rec[0] in ("qbody", "qslots"):
            continue
        if rec[0] == "quarantine":
            q = runs[(rec[1], rec[2], rec[10])]
            rec = [*rec[:8], n.store.quarantined_body(q), *rec[11:13]]
            assert len(rec) == 11
        old += out.add(rec)
    old += out.finish()
    r = Node()
    r.store.restore_from_chunks(old)
    assert list(r.store.quarantine_events()) == list(n.store.quarantine_events())
    assert r.store.quarantine_size() == n.store.quarantine_size()
    assert [dataclasses.replace(q, slot=0) for q in r.store.quarantine()] == [
        dataclasses.replace(q, slot=0) for q in n.store.quarantine()
    ]


def many_batches() -> list[Any]:
    """One partition with 40 batches (producers on every other one), then a fork at seq 4."""
    scratch = Node()
    out: list[Any] = [scratch.store.validate_create({"name": "m"})]
    scratch.apply(out[0])
    for k in range(40):
        events = [{"ts": k, "key": f"k{k}", "body": {"k": k, "i": i}} for i in range(1 + k % 3)]
        producer = {"id": f"p{k % 4}", "seq": k} if k % 2 else None
        (b,) = scratch.store.validate_append("m", events, now_us=1, producer=producer).batches
        scratch.apply(b)
        out.append(b)
    out.append(SetHome(StreamName("m"), PartitionId(0), RegionId("b"), Epoch(2), Seq(4)))
    return out


@pytest.mark.parametrize(("runs_max", "bytes_max"), [(3, 1 << 24), (3, 150)])
def test_a_long_failback_merges_batches_into_bounded_runs_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, runs_max: int, bytes_max: int
) -> None:
    cmds = many_batches()
    plain = fed(cmds)
    runs = plain.store.quarantine()
    assert len(runs) > 30 and all(q.parts == 1 for q in runs)
    monkeypatch.setattr(state, "QUARANTINE_RUNS_PER_FORK", runs_max)
    monkeypatch.setattr(state, "QUARANTINE_RUN_BYTES_MAX", bytes_max)
    merged = fed(cmds)
    got = merged.store.quarantine()
    assert sum(q.parts for q in got) == len(runs) and any(q.parts > 1 for q in got)
    if bytes_max >= 1 << 24:
        assert len(got) <= runs_max
    else:  # the byte cap splits further (a merged body: its batches, CBOR-framed)
        assert len(got) > runs_max
        assert all(q.size_bytes <= 2 * bytes_max for q in got if q.parts > 1)
    assert all(q.producer_id is None for q in got if q.parts > 1)
    # the same events, each with its own original producer
    assert list(merged.store.quarantine_events()) == list(plain.store.quarantine_events())
    assert merged.store.quarantine_size()[1] == plain.store.quarantine_size()[1]
    assert merged.state()[3:] == plain.state()[3:]  # the partition itself is the same
    for include_blocks in (True, False):
        r = Node(None if include_blocks else merged.blocks)
        r.store.restore_from_chunks(
            merged.store.snapshot_chunks(101, include_blocks=include_blocks)
        )
        assert r.state() == merged.state()
    res = merged.apply(ClearQuarantine(StreamName("m"), PartitionId(0)))
    assert isinstance(res, QuarantineCleared) and res.events == plain.store.quarantine_size()[1]


@pytest.mark.parametrize(("warn", "level"), [(10, logging.WARNING), (1 << 30, logging.INFO)])
def test_a_failback_logs_the_quarantine_size_and_warns_over_the_threshold(
    caplog: pytest.LogCaptureFixture, warn: int, level: int
) -> None:
    cmds = history()
    machine = StoreMachine(
        EventStore(MemoryBlockStore(), tuning=TUNING), "data-r1", quarantine_bytes_warn=warn
    )
    caplog.set_level(logging.INFO, logger="geostore.runtime")
    for i, cmd in enumerate(cmds, 1):
        machine.apply(Entry(Term(1), LogIndex(i), EntryKind.NORMAL, encode_command(cmd)))
    lines = [r for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(lines) == 4 and all(r.levelno == level for r in lines), lines
    size = machine.store.quarantine_size()
    assert f"the quarantine holds {size[0]} runs, {size[1]} events" in lines[-1].getMessage()
    assert ("quarantine_bytes_warn" in lines[-1].getMessage()) == (level == logging.WARNING)


def test_a_damaged_or_missing_quarantined_body_fails_the_restore_and_changes_nothing() -> None:
    n = fed(history())
    recs = list(read_records(n.store.snapshot_chunks(1 << 20, include_blocks=True)))
    k = next(i for i, r in enumerate(recs) if r[0] == "qbody")
    for damaged in (
        [*recs[:k], [*recs[k][:4], b"x" + recs[k][4][1:]], *recs[k + 1 :]],
        [*recs[:k], [*recs[k][:3], 999, recs[k][4]], *recs[k + 1 :]],
    ):
        out = FrameWriter(1 << 20)
        data = [c for r in damaged for c in out.add(r)] + list(out.finish())
        r = fed(history()[:3])
        before = r.state()
        with pytest.raises(CodecError):
            r.store.restore_from_chunks(data)
        assert r.state() == before
    # by reference over a block store that lacks a body: refused
    q = n.store.quarantine()[0]
    n.blocks.remove(q.stream, q.partition, quarantine_block_no(q.slot))
    with pytest.raises(StorageError):
        Node(n.blocks).store.restore_from_chunks(
            n.store.snapshot_chunks(1 << 20, include_blocks=False)
        )


def test_a_transfer_whose_snapshot_lost_a_cleared_body_starts_over_instead_of_failing() -> None:
    # A transfer cursor can outlive the host's snapshot cache: when the bodies its snapshot
    # names were deleted meanwhile (a clear, then SNAPSHOTS_HELD snapshots), the transfer
    # must start over with a newer snapshot, not raise out of the Raft host.
    from types import SimpleNamespace

    from geostore.raft.types import ConfState, SnapshotMeta
    from geostore.runtime.machine import RuntimeHost

    n = fed(history())
    machine = StoreMachine(n.store)
    meta = SnapshotMeta(index=LogIndex(n.store.applied_index), term=Term(1), conf=ConfState())
    host = SimpleNamespace(
        machine=machine, _snapshot_cache=[(meta, machine.snapshot())], _cursors=None,
        TRANSFER_CURSORS=4,
    )  # fmt: skip
    size = 64

    def source(offset: int) -> bytes | None:
        return RuntimeHost._snapshot_source(host, meta, offset, size)  # type: ignore[arg-type]

    first = source(0)
    assert first is not None and len(first) == size
    keys = [(q.stream, q.partition, quarantine_block_no(q.slot)) for q in n.store.quarantine()]
    n.apply(ClearQuarantine())
    for _ in range(SNAPSHOTS_HELD):
        machine.snapshot()
    host._snapshot_cache = []  # evicted: only the cursor still has it
    assert not any(n.blocks.has(*key) for key in keys)
    offset, answer = size, source(size)
    while answer is not None:
        assert len(answer) == size  # never the short last chunk of a snapshot with holes
        offset += size
        answer = source(offset)
    assert not host._cursors  # the broken transfer's cursor is gone


def test_a_replica_restored_from_a_snapshot_quarantines_a_long_failback_alike() -> None:
    # The per-partition batch index (geo_batches_max) is trimmed in steps by apply; a restore
    # must keep exactly what the snapshot's source kept, or a later failback cuts its runs
    # (producers, slots, run counts) differently on the restored replica.
    from geostore.store import StoreLimits

    limits = StoreLimits(geo_batches_max=16)
    cmds = many_batches()[:19]  # the stream and 18 batches: 18 <= 16 + 16 // 8, not trimmed
    fork = SetHome(StreamName("m"), PartitionId(0), RegionId("b"), Epoch(2), Seq(-1))
    a = EventStore(MemoryBlockStore(), limits=limits, tuning=TUNING)
    for i, cmd in enumerate([*cmds, fork], 1):
        assert not isinstance(a.apply_entry(LogIndex(i), encode_command(cmd)), Rejected)
    for include_blocks in (True, False):
        b = EventStore(MemoryBlockStore(), limits=limits, tuning=TUNING)
        for i, cmd in enumerate(cmds, 1):
            b.apply_entry(LogIndex(i), encode_command(cmd))
        c = EventStore(
            MemoryBlockStore() if include_blocks else b.blocks, limits=limits, tuning=TUNING
        )
        c.restore_from_chunks(b.snapshot_chunks(1 << 20, include_blocks=include_blocks))
        c.apply_entry(LogIndex(len(cmds) + 1), encode_command(fork))
        assert c.quarantine() == a.quarantine()
        assert list(c.quarantine_events()) == list(a.quarantine_events())


@pytest.mark.parametrize("follower_cleared", [True, False])
def test_a_follower_installing_a_snapshot_deletes_bodies_the_leader_no_longer_names(
    follower_cleared: bool,
) -> None:
    # The leader cleared the quarantine and deleted the bodies SNAPSHOTS_HELD snapshots
    # later, so its snapshot no longer says they were cleared; a follower that was behind
    # (with the runs still live, or cleared but not yet deleted) installs it.
    leader, follower = fed(history()), fed(history())
    keys = [(q.stream, q.partition, quarantine_block_no(q.slot)) for q in leader.store.quarantine()]
    leader.apply(ClearQuarantine(StreamName("s")))
    if follower_cleared:
        follower.apply(ClearQuarantine(StreamName("s")))
    for _ in range(SNAPSHOTS_HELD + 1):
        snap = b"".join(leader.store.snapshot_chunks(1 << 20, include_blocks=False))
    assert not any(r[0] == "qdrop" for r in read_records([snap]))
    follower.store.restore_from_chunks(leader.store.self_contained_chunks([snap], 1 << 16))
    assert follower.state() == leader.state()
    assert [follower.blocks.has(*key) for key in keys] == [leader.blocks.has(*key) for key in keys]
    assert follower.blocks.has(*keys[-1])  # t's run stays
