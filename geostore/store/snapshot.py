"""Snapshot framing: a stream of length-prefixed CBOR records cut into chunks, and back.

Theory of operation: a snapshot is a sequence of records (``[kind, ...]`` CBOR arrays),
each framed as a 4-byte big-endian length and the record bytes. The writer cuts the framed
stream into chunks of ``chunk_bytes`` regardless of record boundaries (so a transport can
send fixed-size pieces); the reader accepts chunks of any size and yields whole records.
The last record is ``["end", record_count, digest]`` where ``digest`` is a BLAKE2b of every
frame before it, so a truncated or damaged snapshot is refused rather than half-restored.
Memory on both sides is bounded by one record plus one chunk.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from geostore.errors import CodecError

from . import _cbor

_LEN = struct.Struct(">I")
#: A record larger than this is refused (a block is at most block_bytes_max plus one event).
RECORD_BYTES_MAX = 64 * 1024 * 1024


class FrameWriter:
    """Collects records and hands out chunks of exactly ``chunk_bytes`` (the last shorter)."""

    def __init__(self, chunk_bytes: int) -> None:
        assert chunk_bytes >= 1
        self.chunk_bytes = chunk_bytes
        self._buf = bytearray()
        self._digest = hashlib.blake2b(digest_size=32)
        self._records = 0

    def add(self, record: list[Any]) -> Iterator[bytes]:
        data = _cbor.dumps(record)
        assert len(data) <= RECORD_BYTES_MAX
        frame = _LEN.pack(len(data)) + data
        self._digest.update(frame)
        self._records += 1
        self._buf += frame
        yield from self._drain(final=False)

    def finish(self) -> Iterator[bytes]:
        end = _cbor.dumps(["end", self._records, self._digest.digest()])
        self._buf += _LEN.pack(len(end)) + end
        yield from self._drain(final=True)

    def _drain(self, final: bool) -> Iterator[bytes]:
        size = self.chunk_bytes
        while len(self._buf) >= size:
            chunk = bytes(self._buf[:size])
            del self._buf[:size]
            yield chunk
        if final and self._buf:
            yield bytes(self._buf)
            self._buf.clear()


def read_records(chunks: Iterable[bytes]) -> Iterator[list[Any]]:
    """Yield the records of a snapshot; raises CodecError on damage, truncation or trailing data."""
    buf = bytearray()
    digest = hashlib.blake2b(digest_size=32)
    records = 0
    ended = False
    for chunk in chunks:
        buf += chunk
        while len(buf) >= _LEN.size:
            (length,) = _LEN.unpack_from(buf)
            if length > RECORD_BYTES_MAX:
                raise CodecError(f"snapshot record of {length} bytes is over the limit")
            if len(buf) < _LEN.size + length:
                break
            frame = bytes(buf[: _LEN.size + length])
            del buf[: _LEN.size + length]
            if ended:
                raise CodecError("snapshot has data after its end record")
            record = _cbor.loads(frame[_LEN.size :])
            if not isinstance(record, list) or not record or not isinstance(record[0], str):
                raise CodecError("snapshot record is not [kind, ...]")
            if record[0] == "end":
                if record != ["end", records, digest.digest()]:
                    raise CodecError("snapshot digest or record count does not match")
                ended = True
                continue
            digest.update(frame)
            records += 1
            yield record
    if buf or not ended:
        raise CodecError("snapshot is truncated")


def first_record(data: bytes) -> list[Any]:
    """The first record of a snapshot (its header), read without reading the rest."""
    if len(data) < _LEN.size:
        raise CodecError("snapshot is truncated")
    (length,) = _LEN.unpack_from(data)
    if length > RECORD_BYTES_MAX or len(data) < _LEN.size + length:
        raise CodecError("snapshot's first record is truncated or over the limit")
    record = _cbor.loads(data[_LEN.size : _LEN.size + length])
    if not isinstance(record, list) or not record:
        raise CodecError("snapshot record is not [kind, ...]")
    return record
