"""Columnar batches round-trip rows exactly (missing keys, nested values), compress better
than the same rows laid out by row on structured data, and decode totally."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geostore.codec import (
    CodecError,
    CodecLimits,
    compress,
    decode_columnar,
    encode_columnar,
)
from tests.unit.codec_values import plain_values

texts = st.text(max_size=8)
plain = plain_values(texts, binary_size_max=8)
rows_strategy = st.lists(
    st.dictionaries(st.sampled_from(["a", "b", "c", "dep_delay", "ü"]) | texts, plain, max_size=4),
    max_size=12,
)


@settings(max_examples=60)  # large generated values: bounded runtime
@given(rows_strategy)
def test_rows_round_trip_exactly(rows: list[dict[str, Any]]) -> None:
    decoded = decode_columnar(encode_columnar(rows))
    assert decoded == rows
    assert all(type(row) is dict for row in decoded)


def test_missing_keys_and_nested_values_survive() -> None:
    rows: list[dict[str, object]] = [
        {"a": 1, "b": {"x": [1, 2, {"y": None}]}},
        {},
        {"b": [], "c": b"\x00"},
        {"a": False, "c": 2.5},
    ] * 3
    assert decode_columnar(encode_columnar(rows)) == rows
    assert decode_columnar(encode_columnar([])) == []
    assert decode_columnar(encode_columnar([{}, {}])) == [{}, {}]


def flights(count: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        row: dict[str, object] = {
            "year": 2013,
            "month": rng.randint(1, 12),
            "day": rng.randint(1, 28),
            "dep_time": rng.randint(500, 2359),
            "dep_delay": float(rng.randint(-10, 90)),
            "carrier": rng.choice(["UA", "AA", "B6", "DL", "EV", "MQ"]),
            "flight": rng.randint(1, 6000),
            "tailnum": f"N{rng.randint(100, 999)}{rng.choice(['UA', 'AA', 'JB'])}",
            "origin": rng.choice(["JFK", "LGA", "EWR"]),
            "dest": rng.choice(["IAH", "MIA", "BQN", "ATL", "ORD", "FLL", "IAD"]),
            "air_time": float(rng.randint(30, 400)),
            "distance": rng.randint(80, 4983),
        }
        if rng.random() < 0.02:
            del row["dep_delay"]  # cancelled flights lack times
        rows.append(row)
    return rows


def test_column_layout_compresses_better_than_rows() -> None:
    rows = flights(1000, seed=11)
    by_row = compress(cbor2.dumps(rows))
    by_column = compress(encode_columnar(rows))
    assert len(by_column) < len(by_row) < len(cbor2.dumps(rows))


def test_malformed_batches_are_refused() -> None:
    good = cbor2.loads(encode_columnar([{"a": 1}, {"b": 2}]))
    assert good[0] == 1 and good[1] == 2
    forged = [
        [2, *good[1:]],  # unknown format
        [1, -1, *good[2:]],  # negative row count
        [1, 9, *good[2:]],  # row count disagrees with the bitmaps' size
        [1, 2, ["a", "a"], good[3], good[4]],  # duplicate keys
        [1, 2, [1, "b"], good[3], good[4]],  # non-string key
        [1, 2, good[2], [[1], [2, 3]], good[4]],  # values disagree with the bitmap
        [1, 2, good[2], good[3], [None, None]],  # full columns that are not full
        [1, 2, good[2], good[3], [b"\x07", b"\x02"]],  # bit set past the last row
        [1, 2, good[2], good[3]],  # missing part
        {"rows": 2},
    ]
    for value in forged:
        with pytest.raises(CodecError):
            decode_columnar(cbor2.dumps(value))
            pytest.fail(repr(value))


def test_row_count_is_bounded_by_items_max() -> None:
    with pytest.raises(CodecError, match="row count"):
        decode_columnar(cbor2.dumps([1, 10**9, [], [], []]), CodecLimits(items_max=1000))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_rows_or_a_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_columnar(data)


@settings(max_examples=50)
@given(rows_strategy, st.data())
def test_mutated_batches_give_rows_or_a_codec_error(
    rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    encoded = bytearray(encode_columnar(rows))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    with contextlib.suppress(CodecError):
        decode_columnar(bytes(encoded))
