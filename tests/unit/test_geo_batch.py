"""Geo batches and messages round-trip through the codec, and every damaged batch is refused whole.

Covers the wire tags (200-219 reserved), encode/decode of every geo message, batch
round trips with and without zstandard and a dictionary, and corruption detection: flipped
bits, truncation, lying counts and ranges (with a recomputed CRC), unknown dictionaries and
decompression bombs (G10).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geostore.codec import (
    CodecError,
    CodecLimits,
    UnknownDictionaryError,
    decode_message,
    encode_message,
    registered_messages,
    train_dictionary,
)
from geostore.geo import (
    CODEC_NONE,
    CODEC_ZSTD,
    GEO_TAG_FIRST,
    GEO_TAG_LAST,
    BatchError,
    GeoAck,
    GeoApply,
    GeoBatch,
    GeoDictionary,
    GeoEntry,
    GeoEnvelope,
    GeoHeartbeat,
    GeoNack,
    GeoPosition,
    NackReason,
    Watermark,
    make_batch,
    open_batch,
    resealed,
)
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName

S = StreamName("flights")
P = PartitionId(1)
E = Epoch(3)


def entries(start: int, counts: list[int], size: int = 40) -> list[GeoEntry]:
    out = []
    seq = start
    for i, n in enumerate(counts):
        body = (f"event-{seq}-" * size).encode()[: size * n]
        out.append(
            GeoEntry(Seq(seq), n, body, f"prod-{i % 2}" if i % 3 else None, i if i % 3 else None)
        )
        seq += n
    return out


def test_geo_tags_are_in_the_reserved_range() -> None:
    geo = {
        t: c for t, c in registered_messages().items() if c.__module__ == "geostore.geo.messages"
    }
    assert set(geo.values()) == {
        GeoBatch,
        GeoAck,
        GeoNack,
        GeoHeartbeat,
        GeoDictionary,
        GeoEnvelope,
        GeoApply,
    }
    assert all(GEO_TAG_FIRST <= t <= GEO_TAG_LAST for t in geo)


def test_every_message_round_trips_in_one_envelope() -> None:
    b = make_batch(S, P, E, entries(10, [2, 3]))
    wm = Watermark(E, Seq(9))
    items = (
        b,
        GeoAck(S, P, E, Seq(10), Seq(14), wm),
        GeoNack(S, P, E, Seq(10), Seq(14), NackReason.UNKNOWN_DICTIONARY, wm, E, 77),
        GeoHeartbeat((GeoPosition(S, P, E, Seq(14)), GeoPosition(S, PartitionId(2), E, Seq(-1)))),
        GeoHeartbeat((), reply=True),
        GeoDictionary(5, b"dict"),
    )
    env = GeoEnvelope(RegionId("us-east-1"), RegionId("eu-west-1"), items)
    back = decode_message(encode_message(env))
    assert back == env
    assert isinstance(back, GeoEnvelope) and type(back.items[2]) is GeoNack
    assert back.items[2].reason is NackReason.UNKNOWN_DICTIONARY
    cmd = GeoApply(S, P, E, Seq(10), Seq(14), b.crc, tuple(entries(10, [2, 3])))
    assert decode_message(encode_message(cmd)) == cmd


@pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_ZSTD])
def test_batch_round_trip(codec: int) -> None:
    es = entries(100, [1, 4, 2, 7])
    b = make_batch(S, P, E, es, codec=codec)
    assert (b.src_start, b.src_end, b.record_count) == (100, 113, 14)
    assert b.codec == codec
    assert open_batch(b) == tuple(es)
    if codec == CODEC_ZSTD:
        assert len(b.payload) < sum(len(e.events) for e in es) / 3


def test_batch_with_a_dictionary_needs_it() -> None:
    rng = random.Random(1)
    samples = [
        b"".join(
            f'{{"origin":"{rng.choice("ABC")}","dep":{rng.randint(0, 2400)}}}'.encode()
            for _ in range(5)
        )
        for _ in range(200)
    ]
    d = train_dictionary(samples, 2048)
    es = [GeoEntry(Seq(0), 1, samples[0]), GeoEntry(Seq(1), 1, samples[1])]
    b = make_batch(S, P, E, es, dictionary=d)
    assert b.dict_id == d.dict_id
    with pytest.raises(UnknownDictionaryError) as info:
        open_batch(b)
    assert info.value.dict_id == d.dict_id
    assert open_batch(b, dictionaries={d.dict_id: d}) == tuple(es)


def test_every_bit_flip_in_header_or_payload_is_detected() -> None:
    b = make_batch(S, P, E, entries(0, [3, 2]))
    blob = bytearray(b.payload)
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 1 << (i % 8)
        with pytest.raises(BatchError):
            open_batch(dataclasses.replace(b, payload=bytes(damaged)))
    for field, value in (
        ("src_start", Seq(1)),
        ("src_end", Seq(5)),
        ("record_count", 4),
        ("epoch", Epoch(2)),
        ("partition", PartitionId(0)),
        ("stream", StreamName("other")),
        ("dict_id", 9),
    ):
        changed: dict[str, Any] = {field: value}
        with pytest.raises(BatchError):
            open_batch(dataclasses.replace(b, **changed))


def test_truncated_or_lying_batches_are_refused_even_with_a_valid_crc() -> None:
    b = make_batch(S, P, E, entries(0, [3, 2]))
    for cut in (1, len(b.payload) // 2, len(b.payload) - 1):
        with pytest.raises(BatchError):
            open_batch(resealed(dataclasses.replace(b, payload=b.payload[:cut])))
    # a count and range that do not match the entries
    with pytest.raises(BatchError, match="declares"):
        open_batch(resealed(dataclasses.replace(b, src_end=Seq(5), record_count=6)))
    # a count that does not match the range
    with pytest.raises(BatchError, match="range"):
        open_batch(resealed(dataclasses.replace(b, record_count=4)))
    with pytest.raises(BatchError):
        open_batch(resealed(dataclasses.replace(b, codec=7)))
    raw = make_batch(S, P, E, entries(0, [3]), codec=CODEC_NONE)
    with pytest.raises(BatchError):
        open_batch(resealed(dataclasses.replace(raw, payload=b"\xa0")))  # an empty map


def test_decompression_bound_is_enforced() -> None:
    b = make_batch(S, P, E, entries(0, [50], size=200))
    with pytest.raises(BatchError):
        open_batch(b, CodecLimits(decompressed_bytes_max=1000))
    raw = make_batch(S, P, E, entries(0, [50], size=200), codec=CODEC_NONE)
    with pytest.raises(BatchError):
        open_batch(raw, CodecLimits(decompressed_bytes_max=1000))


@given(
    counts=st.lists(st.integers(1, 20), min_size=1, max_size=8),
    start=st.integers(0, 1 << 40),
    codec=st.sampled_from([CODEC_NONE, CODEC_ZSTD]),
    flip=st.integers(0, 10_000),
)
def test_round_trip_and_single_flips_property(
    counts: list[int], start: int, codec: int, flip: int
) -> None:
    es = entries(start, counts, size=8)
    b = make_batch(S, P, E, es, codec=codec)
    assert open_batch(b) == tuple(es)
    data = bytearray(encode_message(GeoEnvelope(RegionId("a"), RegionId("b"), (b,))))
    data[flip % len(data)] ^= 0x10
    try:
        env = decode_message(bytes(data))
    except CodecError:
        return  # the envelope itself is refused: fine
    assert isinstance(env, GeoEnvelope)
    for item in env.items:
        if isinstance(item, GeoBatch) and item != b:
            with pytest.raises(BatchError):
                open_batch(item)
