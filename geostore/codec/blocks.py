"""Opaque event blocks: event payloads sealed once, then carried and stored as bytes.

Why opaque: an event batch is encoded once by the node that accepts it; Raft entries, the
log on disk and the geo shipper then carry the sealed bytes unchanged, so no node pays the
(several times higher) price of re-encoding events canonically, and a block's checksum
travels with it end to end.

Layout (big-endian, 15-byte header, then the payload)::

    magic "GB" (2) | format 1 (1) | record count u32 | payload length u32 | crc32 u32

The CRC covers the first 11 header bytes and the payload, so a damaged count or length is as
detectable as a damaged payload. The block must be exactly header + length bytes long.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from geostore.codec.cbor import dumps_plain, loads_plain
from geostore.codec.limits import DEFAULT_LIMITS, CodecLimits
from geostore.errors import CodecError

BLOCK_MAGIC = b"GB"
BLOCK_FORMAT = 1
_HEAD = struct.Struct(">2sBII")  # magic, format, record count, payload length
_CRC = struct.Struct(">I")
BLOCK_HEADER_BYTES = _HEAD.size + _CRC.size


def seal_block(payload: bytes | bytearray | memoryview, record_count: int) -> bytes:
    """Wrap ``payload`` (``record_count`` records, opaque here) with its header and checksum."""
    assert 0 <= record_count <= 0xFFFF_FFFF, "record count must fit a u32"
    assert len(payload) <= 0xFFFF_FFFF, "payload must fit a u32 length"
    head = _HEAD.pack(BLOCK_MAGIC, BLOCK_FORMAT, record_count, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, _CRC.pack(crc), payload))


def open_block(
    sealed: bytes | bytearray | memoryview, limits: CodecLimits = DEFAULT_LIMITS
) -> tuple[bytes, int]:
    """Verify a sealed block: (payload, record_count), or CodecError."""
    view = memoryview(sealed).cast("B")
    if len(view) < BLOCK_HEADER_BYTES:
        raise CodecError(f"block of {len(view)} bytes is shorter than its header")
    magic, fmt, record_count, length = _HEAD.unpack_from(view, 0)
    (crc,) = _CRC.unpack_from(view, _HEAD.size)
    if magic != BLOCK_MAGIC:
        raise CodecError("bad block magic")
    if fmt != BLOCK_FORMAT:
        raise CodecError(f"unknown block format {fmt}", format=fmt)
    if length > limits.frame_bytes_max:
        raise CodecError(f"block of {length} bytes over the limit of {limits.frame_bytes_max}")
    if len(view) != BLOCK_HEADER_BYTES + length:
        raise CodecError(
            f"block length mismatch: header says {length} payload bytes, "
            f"{len(view) - BLOCK_HEADER_BYTES} present"
        )
    payload = view[BLOCK_HEADER_BYTES:]
    if zlib.crc32(payload, zlib.crc32(view[: _HEAD.size])) != crc:
        raise CodecError("block checksum mismatch")
    return bytes(payload), record_count


def encode_events(events: Sequence[object]) -> bytes:
    """Seal a batch of plain event values as one CBOR array.

    Plain means what :func:`~geostore.codec.cbor.loads_plain` gives back: None, bool, int,
    float, str, bytes, lists (tuples become lists) and maps. cbor2 would also encode datetimes,
    sets or decimals, as semantic tags that every decoder here refuses: callers pass values
    that came from a JSON or CBOR body, which are plain already.
    """
    return seal_block(dumps_plain(list(events)), len(events))


def decode_events(
    block: bytes | bytearray | memoryview, limits: CodecLimits = DEFAULT_LIMITS
) -> list[object]:
    """The events of a block made by :func:`encode_events`, or CodecError."""
    payload, record_count = open_block(block, limits)
    events = loads_plain(payload, limits)
    if type(events) is not list:
        raise CodecError("an event block holds a CBOR array")
    if len(events) != record_count:
        raise CodecError(f"event block declares {record_count} records, holds {len(events)}")
    return events
