"""zstd compression round-trips with and without trained dictionaries, never expands data by
more than its header, refuses bombs (declared or actual) without allocating them, names
unknown dictionaries, and turns arbitrary bytes into exactly one CodecError."""

from __future__ import annotations

import contextlib
import json
import random
import struct
import tracemalloc

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from geostore.codec import (
    CodecError,
    CodecLimits,
    CompressionDictionary,
    UnknownDictionaryError,
    compress,
    decompress,
    train_dictionary,
)
from geostore.codec.compression import COMPRESSION_HEADER_BYTES, dictionary_id_of

MIB = 1 << 20


def flight_records(count: int, seed: int) -> list[bytes]:
    """Small, similar JSON records: what a dictionary is for."""
    rng = random.Random(seed)
    return [
        json.dumps(
            {
                "year": 2013,
                "month": rng.randint(1, 12),
                "carrier": rng.choice(["UA", "AA", "B6", "DL", "EV"]),
                "origin": rng.choice(["JFK", "LGA", "EWR"]),
                "dest": rng.choice(["IAH", "MIA", "BQN", "ATL", "ORD"]),
                "dep_delay": rng.randint(-10, 120),
                "tailnum": f"N{rng.randint(10000, 99999)}",
            }
        ).encode()
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def trained() -> CompressionDictionary:
    return train_dictionary(flight_records(400, seed=1), 2048)


@given(st.binary(max_size=5000), st.sampled_from([1, 3, 9]))
def test_round_trip_without_dictionary(data: bytes, level: int) -> None:
    packed = compress(data, level)
    assert decompress(packed) == data
    assert len(packed) <= len(data) + COMPRESSION_HEADER_BYTES


@given(st.binary(max_size=2000) | st.sampled_from(flight_records(20, seed=2)))
def test_round_trip_with_dictionary(trained: CompressionDictionary, data: bytes) -> None:
    packed = compress(data, 3, trained)
    assert decompress(packed, dictionaries={trained.dict_id: trained}) == data


def test_repetitive_data_gets_smaller_and_the_dictionary_helps_small_records(
    trained: CompressionDictionary,
) -> None:
    batch = b"".join(flight_records(1000, seed=3))
    assert len(compress(batch)) * 3 < len(batch)
    record = flight_records(1, seed=4)[0]
    assert len(compress(record, 3, trained)) < len(compress(record, 3))
    assert len(compress(record, 3, trained)) < len(record)


def test_dictionary_id_is_derived_from_the_content(trained: CompressionDictionary) -> None:
    assert trained.dict_id == dictionary_id_of(trained.data) != 0
    assert CompressionDictionary.from_bytes(trained.data) == trained
    again = train_dictionary(flight_records(400, seed=1), 2048)
    assert again.data == trained.data and again.dict_id == trained.dict_id


def test_unknown_dictionary_names_its_id(trained: CompressionDictionary) -> None:
    packed = compress(flight_records(1, seed=5)[0], 3, trained)
    with pytest.raises(UnknownDictionaryError) as caught:
        decompress(packed)
    assert caught.value.dict_id == trained.dict_id
    assert isinstance(caught.value, CodecError)


def test_declared_bomb_is_refused_before_inflating() -> None:
    limits = CodecLimits(decompressed_bytes_max=1 * MIB)
    bomb = compress(bytes(8 * MIB))  # ~a few hundred bytes declaring 8 MiB
    assert len(bomb) < 2048
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="limit"):
            decompress(bomb, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_lying_headers_cannot_inflate_past_the_declared_size() -> None:
    limits = CodecLimits(decompressed_bytes_max=1 * MIB)
    real = compress(bytes(8 * MIB))
    magic, codec, dict_id, _ = struct.unpack_from(">BBII", real)
    # our header lies small while the zstd frame says 8 MiB
    small_header = struct.pack(">BBII", magic, codec, dict_id, 1000) + real[10:]
    # a zstd frame without a content size, streamed, under an honest-looking header
    stream = zstandard.ZstdCompressor().compressobj()
    unsized = stream.compress(bytes(8 * MIB)) + stream.flush()
    assert zstandard.frame_content_size(unsized) == -1
    no_size = struct.pack(">BBII", magic, codec, 0, 1000) + unsized
    # a frame whose own content size field was patched smaller than what it inflates to
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(60_000))
    params = zstandard.get_frame_parameters(frame)
    assert params.content_size == 60_000
    tracemalloc.start()
    try:
        for lying in (small_header, no_size):
            with pytest.raises(CodecError):
                decompress(lying, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    # content size 60000 is written as 2 bytes (value - 256) right after the 5-byte prefix
    patched = bytearray(frame)
    fcs_offset = zstandard.frame_header_size(frame) - 2
    assert int.from_bytes(patched[fcs_offset : fcs_offset + 2], "little") + 256 == 60_000
    patched[fcs_offset : fcs_offset + 2] = (1000 - 256).to_bytes(2, "little")
    lying_frame = struct.pack(">BBII", magic, codec, 0, 1000) + bytes(patched)
    with pytest.raises(CodecError):
        decompress(lying_frame, limits)


def test_stored_data_and_trailing_bytes_are_checked() -> None:
    noise = random.Random(6).randbytes(300)
    packed = compress(noise)
    assert packed[1] == 0  # incompressible: stored
    assert decompress(packed) == noise
    with pytest.raises(CodecError):
        decompress(packed + b"x")
    zipped = compress(bytes(1000))
    with pytest.raises(CodecError):
        decompress(zipped + b"x")


def test_every_single_byte_corruption_of_a_zstd_body_is_detected_or_harmless() -> None:
    data = b"".join(flight_records(30, seed=7))
    packed = compress(data)
    for position in range(len(packed)):
        corrupt = bytearray(packed)
        corrupt[position] ^= 0x5A
        try:
            result = decompress(bytes(corrupt))
        except CodecError:
            continue
        assert result == data  # zstd's content checksum leaves no silent garbage


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_data_or_a_codec_error(data: bytes) -> None:
    for candidate in (data, b"Z\x01\x00\x00\x00\x00" + data, b"Z\x00\x00\x00\x00\x00" + data):
        with contextlib.suppress(CodecError):
            decompress(candidate)


def test_empty_input_round_trips_and_a_zstd_frame_claiming_zero_bytes_is_refused() -> None:
    assert decompress(compress(b"")) == b""
    frame = bytearray(zstandard.ZstdCompressor(write_content_size=True).compress(b"a" * 200))
    assert frame[4] == 0b0010_0000  # single segment, 1-byte content size at offset 5
    frame[5] = 0  # now "0 bytes", with 200 bytes of body that zstandard would not look at
    with pytest.raises(CodecError):
        decompress(struct.pack(">BBII", 0x5A, 1, 0, 0) + bytes(frame))
