"""Frames round-trip through decode_frame and the stream decoder; every single-byte
corruption and every truncation of a frame is detected; lengths over the limit are refused
before they are buffered; arbitrary bytes give only CodecError."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geostore.codec import (
    CodecError,
    CodecLimits,
    FrameDecoder,
    IncompleteFrame,
    decode_frame,
    encode_frame,
)
from geostore.codec.framing import FRAME_HEADER_BYTES

SAMPLE = encode_frame(b"raft append entries, term 7, index 42 .. 45" + bytes(range(20)))


@given(st.binary(max_size=2000))
def test_frame_round_trips(payload: bytes) -> None:
    frame = encode_frame(payload)
    assert len(frame) == FRAME_HEADER_BYTES + len(payload)
    assert decode_frame(frame) == (payload, len(frame))
    # a frame followed by more bytes decodes the same and says how much it used
    assert decode_frame(frame + b"GFxx") == (payload, len(frame))


def test_every_single_byte_corruption_is_detected() -> None:
    for position in range(len(SAMPLE)):
        for value in range(256):
            if value == SAMPLE[position]:
                continue
            corrupt = bytearray(SAMPLE)
            corrupt[position] = value
            with pytest.raises(CodecError):
                payload, _ = decode_frame(corrupt)
                pytest.fail(f"byte {position} = {value} gave {payload!r}")


def test_every_single_bit_flip_is_detected_as_corruption_not_incompleteness() -> None:
    # A flipped bit must never make the reader wait (IncompleteFrame) for bytes that never come.
    for position in range(len(SAMPLE)):
        for bit in range(8):
            corrupt = bytearray(SAMPLE)
            corrupt[position] ^= 1 << bit
            with pytest.raises(CodecError) as caught:
                decode_frame(corrupt)
            assert not isinstance(caught.value, IncompleteFrame), (position, bit)


def test_every_truncation_is_incomplete() -> None:
    for cut in range(len(SAMPLE)):
        with pytest.raises(IncompleteFrame) as caught:
            decode_frame(SAMPLE[:cut])
        assert caught.value.needed_bytes >= 1
        assert cut + caught.value.needed_bytes <= len(SAMPLE)


def test_wrong_magic_is_refused_from_the_first_byte() -> None:
    with pytest.raises(CodecError) as caught:
        decode_frame(b"X")
    assert not isinstance(caught.value, IncompleteFrame)
    with pytest.raises(CodecError):
        FrameDecoder().feed(b"HTTP/1.1 200 OK\r\n")


def test_length_over_the_limit_is_refused_before_the_payload_arrives() -> None:
    limits = CodecLimits(frame_bytes_max=1024)
    big = encode_frame(bytes(2048))
    with pytest.raises(CodecError, match="limit") as caught:
        decode_frame(big[:FRAME_HEADER_BYTES], limits)
    assert not isinstance(caught.value, IncompleteFrame)
    decoder = FrameDecoder(limits)
    with pytest.raises(CodecError, match="limit"):
        decoder.feed(big[:FRAME_HEADER_BYTES])
    assert decoder.buffered_bytes <= FRAME_HEADER_BYTES
    # a frame of exactly the limit is fine
    exact = encode_frame(bytes(1024))
    assert decode_frame(exact, limits) == (bytes(1024), len(exact))


def test_a_forged_header_with_a_valid_header_crc_but_bad_payload_is_refused() -> None:
    payload = b"hello"
    head = struct.pack(">2sII", b"GF", len(payload), zlib.crc32(b"other"))
    frame = head + struct.pack(">I", zlib.crc32(head)) + payload
    with pytest.raises(CodecError, match="payload checksum"):
        decode_frame(frame)


@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_stream_decoder_reassembles_any_chunking(
    payloads: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    received: list[bytes] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        received += decoder.feed(stream[previous:cut])
        previous = cut
    assert received == payloads
    assert decoder.buffered_bytes == 0


def test_stream_decoder_byte_by_byte_and_failure_is_sticky() -> None:
    decoder = FrameDecoder()
    received: list[bytes] = []
    for i in range(len(SAMPLE) * 2):
        received += decoder.feed((SAMPLE + SAMPLE)[i : i + 1])
    assert received == [decode_frame(SAMPLE)[0]] * 2
    corrupt = bytearray(SAMPLE)
    corrupt[-1] ^= 1
    with pytest.raises(CodecError):
        decoder.feed(bytes(corrupt))
    with pytest.raises(CodecError, match="already failed"):
        decoder.feed(SAMPLE)


@given(st.binary(max_size=100))
def test_arbitrary_bytes_give_a_frame_or_a_codec_error(data: bytes) -> None:
    for candidate in (data, b"GF" + data):
        with contextlib.suppress(CodecError):
            decode_frame(candidate)
        with contextlib.suppress(CodecError):
            FrameDecoder().feed(candidate)


def test_memoryview_input_is_accepted() -> None:
    assert decode_frame(memoryview(SAMPLE))[1] == len(SAMPLE)
