"""Building and opening geo batches: CBOR entry lists, zstandard, CRC-32, strict checks.

Theory of operation: a batch's payload is the CBOR array of its entries, each
``[record_count, events, producer_id, producer_seq, epoch]`` (the entries' seqs are implied
by ``src_start`` and the counts, so they are not sent; ``epoch`` is the epoch the entry was
written under, null for the batch's own epoch), then compressed with zstandard (level
and dictionary chosen by the shipper). The CRC-32 covers every header field and the payload,
so a damaged range, count or codec is as detectable as a damaged payload. Codec
``CODEC_ZSTD_COLUMNS`` lays the same entries out by column before zstd
(:mod:`geostore.geo.columns`; decoded back to the same entry list, byte for byte); receivers
accept all three codecs, so batches of an older shipper (rows) still apply. Opening a batch
(:func:`open_batch`) checks, in order: the CRC, the range against ``record_count``, the
decompressed size bound and the dictionary, the CBOR shape, and that the entries hold exactly
``record_count`` events; any failure is one :class:`BatchError` (or
:class:`~geostore.codec.UnknownDictionaryError`), never a partial result (G10).

Entry epochs: a 4-element entry (the format before entries carried their epoch) decodes
with ``epoch=None``, which every consumer reads as "the batch's epoch": that was the only
epoch such a sender could have meant, since it never shipped across a change of home. A
5-element entry's epoch, when not null, must lie in ``0..batch.epoch`` and never decrease
along the batch (a log's epochs only grow), else the batch is corrupt.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Mapping, Sequence

from geostore.codec import (
    DEFAULT_LIMITS,
    CodecLimits,
    CompressionDictionary,
    UnknownDictionaryError,
    compress,
    decompress,
    dumps_plain,
    loads_plain,
)
from geostore.errors import CodecError
from geostore.ids import Epoch, PartitionId, Seq, StreamName

from .columns import decode_columns, encode_columns
from .messages import CODEC_NONE, CODEC_ZSTD, CODEC_ZSTD_COLUMNS, GeoBatch, GeoEntry

_HEAD = struct.Struct(">IqqqIBI")  # partition, epoch, start, end, count, codec, dict id


class BatchError(CodecError):
    """A batch failed its integrity checks (the receiver answers NACK CORRUPT)."""


def batch_crc(
    stream: str,
    partition: int,
    epoch: int,
    src_start: int,
    src_end: int,
    record_count: int,
    codec: int,
    dict_id: int,
    payload: bytes,
) -> int:
    """CRC-32 over the header fields and the payload."""
    try:
        head = _HEAD.pack(partition, epoch, src_start, src_end, record_count, codec, dict_id)
    except struct.error as exc:  # out-of-range fields from a peer: no valid batch has them
        raise BatchError(f"batch header out of range: {exc}") from exc
    crc = zlib.crc32(stream.encode("utf-8", "surrogatepass"))
    crc = zlib.crc32(head, crc)
    return zlib.crc32(payload, crc)


def encode_entries(entries: Sequence[GeoEntry]) -> bytes:
    """The uncompressed payload: CBOR of ``[[count, events, pid, pseq, epoch], ...]``."""
    return dumps_plain(
        [[e.record_count, e.events, e.producer_id, e.producer_seq, e.epoch] for e in entries]
    )


def make_batch(
    stream: StreamName,
    partition: PartitionId,
    epoch: Epoch,
    entries: Sequence[GeoEntry],
    *,
    codec: int = CODEC_ZSTD,
    level: int = 3,
    dictionary: CompressionDictionary | None = None,
) -> GeoBatch:
    """A batch of consecutive whole entries (at least one).

    ``CODEC_ZSTD_COLUMNS`` gives a ``CODEC_ZSTD`` (row) batch when no entry fits the columns.
    """
    assert entries, "a batch holds at least one entry"
    start = entries[0].seq
    count = 0
    for e in entries:
        assert e.seq == start + count, "batch entries must be consecutive"
        assert e.record_count >= 1
        count += e.record_count
    end = Seq(start + count - 1)
    raw = b""
    if codec == CODEC_ZSTD_COLUMNS:
        columns = encode_columns(entries)
        if columns is None:
            codec = CODEC_ZSTD  # nothing fits the columns: the row layout is as good
        else:
            raw = columns
    if codec != CODEC_ZSTD_COLUMNS:
        raw = encode_entries(entries)
    if codec in (CODEC_ZSTD, CODEC_ZSTD_COLUMNS):
        payload = compress(raw, level, dictionary)
        # compress() stores the data raw, without a dictionary, when zstd does not help
        dict_id = _dict_id_of(payload)
    else:
        assert codec == CODEC_NONE, f"unknown codec {codec}"
        assert dictionary is None, "a dictionary needs the zstd codec"
        payload, dict_id = raw, 0
    crc = batch_crc(stream, partition, epoch, start, end, count, codec, dict_id, payload)
    return GeoBatch(stream, partition, epoch, start, end, count, crc, codec, dict_id, payload)


def crc_of(batch: GeoBatch) -> int:
    """The CRC-32 that the batch's own header fields and payload make (BatchError when a
    field is out of range)."""
    return batch_crc(
        batch.stream,
        batch.partition,
        batch.epoch,
        batch.src_start,
        batch.src_end,
        batch.record_count,
        batch.codec,
        batch.dict_id,
        batch.payload,
    )


def resealed(batch: GeoBatch) -> GeoBatch:
    """The batch with the CRC its fields make: how a fault injector or a test forges a
    batch whose damage lies past the CRC check."""
    return dataclasses.replace(batch, crc=crc_of(batch))


def check_crc(batch: GeoBatch) -> None:
    """Raise BatchError when the header or payload does not match the CRC."""
    if crc_of(batch) != batch.crc:
        raise BatchError("batch checksum mismatch")


def open_batch(
    batch: GeoBatch,
    limits: CodecLimits = DEFAULT_LIMITS,
    dictionaries: Mapping[int, CompressionDictionary] | None = None,
) -> tuple[GeoEntry, ...]:
    """Verify and decode a batch into its entries, or raise BatchError/UnknownDictionaryError."""
    check_crc(batch)
    count = batch.record_count
    if count < 1 or batch.src_start < 0 or batch.src_end - batch.src_start + 1 != count:
        raise BatchError(
            f"batch range {batch.src_start}..{batch.src_end} does not hold {count} records"
        )
    if batch.codec in (CODEC_ZSTD, CODEC_ZSTD_COLUMNS):
        try:
            raw = decompress(batch.payload, limits, dictionaries or {})
        except UnknownDictionaryError:
            raise
        except CodecError as exc:
            raise BatchError(f"batch payload: {exc.message}") from exc
    elif batch.codec == CODEC_NONE:
        if batch.dict_id != 0:
            raise BatchError("an uncompressed batch names a dictionary")
        if len(batch.payload) > limits.decompressed_bytes_max:
            raise BatchError("uncompressed batch over the size limit")
        raw = batch.payload
    else:
        raise BatchError(f"unknown batch codec {batch.codec}")
    if batch.codec != CODEC_NONE and batch.dict_id != _dict_id_of(batch.payload):
        raise BatchError("batch header and payload name different dictionaries")
    plain: object
    try:
        if batch.codec == CODEC_ZSTD_COLUMNS:
            plain = decode_columns(raw, limits)
        else:
            plain = loads_plain(raw, limits)
    except CodecError as exc:
        raise BatchError(f"batch entries: {exc.message}") from exc
    if type(plain) is not list or not plain:
        raise BatchError("batch entries must be a non-empty array")
    entries: list[GeoEntry] = []
    seq = batch.src_start
    prev_epoch = 0
    for item in plain:
        if type(item) is not list or not 4 <= len(item) <= 5:
            raise BatchError("a batch entry is [count, events, producer_id, producer_seq, epoch]")
        n, events, pid, pseq = item[:4]
        epoch = item[4] if len(item) == 5 else None
        if epoch is not None:
            if type(epoch) is not int or not prev_epoch <= epoch <= batch.epoch:
                raise BatchError("a batch entry's epoch must grow, up to the batch's epoch")
            prev_epoch = epoch
        if type(n) is not int or n < 1 or type(events) is not bytes:
            raise BatchError("a batch entry has a bad count or events")
        if (pid is None) != (pseq is None):
            raise BatchError("a batch entry names half a producer")
        if pid is not None and (type(pid) is not str or type(pseq) is not int):
            raise BatchError("a batch entry has a bad producer")
        entries.append(GeoEntry(Seq(seq), n, events, pid, pseq, _epoch(epoch)))
        seq = Seq(seq + n)
        if seq - batch.src_start > count:
            break
    if seq - batch.src_start != count:
        raise BatchError(
            f"batch declares {count} records, its entries hold {seq - batch.src_start}"
        )
    return tuple(entries)


def _epoch(raw: int | None) -> Epoch | None:
    return Epoch(raw) if raw is not None else None


def _dict_id_of(payload: bytes) -> int:
    """The dictionary id in a compressed payload's header (0 when stored raw)."""
    if len(payload) < 6:
        return -1
    return int.from_bytes(payload[2:6], "big")
