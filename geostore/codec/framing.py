"""Frames: how one payload is delimited and checked on a byte stream or in a file.

Layout (big-endian, 14-byte header, then the payload)::

    magic "GF" (2) | payload length u32 | crc32(payload) u32 | crc32(first 10 header bytes) u32

Why two checksums: the payload CRC alone would leave the length unprotected, and a corrupted
length is the worst corruption a stream can suffer: a reader trusting it would wait for bytes
that never come (or buffer up to the limit) and then lose its place for every later frame.
The header CRC covers the magic, the length and the payload CRC, so a damaged header is
reported as soon as its 14 bytes are in, before any payload is awaited. CRC-32 detects every
error burst of at most 32 bits, so every single-byte (and single-bit) corruption of a frame is
caught by one of the two; a cut frame is an ``IncompleteFrame``.

``decode_frame`` is sans-IO: it looks at a buffer and says "payload and bytes consumed",
"need more" (``IncompleteFrame``) or "corrupt" (``CodecError``). ``FrameDecoder`` keeps the
buffer for a stream; after a corrupt frame it refuses everything (the stream has lost its
framing and must be reset by its owner).
"""

from __future__ import annotations

import struct
import zlib

from geostore.codec.limits import DEFAULT_LIMITS, CodecLimits, IncompleteFrame
from geostore.errors import CodecError

FRAME_MAGIC = b"GF"
_HEAD = struct.Struct(">2sII")  # magic, length, payload crc
_HEAD_CRC = struct.Struct(">I")
FRAME_HEADER_BYTES = _HEAD.size + _HEAD_CRC.size


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Header + payload. The payload must fit a u32 length (limits are the reader's job)."""
    length = len(payload)
    assert length <= 0xFFFF_FFFF, "a frame payload must fit a u32 length"
    head = _HEAD.pack(FRAME_MAGIC, length, zlib.crc32(payload))
    return b"".join((head, _HEAD_CRC.pack(zlib.crc32(head)), payload))


def decode_frame(
    buf: bytes | bytearray | memoryview, limits: CodecLimits = DEFAULT_LIMITS
) -> tuple[bytes, int]:
    """The first frame in ``buf``: (payload, bytes consumed).

    Raises IncompleteFrame when ``buf`` is a valid but short prefix, CodecError when it is not
    a valid frame (wrong magic, header or payload checksum, length over the limit).
    """
    return _decode_at(memoryview(buf).cast("B"), 0, limits)


def _decode_at(view: memoryview, offset: int, limits: CodecLimits) -> tuple[bytes, int]:
    available = len(view) - offset
    if available < FRAME_HEADER_BYTES:
        # Refuse a wrong magic as soon as it shows: a stream of garbage should not wait.
        seen = bytes(view[offset : offset + min(available, len(FRAME_MAGIC))])
        if seen != FRAME_MAGIC[: len(seen)]:
            raise CodecError("bad frame magic")
        raise IncompleteFrame(FRAME_HEADER_BYTES - available)
    head = view[offset : offset + _HEAD.size]
    magic, length, payload_crc = _HEAD.unpack(head)
    (head_crc,) = _HEAD_CRC.unpack_from(view, offset + _HEAD.size)
    if magic != FRAME_MAGIC:
        raise CodecError("bad frame magic")
    if zlib.crc32(head) != head_crc:
        raise CodecError("frame header checksum mismatch")
    if length > limits.frame_bytes_max:
        raise CodecError(
            f"frame of {length} bytes over the limit of {limits.frame_bytes_max}",
            length=length,
        )
    start = offset + FRAME_HEADER_BYTES
    end = start + length
    if end > len(view):
        raise IncompleteFrame(end - len(view))
    payload = view[start:end]
    if zlib.crc32(payload) != payload_crc:
        raise CodecError("frame payload checksum mismatch")
    return bytes(payload), FRAME_HEADER_BYTES + length


class FrameDecoder:
    """Reassembles frames from a byte stream fed in arbitrary chunks.

    The buffer holds at most one incomplete frame (whose declared length was checked against
    ``frame_bytes_max`` before it was awaited) plus the latest chunk. Not thread-safe.
    """

    __slots__ = ("_buf", "_failed", "_limits")

    def __init__(self, limits: CodecLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._failed: CodecError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data``; return every frame it completes, in order.

        Raises CodecError on corruption; the decoder then stays failed (its framing is lost).
        """
        if self._failed is not None:
            raise CodecError(f"frame stream already failed: {self._failed.message}")
        self._buf += data
        frames: list[bytes] = []
        offset = 0
        view = memoryview(self._buf)
        try:
            while True:
                try:
                    payload, used = _decode_at(view, offset, self._limits)
                except IncompleteFrame:
                    break
                frames.append(payload)
                offset += used
        except CodecError as exc:
            self._failed = exc
            raise
        finally:
            view.release()  # a bytearray with an exported view cannot shrink
        del self._buf[:offset]
        return frames
