"""Sealed event blocks round-trip, carry their record count, and detect every single-byte
corruption and every truncation; decode_events gives plain values or exactly one CodecError."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geostore.codec import (
    CodecError,
    CodecLimits,
    decode_events,
    encode_events,
    open_block,
    seal_block,
)
from tests.unit.codec_values import plain_values

texts = st.text(max_size=16)
plain = plain_values(texts, binary_size_max=8)

EVENT = {
    "stream": "flights",
    "key": "JFK",
    "body": {"carrier": "UA", "flight": 1545, "dep_delay": 2.0, "tailnum": "N14228"},
}
SAMPLE = encode_events([EVENT, {**EVENT, "key": "LGA"}])


@given(st.binary(max_size=1000), st.integers(0, 2**32 - 1))
def test_block_round_trips(payload: bytes, count: int) -> None:
    assert open_block(seal_block(payload, count)) == (payload, count)


@given(st.lists(plain, max_size=10))
def test_events_round_trip(events: list[Any]) -> None:
    block = encode_events(events)
    assert decode_events(block) == events
    assert open_block(block)[1] == len(events)


def test_every_single_byte_corruption_and_truncation_is_detected() -> None:
    for position in range(len(SAMPLE)):
        for value in range(256):
            if value != SAMPLE[position]:
                corrupt = bytearray(SAMPLE)
                corrupt[position] = value
                with pytest.raises(CodecError):
                    open_block(corrupt)
    for cut in range(len(SAMPLE)):
        with pytest.raises(CodecError):
            open_block(SAMPLE[:cut])
    with pytest.raises(CodecError):
        open_block(SAMPLE + b"\x00")


def test_record_count_must_match_the_events() -> None:
    payload, _ = open_block(SAMPLE)
    with pytest.raises(CodecError, match="declares 3"):
        decode_events(seal_block(payload, 3))
    with pytest.raises(CodecError, match="array"):
        decode_events(seal_block(cbor2.dumps({"not": "a list"}), 1))


def test_block_over_the_frame_limit_is_refused() -> None:
    block = seal_block(bytes(2000), 1)
    with pytest.raises(CodecError, match="limit"):
        open_block(block, CodecLimits(frame_bytes_max=1000))


def test_non_plain_values_are_refused() -> None:
    for hostile in (cbor2.CBORTag(1, 0), cbor2.CBORTag(29, 0), cbor2.CBORTag(12345, 1)):
        block = seal_block(cbor2.dumps([hostile]), 1)
        with pytest.raises(CodecError):
            decode_events(block)
    with pytest.raises(CodecError):
        encode_events([object()])


def test_deep_nesting_in_events_is_refused() -> None:
    deep = b"\x81" + b"\x81" * 100_000 + b"\x00"
    with pytest.raises(CodecError, match="depth"):
        decode_events(seal_block(deep, 1))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_events_or_a_codec_error(data: bytes) -> None:
    for candidate in (data, seal_block(data, 1)):
        with contextlib.suppress(CodecError):
            open_block(candidate)
        with contextlib.suppress(CodecError):
            decode_events(candidate)
