"""Columnar geo batches give the receiver the home's exact entry bytes, refuse damaged or oversized
payloads whole, and the shipper's light-load batching and raw-byte count are what the ratio uses.

The entries are real store event blocks (made by ``EventStore.validate_append``): bodies of
several shapes, indexed attributes, producers, null keys; plus blocks the columns cannot hold
(opaque bytes, a body CBOR would re-encode differently), which must still round-trip exactly.
"""

from __future__ import annotations

import random
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geostore.codec import CodecLimits, compress, dumps_plain, loads_plain, train_dictionary
from geostore.config import GeoSettings
from geostore.errors import CodecError
from geostore.geo import (
    CODEC_NONE,
    CODEC_ZSTD,
    CODEC_ZSTD_COLUMNS,
    BatchError,
    GeoAck,
    GeoBatch,
    GeoEntry,
    GeoEnvelope,
    GeoHeartbeat,
    GeoPosition,
    Shipper,
    Watermark,
    batch_crc,
    encode_entries,
    make_batch,
    open_batch,
)
from geostore.geo.columns import decode_columns, encode_columns
from geostore.geo.dictionary import DICTIONARY_BYTES_MIN, train, training_samples
from geostore.ids import Epoch, LogIndex, PartitionId, RegionId, Seq, StreamName
from geostore.store import AppendBatch, EventStore, MemoryBlockStore

S = StreamName("s")
P = PartitionId(0)
E = Epoch(2)
HOME = RegionId("home")
DST = RegionId("dst")
SCHEMA = {
    "attributes": [
        {"name": "v", "type": "int", "indexed": True},
        {"name": "f", "type": "float", "indexed": True},
    ]
}


def store_entries(
    requests: list[list[dict[str, Any]]], producer: str | None = "p1", schema: bool = True
) -> list[GeoEntry]:
    """Each request appended through the real store: one committed entry per request."""
    store = EventStore(MemoryBlockStore())
    create: dict[str, Any] = {"name": S, "partitions": 1}
    if schema:
        create["schema"] = SCHEMA
    store.apply(LogIndex(1), store.validate_create(create))
    out: list[GeoEntry] = []
    seq = 0
    for n, events in enumerate(requests):
        prod = {"id": producer, "seq": n} if producer is not None else None
        prepared = store.validate_append(S, events, now_us=0, producer=prod)
        for cmd in prepared.batches:
            assert isinstance(cmd, AppendBatch)
            pid = cmd.producer.id if cmd.producer is not None else None
            pseq = cmd.producer.seq if cmd.producer is not None else None
            epoch = Epoch(1) if n % 3 == 0 else None
            out.append(GeoEntry(Seq(seq), cmd.record_count, cmd.events, pid, pseq, epoch))
            seq += cmd.record_count
    return out


def flight(rng: random.Random, i: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "carrier": rng.choice(["UA", "AA", "B6", "DL"]),
        "flight": rng.randrange(1, 3000),
        "dest": rng.choice(["IAH", "MIA", "BQN", "ATL", "ORD"]),
        "dep_delay": rng.choice([None, rng.randrange(-10, 200)]),
        "v": rng.randrange(100),
        "f": rng.random(),
    }
    if i % 7 == 0:
        body["tags"] = {"late": True, "legs": [1, 2]}  # another shape, nested values
    key = None if i % 11 == 0 else body["carrier"]
    return {"ts": 1_357_000_000_000_000 + i * 60_000_000, "key": key, "body": body}


def flight_entries(requests: int, per: int, seed: int = 1) -> list[GeoEntry]:
    rng = random.Random(seed)
    return store_entries([[flight(rng, r * per + i) for i in range(per)] for r in range(requests)])


def test_columnar_batch_rebuilds_every_entry_byte_for_byte() -> None:
    es = flight_entries(6, 10)
    b = make_batch(S, P, E, es, codec=CODEC_ZSTD_COLUMNS)
    assert b.codec == CODEC_ZSTD_COLUMNS
    back = open_batch(b)
    assert back == tuple(es)
    assert [e.events for e in back] == [e.events for e in es]
    # and it is smaller than the same entries by row
    assert len(b.payload) < len(make_batch(S, P, E, es, codec=CODEC_ZSTD).payload)


def test_columnar_batch_with_a_dictionary_trained_on_columnar_samples() -> None:
    train = flight_entries(60, 5, seed=2)
    d = train_dictionary(training_samples(train, 10), 4096)
    es = flight_entries(2, 5, seed=3)
    b = make_batch(S, P, E, es, codec=CODEC_ZSTD_COLUMNS, dictionary=d)
    assert b.codec == CODEC_ZSTD_COLUMNS and b.dict_id == d.dict_id
    assert open_batch(b, dictionaries={d.dict_id: d}) == tuple(es)


def test_entries_the_columns_cannot_hold_travel_opaque_and_come_back_exact() -> None:
    es = flight_entries(2, 4)
    odd = GeoEntry(Seq(8), 2, b"not a store block", "p9", 7, None)
    tail = [GeoEntry(Seq(10), e.record_count, e.events, e.producer_id, 8, None) for e in es[:1]]
    mixed = [*es, odd, *tail]
    raw = encode_columns(mixed)
    assert raw is not None
    plain = loads_plain(raw, CodecLimits())
    assert plain[5] == [None, None, b"not a store block", None]  # opaque column
    b = make_batch(S, P, E, mixed, codec=CODEC_ZSTD_COLUMNS)
    assert b.codec == CODEC_ZSTD_COLUMNS and open_batch(b) == tuple(mixed)


def test_a_body_that_would_re_encode_differently_sends_the_batch_by_row() -> None:
    es = flight_entries(1, 3, seed=4)
    block = cbor2.loads(es[0].events)
    # a half-precision float: decodes to a Python float that CBOR re-encodes in 8 bytes
    first = cbor2.dumps({"x": 1.5}, canonical=True)
    assert first != dumps_plain({"x": 1.5})
    rest = block[5][block[4][0] :]
    ends = [len(first) + e - block[4][0] for e in block[4]]
    forged = cbor2.dumps([1, block[1], block[2], block[3], ends, first + rest])
    entry = GeoEntry(Seq(0), 3, forged, "p1", 0, None)
    assert encode_columns([entry]) is None
    b = make_batch(S, P, E, [entry], codec=CODEC_ZSTD_COLUMNS)
    assert b.codec == CODEC_ZSTD and open_batch(b) == (entry,)


def test_entries_without_schema_or_producer_round_trip() -> None:
    rng = random.Random(5)
    es = store_entries([[flight(rng, i) for i in range(3)] for _ in range(3)], None, False)
    b = make_batch(S, P, E, es, codec=CODEC_ZSTD_COLUMNS)
    assert b.codec == CODEC_ZSTD_COLUMNS and open_batch(b) == tuple(es)


bodies = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.dictionaries(st.sampled_from("abcde"), bodies, max_size=5), min_size=1, max_size=4
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_bodies_round_trip_exactly_property(requests: list[list[dict[str, Any]]]) -> None:
    events = [[{"ts": i * 7, "body": body} for i, body in enumerate(r)] for r in requests]
    es = store_entries(events, "p", False)
    b = make_batch(S, P, E, es, codec=CODEC_ZSTD_COLUMNS)
    assert open_batch(b) == tuple(es)


def test_training_samples_are_batch_shaped_columnar_payloads() -> None:
    es = flight_entries(40, 4)  # entries of 4 events; batches of <= 10 hold 2 entries
    samples = training_samples(es, 10)
    assert len(samples) == 20
    assert decode_columns(samples[0]) == [
        [e.record_count, e.events, e.producer_id, e.producer_seq, e.epoch] for e in es[:2]
    ]
    assert decode_columns(samples[-1])[1][1] == es[39].events
    rows = training_samples(es, 10, columnar=False)
    assert rows[0] == encode_entries(es[:2])
    # few entries: smaller groups, so zstd still gets enough samples
    few = training_samples(es[:20], 10)
    assert len(few) == 20 and decode_columns(few[3])[0][1] == es[3].events


def test_a_dictionary_is_sized_to_its_samples() -> None:
    samples = training_samples(flight_entries(200, 5, seed=6), 20)
    total = sum(map(len, samples))
    d = train(samples, 1 << 20)
    assert DICTIONARY_BYTES_MIN <= len(d.data) <= max(DICTIONARY_BYTES_MIN, total // 3)
    assert len(train(samples, 4096).data) <= 4096


# --- the receiver's bounds ----------------------------------------------------------------


def forged_batch(plain: list[Any], count: int) -> GeoBatch:
    """A batch whose columnar payload is ``plain`` (with a valid batch CRC)."""
    payload = compress(dumps_plain(plain), 3)
    crc = batch_crc(S, P, E, 0, count - 1, count, CODEC_ZSTD_COLUMNS, 0, payload)
    return GeoBatch(S, P, E, Seq(0), Seq(count - 1), count, crc, CODEC_ZSTD_COLUMNS, 0, payload)


def columnar_plain(es: list[GeoEntry]) -> list[Any]:
    raw = encode_columns(es)
    assert raw is not None
    plain: list[Any] = loads_plain(raw, CodecLimits())
    return plain


def test_rebuilding_past_the_decompressed_bound_is_refused() -> None:
    es = flight_entries(4, 10)
    b = make_batch(S, P, E, es, codec=CODEC_ZSTD_COLUMNS)
    columnar_bytes = len(encode_columns(es) or b"")
    rebuilt = sum(len(e.events) for e in es)
    assert columnar_bytes < rebuilt
    # the payload inflates within the bound, the rebuilt events would not
    with pytest.raises(BatchError, match="rebuilds to over"):
        open_batch(b, CodecLimits(decompressed_bytes_max=rebuilt - 1))
    assert open_batch(b, CodecLimits(decompressed_bytes_max=rebuilt + 100)) == tuple(es)


@pytest.mark.parametrize(
    "damage",
    [
        "crc",
        "counts",
        "deltas",
        "schema_index",
        "column_length",
        "format",
        "opaque_type",
        "duplicate_field",
    ],
)
def test_damaged_columnar_payloads_are_refused_whole(damage: str) -> None:
    es = flight_entries(3, 4)
    plain = columnar_plain(es)
    count = sum(e.record_count for e in es)
    if damage == "crc":
        plain[12] ^= 1
    elif damage == "counts":
        plain[1][0] += 1
    elif damage == "deltas":
        plain[6][3] += 1  # one timestamp differs: caught by the events' CRC
    elif damage == "schema_index":
        assert plain[10] is not None  # two shapes in these flights
        plain[10][0] = len(plain[9])
    elif damage == "column_length":
        plain[11][0][0].append(1)
    elif damage == "format":
        plain[0] = 2
    elif damage == "opaque_type":
        plain[5][0] = 5
    elif damage == "duplicate_field":
        plain[9][0][1] = plain[9][0][0]
    with pytest.raises(BatchError):
        open_batch(forged_batch(plain, count))
    with pytest.raises(Exception):  # noqa: B017 - any CodecError subclass
        decode_columns(dumps_plain(plain))


def test_an_intact_forged_payload_opens() -> None:
    """The forging helper itself is sound (so the damage cases above fail for their damage)."""
    es = flight_entries(3, 4)
    count = sum(e.record_count for e in es)
    assert open_batch(forged_batch(columnar_plain(es), count)) == tuple(es)


_FUZZ_BASE = encode_columns(flight_entries(3, 4, seed=8)) or b""
_FUZZ_LIMITS = CodecLimits(items_max=10_000, depth_max=32, decompressed_bytes_max=1 << 16)


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    data = bytearray(_FUZZ_BASE)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            op = "insert"
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x9F, 0xBB, 0x1B]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_payloads())
def test_mutated_columnar_payloads_decode_or_raise_codec_error(raw: bytes) -> None:
    """Below the batch CRC (as if a sender were faulty): a typed error or entries within the
    bound, never another exception; a resealed batch gives entries or BatchError."""
    try:
        out = decode_columns(raw, _FUZZ_LIMITS)
    except CodecError:
        pass
    else:
        assert sum(len(e[1]) for e in out) <= _FUZZ_LIMITS.decompressed_bytes_max
    count = 12
    payload = compress(raw, 1)
    crc = batch_crc(S, P, E, 0, count - 1, count, CODEC_ZSTD_COLUMNS, 0, payload)
    b = GeoBatch(S, P, E, Seq(0), Seq(count - 1), count, crc, CODEC_ZSTD_COLUMNS, 0, payload)
    try:
        entries = open_batch(b, _FUZZ_LIMITS)
    except BatchError:
        return
    assert sum(e.record_count for e in entries) == count


# --- the shipper ---------------------------------------------------------------------------


class _Log:
    def __init__(self, es: list[GeoEntry]) -> None:
        self.es = es

    def read_committed(
        self,
        stream: StreamName,
        partition: PartitionId,
        from_seq: Seq,
        through_seq: Seq,
        events_max: int,
        bytes_max: int,
    ) -> list[GeoEntry]:
        out: list[GeoEntry] = []
        events = 0
        for e in self.es:
            if e.seq < from_seq:
                continue
            if e.last_seq > through_seq or (out and events + e.record_count > events_max):
                break
            out.append(e)
            events += e.record_count
        return out


def shipper(es: list[GeoEntry], compression: bool = True, **kw: Any) -> Shipper:
    s = GeoSettings(**kw)
    d = train_dictionary(training_samples(flight_entries(60, 5, seed=9), 10), 4096)
    sh = Shipper(HOME, {DST: 50.0}, s, _Log(es), dictionaries={S: d}, compression=compression)
    sh.on_committed(S, P, E, Seq(-1), 0)
    sh.on_envelope(
        GeoEnvelope(DST, HOME, (GeoHeartbeat((GeoPosition(S, P, E, Seq(-1)),), reply=True),)), 0
    )
    return sh


def sent(envs: list[GeoEnvelope]) -> list[GeoBatch]:
    return [i for env in envs for i in env.items if isinstance(i, GeoBatch)]


def commit(sh: Shipper, es: list[GeoEntry], upto: int, now_ms: int) -> None:
    sh.on_committed(S, P, E, es[upto - 1].last_seq, now_ms)


def test_a_lingering_batch_leaves_at_the_dictionary_batch_size() -> None:
    es = flight_entries(8, 5)  # entries of 5 events
    sh = shipper(es, linger_ms=20, dictionary_batch_events_max=10)
    commit(sh, es, 1, 0)
    assert sent(sh.tick(1)) == []  # 5 events: lingers
    commit(sh, es, 2, 2)
    (b,) = sent(sh.tick(3))  # 10 events: the dictionary's size, leaves before the linger
    assert b.record_count == 10 and b.dict_id != 0 and b.codec == CODEC_ZSTD_COLUMNS
    commit(sh, es, 5, 4)  # 15 pending (< 2 x 10): still batches the dictionary serves
    (b,) = sent(sh.tick(5))
    assert b.record_count == 10 and b.dict_id != 0
    assert sent(sh.tick(6)) == []  # the last 5 linger
    (b,) = sent(sh.tick(30))  # until linger_ms
    assert b.record_count == 5


def test_a_backlog_lifts_the_dictionary_batch_bound() -> None:
    es = flight_entries(8, 5)
    sh = shipper(es, linger_ms=20, dictionary_batch_events_max=10, batch_events_max=1000)
    commit(sh, es, 8, 0)  # 40 pending: a backlog
    (b,) = sent(sh.tick(1))
    assert b.record_count == 40 and b.dict_id == 0


def test_without_a_dictionary_a_batch_waits_for_the_linger() -> None:
    es = flight_entries(4, 5)
    sh = shipper(es, linger_ms=20, use_dictionary=False)
    commit(sh, es, 4, 0)
    assert sent(sh.tick(5)) == []
    (b,) = sent(sh.tick(20))
    assert b.record_count == 20 and b.dict_id == 0


def test_raw_bytes_are_what_an_uncompressed_shipper_sends() -> None:
    """The ratio's "without compression" (bench/geo.py) is the shipper's raw count: it must
    equal the payload of the very same batches sent with compression off."""
    es = flight_entries(6, 5)
    on = shipper(es, linger_ms=0, batch_events_max=10, use_dictionary=False)
    off = shipper(es, False, linger_ms=0, batch_events_max=10)
    for sh in (on, off):
        commit(sh, es, 6, 0)
    got_on, got_off = sent(on.tick(1)), sent(off.tick(1))
    assert [(b.src_start, b.src_end) for b in got_on] == [(b.src_start, b.src_end) for b in got_off]
    assert all(b.codec == CODEC_NONE for b in got_off)
    assert on.stats.bytes_raw == off.stats.bytes_raw == sum(len(b.payload) for b in got_off)
    assert off.stats.bytes_raw == sum(len(encode_entries(open_batch(b))) for b in got_off)
    assert on.stats.bytes_payload < on.stats.bytes_raw / 2


def test_each_range_is_encoded_once_for_every_destination() -> None:
    es = flight_entries(2, 5)
    s = GeoSettings(linger_ms=0)
    sh = Shipper(HOME, {DST: 50.0, RegionId("d2"): 80.0}, s, _Log(es))
    sh.on_committed(S, P, E, Seq(-1), 0)
    for dst in (DST, RegionId("d2")):
        hb = GeoHeartbeat((GeoPosition(S, P, E, Seq(-1)),), reply=True)
        sh.on_envelope(GeoEnvelope(dst, HOME, (hb,)), 0)
    commit(sh, es, 2, 0)
    a, b = sent(sh.tick(1))
    assert a.payload is b.payload  # one encoding, two destinations
    assert sh.stats.destinations[DST].bytes_raw == sh.stats.destinations[RegionId("d2")].bytes_raw
    ack = GeoAck(S, P, E, a.src_start, a.src_end, Watermark(E, a.src_end))
    sh.on_envelope(GeoEnvelope(DST, HOME, (ack,)), 2)
