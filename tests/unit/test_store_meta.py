"""The metadata state machine applies its commands deterministically: stream creation is
idempotent for the same definition and a conflict for another, homes move only to larger
epochs, leases record holder, duration and log index, dictionaries are bounded, damaged
entries are rejected without effect, and snapshots round-trip to an identical state."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from geostore.errors import ErrorCode
from geostore.ids import Epoch, LogIndex, NodeId, PartitionId, RegionId, Seq, StreamName
from geostore.store import CreateStream, Rejected, Schema, StreamInfo
from geostore.store.meta import (
    DICTIONARY_BYTES_MAX,
    MOVES_KEPT,
    Applied,
    LeaseRecord,
    MetaCommand,
    MetaCreateStream,
    MetaMoveHome,
    MetaPutDictionary,
    MetaRenewLease,
    MetaSetRegion,
    MetaState,
    decode_meta,
    encode_meta,
)


def create(name: str = "s", partitions: int = 2, **kw: object) -> MetaCreateStream:
    homes = kw.pop("homes", ((PartitionId(0), RegionId("a")), (PartitionId(1), RegionId("b"))))
    cmd = CreateStream(StreamName(name), partitions, homes=homes, **kw)  # type: ignore[arg-type]
    return MetaCreateStream(cmd)


class Log:
    """Applies commands at consecutive indexes, through their encoding (as Raft would)."""

    def __init__(self) -> None:
        self.state = MetaState()
        self.index = 0

    def apply(self, cmd: MetaCommand) -> object:
        self.index += 1
        return self.state.apply_entry(LogIndex(self.index), encode_meta(cmd))


def test_create_is_idempotent_and_conflicts_on_another_definition() -> None:
    log = Log()
    first = log.apply(create())
    assert isinstance(first, StreamInfo) and first.created
    assert [(h.home, h.epoch) for h in first.homes] == [("a", 1), ("b", 1)]
    again = log.apply(create())
    assert isinstance(again, StreamInfo) and not again.created
    # other homes are placement, not definition: still the same stream, homes unchanged
    other_homes = log.apply(create(homes=((PartitionId(0), RegionId("b")),)))
    assert isinstance(other_homes, StreamInfo) and not other_homes.created
    assert other_homes.homes == first.homes
    clash = log.apply(create(partitions=3, homes=()))
    assert isinstance(clash, Rejected) and clash.error.code is ErrorCode.CONFLICT
    keyed = log.apply(create(key_field="k"))
    assert isinstance(keyed, Rejected) and keyed.error.code is ErrorCode.CONFLICT
    assert len(log.state.streams()) == 1 and log.state.applied_index == 5


def test_bad_creates_are_rejected() -> None:
    log = Log()
    bad_home = log.apply(create(partitions=1))  # names partition 1 of a 1-partition stream
    assert isinstance(bad_home, Rejected) and bad_home.error.code is ErrorCode.MALFORMED
    bad_name = log.apply(create(name="-x", homes=()))
    assert isinstance(bad_name, Rejected) and bad_name.error.code is ErrorCode.MALFORMED
    assert log.state.streams() == []


def test_homes_move_only_to_larger_epochs() -> None:
    log = Log()
    log.apply(create())
    moved = log.apply(MetaMoveHome(StreamName("s"), PartitionId(0), RegionId("b"), Epoch(2)))
    assert moved == log.state.home_of("s", 0)
    home = log.state.home_of("s", 0)
    assert home is not None and (home.home, home.epoch) == ("b", 2)
    stale = log.apply(MetaMoveHome(StreamName("s"), PartitionId(0), RegionId("a"), Epoch(2)))
    assert isinstance(stale, Rejected) and stale.error.code is ErrorCode.SUPERSEDED_EPOCH
    unknown = log.apply(MetaMoveHome(StreamName("t"), PartitionId(0), RegionId("a"), Epoch(5)))
    assert isinstance(unknown, Rejected) and unknown.error.code is ErrorCode.UNKNOWN_STREAM
    nopart = log.apply(MetaMoveHome(StreamName("s"), PartitionId(7), RegionId("a"), Epoch(5)))
    assert isinstance(nopart, Rejected) and nopart.error.code is ErrorCode.UNKNOWN_PARTITION
    assert log.state.home_of("s", 1) is not None and log.state.home_of("s", 9) is None
    assert log.state.fork_of("s", 0) is None
    forked = MetaMoveHome(StreamName("s"), PartitionId(0), RegionId("c"), Epoch(3), Seq(41))
    log.apply(forked)
    assert log.state.fork_of("s", 0) == 41
    restored = MetaState()
    restored.restore(log.state.snapshot())
    assert restored.fork_of("s", 0) == 41 and restored.home_of("s", 0) == log.state.home_of("s", 0)
    # every move is remembered in order, each with its own fork (a region that missed both
    # must rewind to the first fork), and a snapshot keeps them
    assert [(m.home, m.epoch, m.fork_seq) for m in restored.moves_of("s", 0)] == [
        ("b", 2, None),
        ("c", 3, 41),
    ]
    assert restored.moves_of("s", 1) == ()


def test_move_history_is_bounded() -> None:
    log = Log()
    log.apply(create())
    for e in range(2, MOVES_KEPT + 12):
        log.apply(MetaMoveHome(StreamName("s"), PartitionId(0), RegionId("b"), Epoch(e), Seq(e)))
    moves = log.state.moves_of("s", 0)
    assert len(moves) == MOVES_KEPT and moves[-1].epoch == MOVES_KEPT + 11
    assert [m.epoch for m in moves] == list(range(12, MOVES_KEPT + 12))


def test_leases_record_holder_duration_and_index() -> None:
    log = Log()
    r1 = log.apply(MetaRenewLease(RegionId("a"), NodeId("a1"), 3000))
    assert r1 == LeaseRecord(RegionId("a"), NodeId("a1"), 3000, LogIndex(1), 1)
    log.apply(MetaRenewLease(RegionId("b"), NodeId("b1"), 3000))
    r3 = log.apply(MetaRenewLease(RegionId("a"), NodeId("a2"), 5000))
    assert r3 == LeaseRecord(RegionId("a"), NodeId("a2"), 5000, LogIndex(3), 2)
    assert log.state.lease("a") == r3 and sorted(log.state.leases()) == ["a", "b"]
    for bad in (0, -1, 10**9):
        out = log.apply(MetaRenewLease(RegionId("a"), NodeId("a1"), bad))
        assert isinstance(out, Rejected) and out.error.code is ErrorCode.MALFORMED
    assert log.state.lease("a") == r3, "a rejected renewal changes nothing"


def test_regions_and_dictionaries_are_bounded_and_idempotent() -> None:
    log = Log()
    assert log.apply(MetaSetRegion(RegionId("a"), (NodeId("a1"), NodeId("a2")))) == Applied(True)
    assert log.apply(MetaSetRegion(RegionId("a"), (NodeId("a1"), NodeId("a2")))) == Applied(False)
    dup = log.apply(MetaSetRegion(RegionId("b"), (NodeId("b1"), NodeId("b1"))))
    assert isinstance(dup, Rejected)
    assert log.state.regions() == {"a": ("a1", "a2")}
    assert log.apply(MetaPutDictionary(1, b"dict")) == Applied(True)
    assert log.apply(MetaPutDictionary(1, b"dict")) == Applied(False)
    other = log.apply(MetaPutDictionary(1, b"else"))
    assert isinstance(other, Rejected) and other.error.code is ErrorCode.CONFLICT
    big = log.apply(MetaPutDictionary(2, b"x" * DICTIONARY_BYTES_MAX))
    assert isinstance(big, Rejected) and big.error.code is ErrorCode.TOO_LARGE
    assert log.state.dictionary(1) == b"dict" and log.state.dictionary_ids() == [1]


def test_damaged_entries_are_rejected_without_effect() -> None:
    state = MetaState()
    for i, data in enumerate([b"", b"\xff\x00", encode_meta(create())[:-3], b"\x82\x01\x61x"], 1):
        out = state.apply_entry(LogIndex(i), data)
        assert isinstance(out, Rejected) and out.error.code is ErrorCode.MALFORMED
    assert state.streams() == [] and state.applied_index == 4


names = st.sampled_from(["s", "t", "u"])
regions = st.sampled_from([RegionId("a"), RegionId("b"), RegionId("c")])
commands = st.one_of(
    st.builds(
        lambda n, p, key, home: create(
            n, p, key_field=key, homes=((PartitionId(0), home),),
            schema=Schema.from_json({"attributes": [{"name": "x", "type": "int"}]})
            if key else None,
        ),
        names, st.integers(1, 3), st.sampled_from([None, "k"]), regions,
    ),
    st.builds(lambda n, p, r, e, f: MetaMoveHome(StreamName(n), PartitionId(p), r, Epoch(e), f),
              names, st.integers(0, 3), regions, st.integers(0, 5),
              st.one_of(st.none(), st.integers(-1, 9))),
    st.builds(lambda r, h, ms: MetaRenewLease(r, NodeId(h), ms),
              regions, st.sampled_from(["n1", "n2"]), st.integers(0, 20_000)),
    st.builds(lambda r, ns: MetaSetRegion(r, tuple(NodeId(n) for n in ns)),
              regions, st.lists(st.sampled_from(["n1", "n2", "n3"]), max_size=3)),
    st.builds(MetaPutDictionary, st.integers(0, 3), st.binary(max_size=8)),
)  # fmt: skip


def _same(x: object, y: object) -> bool:
    if isinstance(x, Rejected) and isinstance(y, Rejected):
        return x.error.to_body() == y.error.to_body()
    return x == y


@settings(max_examples=150, deadline=None)
@given(st.lists(commands, max_size=25), st.integers(0, 25))
def test_snapshot_round_trip_and_determinism(cmds: list[MetaCommand], cut: int) -> None:
    """Two replicas give equal answers; a replica restored from a snapshot at any point and
    fed the rest ends byte-identical to one that applied everything."""
    a, b = Log(), Log()
    for cmd in cmds:
        assert decode_meta(encode_meta(cmd)) == cmd
        assert _same(a.apply(cmd), b.apply(cmd))
    assert a.state.snapshot() == b.state.snapshot()
    part = Log()
    for cmd in cmds[:cut]:
        part.apply(cmd)
    restored = Log()
    restored.state.restore(part.state.snapshot())
    restored.index = part.index
    assert restored.state.snapshot() == part.state.snapshot()
    for cmd in cmds[cut:]:
        restored.apply(cmd)
    assert restored.state.snapshot() == a.state.snapshot()
    assert restored.state.leases() == a.state.leases()
    assert restored.state.streams() == a.state.streams()
