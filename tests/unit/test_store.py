"""The event-store state machine assigns dense seqs, routes stably, validates typed, and refuses bad input without changing anything."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from geostore.config.settings import LimitsSettings
from geostore.errors import ApiError, CodecError, CorruptLogError, ErrorCode
from geostore.ids import Epoch, LogIndex, PartitionId, RegionId, StreamName
from geostore.store import (
    AppendBatch,
    AppendResult,
    CreateStream,
    EventStore,
    HomeResult,
    MemoryBlockStore,
    ProducerRef,
    Rejected,
    Schema,
    SetHome,
    StoreLimits,
    StoreTuning,
    StreamInfo,
    decode_command,
    encode_batch,
    encode_command,
    route,
)
from geostore.store.model import StreamDef

SCHEMA = {
    "attributes": [
        {"name": "v", "type": "int", "required": True, "indexed": True},
        {"name": "f", "type": "float", "indexed": True},
        {"name": "ok", "type": "bool"},
        {"name": "s", "type": "str"},
    ]
}


class Harness:
    """A store plus a log index counter: what the runtime does, minus Raft."""

    def __init__(self, tuning: StoreTuning | None = None, limits: StoreLimits | None = None):
        self.blocks = MemoryBlockStore()
        self.store = EventStore(self.blocks, tuning=tuning, limits=limits)
        self.index = 0
        self.rr = 0

    def apply(self, cmd: Any) -> Any:
        """Apply through the encoded form, as a committed entry would arrive."""
        self.index += 1
        return self.store.apply_entry(LogIndex(self.index), encode_command(cmd))

    def create(self, **request: Any) -> StreamInfo:
        res = self.apply(self.store.validate_create(request))
        assert isinstance(res, StreamInfo)
        return res

    def append(
        self, stream: str, events: list[dict[str, Any]], producer: Any = None, now_us: int = 7
    ) -> list[AppendResult]:
        prep = self.store.validate_append(
            stream, events, now_us=now_us, producer=producer, rr_counter=self.rr
        )
        self.rr = prep.rr_counter
        out = []
        for b in prep.batches:
            res = self.apply(b)
            assert isinstance(res, AppendResult), res
            out.append(res)
        return out

    def fingerprint(self) -> Any:
        """Everything observable: catalog, per-partition info, all events."""
        st = self.store
        out: list[Any] = [st.partitions(), st.streams(), st.producer_count()]
        for info in st.partitions():
            out.append(st.read(info.stream, info.partition, 0, 10_000).events)
        return out


def expect(code: ErrorCode, fn: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as ei:
        fn(*args, **kwargs)
    assert ei.value.code is code, ei.value.message
    assert ei.value.message
    return ei.value


def test_commands_round_trip_through_their_encoding() -> None:
    schema = Schema.from_json(SCHEMA)
    cmds = [
        CreateStream(StreamName("s"), 3, "k", schema, ((PartitionId(1), RegionId("eu")),)),
        CreateStream(StreamName("t")),
        AppendBatch(
            StreamName("s"),
            PartitionId(2),
            encode_batch([1], [None], [b"\x01"], {"f": [None], "v": [1]}),
            1,
            ProducerRef("p", 9),
            Epoch(4),
        ),
        AppendBatch(StreamName("s"), PartitionId(0), b"x", 5),
        SetHome(StreamName("s"), PartitionId(0), RegionId("us"), Epoch(2)),
        SetHome(StreamName("s"), PartitionId(0), None, Epoch(3)),
    ]
    for cmd in cmds:
        assert decode_command(encode_command(cmd)) == cmd


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff", b"\x01", encode_command(CreateStream(StreamName("s")))[:-1] + b"\x00\x00"],
)
def test_damaged_commands_are_codec_errors_and_rejected_by_apply(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_command(data)
    h = Harness()
    before = h.fingerprint()
    res = h.store.apply_entry(LogIndex(1), data)
    assert isinstance(res, Rejected) and res.error.code is ErrorCode.MALFORMED
    assert h.fingerprint() == before and h.store.applied_index == 1


def test_create_is_idempotent_for_the_same_definition_and_conflicts_otherwise() -> None:
    h = Harness()
    info = h.create(name="s", partitions=2, schema=SCHEMA, homes={"1": "eu"})
    assert info.created and [x.home for x in info.homes] == [None, "eu"]
    assert [x.epoch for x in info.homes] == [1, 1]
    again = h.apply(CreateStream(StreamName("s"), 2, None, Schema.from_json(SCHEMA)))
    assert isinstance(again, StreamInfo) and not again.created
    # attributes in another order are the same definition
    same = dict(SCHEMA, attributes=list(reversed(SCHEMA["attributes"])))
    h.create(name="s", partitions=2, schema=same)
    expect(ErrorCode.CONFLICT, h.store.validate_create, {"name": "s", "partitions": 3})
    h.create(name="plain", schema={"attributes": []})
    assert not h.create(name="plain").created and h.store.stream("plain").schema is None
    res = h.apply(CreateStream(StreamName("s"), 3))
    assert isinstance(res, Rejected) and res.error.code is ErrorCode.CONFLICT
    assert h.store.stream("s").partitions == 2


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"name": ""}, ErrorCode.MALFORMED),
        ({"name": "a/b"}, ErrorCode.MALFORMED),
        ({"name": "x" * 200}, ErrorCode.MALFORMED),
        ({"name": "s", "partitions": 0}, ErrorCode.MALFORMED),
        ({"name": "s", "partitions": True}, ErrorCode.MALFORMED),
        ({"name": "s", "partitions": 5000}, ErrorCode.TOO_LARGE),
        ({"name": "s", "key_field": 3}, ErrorCode.MALFORMED),
        ({"name": "s", "bogus": 1}, ErrorCode.MALFORMED),
        ({"name": "s", "homes": {"7": "eu"}}, ErrorCode.MALFORMED),
        (
            {"name": "s", "schema": {"attributes": [{"name": "a", "type": "date"}]}},
            ErrorCode.MALFORMED,
        ),
        (
            {
                "name": "s",
                "schema": {"attributes": [{"name": "a", "type": "str", "indexed": True}]},
            },
            ErrorCode.MALFORMED,
        ),
        (
            {"name": "s", "schema": {"attributes": [{"name": "a", "type": "int"}] * 2}},
            ErrorCode.MALFORMED,
        ),
        ({"name": "s", "schema": [1]}, ErrorCode.MALFORMED),
        ("not an object", ErrorCode.MALFORMED),
    ],
)
def test_bad_stream_definitions_are_typed_errors(request_: Any, code: ErrorCode) -> None:
    expect(code, Harness().store.validate_create, request_)


def test_seqs_are_dense_per_partition_and_in_request_order() -> None:
    h = Harness(StoreTuning(block_events_max=3))
    h.create(name="s", partitions=3)
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for r in range(20):
        evs = [{"body": [r, i], "partition": (r + i) % 3} for i in range(r % 5 + 1)]
        for res in h.append("s", evs):
            seen[res.partition].extend(range(res.first_seq, res.last_seq + 1))
    for p, seqs in seen.items():
        assert seqs == list(range(len(seqs)))
        got = h.store.read("s", p, 0, 1000).events
        assert [e.seq for e in got] == seqs
        # request order is kept inside a partition
        bodies = [tuple(e.body) for e in got]
        assert bodies == sorted(bodies)
        assert h.store.partition_info("s", p).last_seq == len(seqs) - 1


def test_crc32_routing_matches_published_check_values() -> None:
    d = StreamDef(StreamName("s"), 7)
    # CRC-32/ISO-HDLC check value of "123456789" is 0xCBF43926.
    assert route(d, None, "123456789", 0) == 0xCBF43926 % 7
    assert route(d, None, "The quick brown fox jumps over the lazy dog", 0) == 0x414FA339 % 7
    # UTF-8 of the key, not another encoding
    assert route(d, None, "é", 0) == zlib.crc32("é".encode()) % 7
    assert route(d, 5, "123456789", 0) == 5
    assert [route(d, None, None, rr) for rr in range(9)] == [0, 1, 2, 3, 4, 5, 6, 0, 1]


def test_routing_by_key_field_explicit_key_and_round_robin() -> None:
    h = Harness()
    h.create(name="s", partitions=4, key_field="origin")
    res = h.append(
        "s",
        [
            {"body": {"origin": "JFK"}},
            {"body": {"origin": "LGA"}, "key": "123456789"},
            {"body": {"origin": 17}},
            {"body": {"x": 1}},
            {"body": {"x": 2}},
            {"body": 3, "partition": 2},
        ],
    )
    placed = {}
    for r in res:
        for e in h.store.read("s", r.partition, r.first_seq, 100).events:
            placed[repr(e.body)] = (r.partition, e.key)
    assert placed[repr({"origin": "JFK"})] == (zlib.crc32(b"JFK") % 4, "JFK")
    assert placed[repr({"origin": "LGA"})] == (0xCBF43926 % 4, "123456789")
    assert placed[repr({"origin": 17})] == (zlib.crc32(b"17") % 4, "17")
    assert placed[repr({"x": 1})] == (0, None) and placed[repr({"x": 2})] == (1, None)
    assert placed["3"] == (2, None)
    assert h.rr == 2
    route_event = h.store.route_event
    assert route_event("s", {"body": {"origin": "JFK"}}) == zlib.crc32(b"JFK") % 4
    assert route_event("s", {"body": {}, "key": "123456789"}) == 0xCBF43926 % 4
    assert [route_event("s", {"body": {}}, rr) for rr in (5, 6)] == [1, 2]
    assert route_event("s", {"body": {"origin": "JFK"}, "partition": 3}) == 3
    expect(ErrorCode.UNKNOWN_PARTITION, route_event, "s", {"body": 1, "partition": 4})


def test_producer_requests_route_keyless_events_the_same_on_retry() -> None:
    h = Harness()
    h.create(name="s", partitions=5)
    evs = [{"body": i} for i in range(7)]
    p1 = h.store.validate_append("s", evs, now_us=1, producer={"id": "a", "seq": 3}, rr_counter=0)
    p2 = h.store.validate_append("s", evs, now_us=1, producer={"id": "a", "seq": 3}, rr_counter=99)
    assert p1.positions == p2.positions and p1.rr_counter == 0 and p2.rr_counter == 99


def test_missing_ts_is_filled_by_the_validating_node() -> None:
    h = Harness()
    h.create(name="s")
    h.append("s", [{"body": 1}, {"body": 2, "ts": -5}], now_us=1_700_000_000_000_000)
    assert [e.ts for e in h.store.read("s", 0).events] == [1_700_000_000_000_000, -5]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"f": 1.5}, "events[1].body.v"),
        ({"v": "1"}, "events[1].body.v"),
        ({"v": True}, "events[1].body.v"),
        ({"v": 1.0}, "events[1].body.v"),
        ({"v": 2**70}, "events[1].body.v"),
        ({"v": 1, "f": "x"}, "events[1].body.f"),
        ({"v": 1, "f": float("nan")}, "events[1].body.f"),
        ({"v": 1, "f": float("inf")}, "events[1].body.f"),
        ({"v": 1, "ok": 1}, "events[1].body.ok"),
        ({"v": 1, "s": 5}, "events[1].body.s"),
        ([1, 2], "events[1].body"),
        (None, "events[1].body"),
    ],
)
def test_schema_violations_name_the_attribute_and_store_nothing(body: Any, path: str) -> None:
    h = Harness()
    h.create(name="s", schema=SCHEMA)
    before = h.fingerprint()
    err = expect(
        ErrorCode.SCHEMA_VIOLATION,
        h.store.validate_append,
        "s",
        [{"body": {"v": 0}}, {"body": body}],
        now_us=0,
    )
    assert err.details["path"] == path and path in err.message
    assert h.fingerprint() == before


def test_schema_accepts_conforming_bodies() -> None:
    h = Harness()
    h.create(name="s", schema=SCHEMA)
    h.append(
        "s",
        [
            {"body": {"v": 1}},
            {"body": {"v": -3, "f": 2, "ok": False, "s": "x", "extra": [1]}},
            {"body": {"v": 2, "f": None}},
        ],
    )
    assert h.store.aggregate("s", "f", 0, 100).value.count == 1
    assert h.store.aggregate("s", "v", 0, 100).value.sum == 0


def test_bad_append_input_is_typed_and_changes_nothing() -> None:
    h = Harness(limits=StoreLimits(events_per_request_max=5, event_bytes_max=100, key_bytes_max=8))
    h.create(name="s", partitions=2)
    h.append("s", [{"body": 1}])
    before = h.fingerprint()
    st = h.store
    cases: list[tuple[ErrorCode, str, Any, Any]] = [
        (ErrorCode.UNKNOWN_STREAM, "nope", [{"body": 1}], None),
        (ErrorCode.MALFORMED, "s", [], None),
        (ErrorCode.MALFORMED, "s", {"body": 1}, None),
        (ErrorCode.MALFORMED, "s", [1], None),
        (ErrorCode.MALFORMED, "s", [{"ts": 1}], None),
        (ErrorCode.MALFORMED, "s", [{"body": 1, "ts": "now"}], None),
        (ErrorCode.MALFORMED, "s", [{"body": 1, "ts": 1.5}], None),
        (ErrorCode.MALFORMED, "s", [{"body": 1, "ts": 2**64}], None),
        (ErrorCode.MALFORMED, "s", [{"body": 1, "key": 5}], None),
        (ErrorCode.MALFORMED, "s", [{"body": 1, "color": "red"}], None),
        (ErrorCode.MALFORMED, "s", [{"body": object()}], None),
        (ErrorCode.UNKNOWN_PARTITION, "s", [{"body": 1, "partition": 2}], None),
        (ErrorCode.UNKNOWN_PARTITION, "s", [{"body": 1, "partition": -1}], None),
        (ErrorCode.UNKNOWN_PARTITION, "s", [{"body": 1, "partition": "0"}], None),
        (ErrorCode.TOO_LARGE, "s", [{"body": 1}] * 6, None),
        (ErrorCode.TOO_LARGE, "s", [{"body": "x" * 200}], None),
        (ErrorCode.TOO_LARGE, "s", [{"body": 1, "key": "k" * 9}], None),
        (ErrorCode.MALFORMED, "s", [{"body": 1}], {"id": "", "seq": 1}),
        (ErrorCode.MALFORMED, "s", [{"body": 1}], {"id": "p", "seq": -1}),
        (ErrorCode.MALFORMED, "s", [{"body": 1}], {"id": "p"}),
        (ErrorCode.MALFORMED, "s", [{"body": 1}], "p"),
    ]
    for code, stream, events, producer in cases:
        expect(code, st.validate_append, stream, events, now_us=0, producer=producer)
    for bad_read in [
        lambda: st.read("s", 0, -1),
        lambda: st.read("s", 0, "0"),
        lambda: st.read("s", 0, 0, 0),
        lambda: st.read("s", 0, 0, True),
        lambda: st.read_time_range("s", 0, 10, 5),
        lambda: st.read_time_range("s", 0, "a", 5),
        lambda: st.aggregate("s", "v", 0, 10, scan_limit=0),
        lambda: st.aggregate("s", "", 0, 10),
        lambda: st.aggregate("s", "v", 0, 10, window_us=0, scan_limit=5),
    ]:
        expect(ErrorCode.MALFORMED, bad_read)
    expect(ErrorCode.TOO_LARGE, st.read, "s", 0, 0, 10_001)
    expect(ErrorCode.TOO_LARGE, st.read_time_range, "s", 0, -(2**62), 2**62)
    expect(ErrorCode.TOO_LARGE, st.aggregate, "s", "v", 0, 2**62, scan_limit=5)
    expect(ErrorCode.TOO_LARGE, st.aggregate, "s", "v", 0, 10**9, window_us=1, scan_limit=5)
    expect(ErrorCode.TOO_LARGE, st.aggregate, "s", "v", 0, 10, scan_limit=10**9)
    expect(ErrorCode.UNKNOWN_STREAM, st.read, "nope", 0)
    expect(ErrorCode.UNKNOWN_PARTITION, st.read, "s", 2)
    expect(ErrorCode.UNKNOWN_PARTITION, st.read_time_range, "s", -1, 0, 1)
    expect(ErrorCode.UNKNOWN_PARTITION, st.aggregate, "s", "v", 0, 1, partition=9, scan_limit=1)
    assert h.fingerprint() == before


def test_apply_rejects_bad_batches_deterministically_and_changes_nothing() -> None:
    h = Harness()
    h.create(name="s", schema=SCHEMA)
    h.append("s", [{"body": {"v": 1}}])
    before = h.fingerprint()
    good = encode_batch([1], [None], [b"\x01"], {"f": [None], "v": [1]})
    bad: list[tuple[Any, ErrorCode]] = [
        (AppendBatch(StreamName("x"), PartitionId(0), good, 1), ErrorCode.UNKNOWN_STREAM),
        (AppendBatch(StreamName("s"), PartitionId(1), good, 1), ErrorCode.UNKNOWN_PARTITION),
        (AppendBatch(StreamName("s"), PartitionId(0), good, 2), ErrorCode.MALFORMED),
        (AppendBatch(StreamName("s"), PartitionId(0), b"junk", 1), ErrorCode.MALFORMED),
        (
            AppendBatch(StreamName("s"), PartitionId(0), encode_batch([1], [None], [b"\x01"]), 1),
            ErrorCode.MALFORMED,
        ),
        (
            AppendBatch(
                StreamName("s"),
                PartitionId(0),
                encode_batch([1], [None], [b"\x01"], {"f": [None], "v": ["x"]}),
                1,
            ),
            ErrorCode.MALFORMED,
        ),
        (
            AppendBatch(StreamName("s"), PartitionId(0), good, 1, None, Epoch(7)),
            ErrorCode.MOVING,
        ),
        (
            SetHome(StreamName("s"), PartitionId(0), RegionId("eu"), Epoch(1)),
            ErrorCode.SUPERSEDED_EPOCH,
        ),
    ]
    for cmd, code in bad:
        res = h.apply(cmd)
        assert isinstance(res, Rejected) and res.error.code is code, (cmd, res)
    assert h.fingerprint() == before


def test_epochs_fence_appends_validated_under_an_older_home() -> None:
    h = Harness()
    h.create(name="s", homes={0: "us"})
    prep = h.store.validate_append("s", [{"body": 1}], now_us=0)
    moved = h.apply(SetHome(StreamName("s"), PartitionId(0), RegionId("eu"), Epoch(2)))
    assert isinstance(moved, HomeResult) and moved.epoch == 2
    res = h.apply(prep.batches[0])
    assert isinstance(res, Rejected) and res.error.code is ErrorCode.MOVING  # retryable
    (ok,) = h.append("s", [{"body": 2}])
    assert (ok.first_seq, ok.epoch) == (0, 2)
    info = h.store.partition_info("s", 0)
    assert (info.home, info.epoch) == ("eu", 2)
    assert h.store.read("s", 0).events[0].epoch == 2


def test_event_epochs_are_kept_across_a_home_change_inside_a_block() -> None:
    h = Harness(StoreTuning(block_events_max=10))
    h.create(name="s")
    h.append("s", [{"body": i} for i in range(3)])
    h.apply(SetHome(StreamName("s"), PartitionId(0), RegionId("eu"), Epoch(5)))
    h.append("s", [{"body": i} for i in range(3, 12)])
    got = h.store.read("s", 0, 0, 100).events
    assert [e.epoch for e in got] == [1] * 3 + [5] * 9
    assert h.blocks.puts == 1  # the block with both epochs was sealed and read back


def test_rolling_hash_is_identical_for_the_same_events_batched_differently() -> None:
    tuning = StoreTuning(block_events_max=4, block_bytes_max=60)
    a, b, c = Harness(tuning), Harness(tuning), Harness(tuning)
    for h in (a, b, c):
        h.create(name="s")
    evs = [
        {"body": {"i": i, "pad": "x" * (i % 11)}, "ts": 1000 - i, "key": None if i % 3 else f"k{i}"}
        for i in range(30)
    ]
    hashes = set()
    for i in range(0, 30, 7):
        a.append("s", evs[i : i + 7])
        hashes.add(a.store.partition_info("s", 0).log_hash)
    for e in evs:
        b.append("s", [e])
    ia, ib = a.store.partition_info("s", 0), b.store.partition_info("s", 0)
    assert ia.log_hash == ib.log_hash and ia.last_seq == 29 and ia.blocks_sealed > 3
    assert len(hashes) == 5  # the open block counts: every append moves the hash
    c.append("s", [dict(e, body={"i": -1}) if e["body"]["i"] == 29 else e for e in evs])
    assert c.store.partition_info("s", 0).log_hash != ia.log_hash
    # same events under another epoch: another hash
    d = Harness(tuning)
    d.create(name="s")
    d.apply(SetHome(StreamName("s"), PartitionId(0), RegionId("eu"), Epoch(2)))
    d.append("s", evs)
    assert d.store.partition_info("s", 0).log_hash != ia.log_hash


def test_large_events_and_byte_bounded_blocks() -> None:
    h = Harness(StoreTuning(block_events_max=100, block_bytes_max=1000))
    h.create(name="s")
    bodies = ["x" * 600, "y" * 10, "z" * 3000, "w" * 300, "v" * 300, "u" * 500]
    h.append("s", [{"body": b} for b in bodies])
    h.append("s", [{"body": "t" * 2000}])
    got = h.store.read("s", 0, 0, 100).events
    assert [e.body for e in got] == [*bodies, "t" * 2000]
    # bodies encode with a CBOR header of 1-3 bytes: 603+11 | 3003 | 303+303 | 503 | 2003;
    # a block goes over 1000 bytes only when one event does, and then it is sealed at once
    assert h.blocks.puts == 5 and h.store.partition_info("s", 0).blocks_sealed == 5


def test_live_tail_callbacks_fire_after_apply_and_unsubscribe() -> None:
    h = Harness()
    h.create(name="s", partitions=2)
    calls: list[tuple[str, int, int]] = []
    unsubscribe = h.store.subscribe("s", 1, lambda s, p, seq: calls.append((s, p, seq)))
    h.append("s", [{"body": 1, "partition": 1}, {"body": 2, "partition": 1}])
    h.append("s", [{"body": 3, "partition": 0}])
    assert calls == [("s", 1, 1)]
    tail = h.store.events_since("s", 1, 1)
    assert [e.body for e in tail.events] == [2] and tail.next_seq == 2
    assert (
        h.store.events_since("s", 1, 2).events == ()
        and h.store.events_since("s", 1, 2).next_seq == 2
    )
    unsubscribe()
    h.append("s", [{"body": 4, "partition": 1}])
    assert calls == [("s", 1, 1)]
    expect(ErrorCode.UNKNOWN_PARTITION, h.store.subscribe, "s", 2, lambda *a: None)


def test_read_by_seq_pages_across_blocks() -> None:
    h = Harness(StoreTuning(block_events_max=5))
    h.create(name="s")
    for r in range(7):
        h.append("s", [{"body": r * 3 + i} for i in range(3)])
    seen: list[int] = []
    nxt = 0
    while True:
        page = h.store.read("s", 0, nxt, 4)
        if not page.events:
            break
        assert page.stats.blocks_read <= 2
        seen.extend(e.body for e in page.events)
        nxt = page.next_seq
    assert seen == list(range(21)) and nxt == 21
    assert h.store.read("s", 0, 50).next_seq == 50


def test_corrupt_block_is_a_typed_storage_error() -> None:
    h = Harness(StoreTuning(block_events_max=2))
    h.create(name="s")
    h.append("s", [{"body": i} for i in range(4)])
    key = (StreamName("s"), PartitionId(0), 0)
    data = bytearray(h.blocks.get(*key))
    data[-1] ^= 1
    h.blocks._blocks[key] = bytes(data)
    with pytest.raises(CorruptLogError):
        h.store.read("s", 0, 0)


def test_limits_come_from_the_node_configuration() -> None:
    settings = LimitsSettings(events_per_request_max=3, read_limit_max=500, query_range_us_max=10)
    limits = StoreLimits.from_settings(settings)
    assert (limits.events_per_request_max, limits.read_limit_max) == (3, 500)
    assert limits.read_limit_default == 500 and limits.query_range_us_max == 10
    h = Harness(limits=limits)
    h.create(name="s")
    expect(ErrorCode.TOO_LARGE, h.store.validate_append, "s", [{"body": 1}] * 4, now_us=0)
    expect(ErrorCode.TOO_LARGE, h.store.read_time_range, "s", 0, 0, 11)
    assert h.store.read_time_range("s", 0, 0, 10).events == ()


def test_apply_does_not_depend_on_the_replicas_configured_limits() -> None:
    roomy = Harness(limits=StoreLimits(partitions_max=2048, schema_attributes_max=400))
    strict = Harness(limits=StoreLimits(partitions_max=4, schema_attributes_max=2))
    attrs = [{"name": f"a{i}", "type": "int"} for i in range(300)]
    cmd = roomy.store.validate_create(
        {"name": "wide", "partitions": 1500, "schema": {"attributes": attrs}}
    )
    expect(ErrorCode.TOO_LARGE, strict.store.validate_create, {"name": "x", "partitions": 1500})
    for h in (roomy, strict):
        res = h.apply(cmd)
        assert isinstance(res, StreamInfo) and res.created
    assert roomy.fingerprint() == strict.fingerprint()
