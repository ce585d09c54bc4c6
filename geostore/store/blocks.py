"""Event batches and blocks: the columnar byte formats, their summaries, and the block port.

Theory of operation. The receiving node encodes a client's events once, as a *batch*: a
columnar CBOR array ``[1, ts[], keys[], {attr: values[]}, ends[], bodies]`` where ``bodies`` is
the concatenation of the CBOR-encoded bodies and ``ends[i]`` the end offset of body ``i``;
the attribute columns hold the indexed numeric attributes (None when absent). A follower
applying the batch never decodes a body: it slices columns, hashes bytes and takes min/max/sum
of columns (C-speed builtins).

A partition's events live in numbered *blocks* of the same columnar shape plus the first seq
and the epoch runs: ``[1, first_seq, [[seq, epoch], ...], ts[], keys[], {attr: values[]},
ends[], bodies]``. The tail block of each partition is *open*: it lives in memory (bounded by
``block_events_max`` / ``block_bytes_max``) and is written through the :class:`BlockStore`
port once, when it is sealed. Sealed blocks are immutable, so block ``n`` of a partition has
the same bytes on every replica with the same block sizing. Only a :class:`BlockMeta` per
block stays in memory: first seq, count, min/max ts, a crc32 of the bytes, and per indexed
attribute count/min/max/sum; above them, a :class:`Segment` per ``index_fanout`` sealed
blocks merges their summaries (a two-level sparse index). Out-of-order event times are
covered because a block's ``[min_ts, max_ts]`` spans every event in it; queries filter the
events of the blocks they read.

The block layout depends only on the sequence of events and the block sizing: event ``e``
joins the open block while it has fewer than ``block_events_max`` events and ``e`` fits in
``block_bytes_max`` body bytes (an event larger than that gets a block of its own); the
block is sealed when full. How events were batched does not matter.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from geostore.errors import CodecError, CorruptLogError, StorageError
from geostore.ids import Epoch, PartitionId, StreamName

from . import _cbor
from .model import INT64_MAX, INT64_MIN, Number

BATCH_FORMAT = 1
BLOCK_FORMAT = 1
_INT = frozenset({int})
_KEY_TYPES = frozenset({str, type(None)})
_NUMBER_OR_NONE = frozenset({int, float, type(None)})


class BlockStore(Protocol):
    """Where sealed blocks live (the storage layer gives file implementations).

    Contract: ``put`` of an existing ``(stream, partition, block_no)`` only ever repeats the same
    bytes (replay after a restart), so it may overwrite; except after ``discard`` (a failback
    rewound the partition), when the numbers from ``block_no`` on are used again. ``get`` returns exactly the bytes put
    or raises :class:`~geostore.errors.StorageError` (missing block) or a subclass.
    ``flush`` makes every ``put`` so far durable: the runtime calls it before it persists a
    snapshot that references blocks (``include_blocks=False``) and compacts its log.

    Numbers below 0 hold the bodies of the partition's quarantined runs (run slot ``s`` at
    ``-1 - s``, see :data:`quarantine_block_no`): a slot is never used twice, ``discard``
    leaves them alone, and ``remove`` deletes one once no snapshot in use names it.
    """

    def put(
        self, stream: StreamName, partition: PartitionId, block_no: int, data: bytes
    ) -> None: ...

    def get(self, stream: StreamName, partition: PartitionId, block_no: int) -> bytes: ...

    def has(self, stream: StreamName, partition: PartitionId, block_no: int) -> bool: ...

    def discard(self, stream: StreamName, partition: PartitionId, block_no: int) -> None:
        """Blocks ``block_no`` and after left the partition (a failback rewound it)."""
        ...

    def remove(self, stream: StreamName, partition: PartitionId, block_no: int) -> None:
        """Delete one block if present (a cleared quarantined run's body); idempotent."""
        ...

    def flush(self) -> None: ...


def quarantine_block_no(slot: int) -> int:
    """The block number holding the body of a partition's quarantined run ``slot``."""
    assert slot >= 0
    return -1 - slot


class MemoryBlockStore:
    """A dict-backed :class:`BlockStore` for tests and the simulator. Counts gets and puts."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[StreamName, PartitionId, int], bytes] = {}
        self.gets = 0
        self.puts = 0

    def put(self, stream: StreamName, partition: PartitionId, block_no: int, data: bytes) -> None:
        key = (stream, partition, block_no)
        old = self._blocks.get(key)
        assert old is None or old == data, "a sealed block is immutable"
        self._blocks[key] = bytes(data)
        self.puts += 1

    def get(self, stream: StreamName, partition: PartitionId, block_no: int) -> bytes:
        self.gets += 1
        try:
            return self._blocks[(stream, partition, block_no)]
        except KeyError:
            raise StorageError(f"block {stream}/{partition}/{block_no} is missing") from None

    def has(self, stream: StreamName, partition: PartitionId, block_no: int) -> bool:
        return (stream, partition, block_no) in self._blocks

    def discard(self, stream: StreamName, partition: PartitionId, block_no: int) -> None:
        assert block_no >= 0, "discard drops sealed blocks, never quarantined bodies"
        for key in [k for k in self._blocks if k[:2] == (stream, partition) and k[2] >= block_no]:
            del self._blocks[key]

    def remove(self, stream: StreamName, partition: PartitionId, block_no: int) -> None:
        self._blocks.pop((stream, partition, block_no), None)

    def flush(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._blocks)


# --- batches -------------------------------------------------------------------------


@dataclass(slots=True)
class Columns:
    """A run of events in columnar form (a decoded batch or block, or the open block).

    ``ends`` are end offsets into ``bodies`` relative to ``base`` (body ``i`` is
    ``bodies[ends[i-1]-base : ends[i]-base]`` with ``ends[-1]`` meaning ``base``).
    """

    ts: list[int]
    keys: list[str | None]
    attrs: dict[str, list[Number | None]]
    ends: list[int]
    bodies: bytes | bytearray
    base: int = 0

    def __len__(self) -> int:
        return len(self.ts)

    def body_bytes(self, i: int) -> bytes:
        start = self.ends[i - 1] if i else self.base
        return bytes(self.bodies[start - self.base : self.ends[i] - self.base])


def encode_batch(
    ts: Sequence[int],
    keys: Sequence[str | None],
    bodies: Sequence[bytes],
    attrs: Mapping[str, Sequence[Number | None]] | None = None,
) -> bytes:
    """Encode a batch (the ``events`` of an AppendBatch) from columns of encoded bodies."""
    n = len(ts)
    assert len(keys) == n and len(bodies) == n
    if n == 1 and not attrs:  # the single-event append: the same bytes, no column copies
        body = b"".join(bodies)
        return _cbor.dumps([BATCH_FORMAT, [ts[0]], [keys[0]], {}, [len(body)], body])
    cols = {name: list(vals) for name, vals in sorted((attrs or {}).items())}
    assert all(len(v) == n for v in cols.values())
    ends = list(itertools.accumulate(map(len, bodies)))
    return _cbor.dumps([BATCH_FORMAT, list(ts), list(keys), cols, ends, b"".join(bodies)])


def decode_batch(data: bytes, record_count: int, indexed: Sequence[str]) -> Columns:
    """Decode and check a batch; raises CodecError when it does not match its command."""
    raw = _cbor.loads_fast(data)
    if not (isinstance(raw, list) and len(raw) == 6 and raw[0] == BATCH_FORMAT):
        raise CodecError("events block: not a version-1 batch")
    _, ts, keys, attrs, ends, bodies = raw
    cols = _check_columns(ts, keys, attrs, ends, bodies, 0, indexed, "events block")
    if len(cols) != record_count or record_count < 1:
        raise CodecError(f"events block holds {len(cols)} events, the command says {record_count}")
    return cols


def decode_batch_validated(
    data: bytes, crc: int, record_count: int, indexed: Sequence[str]
) -> Columns:
    """Decode a batch that ``validate_append`` encoded (its command carries ``crc``).

    Every value was checked when the batch was made; the crc proves these are those bytes,
    so only the shape is checked here (column types and lengths, offsets covering the
    bodies), in constant Python work rather than passes over every value. Raises CodecError.
    """
    if zlib.crc32(data) != crc:
        raise CodecError("events block fails its checksum")
    raw = _cbor.loads_fast(data)
    if type(raw) is not list or len(raw) != 6 or raw[0] != BATCH_FORMAT:
        raise CodecError("events block: not a version-1 batch")
    _, ts, keys, attrs, ends, bodies = raw
    if not (
        type(ts) is list
        and type(keys) is list
        and type(attrs) is dict
        and type(ends) is list
        and type(bodies) is bytes
        and record_count >= 1
        and len(ts) == len(keys) == len(ends) == record_count
        and ends[-1] == len(bodies)
        and len(attrs) == len(indexed)
    ):
        raise CodecError("events block does not match its command")
    if indexed:
        if sorted(attrs) != sorted(indexed) or any(
            type(v) is not list or len(v) != record_count for v in attrs.values()
        ):
            raise CodecError("events block: attribute columns do not match the schema's")
        attrs = {k: attrs[k] for k in sorted(attrs)}
    return Columns(ts, keys, attrs, ends, bodies, 0)


def _check_columns(
    ts: Any,
    keys: Any,
    attrs: Any,
    ends: Any,
    bodies: Any,
    base: int,
    indexed: Sequence[str],
    what: str,
) -> Columns:
    if not (
        isinstance(ts, list)
        and isinstance(keys, list)
        and isinstance(attrs, dict)
        and isinstance(ends, list)
        and isinstance(bodies, bytes)
    ):
        raise CodecError(f"{what}: bad column types")
    n = len(ts)
    if len(keys) != n or len(ends) != n:
        raise CodecError(f"{what}: columns differ in length")
    if sorted(attrs) != sorted(indexed) or any(
        not isinstance(v, list) or len(v) != n for v in attrs.values()
    ):
        raise CodecError(f"{what}: attribute columns do not match the schema's indexed ones")
    # Type checks as C-level passes (map/set/min/max): this runs for every applied batch.
    if n and (not set(map(type, ts)) <= _INT or min(ts) < INT64_MIN or max(ts) > INT64_MAX):
        raise CodecError(f"{what}: ts must be 64-bit integers")
    if not set(map(type, keys)) <= _KEY_TYPES:
        raise CodecError(f"{what}: keys must be strings or null")
    for vals in attrs.values():
        if not set(map(type, vals)) <= _NUMBER_OR_NONE:
            raise CodecError(f"{what}: attribute values must be numbers or null")
    if n and (
        not set(map(type, ends)) <= _INT
        or ends[0] < base
        or not all(map(operator.le, ends, itertools.islice(ends, 1, None)))
    ):
        raise CodecError(f"{what}: body offsets must increase")
    if (ends[-1] if n else base) - base != len(bodies):
        raise CodecError(f"{what}: body offsets do not cover the bodies")
    return Columns(ts, keys, {k: attrs[k] for k in sorted(attrs)}, ends, bodies, base)


# --- summaries ---------------------------------------------------------------------------


@dataclass(slots=True)
class AttrSummary:
    """count/min/max/sum of one attribute over the events of a block that carry it."""

    count: int = 0
    min: Number | None = None
    max: Number | None = None
    sum: Number = 0

    def add_values(self, vals: list[Number]) -> None:
        if not vals:
            return
        lo, hi = min(vals), max(vals)
        self.min = lo if self.min is None or lo < self.min else self.min
        self.max = hi if self.max is None or hi > self.max else self.max
        self.count += len(vals)
        self.sum += sum(vals)

    def merge(self, other: AttrSummary) -> None:
        if not other.count:
            return
        assert other.min is not None and other.max is not None
        self.min = other.min if self.min is None or other.min < self.min else self.min
        self.max = other.max if self.max is None or other.max > self.max else self.max
        self.count += other.count
        self.sum += other.sum

    def to_wire(self) -> list[Any]:
        return [self.count, self.min, self.max, self.sum]

    @staticmethod
    def from_wire(raw: Any) -> AttrSummary:
        count, lo, hi, total = raw
        return AttrSummary(count, lo, hi, total)


@dataclass(slots=True)
class BlockMeta:
    """The sparse index entry of one block (sealed or open); all that stays in memory."""

    block_no: int
    first_seq: int
    count: int = 0
    min_ts: int = INT64_MAX
    max_ts: int = INT64_MIN
    body_bytes: int = 0
    crc: int = 0  # crc32 of the sealed block's bytes (0 while open)
    attrs: dict[str, AttrSummary] = field(default_factory=dict)

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.count

    def to_wire(self) -> list[Any]:
        return [
            self.block_no,
            self.first_seq,
            self.count,
            self.min_ts,
            self.max_ts,
            self.body_bytes,
            self.crc,
            {k: v.to_wire() for k, v in self.attrs.items()},
        ]

    @staticmethod
    def from_wire(raw: Any) -> BlockMeta:
        block_no, first_seq, count, min_ts, max_ts, body_bytes, crc, attrs = raw
        return BlockMeta(
            block_no,
            first_seq,
            count,
            min_ts,
            max_ts,
            body_bytes,
            crc,
            {k: AttrSummary.from_wire(v) for k, v in sorted(attrs.items())},
        )


@dataclass(slots=True)
class Segment:
    """The upper level of the sparse index: the merged summary of ``fanout`` sealed blocks.

    A query skips a whole segment whose ``[min_ts, max_ts]`` misses its range, and an
    aggregate takes a segment lying inside its range (and window) as one summary, so the
    work of a query grows with ``blocks / fanout`` plus the blocks at its boundaries, in the
    spirit of the lightweight indexes of ChronicleDB's TAB+ tree. Derived from the block
    entries: never stored, rebuilt on restore.
    """

    first_block: int
    blocks: int = 0
    min_ts: int = INT64_MAX
    max_ts: int = INT64_MIN
    attrs: dict[str, AttrSummary] = field(default_factory=dict)

    def add(self, meta: BlockMeta) -> None:
        assert meta.block_no == self.first_block + self.blocks
        self.blocks += 1
        self.min_ts = min(self.min_ts, meta.min_ts)
        self.max_ts = max(self.max_ts, meta.max_ts)
        for name, summary in meta.attrs.items():
            self.attrs.setdefault(name, AttrSummary()).merge(summary)


# --- the open block and sealed blocks ------------------------------------------------------


class OpenBlock:
    """The tail block of a partition, in memory until it is sealed."""

    __slots__ = ("bodies", "cols", "epochs", "meta")

    def __init__(self, block_no: int, first_seq: int, indexed: Sequence[str]) -> None:
        self.meta = BlockMeta(block_no, first_seq, attrs={n: AttrSummary() for n in indexed})
        self.bodies = bytearray()
        self.cols = Columns([], [], {n: [] for n in indexed}, [], self.bodies, 0)
        #: [first seq, epoch] runs: the epoch under which each event was written.
        self.epochs: list[list[int]] = []

    def append(self, src: Columns, lo: int, hi: int, epoch: Epoch) -> None:
        """Append events ``lo..hi-1`` of ``src`` (a decoded batch) written under ``epoch``."""
        assert 0 <= lo < hi <= len(src.ts)
        meta, cols = self.meta, self.cols
        seq = meta.first_seq + meta.count
        if not self.epochs or self.epochs[-1][1] != epoch:
            self.epochs.append([seq, epoch])
        start = src.ends[lo - 1] if lo else src.base
        stop = src.ends[hi - 1]
        shift = len(self.bodies) - start
        if hi - lo == 1:  # one event (the single-event append): no slices, no passes
            lo_ts = hi_ts = src.ts[lo]
            cols.ts.append(lo_ts)
            cols.keys.append(src.keys[lo])
            for name, vals in src.attrs.items():
                v = vals[lo]
                cols.attrs[name].append(v)
                if v is not None:
                    meta.attrs[name].add_values([v])
            cols.ends.append(stop + shift)
        else:
            ts = src.ts[lo:hi]
            cols.ts.extend(ts)
            cols.keys.extend(src.keys[lo:hi])
            for name, vals in src.attrs.items():
                chunk = vals[lo:hi]
                cols.attrs[name].extend(chunk)
                meta.attrs[name].add_values([v for v in chunk if v is not None])
            cols.ends.extend([e + shift for e in src.ends[lo:hi]])
            lo_ts, hi_ts = min(ts), max(ts)
        self.bodies += src.bodies[start - src.base : stop - src.base]
        meta.count += hi - lo
        meta.body_bytes += stop - start
        meta.min_ts = min(meta.min_ts, lo_ts)
        meta.max_ts = max(meta.max_ts, hi_ts)

    def encode(self) -> bytes:
        c = self.cols
        return _cbor.dumps(
            [
                BLOCK_FORMAT,
                self.meta.first_seq,
                self.epochs,
                c.ts,
                c.keys,
                c.attrs,
                c.ends,
                bytes(self.bodies),
            ]
        )

    def view(self) -> BlockData:
        return BlockData(self.meta.first_seq, self.epochs, self.cols)


@dataclass(slots=True)
class BlockData:
    """A decoded block: its first seq, epoch runs and columns."""

    first_seq: int
    epochs: list[list[int]]
    cols: Columns

    def epoch_at(self, i: int) -> Epoch:
        seq = self.first_seq + i
        k = bisect.bisect_right(self.epochs, seq, key=lambda run: run[0]) - 1
        assert k >= 0
        return Epoch(self.epochs[k][1])


def decode_block(data: bytes, meta: BlockMeta, indexed: Sequence[str], where: str) -> BlockData:
    """Decode a sealed block, checking it against its index entry (crc, seq, count)."""
    if zlib.crc32(data) != meta.crc:
        raise CorruptLogError(f"block {where} fails its checksum")
    try:
        raw = _cbor.loads_fast(data)
        if not (isinstance(raw, list) and len(raw) == 8 and raw[0] == BLOCK_FORMAT):
            raise CodecError("not a version-1 block")
        _, first_seq, epochs, ts, keys, attrs, ends, bodies = raw
        cols = _check_columns(ts, keys, attrs, ends, bodies, 0, indexed, f"block {where}")
    except CodecError as exc:
        raise CorruptLogError(f"block {where} does not decode: {exc.message}") from exc
    if first_seq != meta.first_seq or len(cols) != meta.count or not epochs:
        raise CorruptLogError(f"block {where} does not match its index entry")
    return BlockData(first_seq, epochs, cols)


def block_from_open_bytes(
    data: bytes, block_no: int, indexed: Sequence[str]
) -> tuple[OpenBlock, int]:
    """Rebuild an open block from its encoding (snapshots carry it); returns it and its crc."""
    raw = _cbor.loads(data)
    if not (isinstance(raw, list) and len(raw) == 8 and raw[0] == BLOCK_FORMAT):
        raise CodecError("open block: not a version-1 block")
    _, first_seq, epochs, ts, keys, attrs, ends, bodies = raw
    cols = _check_columns(ts, keys, attrs, ends, bodies, 0, indexed, "open block")
    ob = OpenBlock(block_no, first_seq, indexed)
    if len(cols):
        runs: Iterable[Any] = epochs
        bounds = [r[0] - first_seq for r in runs] + [len(cols)]
        if bounds[0] != 0 or any(b >= c for b, c in itertools.pairwise(bounds)):
            raise CodecError("open block: bad epoch runs")
        for k, run in enumerate(epochs):
            ob.append(cols, bounds[k], bounds[k + 1], Epoch(run[1]))
    return ob, zlib.crc32(data)
