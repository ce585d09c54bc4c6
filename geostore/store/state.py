"""The event store: a deterministic state machine fed with committed Raft entries.

Theory of operation.

*Inputs.* ``apply(index, command)`` is called with committed entries in log order (one
store per Raft group). It is deterministic: the answer and the new state depend only on the
previous state and the command, never on a clock, randomness, hash order or local
configuration other than :class:`StoreTuning` (which every replica shares). A command that
cannot apply is answered with :class:`Rejected` and changes nothing, on every replica alike.
Entries that are not store commands (no-ops, membership) go through ``advance(index)``.

*Before proposing.* The receiving node calls ``validate_create`` / ``validate_append``:
they parse and check the request (typed ApiErrors), fill in missing event times from the
``now_us`` it passes, route events to partitions, and encode each partition's events once
(see :mod:`geostore.store.blocks`). Streams are never deleted and their definitions never
change, so a request valid at validation time stays valid at apply time; apply re-checks
what can move (an epoch, a producer window) and the shape of the bytes.

*State.* A catalog of streams; per partition: home and epoch, the next seq (dense from 0),
a rolling BLAKE2b hash chained over the sealed blocks' bytes (the open block folded in when
asked), the two-level sparse index (block entries, and segments of ``index_fanout`` blocks)
and the open block (see blocks.py); and the producer table (dedup.py). Sealed blocks go
through the :class:`~geostore.store.blocks.BlockStore` port; nothing else touches files.
Memory per partition: one index entry per block (about 1,024 events), one per segment, and
the open block (at most ``block_events_max`` events / ``block_bytes_max`` body bytes).

*Queries* are pure reads of that state: by seq range, by time range (paged by ``next_seq``,
with a bound on blocks decoded per call), aggregates that merge segment and block summaries
and decode only the blocks that straddle a range or window boundary, and ``stats`` saying so
(``blocks_read``, ``events_decoded``, ``summaries_used``).

*Geo.* Every partition has a watermark ``(epoch, last seq)`` that moves with every applied
append, local or shipped (:class:`~geostore.store.model.StoreWatermark`). In a region that
is not the partition's home, :class:`~geostore.store.commands.ApplyRemote` writes a shipped
batch at exactly its seqs with the home's block sizing (same StoreTuning), so the blocks,
and thus the rolling hash, come out byte-identical to the home's; it records the batch's
producers (dedup state travels with shipped batches) and moves the watermark in the same
apply (:mod:`geostore.store.remote` has the rule). ``committed_entries`` is the read side
for the home's shipper: one entry per original append batch, from a bounded per-partition
index of batch boundaries.

*Snapshots* stream the catalog, index entries, open blocks, watermarks, the batch index,
the producer table and the quarantine's run metadata, and either
the sealed blocks' and quarantined runs' bytes (self-contained: for a node that catches up)
or only references to them (a local restart over the same BlockStore). Segments are
derived, not stored.

*Quarantine* (failback, see store/failover.py): a rewind moves the events past a fork into
runs whose bodies go to the BlockStore at negative block numbers (one slot per run, never
reused), so memory holds run metadata only and totals (runs, events, bytes) are kept for
status and metrics. :class:`~geostore.store.commands.ClearQuarantine` drops runs; their
bodies are deleted only once no snapshot still in use can name them (``_snapshot_taken``,
or a restore, which leaves only the restored snapshot in use: one installed from another node
also deletes the bodies of the runs it replaced that it has no run for).

*Live tail.* ``subscribe(stream, partition, callback)`` registers a callback called
synchronously after each applied append of that partition with its last seq; the runtime
turns it into a wake-up and reads with ``events_since``.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import operator
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NoReturn

import cbor2

from geostore.errors import ApiError, CodecError, ErrorCode, StorageError
from geostore.ids import INDEX_ZERO, Epoch, LogIndex, PartitionId, RegionId, Seq, StreamName

from . import _cbor
from .blocks import (
    BATCH_FORMAT,
    BlockData,
    BlockMeta,
    BlockStore,
    Columns,
    OpenBlock,
    Segment,
    block_from_open_bytes,
    decode_batch,
    decode_batch_validated,
    decode_block,
    encode_batch,
    quarantine_block_no,
)
from .commands import (
    AppendBatch,
    ApplyRemote,
    ClearQuarantine,
    Command,
    CreateStream,
    FenceHome,
    RemoteEntry,
    SetHome,
    decode_command,
)
from .dedup import ProducerTable
from .failover import EpochHistory, QuarantinedRun
from .model import (
    APPLY_LIMITS,
    FIRST_EPOCH,
    INT64_MAX,
    INT64_MIN,
    WATERMARK_NONE,
    Aggregate,
    AggregateResult,
    AppendResult,
    AttrType,
    HomeResult,
    Number,
    PartitionHome,
    PartitionInfo,
    ProducerRef,
    QuarantineCleared,
    ReadResult,
    ReadStats,
    Rejected,
    RemoteResult,
    RemoteVerdict,
    Schema,
    StoredEvent,
    StoreLimits,
    StoreTuning,
    StoreWatermark,
    StreamDef,
    StreamInfo,
    WindowAggregate,
    check_stream_name,
    is_int,
    is_number,
    malformed,
    too_large,
)
from .remote import decide_remote
from .snapshot import FrameWriter, first_record, read_records

ApplyResult = StreamInfo | AppendResult | HomeResult | RemoteResult | QuarantineCleared | Rejected
TailCallback = Callable[[StreamName, PartitionId, Seq], None]

SNAPSHOT_FORMAT = 1
#: Snapshots by reference a cleared quarantined body outlives before it is deleted: more
#: than the host keeps (HostConfig.snapshots_cached, 3 by default), so none names it then.
SNAPSHOTS_HELD = 4
#: At most about this many quarantined runs per failback of a partition (a code constant, the
#: same on every replica): past it, consecutive batches of one epoch merge into one run (see
#: QuarantinedRun.parts), so memory follows the number of failbacks, not their length.
QUARANTINE_RUNS_PER_FORK = 1024
#: A merged run's body stays under this (it travels as one snapshot record).
QUARANTINE_RUN_BYTES_MAX = 16 * 1024 * 1024
_EMPTY_HASH = bytes(16)
_EVENT_FIELDS = frozenset({"ts", "key", "partition", "body"})
#: One append batch's boundaries: first seq, event count, epoch, producer id and seq.
_Run = tuple[int, int, int, str | None, int | None]
_RUN_FIRST = operator.itemgetter(0)


def route(definition: StreamDef, partition: int | None, key: str | None, rr: int) -> PartitionId:
    """The partition of an event: explicit, else crc32(UTF-8 key) mod n, else ``rr`` mod n.

    ``rr`` is the receiving node's round-robin counter for keyless events (the caller
    advances it per keyless event). zlib.crc32 is the IEEE CRC-32 of zip, PNG and Java's
    ``java.util.zip.CRC32``, so any language computes the same partition.
    """
    n = definition.partitions
    if partition is not None:
        assert 0 <= partition < n
        return PartitionId(partition)
    if key is not None:
        return PartitionId(zlib.crc32(key.encode()) % n)
    return PartitionId(rr % n)


@dataclass(frozen=True, slots=True)
class PreparedAppend:
    """A validated append: one command per partition touched, in partition order.

    ``positions[k]`` lists the request indexes of ``batches[k]``'s events, in order, so the
    node can map results back; ``rr_counter`` is the node's counter after this request.
    """

    batches: tuple[AppendBatch, ...]
    positions: tuple[tuple[int, ...], ...]
    rr_counter: int


class _Partition:
    __slots__ = (
        "epoch",
        "fenced",
        "first_seqs",
        "history",
        "home",
        "indexed",
        "log_hash",
        "mark",
        "next_seq",
        "open",
        "open_hash",
        "partition",
        "quarantine",
        "quarantine_slots",
        "runs",
        "sealed",
        "segments",
        "stream",
    )

    def __init__(
        self,
        stream: StreamName,
        partition: PartitionId,
        indexed: tuple[str, ...],
        home: RegionId | None,
        epoch: Epoch,
    ) -> None:
        self.stream = stream
        self.partition = partition
        self.indexed = indexed
        self.home = home
        self.epoch = epoch
        self.next_seq = 0
        #: Chained over the sealed blocks' bytes; the open block is folded in on demand.
        self.log_hash = _EMPTY_HASH
        self.open_hash: tuple[int, bytes] | None = None  # (next_seq, hash) cache
        self.sealed: list[BlockMeta] = []
        self.first_seqs: list[int] = []
        self.segments: list[Segment] = []
        self.open = OpenBlock(0, 0, indexed)
        #: What the partition applied: seq is always next_seq - 1 (see StoreWatermark).
        self.mark = WATERMARK_NONE
        #: The most recent append batches' boundaries, dense up to next_seq (for shipping).
        self.runs: list[_Run] = []
        #: (epoch, first seq) of each epoch of the partition's log (see store/failover.py).
        self.history = EpochHistory.first(epoch)
        #: Events this region held beyond a fork when it learned the new epoch (failback).
        #: Bounded by what the region wrote past the fork: at most its lease and lag bound.
        self.quarantine: list[QuarantinedRun] = []
        #: slots handed to quarantined runs so far (a slot is never used twice: replicated)
        self.quarantine_slots = 0
        #: A planned move fenced the home: appends answer 503 moving until the SetHome.
        self.fenced = False

    def add_sealed(self, meta: BlockMeta, fanout: int) -> None:
        assert meta.block_no == len(self.sealed)
        self.sealed.append(meta)
        self.first_seqs.append(meta.first_seq)
        if not self.segments or self.segments[-1].blocks >= fanout:
            self.segments.append(Segment(meta.block_no))
        self.segments[-1].add(meta)

    def metas_from(self, seq: int) -> Iterator[BlockMeta]:
        """Index entries of the blocks holding ``seq`` and after, the open block last."""
        k = max(bisect.bisect_right(self.first_seqs, seq) - 1, 0)
        if k < len(self.sealed) and self.sealed[k].end_seq <= seq:
            k += 1  # seq is past the last sealed block (in the open one, or beyond)
        yield from self.sealed[k:]
        if self.open.meta.count:
            yield self.open.meta

    def overlapping(self, seq: int, lo_ts: int, hi_ts: int) -> Iterator[BlockMeta]:
        """Like :meth:`metas_from`, only blocks meeting ``[lo_ts, hi_ts)``; skips segments."""
        k = max(bisect.bisect_right(self.first_seqs, seq) - 1, 0)
        sealed, segments = self.sealed, self.segments
        s = 0
        while k < len(sealed):
            while segments[s].first_block + segments[s].blocks <= k:
                s += 1
            seg = segments[s]
            if seg.max_ts < lo_ts or seg.min_ts >= hi_ts:
                k = seg.first_block + seg.blocks
                continue
            meta = sealed[k]
            k += 1
            if meta.end_seq > seq and meta.max_ts >= lo_ts and meta.min_ts < hi_ts:
                yield meta
        meta = self.open.meta
        if meta.count and meta.max_ts >= lo_ts and meta.min_ts < hi_ts:
            yield meta


@dataclass(slots=True)
class _Acc:
    count: int = 0
    min: Number | None = None
    max: Number | None = None
    sum: Number = 0

    def add(self, v: Number) -> None:
        if self.min is None or v < self.min:
            self.min = v
        if self.max is None or v > self.max:
            self.max = v
        self.count += 1
        self.sum += v

    def merge(self, count: int, lo: Number | None, hi: Number | None, total: Number) -> None:
        if not count:
            return
        assert lo is not None and hi is not None
        if self.min is None or lo < self.min:
            self.min = lo
        if self.max is None or hi > self.max:
            self.max = hi
        self.count += count
        self.sum += total

    def freeze(self) -> Aggregate:
        return Aggregate(self.count, self.min, self.max, self.sum)


class EventStore:
    """The state machine of one Raft group's event store (see the module docstring)."""

    def __init__(
        self,
        blocks: BlockStore,
        *,
        limits: StoreLimits | None = None,
        tuning: StoreTuning | None = None,
    ) -> None:
        self.blocks = blocks
        self.limits = limits or StoreLimits()
        self.tuning = tuning or StoreTuning()
        self.applied_index: LogIndex = INDEX_ZERO
        self._streams: dict[StreamName, StreamDef] = {}
        self._partitions: dict[tuple[StreamName, PartitionId], _Partition] = {}
        self._producers = self._new_producer_table()
        self._subscribers: dict[tuple[StreamName, PartitionId], list[TailCallback]] = {}
        #: bumped whenever existing homes or epochs may have changed (a move, a restore): the
        #: runtime rebuilds its geo cursors then (not replicated, never in snapshots)
        self.placement_version = 0
        #: totals over every partition's quarantine: runs, events, bytes (derived state)
        self._q_runs = self._q_events = self._q_bytes = 0
        #: bodies of cleared runs, (index of the clear, stream, partition, slot), deleted from
        #: the block store once no snapshot still in use names them (see _release_dropped)
        self._dropped: list[tuple[int, StreamName, PartitionId, int]] = []
        #: applied index of the last snapshots this store took by reference (local restarts)
        self._snapshot_marks: list[int] = []

    def _new_producer_table(self) -> ProducerTable:
        t = self.tuning
        return ProducerTable(
            t.producer_window, t.producers_max, t.producer_idle_entries, t.producer_outcomes_max
        )

    # --- catalog ---------------------------------------------------------------------

    def stream(self, name: str) -> StreamDef:
        """The definition of ``name``; raises UNKNOWN_STREAM."""
        d = self._streams.get(StreamName(name))
        if d is None:
            raise ApiError(ErrorCode.UNKNOWN_STREAM, f"no stream {name!r}", stream=name)
        return d

    def streams(self) -> list[StreamDef]:
        return [self._streams[n] for n in sorted(self._streams)]

    def stream_info(self, name: str) -> StreamInfo:
        d = self.stream(name)
        homes = tuple(
            PartitionHome(p.partition, p.home, p.epoch)
            for p in (self._partitions[(d.name, PartitionId(i))] for i in range(d.partitions))
        )
        return StreamInfo(d, homes, created=False)

    def _partition(self, stream: str, partition: Any) -> _Partition:
        d = self.stream(stream)
        if not is_int(partition) or not 0 <= partition < d.partitions:
            raise ApiError(
                ErrorCode.UNKNOWN_PARTITION,
                f"stream {stream!r} has partitions 0..{d.partitions - 1}, not {partition!r}",
                stream=stream,
                partition=partition if is_int(partition) else str(partition),
            )
        return self._partitions[(d.name, PartitionId(partition))]

    def partition_info(self, stream: str, partition: int) -> PartitionInfo:
        p = self._partition(stream, partition)
        return PartitionInfo(
            p.stream,
            p.partition,
            p.home,
            p.epoch,
            Seq(p.next_seq - 1),
            _log_hash(p).hex(),
            len(p.sealed),
            p.mark,
        )

    def home_of(self, stream: str, partition: int) -> PartitionHome:
        """The partition's home region and epoch as this store knows them (raises 404s).

        The runtime refuses local client appends for a partition homed in another region
        with it: the store cannot, as it does not know which region it is in.
        """
        p = self._partition(stream, partition)
        return PartitionHome(p.partition, p.home, p.epoch)

    def watermark(self, stream: str, partition: int) -> StoreWatermark:
        """What the partition has applied, local or shipped: ``(epoch, last seq)``."""
        return self._partition(stream, partition).mark

    def is_fenced(self, stream: str, partition: int) -> bool:
        """Is a planned move holding the partition's appends (the API answers 503 moving)?"""
        return self._partition(stream, partition).fenced

    def history(self, stream: str, partition: int) -> EpochHistory:
        """The partition's epochs and where each starts (raises 404s)."""
        return self._partition(stream, partition).history

    def check_position(self, stream: str, partition: int, epoch: int, seq: int) -> None:
        """Raise 409 ``superseded_epoch`` when a token's ``(epoch, seq)`` was orphaned by a
        fork (the runtime calls it before waiting on a token, and with each read naming an
        epoch): waiting for it would never end, and the seq now holds another event."""
        self._partition(stream, partition).history.check(stream, partition, epoch, seq)

    def quarantine(
        self, stream: str | None = None, partition: int | None = None
    ) -> list[QuarantinedRun]:
        """Quarantined runs (of one stream or partition, or all), in (stream, partition, seq)
        order. Never part of any read: listed and exported only."""
        out: list[QuarantinedRun] = []
        for (s, part), p in sorted(self._partitions.items()):
            if (stream is None or s == stream) and (partition is None or part == partition):
                out.extend(p.quarantine)
        return out

    def quarantine_events(
        self, stream: str | None = None, partition: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The quarantined events as JSON objects (one per line in an export), re-appendable
        as they are: ``ts``, ``key``, ``body``, plus where they came from."""
        for run in self.quarantine(stream, partition):
            d = self._streams[run.stream]
            indexed = d.schema.indexed if d.schema is not None else ()
            body = self.quarantined_body(run)
            if run.parts == 1:
                batches = [(run.first_seq, run.record_count, body, run.producer_id,
                            run.producer_seq)]  # fmt: skip
            else:  # merged batches (see QuarantinedRun.parts); the crc checked the list
                batches = [tuple(b) for b in _cbor.loads_fast(body)]
            for first, count, events, pid, pseq in batches:
                cols = decode_batch(events, count, indexed)
                for i in range(len(cols)):
                    yield {
                        "stream": run.stream,
                        "partition": run.partition,
                        "seq": first + i,
                        "epoch": run.epoch,
                        "superseded_by": run.superseded_by,
                        "fork_seq": run.fork_seq,
                        "producer_id": pid,
                        "producer_seq": pseq,
                        "ts": cols.ts[i],
                        "key": cols.keys[i],
                        "body": _cbor.loads_fast(cols.body_bytes(i)),
                    }

    def quarantined_body(self, run: QuarantinedRun) -> bytes:
        """The batch encoding of a quarantined run's events, read from the block store
        (raises StorageError when missing or damaged: never a silent partial export)."""
        data = self.blocks.get(run.stream, run.partition, quarantine_block_no(run.slot))
        if len(data) != run.size_bytes or zlib.crc32(data) != run.crc:
            raise StorageError(
                f"quarantined run {run.stream}/{run.partition} slot {run.slot} (seqs "
                f"{run.first_seq}..{run.last_seq}) fails its crc"
            )
        return data

    def watermarks(self) -> dict[tuple[StreamName, PartitionId], StoreWatermark]:
        """Every partition's watermark (what a Receiver is built from after a leader change)."""
        return {key: p.mark for key, p in sorted(self._partitions.items())}

    def partitions(self) -> list[PartitionInfo]:
        """Every partition, sorted by (stream, partition): for /v1/debug/partitions."""
        return [self.partition_info(s, p) for s, p in sorted(self._partitions)]

    # --- validation before proposing ---------------------------------------------------

    def validate_create(self, request: Any) -> CreateStream:
        """Parse ``{"name", "partitions"?, "key_field"?, "schema"?, "homes"?}`` into a command.

        Raises MALFORMED / TOO_LARGE, and CONFLICT early when the stream exists with another
        definition (apply decides for good: an identical definition is idempotent).
        """
        lim = self.limits
        if not isinstance(request, Mapping):
            raise malformed("stream definition must be an object")
        extra = set(request) - {"name", "partitions", "key_field", "schema", "homes"}
        if extra:
            raise malformed(f"unknown fields {sorted(map(str, extra))}", field=sorted(extra)[0])
        name = check_stream_name(request.get("name"), lim)
        parts = request.get("partitions", 1)
        if not is_int(parts) or parts < 1:
            raise malformed("partitions must be an integer >= 1", field="partitions")
        if parts > lim.partitions_max:
            raise too_large(f"{parts} partitions, at most {lim.partitions_max}", field="partitions")
        key_field = request.get("key_field")
        if key_field is not None and (not isinstance(key_field, str) or not key_field):
            raise malformed("key_field must be a non-empty string", field="key_field")
        raw_schema = request.get("schema")
        schema = Schema.from_json(raw_schema, lim) if raw_schema is not None else None
        if schema is not None and not schema.attributes:
            schema = None  # an empty schema constrains nothing: the same definition as none
        raw_homes = request.get("homes") or {}
        if not isinstance(raw_homes, Mapping):
            raise malformed("homes must be an object {partition: region}", field="homes")
        homes: dict[int, RegionId] = {}
        for k, region in raw_homes.items():
            p = int(k) if isinstance(k, str) and k.isdigit() else k
            if not is_int(p) or not 0 <= p < parts:
                raise malformed(f"homes: no partition {k!r}", field="homes")
            if not isinstance(region, str) or not region:
                raise malformed(f"homes: bad region for partition {p}", field="homes")
            homes[p] = RegionId(region)
        cmd = CreateStream(
            name,
            parts,
            key_field,
            schema,
            tuple((PartitionId(p), homes[p]) for p in sorted(homes)),
        )
        existing = self._streams.get(name)
        if existing is not None and existing != _definition(cmd):
            raise _conflict(existing)
        return cmd

    def validate_append(
        self,
        stream: str,
        events: Any,
        *,
        now_us: int,
        producer: Any = None,
        rr_counter: int = 0,
    ) -> PreparedAppend:
        """Check an append request and encode it into one AppendBatch per partition.

        ``now_us`` fills in absent ``ts``. Keyless events without a partition go round-robin
        from ``rr_counter``; with a producer, from a start derived from ``(id, seq)`` instead,
        so a retry routes every event exactly as the original did (and dedup recognises it).
        Nothing is stored here; errors are typed and name the offending event.
        """
        lim = self.limits
        d = self.stream(stream)
        assert is_int(now_us)
        prod = ProducerRef.from_json(producer, lim) if producer is not None else None
        if not isinstance(events, list) or not events:
            raise malformed("events must be a non-empty list", field="events")
        if len(events) > lim.events_per_request_max:
            raise too_large(
                f"{len(events)} events in one request, at most {lim.events_per_request_max}",
                field="events",
            )
        schema = d.schema
        indexed = schema.indexed if schema is not None else ()
        if prod is not None:
            rr = zlib.crc32(prod.id.encode()) + prod.seq
        else:
            rr = rr_counter
        nparts = d.partitions
        key_field = d.key_field
        fast_checks = schema.fast_checks() if schema is not None else ()
        event_bytes_max, key_bytes_max = lim.event_bytes_max, lim.key_bytes_max
        dumps = cbor2.dumps
        # The hot path: one pass, type() identity checks first, slow paths only for errors.
        parts: list[int] = []
        ts_col: list[int] = []
        keys: list[str | None] = []
        bodies: list[bytes] = []
        attr_cols: dict[str, list[Number | None]] = {n: [] for n in indexed}
        attr_lists = [(n, attr_cols[n]) for n in indexed]
        fast = None
        if schema is None and key_field is None:
            if len(events) == 1:  # the single-event append: no column passes
                single = _single_event(
                    events[0], now_us, nparts, rr, event_bytes_max, key_bytes_max
                )
                if single is not None:
                    pno, data, rr = single
                    pid = PartitionId(pno)
                    epoch = self._partitions[(d.name, pid)].epoch
                    batch = AppendBatch(d.name, pid, data, 1, prod, epoch, zlib.crc32(data))
                    return PreparedAppend((batch,), ((0,),), rr_counter if prod is not None else rr)
            fast = _fast_columns(events, now_us, nparts, rr, event_bytes_max, key_bytes_max)
        if fast is not None:
            parts, ts_col, keys, bodies, rr = fast
        else:
            for i, ev in enumerate(events):
                if type(ev) is not dict and not isinstance(ev, Mapping):
                    raise malformed(f"events[{i}] must be an object", path=f"events[{i}]")
                if len(ev) > 4 or not ev.keys() <= _EVENT_FIELDS or "body" not in ev:
                    _event_shape_error(i, ev)
                body = ev["body"]
                ts = ev.get("ts")
                if ts is None:
                    ts = now_us
                elif type(ts) is not int or not INT64_MIN <= ts <= INT64_MAX:
                    raise malformed(
                        f"events[{i}].ts must be an integer (microseconds since the Unix epoch)",
                        path=f"events[{i}].ts",
                    )
                body_is_map = type(body) is dict or isinstance(body, Mapping)
                key = ev.get("key")
                if key is None and key_field is not None and body_is_map:
                    kv = body.get(key_field)
                    if type(kv) is str or type(kv) is int:
                        key = str(kv)
                    elif kv is not None:
                        raise malformed(
                            f"events[{i}].body.{key_field} is the key field: it must be a string "
                            "or an integer",
                            path=f"events[{i}].body.{key_field}",
                        )
                key_bytes = 0
                if key is not None:
                    if type(key) is not str:
                        raise malformed(
                            f"events[{i}].key must be a string", path=f"events[{i}].key"
                        )
                    kb = key.encode()
                    key_bytes = len(kb)
                    if key_bytes > key_bytes_max:
                        raise too_large(
                            f"events[{i}].key has {key_bytes} bytes, at most {key_bytes_max}",
                            path=f"events[{i}].key",
                        )
                part = ev.get("partition")
                if part is None:
                    if key is not None:
                        part = zlib.crc32(kb) % nparts
                    else:
                        part = rr % nparts
                        rr += 1
                elif type(part) is not int or not 0 <= part < nparts:
                    raise ApiError(
                        ErrorCode.UNKNOWN_PARTITION,
                        f"events[{i}].partition: stream {d.name!r} has partitions "
                        f"0..{nparts - 1}, not {part!r}",
                        path=f"events[{i}].partition",
                        stream=d.name,
                    )
                if fast_checks and not (
                    body_is_map and all(check(body.get(name)) for name, check in fast_checks)
                ):
                    assert schema is not None
                    schema.validate_body(body, f"events[{i}].body")  # raises with the path
                    raise AssertionError("the fast and the full schema checks disagree")
                try:
                    body_bytes = dumps(body)
                except Exception as exc:  # cbor2 raises several types for unencodable values
                    raise malformed(
                        f"events[{i}].body cannot be encoded: {exc}", path=f"events[{i}].body"
                    ) from exc
                if len(body_bytes) + key_bytes > event_bytes_max:
                    raise too_large(
                        f"events[{i}] is {len(body_bytes) + key_bytes} bytes encoded, "
                        f"at most {event_bytes_max}",
                        path=f"events[{i}]",
                    )
                parts.append(part)
                ts_col.append(ts)
                keys.append(key)
                bodies.append(body_bytes)
                for n, col in attr_lists:
                    col.append(body.get(n))
        groups: dict[int, list[int]] = {}
        if nparts == 1:
            groups[0] = list(range(len(parts)))
        else:
            for i, part in enumerate(parts):
                groups.setdefault(part, []).append(i)
        batches: list[AppendBatch] = []
        positions: list[tuple[int, ...]] = []
        for pno in sorted(groups):
            idx = groups[pno]
            if len(groups) == 1:  # one partition: the columns as they are
                data = encode_batch(ts_col, keys, bodies, attr_cols)
            else:
                data = encode_batch(
                    [ts_col[i] for i in idx],
                    [keys[i] for i in idx],
                    [bodies[i] for i in idx],
                    {n: [col[i] for i in idx] for n, col in attr_cols.items()},
                )
            pid = PartitionId(pno)
            epoch = self._partitions[(d.name, pid)].epoch
            batches.append(AppendBatch(d.name, pid, data, len(idx), prod, epoch, zlib.crc32(data)))
            positions.append(tuple(idx))
        return PreparedAppend(
            tuple(batches), tuple(positions), rr_counter if prod is not None else rr
        )

    def route_event(self, stream: str, event: Any, rr_counter: int = 0) -> PartitionId:
        """The partition ``event`` goes to (a keyless one: ``rr_counter`` mod partitions).

        The same rules as :meth:`validate_append` (which the node uses for real requests),
        including the key taken from the stream's ``key_field``; raises the same errors.
        """
        prep = self.validate_append(stream, [event], now_us=0, rr_counter=rr_counter)
        return prep.batches[0].partition

    # --- apply -------------------------------------------------------------------------

    def advance(self, index: LogIndex) -> None:
        """An entry that is not a store command (no-op, membership) was applied."""
        assert index > self.applied_index, "entries are applied once, in order"
        self.applied_index = index
        self._producers.expire(index)

    def apply_entry(self, index: LogIndex, data: bytes) -> ApplyResult:
        """Decode and apply an entry's data; undecodable data is rejected (deterministic)."""
        try:
            cmd = decode_command(data)
        except CodecError as exc:
            self.advance(index)
            return Rejected(malformed(f"entry {index} is not a store command: {exc.message}"))
        return self.apply(index, cmd)

    def apply(self, index: LogIndex, command: Command) -> ApplyResult:
        """Apply one committed command at log ``index``; deterministic on every replica."""
        self.advance(index)
        try:
            match command:
                case CreateStream():
                    return self._apply_create(command)
                case AppendBatch():
                    return self._apply_append(index, command)
                case SetHome():
                    return self._apply_home(command)
                case FenceHome():
                    return self._apply_fence(command)
                case ApplyRemote():
                    return self._apply_remote(index, command)
                case ClearQuarantine():
                    return self._apply_clear(index, command)
        except ApiError as err:
            return Rejected(err)

    def _apply_create(self, cmd: CreateStream) -> StreamInfo:
        lim = APPLY_LIMITS  # never this node's configured limits: replicas must agree
        check_stream_name(cmd.name, lim)
        if not 1 <= cmd.partitions <= lim.partitions_max:
            raise too_large(f"{cmd.partitions} partitions, at most {lim.partitions_max}")
        if any(not 0 <= p < cmd.partitions for p, _ in cmd.homes):
            raise malformed("homes name a partition the stream does not have")
        d = _definition(cmd)
        existing = self._streams.get(d.name)
        if existing is not None:
            if existing != d:
                raise _conflict(existing)
            return self.stream_info(d.name)
        homes = dict(cmd.homes)
        indexed = d.schema.indexed if d.schema is not None else ()
        self._streams[d.name] = d
        for i in range(d.partitions):
            pid = PartitionId(i)
            self._partitions[(d.name, pid)] = _Partition(
                d.name, pid, indexed, homes.get(pid), FIRST_EPOCH
            )
        return StreamInfo(d, self.stream_info(d.name).homes, created=True)

    def _apply_home(self, cmd: SetHome) -> HomeResult:
        """A change of home: record the fork in the history, and fail back if needed.

        Events this region holds beyond ``cmd.fork_seq`` written under an older epoch were
        orphaned by the fork: they move to the partition's quarantine and the log is rewound
        to the fork, so the region follows the new home from there (see store/failover.py).
        """
        p = self._partition(cmd.stream, cmd.partition)
        if cmd.epoch <= p.epoch:
            raise ApiError(
                ErrorCode.SUPERSEDED_EPOCH,
                f"{cmd.stream}/{cmd.partition} is at epoch {p.epoch}; epoch {cmd.epoch} is stale",
                epoch=p.epoch,
            )
        fork = cmd.fork_seq if cmd.fork_seq is not None else p.next_seq - 1
        if fork < -1:
            raise malformed(f"fork seq {fork} of {cmd.stream}/{cmd.partition} is below -1")
        quarantined = 0
        if fork + 1 < p.next_seq and self._epoch_at(p, fork + 1) < cmd.epoch:
            quarantined = self._rewind(p, fork, cmd.epoch)
        p.history = p.history.fork(cmd.epoch, Seq(fork))
        p.home, p.epoch, p.fenced = cmd.home, cmd.epoch, False
        self.placement_version += 1
        return HomeResult(p.stream, p.partition, p.home, p.epoch, Seq(fork), quarantined)

    def _apply_clear(self, index: LogIndex, cmd: ClearQuarantine) -> QuarantineCleared:
        """Drop the quarantined runs the command names (see ClearQuarantine); 404 for a stream
        or partition the catalog does not have, so a typo is not answered "0 dropped"."""
        if cmd.stream is not None:
            if cmd.partition is not None:
                targets = [self._partition(cmd.stream, cmd.partition)]
            else:
                d = self.stream(cmd.stream)
                targets = [self._partitions[(d.name, PartitionId(i))] for i in range(d.partitions)]
        else:
            targets = [self._partitions[k] for k in sorted(self._partitions)]
        runs = events = size = 0
        for p in targets:
            keep: list[QuarantinedRun] = []
            for q in p.quarantine:
                if cmd.through_epoch is None or q.superseded_by <= cmd.through_epoch:
                    runs += 1
                    events += q.record_count
                    size += q.size_bytes
                    # the body stays on disk until no snapshot in use names it
                    self._dropped.append((index, p.stream, p.partition, q.slot))
                else:
                    keep.append(q)
            p.quarantine = keep
        self._q_runs -= runs
        self._q_events -= events
        self._q_bytes -= size
        return QuarantineCleared(runs, events, size, self._q_runs, self._q_events, self._q_bytes)

    def quarantine_size(self) -> tuple[int, int, int]:
        """(runs, events, bytes of batch encoding) the region's quarantine holds in all."""
        return self._q_runs, self._q_events, self._q_bytes

    def _apply_fence(self, cmd: FenceHome) -> HomeResult:
        """Fence (or unfence) the partition's appends for a planned move; the answer's
        ``fork_seq`` is the last seq at the fence: the fork of the move."""
        p = self._partition(cmd.stream, cmd.partition)
        if cmd.epoch != p.epoch:
            raise ApiError(
                ErrorCode.SUPERSEDED_EPOCH,
                f"{cmd.stream}/{cmd.partition} is at epoch {p.epoch}, not {cmd.epoch}",
                epoch=p.epoch,
            )
        p.fenced = cmd.fenced
        return HomeResult(p.stream, p.partition, p.home, p.epoch, Seq(p.next_seq - 1))

    def _epoch_at(self, p: _Partition, seq: int) -> Epoch:
        bd = _BlockCursor(self, p).block_at(seq)
        return bd.epoch_at(seq - bd.first_seq)

    def _rewind(self, p: _Partition, fork: int, new_epoch: Epoch) -> int:
        """Move events ``fork+1..`` to the quarantine and cut the log back to ``fork``.

        Afterwards the partition is exactly what a region that applied only ``..fork`` holds:
        the same sealed blocks, open block, rolling hash and batch index (block layout depends
        only on the event sequence), so the new home's batches continue it byte for byte.
        Costs one pass over the sealed blocks (the hash is re-chained); failbacks are rare.
        """
        keep = fork + 1
        last = p.next_seq - 1
        # Runs of at least ``piece`` events each: one per batch unless there are more batches
        # (at most one per event) than QUARANTINE_RUNS_PER_FORK.
        piece = -(-(last - fork) // QUARANTINE_RUNS_PER_FORK)
        group: list[RemoteEntry] = []
        size = events = 0
        seq = keep
        while seq <= last:
            # at most 64 Ki events / 16 MiB of them in memory at a time, plus one merged run:
            # each run's body goes to the block store, only its metadata stays
            for e in self.committed_entries(p.stream, p.partition, seq, last, 1 << 16, 1 << 24):
                if group and (
                    e.epoch != group[0].epoch or size + len(e.events) > QUARANTINE_RUN_BYTES_MAX
                ):
                    self._quarantine_group(p, group, fork, new_epoch)
                    group, size, events = [], 0, 0
                group.append(e)
                size += len(e.events)
                events += e.record_count
                if events >= piece:
                    self._quarantine_group(p, group, fork, new_epoch)
                    group, size, events = [], 0, 0
                seq = e.last_seq + 1
        if group:
            self._quarantine_group(p, group, fork, new_epoch)
        t = self.tuning
        # The block that holds ``keep`` (or the open one), and whether the one before it
        # must reopen: it was sealed only because the event at ``keep`` did not fit.
        k = bisect.bisect_right(p.first_seqs, keep) - 1 if p.sealed else -1
        if k >= 0 and p.sealed[k].end_seq <= keep:
            k += 1  # keep is past block k: in the open block (k == len(sealed)) or next
        k = max(k, 0)
        first = p.sealed[k].first_seq if k < len(p.sealed) else p.open.meta.first_seq
        if first == keep and k > 0:
            prev = p.sealed[k - 1]
            if prev.count < t.block_events_max and prev.body_bytes < t.block_bytes_max:
                k -= 1
                first = prev.first_seq
        meta = p.sealed[k] if k < len(p.sealed) else p.open.meta
        bd = self._load(p, meta)
        ob = OpenBlock(meta.block_no, first, p.indexed)
        for i, (run_first, epoch) in enumerate(bd.epochs):
            lo = run_first - first
            hi = bd.epochs[i + 1][0] - first if i + 1 < len(bd.epochs) else len(bd.cols)
            hi = min(hi, keep - first)
            if lo < hi:
                ob.append(bd.cols, lo, hi, Epoch(epoch))
        dropped = len(p.sealed) - k
        if dropped:
            self.blocks.discard(p.stream, p.partition, k)
        sealed = p.sealed[:k]
        p.sealed, p.first_seqs, p.segments = [], [], []
        h = _EMPTY_HASH
        for m in sealed:
            h = _chain(h, self.blocks.get(p.stream, p.partition, m.block_no))
            p.add_sealed(m, t.index_fanout)
        p.log_hash, p.open_hash, p.open = h, None, ob
        n = last - fork
        p.next_seq = keep
        runs = p.runs
        while runs and runs[-1][0] >= keep:
            runs.pop()
        if runs and runs[-1][0] + runs[-1][1] > keep:
            r = runs.pop()  # a batch cut by the fork keeps its head, without its producer
            runs.append((r[0], keep - r[0], r[2], None, None))
        self._producers.forget_from(p.stream, p.partition, keep)
        epoch = self._epoch_at(p, fork) if fork >= 0 else Epoch(0)
        p.mark = StoreWatermark(epoch, Seq(fork))
        return n

    def _quarantine_group(
        self, p: _Partition, group: list[RemoteEntry], fork: int, new_epoch: Epoch
    ) -> None:
        """One quarantined run of consecutive batches of one epoch: its body to the block
        store under the partition's next slot, its metadata to the quarantine."""
        first = group[0]
        if len(group) == 1:
            body, pid, pseq = first.events, first.producer_id, first.producer_seq
        else:
            body = _cbor.dumps(
                [[e.seq, e.record_count, e.events, e.producer_id, e.producer_seq] for e in group]
            )
            pid = pseq = None
        slot = p.quarantine_slots
        p.quarantine_slots += 1
        self.blocks.put(p.stream, p.partition, quarantine_block_no(slot), body)
        self._add_quarantined(
            p,
            QuarantinedRun(
                p.stream,
                p.partition,
                Epoch(first.epoch if first.epoch is not None else p.epoch),
                new_epoch,
                Seq(fork),
                first.seq,
                sum(e.record_count for e in group),
                len(body),
                zlib.crc32(body),
                slot,
                pid,
                pseq,
                len(group),
            ),
        )

    def _add_quarantined(self, p: _Partition, q: QuarantinedRun) -> None:
        p.quarantine.append(q)
        self._q_runs += 1
        self._q_events += q.record_count
        self._q_bytes += q.size_bytes

    def _apply_append(self, index: LogIndex, cmd: AppendBatch) -> AppendResult:
        p = self._partition(cmd.stream, cmd.partition)
        pkey = None
        if cmd.producer is not None:
            pkey = (p.stream, p.partition, cmd.producer.id)
            hit = self._producers.lookup(pkey, cmd.producer.seq)
            if hit is not None:
                self._producers.touch(pkey, index)
                first, last, epoch = hit
                return AppendResult(
                    p.stream, p.partition, Seq(first), Seq(last), Epoch(epoch), duplicate=True
                )
        if cmd.epoch is not None and cmd.epoch != p.epoch:
            # Not applied, and safe to retry: the retry goes to the partition's new home.
            raise ApiError(
                ErrorCode.MOVING,
                f"{p.stream}/{p.partition} moved to epoch {p.epoch} (home {p.home}) while the "
                f"append for epoch {cmd.epoch} was in flight; nothing was written: retry",
                epoch=p.epoch,
                home=p.home,
                retry_after_ms=50,
            )
        if p.fenced:
            raise ApiError(
                ErrorCode.MOVING,
                f"{p.stream}/{p.partition} is moving to another region; retry shortly",
                epoch=p.epoch,
                retry_after_ms=50,
            )
        if p.mark.epoch > p.epoch:
            # Batches of a newer home were applied here before this region learned of the
            # move: a local write now would fork the log (G5).
            raise ApiError(
                ErrorCode.MOVING,
                f"{p.stream}/{p.partition} holds data of epoch {p.mark.epoch} shipped from "
                f"another region; epoch {p.epoch} is stale here until it applies the move: "
                "nothing was written, retry",
                epoch=p.mark.epoch,
                retry_after_ms=50,
            )
        try:
            if cmd.crc is not None:
                cols = decode_batch_validated(cmd.events, cmd.crc, cmd.record_count, p.indexed)
            else:
                cols = decode_batch(cmd.events, cmd.record_count, p.indexed)
        except CodecError as exc:
            raise malformed(f"append to {p.stream}/{p.partition}: {exc.message}") from exc
        first = p.next_seq
        self._fill_blocks(p, cols, p.epoch)
        p.next_seq += len(cols)
        p.mark = StoreWatermark(p.epoch, Seq(p.next_seq - 1))
        result = AppendResult(p.stream, p.partition, Seq(first), Seq(p.next_seq - 1), p.epoch)
        if pkey is not None:
            assert cmd.producer is not None
            self._producers.record(pkey, cmd.producer.seq, (first, p.next_seq - 1, p.epoch), index)
            self._add_run(p, first, len(cols), p.epoch, cmd.producer.id, cmd.producer.seq)
        else:
            self._add_run(p, first, len(cols), p.epoch, None, None)
        subscribers = self._subscribers.get((p.stream, p.partition))
        if subscribers:
            for cb in list(subscribers):
                cb(p.stream, p.partition, Seq(p.next_seq - 1))
        return result

    def _add_run(
        self, p: _Partition, first: int, count: int, epoch: int, pid: str | None, pseq: int | None
    ) -> None:
        runs = p.runs
        assert not runs or runs[-1][0] + runs[-1][1] == first, "runs are dense"
        # Producer ids repeat across batches: one string object per id, not one per batch.
        runs.append((first, count, epoch, sys.intern(pid) if pid is not None else None, pseq))
        cap = self.limits.geo_batches_max
        if len(runs) > cap + (cap >> 3):  # trim in steps: amortised O(1) per batch
            del runs[: len(runs) - cap]

    def _apply_remote(self, index: LogIndex, cmd: ApplyRemote) -> RemoteResult:
        """Apply a shipped batch: entries at exactly their seqs, dedup state and watermark
        together, or nothing (see :mod:`geostore.store.remote`)."""
        p = self._partition(cmd.stream, cmd.partition)
        where = f"shipped batch {cmd.src_start}..{cmd.src_end} of {p.stream}/{p.partition}"
        _check_remote_shape(cmd, where)
        mark, verdict = decide_remote(p.mark, cmd.epoch, cmd.src_start, cmd.src_end, p.epoch)
        if verdict is not RemoteVerdict.APPLIED:
            return RemoteResult(p.stream, p.partition, p.mark, verdict)
        first_epoch = cmd.entries[0].epoch if cmd.entries[0].epoch is not None else cmd.epoch
        if first_epoch > max(p.epoch, p.mark.epoch) and p.next_seq:
            # The batch opens an epoch this region has not learned: only the SetHome says
            # where it forks, and events held here past that fork must go to quarantine
            # first; applied now, they would sit under the new epoch's seqs (G7). A gap for
            # the sender, which resends once the SetHome applied here. (An empty log holds
            # nothing that a fork could orphan.)
            return RemoteResult(p.stream, p.partition, p.mark, RemoteVerdict.GAP)
        assert p.next_seq == cmd.src_start, "the watermark is always the last applied seq"
        # Decode every entry before storing any: a damaged batch is never partly applied (G10).
        decoded: list[Columns] = []
        for e in cmd.entries:
            try:
                decoded.append(decode_batch(e.events, e.record_count, p.indexed))
            except CodecError as exc:
                raise malformed(f"{where}: entry at {e.seq}: {exc.message}") from exc
        for e, cols in zip(cmd.entries, decoded, strict=True):
            epoch = Epoch(e.epoch if e.epoch is not None else cmd.epoch)
            self._fill_blocks(p, cols, epoch)
            p.next_seq += len(cols)
            if e.producer_id is not None:
                assert e.producer_seq is not None
                self._producers.record_shipped(
                    (p.stream, p.partition, e.producer_id),
                    e.producer_seq,
                    (e.seq, e.last_seq, epoch),
                    index,
                )
            self._add_run(p, e.seq, e.record_count, epoch, e.producer_id, e.producer_seq)
        assert p.next_seq == cmd.src_end + 1
        p.mark = mark
        for cb in list(self._subscribers.get((p.stream, p.partition), ())):
            cb(p.stream, p.partition, Seq(p.next_seq - 1))
        return RemoteResult(p.stream, p.partition, mark, verdict)

    def _fill_blocks(self, p: _Partition, cols: Columns, epoch: Epoch) -> None:
        t = self.tuning
        ends = cols.ends
        n = len(ends)
        i = 0
        while i < n:
            ob = p.open
            room_bytes = t.block_bytes_max - ob.meta.body_bytes
            start = ends[i - 1] if i else cols.base
            hi = min(n, i + t.block_events_max - ob.meta.count)
            j = bisect.bisect_right(ends, start + room_bytes, i, hi)
            if j == i:
                if ob.meta.count:
                    self._seal(p)
                    continue
                j = i + 1  # an event over the block size gets a block of its own
            ob.append(cols, i, j, epoch)
            i = j
            if ob.meta.count >= t.block_events_max or ob.meta.body_bytes >= t.block_bytes_max:
                self._seal(p)

    def _seal(self, p: _Partition) -> None:
        ob = p.open
        data = ob.encode()
        ob.meta.crc = zlib.crc32(data)
        p.log_hash = _chain(p.log_hash, data)
        self.blocks.put(p.stream, p.partition, ob.meta.block_no, data)
        p.add_sealed(ob.meta, self.tuning.index_fanout)
        p.open = OpenBlock(ob.meta.block_no + 1, ob.meta.end_seq, p.indexed)

    # --- reads -------------------------------------------------------------------------

    def _load(self, p: _Partition, meta: BlockMeta) -> BlockData:
        if meta is p.open.meta:
            return p.open.view()
        data = self.blocks.get(p.stream, p.partition, meta.block_no)
        return decode_block(data, meta, p.indexed, f"{p.stream}/{p.partition}/{meta.block_no}")

    def _limit(self, limit: Any) -> int:
        lim = self.limits
        if limit is None:
            return lim.read_limit_default
        if not is_int(limit) or limit < 1:
            raise malformed("limit must be an integer >= 1", field="limit")
        if limit > lim.read_limit_max:
            raise too_large(f"limit {limit} is over {lim.read_limit_max}", field="limit")
        return int(limit)

    @staticmethod
    def _check_seq(seq: Any, name: str) -> int:
        if not is_int(seq) or not 0 <= seq <= INT64_MAX:
            raise malformed(f"{name} must be an integer >= 0", field=name)
        return int(seq)

    def _check_ts_range(self, from_ts: Any, to_ts: Any) -> tuple[int, int]:
        for name, v in (("from_ts", from_ts), ("to_ts", to_ts)):
            if not is_int(v) or not INT64_MIN <= v <= INT64_MAX:
                raise malformed(
                    f"{name} must be an integer (microseconds since the Unix epoch)", field=name
                )
        if to_ts < from_ts:
            raise malformed(f"to_ts {to_ts} is before from_ts {from_ts}", field="to_ts")
        if to_ts - from_ts > self.limits.query_range_us_max:
            raise too_large(
                f"time range of {to_ts - from_ts} us is wider than "
                f"{self.limits.query_range_us_max} us; split the query",
                field="to_ts",
            )
        return int(from_ts), int(to_ts)

    @staticmethod
    def _event(bd: BlockData, i: int) -> StoredEvent:
        c = bd.cols
        return StoredEvent(
            Seq(bd.first_seq + i),
            c.ts[i],
            c.keys[i],
            _cbor.loads_fast(c.body_bytes(i)),
            bd.epoch_at(i),
        )

    def read(self, stream: str, partition: int, from_seq: Any = 0, limit: Any = None) -> ReadResult:
        """Events ``from_seq, from_seq+1, ...`` (at most ``limit``); ``next_seq`` follows them."""
        p = self._partition(stream, partition)
        start = self._check_seq(from_seq, "from_seq")
        n = self._limit(limit)
        out: list[StoredEvent] = []
        blocks = decoded = 0
        if start < p.next_seq:
            for meta in p.metas_from(start):
                bd = self._load(p, meta)
                blocks += 1
                lo = max(0, start - meta.first_seq)
                hi = min(meta.count, lo + n - len(out))
                out.extend(self._event(bd, i) for i in range(lo, hi))
                decoded += hi - lo
                if len(out) >= n:
                    break
        next_seq = out[-1].seq + 1 if out else start
        return ReadResult(tuple(out), Seq(next_seq), ReadStats(blocks, decoded, 0))

    def events_since(self, stream: str, partition: int, seq: Any, limit: Any = None) -> ReadResult:
        """Live tail: the committed events from ``seq`` on (what a woken subscriber reads)."""
        return self.read(stream, partition, seq, limit)

    # --- shipping ------------------------------------------------------------------------

    def committed_entries(
        self,
        stream: str,
        partition: int,
        from_seq: int,
        through_seq: int,
        events_max: int,
        bytes_max: int,
    ) -> list[RemoteEntry]:
        """Applied append batches from the one starting at ``from_seq``, for shipping.

        The read side of the geo Shipper's ``CommittedLog`` port (the runtime turns each
        :class:`RemoteEntry` into a ``GeoEntry``, epoch included).
        Only applied events are returned (``through_seq`` is clipped to the last applied seq;
        the runtime applies committed entries only), none past ``through_seq``: at least one
        entry, then more while under ``events_max`` events and ``bytes_max`` bytes of events.
        Empty when nothing is applied at ``from_seq``.

        Entries keep batch boundaries: one per original append batch (local or shipped),
        with its producer, as remembered by the per-partition index of the last
        ``StoreLimits.geo_batches_max`` batches. Older ranges (and the rare entry that must
        start or end inside a batch) ship without producer, cut at block and epoch-run
        boundaries and at ``events_max``: the data and the rolling hash come out the same,
        only a retry of such an old batch in another region after a move of home is not
        recognised. Events are cut from the blocks' columns and the batch encoding is
        rebuilt around them: bodies are never decoded, and a whole batch comes out
        byte-identical to the ``AppendBatch.events`` it was appended with.
        """
        p = self._partition(stream, partition)
        assert events_max >= 1 and bytes_max >= 1
        last = min(int(through_seq), p.next_seq - 1)
        out: list[RemoteEntry] = []
        seq = int(from_seq)
        if seq < 0:
            return out
        cursor = _BlockCursor(self, p)
        events = size = 0
        while seq <= last:
            hi, epoch, pid, pseq, cut = self._entry_bounds(p, cursor, seq, last, events_max)
            n = hi - seq
            if out and (cut or events + n > events_max or size >= bytes_max):
                break
            data = cursor.encode(seq, hi)
            out.append(RemoteEntry(Seq(seq), n, data, pid, pseq, Epoch(epoch)))
            events += n
            size += len(data)
            seq = hi
        return out

    def _entry_bounds(
        self, p: _Partition, cursor: _BlockCursor, seq: int, last: int, events_max: int
    ) -> tuple[int, int, str | None, int | None, bool]:
        """End (exclusive), epoch, producer and whether it was cut, of the entry at ``seq``."""
        runs = p.runs
        if runs and seq >= runs[0][0]:
            k = bisect.bisect_right(runs, seq, key=_RUN_FIRST) - 1
            first, count, epoch, pid, pseq = runs[k]
            hi = first + count
            assert first <= seq < hi, "runs are dense up to next_seq"
            cut = seq != first or hi > last + 1
            if cut:  # part of a batch: its producer's outcome would name other seqs
                pid = pseq = None
            return min(hi, last + 1), epoch, pid, pseq, cut
        limit = min(runs[0][0] if runs else p.next_seq, last + 1, seq + events_max)
        bd = cursor.block_at(seq)
        k = bisect.bisect_right(bd.epochs, seq, key=_RUN_FIRST) - 1
        run_end = bd.epochs[k + 1][0] if k + 1 < len(bd.epochs) else bd.first_seq + len(bd.cols)
        return min(limit, run_end), bd.epochs[k][1], None, None, False

    def read_time_range(
        self,
        stream: str,
        partition: int,
        from_ts: Any,
        to_ts: Any,
        from_seq: Any = 0,
        limit: Any = None,
    ) -> ReadResult:
        """Events with ``from_ts <= ts < to_ts`` and ``seq >= from_seq``, in seq order.

        Reads only blocks whose ``[min_ts, max_ts]`` meets the range, at most
        ``read_blocks_max`` of them per call: a page may then hold fewer than ``limit``
        events (even none); ``next_seq`` says where to continue, and every seq below it
        was considered. At the end of the partition ``next_seq`` is its next seq.
        """
        p = self._partition(stream, partition)
        lo_ts, hi_ts = self._check_ts_range(from_ts, to_ts)
        start = self._check_seq(from_seq, "from_seq")
        n = self._limit(limit)
        out: list[StoredEvent] = []
        blocks = decoded = 0
        next_seq = max(start, p.next_seq)
        if lo_ts < hi_ts and start < p.next_seq:
            for meta in p.overlapping(start, lo_ts, hi_ts):
                if blocks >= self.limits.read_blocks_max:
                    next_seq = max(start, meta.first_seq)
                    break
                bd = self._load(p, meta)
                blocks += 1
                ts = bd.cols.ts
                i0 = max(0, start - meta.first_seq)
                stop = None
                for i in range(i0, meta.count):
                    if lo_ts <= ts[i] < hi_ts:
                        out.append(self._event(bd, i))
                        if len(out) >= n:
                            stop = i
                            break
                decoded += (stop + 1 if stop is not None else meta.count) - i0
                if stop is not None:
                    next_seq = meta.first_seq + stop + 1
                    break
        return ReadResult(tuple(out), Seq(next_seq), ReadStats(blocks, decoded, 0))

    def aggregate(
        self,
        stream: str,
        field: Any,
        from_ts: Any,
        to_ts: Any,
        *,
        partition: Any = None,
        window_us: Any = None,
        scan_limit: Any = None,
    ) -> AggregateResult:
        """count/min/max/sum/avg of numeric ``field`` over events with ``from_ts <= ts < to_ts``.

        With ``window_us``, also per fixed window ``[from_ts + k*window_us, ...)`` (every
        window, empty ones included, the last clipped at ``to_ts``). ``partition`` None means
        every partition. An indexed field is answered from block summaries wherever a block
        lies inside the range and inside one window; only the other blocks are decoded (their
        columns, never the bodies). A non-indexed field is FIELD_NOT_INDEXED unless
        ``scan_limit`` is given: then the bodies of the blocks in range are decoded, and the
        query is refused (TOO_LARGE) before any work if that would exceed ``scan_limit``
        events.
        """
        lim = self.limits
        d = self.stream(stream)
        if not isinstance(field, str) or not field:
            raise malformed("field must be a non-empty string", field="field")
        lo_ts, hi_ts = self._check_ts_range(from_ts, to_ts)
        parts = (
            [self._partition(stream, partition)]
            if partition is not None
            else [self._partitions[(d.name, PartitionId(i))] for i in range(d.partitions)]
        )
        windows_n = 0
        w = 0
        if window_us is not None:
            if not is_int(window_us) or window_us < 1:
                raise malformed("window_us must be an integer >= 1", field="window_us")
            w = int(window_us)
            windows_n = -((lo_ts - hi_ts) // w)  # ceil((hi - lo) / w)
            if windows_n > lim.windows_max:
                raise too_large(
                    f"{windows_n} windows of {w} us in the range, at most {lim.windows_max}",
                    field="window_us",
                )
        attr = d.schema.attribute(field) if d.schema is not None else None
        if attr is not None and attr.type not in (AttrType.INT, AttrType.FLOAT):
            raise malformed(f"field {field!r} is a {attr.type}, not a number", field="field")
        indexed = attr is not None and attr.indexed
        if not indexed:
            if scan_limit is None:
                raise ApiError(
                    ErrorCode.FIELD_NOT_INDEXED,
                    f"field {field!r} of stream {d.name!r} is not indexed; declare it indexed "
                    "in the schema or ask for a bounded scan with scan_limit",
                    field=field,
                )
            if not is_int(scan_limit) or scan_limit < 1:
                raise malformed("scan_limit must be an integer >= 1", field="scan_limit")
            if scan_limit > lim.scan_limit_max:
                raise too_large(
                    f"scan_limit {scan_limit} is over {lim.scan_limit_max}", field="scan_limit"
                )

        total = _Acc()
        wins = [_Acc() for _ in range(windows_n)]
        blocks = decoded = summaries = 0
        if lo_ts < hi_ts:
            work: list[tuple[_Partition, BlockMeta]] = []

            def summarized(node: BlockMeta | Segment) -> bool:
                """Answer ``node`` from its summary if it lies inside the range and a window."""
                if not indexed or node.min_ts < lo_ts or node.max_ts >= hi_ts:
                    return False
                k = (node.min_ts - lo_ts) // w if w else 0
                if w and k != (node.max_ts - lo_ts) // w:
                    return False
                sm = node.attrs[field]
                total.merge(sm.count, sm.min, sm.max, sm.sum)
                if w:
                    wins[k].merge(sm.count, sm.min, sm.max, sm.sum)
                return True

            for p in parts:
                for seg in p.segments:
                    if seg.max_ts < lo_ts or seg.min_ts >= hi_ts:
                        continue
                    if summarized(seg):
                        summaries += 1
                        continue
                    for meta in p.sealed[seg.first_block : seg.first_block + seg.blocks]:
                        if meta.max_ts < lo_ts or meta.min_ts >= hi_ts:
                            continue
                        if summarized(meta):
                            summaries += 1
                        else:
                            work.append((p, meta))
                meta = p.open.meta
                if meta.count and meta.max_ts >= lo_ts and meta.min_ts < hi_ts:
                    if summarized(meta):
                        summaries += 1
                    else:
                        work.append((p, meta))
            if not indexed:
                need = sum(m.count for _, m in work)
                if need > scan_limit:
                    raise too_large(
                        f"aggregating non-indexed field {field!r} would decode {need} events, "
                        f"over scan_limit {scan_limit}; narrow the range or index the field",
                        field="scan_limit",
                        events=need,
                    )
            for p, meta in work:
                bd = self._load(p, meta)
                blocks += 1
                decoded += meta.count
                ts = bd.cols.ts
                if indexed:
                    vals: Sequence[Any] = bd.cols.attrs[field]
                else:
                    vals = _scan_values(bd.cols, field, ts, lo_ts, hi_ts)
                for t, v in zip(ts, vals, strict=True):
                    if v is None or not lo_ts <= t < hi_ts:
                        continue
                    total.add(v)
                    if w:
                        wins[(t - lo_ts) // w].add(v)
        windows = None
        if w:
            windows = tuple(
                _window(lo_ts + k * w, min(lo_ts + (k + 1) * w, hi_ts), acc)
                for k, acc in enumerate(wins)
            )
        return AggregateResult(total.freeze(), windows, ReadStats(blocks, decoded, summaries))

    # --- live tail ---------------------------------------------------------------------

    def subscribe(self, stream: str, partition: int, callback: TailCallback) -> Callable[[], None]:
        """Call ``callback(stream, partition, last_seq)`` after each append applied to the
        partition (synchronously, inside apply: keep it to a wake-up). Returns the unsubscribe.
        """
        p = self._partition(stream, partition)
        key = (p.stream, p.partition)
        self._subscribers.setdefault(key, []).append(callback)

        def unsubscribe() -> None:
            subs = self._subscribers.get(key, [])
            if callback in subs:
                subs.remove(callback)
            if not subs:
                self._subscribers.pop(key, None)

        return unsubscribe

    # --- snapshots ---------------------------------------------------------------------

    def snapshot_chunks(self, chunk_bytes: int, *, include_blocks: bool = True) -> Iterator[bytes]:
        """The state as chunks of ``chunk_bytes`` (the last one shorter).

        The in-memory state (catalog, indexes, open blocks, producer table) is captured when
        this is called, so the store may go on applying while the chunks are consumed: sealed
        blocks never change. ``include_blocks=True`` streams each sealed block's bytes, one at
        a time (a self-contained snapshot, for a node that catches up); ``False`` only
        references them (for a local restart over the same BlockStore, which must hold them
        durably: call ``BlockStore.flush`` first).
        """
        assert chunk_bytes >= 1
        t = self.tuning
        head: list[list[Any]] = [
            [
                "header",
                SNAPSHOT_FORMAT,
                self.applied_index,
                _tuning_wire(t),
                include_blocks,
            ]
        ]
        for name in sorted(self._streams):
            d = self._streams[name]
            head.append(
                [
                    "stream",
                    d.name,
                    d.partitions,
                    d.key_field,
                    d.schema.to_json() if d.schema is not None else None,
                ]
            )
        parts: list[tuple[list[Any], list[BlockMeta], list[Any]]] = []
        extra: list[list[Any]] = []  # epoch histories and quarantines (after the partitions)
        for key in sorted(self._partitions):
            p = self._partitions[key]
            rec = [
                "partition",
                p.stream,
                p.partition,
                p.home,
                p.epoch,
                p.next_seq,
                p.log_hash,
                p.open.meta.block_no,
                p.open.encode(),
            ]
            parts.append((rec, list(p.sealed), [p.mark.epoch, p.mark.seq, *p.runs]))
            if len(p.history.starts) > 1 or p.quarantine or p.fenced:
                extra.append(["failover", p.stream, p.partition, p.history.to_wire(), p.fenced])
                extra += [["quarantine", *_run_wire(q)] for q in p.quarantine]
            if p.quarantine_slots:
                extra.append(["qslots", p.stream, p.partition, p.quarantine_slots])
        # cleared bodies not deleted yet: a restore from this snapshot deletes them
        extra += [["qdrop", s, part, slot] for _, s, part, slot in self._dropped]
        if not include_blocks:
            self._snapshot_taken()
        producers = self._producers.to_wire()
        return self._snapshot_gen(chunk_bytes, head, parts, producers, include_blocks, extra)

    def _snapshot_gen(
        self,
        chunk_bytes: int,
        head: list[list[Any]],
        parts: list[tuple[list[Any], list[BlockMeta], list[Any]]],
        producers: list[Any],
        include_blocks: bool,
        extra: list[list[Any]],
    ) -> Iterator[bytes]:
        out = FrameWriter(chunk_bytes)
        for rec in head:
            yield from out.add(rec)
        for rec, metas, runs in parts:
            yield from out.add(rec)
            stream, part = rec[1], rec[2]
            # runs: the watermark's epoch and seq, then the batch index (captured together).
            yield from out.add(["mark", stream, part, runs[0], runs[1]])
            for k in range(2, len(runs), 1024):
                yield from out.add(["runs", stream, part, [list(r) for r in runs[k : k + 1024]]])
            for k in range(0, len(metas), 256):
                yield from out.add(
                    ["metas", stream, part, [m.to_wire() for m in metas[k : k + 256]]]
                )
            if include_blocks:
                for m in metas:
                    data = self.blocks.get(stream, part, m.block_no)
                    yield from out.add(["block", stream, part, m.block_no, data])
        for rec in extra:
            yield from out.add(rec)
            if include_blocks and rec[0] == "quarantine":
                yield from out.add(self._body_record(rec))
        for k in range(0, len(producers), 256):
            yield from out.add(["producers", producers[k : k + 256]])
        yield from out.finish()

    def _body_record(self, rec: list[Any]) -> list[Any]:
        """The ``qbody`` record carrying the body of a snapshot's ``quarantine`` record."""
        stream, part, slot = rec[1], rec[2], rec[10]
        data = self.blocks.get(StreamName(stream), PartitionId(part), quarantine_block_no(slot))
        return ["qbody", stream, part, slot, data]

    def _snapshot_taken(self) -> None:
        """A snapshot by reference was taken: bodies cleared before the last
        ``SNAPSHOTS_HELD`` of them can go (no snapshot the host still keeps, for a restart
        or a follower's transfer, names them; the host keeps fewer, see HostConfig)."""
        marks = self._snapshot_marks
        marks.append(self.applied_index)
        del marks[:-SNAPSHOTS_HELD]
        if len(marks) < SNAPSHOTS_HELD:
            return
        safe = marks[0]
        keep = []
        for item in self._dropped:
            if item[0] <= safe:
                _, stream, part, slot = item
                self.blocks.remove(stream, part, quarantine_block_no(slot))
            else:
                keep.append(item)
        self._dropped = keep

    def self_contained_chunks(self, chunks: Iterable[bytes], chunk_bytes: int) -> Iterator[bytes]:
        """A snapshot that references its sealed blocks, rewritten to carry them.

        A node keeps its own snapshots by reference (``include_blocks=False``: the block
        index, not the data, so a snapshot costs memory and disk in proportion to the index)
        and expands one only when a follower needs it: each block record follows the index
        records naming it, read from this store's BlockStore (sealed blocks never change,
        so the result is the snapshot ``include_blocks=True`` would have given). A snapshot
        that already carries its blocks comes out as it went in. Raises CodecError or
        StorageError (a referenced block is missing).
        """
        out = FrameWriter(chunk_bytes)
        by_reference = False
        for rec in read_records(chunks):
            if rec[0] == "header":
                by_reference = rec[4] is False
                rec = [*rec[:4], True]
            yield from out.add(rec)
            if rec[0] == "quarantine" and by_reference and len(rec) == 14:
                yield from out.add(self._body_record(rec))
            if rec[0] == "metas" and by_reference:
                _, stream, part, metas = rec
                for raw in metas:
                    block_no = raw[0]
                    data = self.blocks.get(StreamName(stream), PartitionId(part), block_no)
                    yield from out.add(["block", stream, part, block_no, data])
        yield from out.finish()

    @staticmethod
    def snapshot_carries_blocks(data: bytes) -> bool:
        """Whether a whole snapshot carries its sealed blocks (from its header alone)."""
        head = first_record(data)
        if head[0] != "header" or len(head) != 5:
            raise CodecError("snapshot does not start with its header")
        return head[4] is True

    def by_reference_chunks(self, chunks: Iterable[bytes], chunk_bytes: int) -> Iterator[bytes]:
        """A self-contained snapshot without its block records: the blocks by reference.

        For a snapshot this store restored (its blocks are in this store's BlockStore), so
        that a copy kept in memory costs what the index costs; the inverse of
        :meth:`self_contained_chunks`.
        """
        out = FrameWriter(chunk_bytes)
        for rec in read_records(chunks):
            if rec[0] == "block" or rec[0] == "qbody":
                continue
            if rec[0] == "header":
                rec = [*rec[:4], False]
            yield from out.add(rec)
        yield from out.finish()

    def restore_from_chunks(self, chunks: Iterable[bytes]) -> None:
        """Replace the whole state with a snapshot's (Raft InstallSnapshot, or a restart).

        The new state is built aside and swapped in only when the snapshot is complete and
        its digest checks, so a damaged snapshot (CodecError / StorageError) changes no
        answer. Blocks it carries are put into the BlockStore as they stream in (the same
        block numbers only ever hold the same bytes); referenced blocks must be present.
        Subscribers stay registered and are called once for every partition that has events.
        """
        try:
            self._restore(chunks)
        except (KeyError, IndexError, ValueError, TypeError, AssertionError) as exc:
            raise CodecError(f"snapshot is malformed: {exc!r}") from exc
        self.placement_version += 1

    def _restore(self, chunks: Iterable[bytes]) -> None:
        streams: dict[StreamName, StreamDef] = {}
        partitions: dict[tuple[StreamName, PartitionId], _Partition] = {}
        producers = self._new_producer_table()
        applied: LogIndex | None = None
        include_blocks = False
        received: set[tuple[StreamName, PartitionId, int]] = set()
        marked: set[tuple[StreamName, PartitionId]] = set()
        dropped: list[tuple[StreamName, PartitionId, int]] = []
        t = self.tuning
        for rec in read_records(chunks):
            kind = rec[0]
            if kind == "header":
                _, fmt, idx, params, include_blocks = rec
                if fmt != SNAPSHOT_FORMAT:
                    raise CodecError(f"snapshot format {fmt!r}, expected {SNAPSHOT_FORMAT}")
                if params != _tuning_wire(t):
                    raise StorageError(
                        f"snapshot store tuning {params} differs from this node's "
                        f"{_tuning_wire(t)}: every replica of a group must use the same"
                    )
                applied = LogIndex(idx)
                continue
            if applied is None:
                raise CodecError("snapshot does not start with its header")
            if kind == "stream":
                _, name, nparts, key_field, schema = rec
                sch = Schema.from_json(schema, APPLY_LIMITS) if schema is not None else None
                streams[StreamName(name)] = StreamDef(StreamName(name), nparts, key_field, sch)
            elif kind == "partition":
                _, stream, part, home, epoch, next_seq, log_hash, open_no, open_bytes = rec
                d = streams[StreamName(stream)]
                indexed = d.schema.indexed if d.schema is not None else ()
                p = _Partition(d.name, PartitionId(part), indexed, home, Epoch(epoch))
                if epoch > FIRST_EPOCH:  # replaced by its "failover" record when it has one
                    p.history = EpochHistory(((FIRST_EPOCH, Seq(0)), (Epoch(epoch), next_seq)))
                p.next_seq, p.log_hash = next_seq, log_hash
                p.open, _ = block_from_open_bytes(open_bytes, open_no, indexed)
                partitions[(p.stream, p.partition)] = p
            elif kind == "metas":
                _, stream, part, metas = rec
                p = partitions[(StreamName(stream), PartitionId(part))]
                for raw in metas:
                    m = BlockMeta.from_wire(raw)
                    if m.block_no != len(p.sealed) or m.first_seq != (
                        p.sealed[-1].end_seq if p.sealed else 0
                    ):
                        raise CodecError("snapshot block index is not contiguous")
                    p.add_sealed(m, t.index_fanout)
            elif kind == "block":
                _, stream, part, block_no, data = rec
                p = partitions[(StreamName(stream), PartitionId(part))]
                m = p.sealed[block_no]
                if zlib.crc32(data) != m.crc:
                    raise CodecError(f"snapshot block {stream}/{part}/{block_no} fails its crc")
                self.blocks.put(p.stream, p.partition, block_no, data)
                received.add((p.stream, p.partition, block_no))
            elif kind == "mark":
                _, stream, part, epoch, seq = rec
                p = partitions[(StreamName(stream), PartitionId(part))]
                p.mark = StoreWatermark(Epoch(epoch), Seq(seq))
                marked.add((p.stream, p.partition))
            elif kind == "runs":
                _, stream, part, runs = rec
                p = partitions[(StreamName(stream), PartitionId(part))]
                for first, count, epoch, pid, pseq in runs:
                    if p.runs and p.runs[-1][0] + p.runs[-1][1] != first:
                        raise CodecError("snapshot batch index is not contiguous")
                    p.runs.append((first, count, epoch, pid, pseq))
            elif kind == "producers":
                producers.load_wire(rec[1])
            elif kind == "failover":
                _, stream, part, hist, fenced = rec
                p = partitions[(StreamName(stream), PartitionId(part))]
                p.fenced = fenced is True
                try:
                    p.history = EpochHistory.from_wire(hist)
                except (AssertionError, TypeError, ValueError) as exc:
                    raise CodecError(f"snapshot epoch history is bad: {exc}") from exc
            elif kind == "quarantine":
                p = partitions[(StreamName(rec[1]), PartitionId(rec[2]))]
                if len(rec) == 11:  # the older form, body inline: it moves to the block store
                    body = rec[8]
                    assert type(body) is bytes, "quarantined events are bytes"
                    slot = p.quarantine_slots
                    p.quarantine_slots += 1
                    rec = [*rec[:8], len(body), zlib.crc32(body), slot, *rec[9:], 1]
                    self.blocks.put(p.stream, p.partition, quarantine_block_no(slot), body)
                    received.add((p.stream, p.partition, quarantine_block_no(slot)))
                q = _run_from_wire(rec[1:])
                p.quarantine.append(q)
                p.quarantine_slots = max(p.quarantine_slots, q.slot + 1)
            elif kind == "qbody":
                _, stream, part, slot, data = rec
                p = partitions[(StreamName(stream), PartitionId(part))]
                run = next((q for q in reversed(p.quarantine) if q.slot == slot), None)
                if run is None:
                    raise CodecError(f"snapshot body of {stream}/{part}/{slot} names no run")
                if len(data) != run.size_bytes or zlib.crc32(data) != run.crc:
                    raise CodecError(f"snapshot quarantined run {stream}/{part}/{slot} fails crc")
                self.blocks.put(p.stream, p.partition, quarantine_block_no(slot), data)
                received.add((p.stream, p.partition, quarantine_block_no(slot)))
            elif kind == "qslots":
                _, stream, part, slots = rec
                p = partitions[(StreamName(stream), PartitionId(part))]
                p.quarantine_slots = max(p.quarantine_slots, slots)
            elif kind == "qdrop":
                _, stream, part, slot = rec
                dropped.append((StreamName(stream), PartitionId(part), int(slot)))
            else:
                raise CodecError(f"unknown snapshot record {kind!r}")
        assert applied is not None
        for p in partitions.values():
            last = p.sealed[-1].end_seq if p.sealed else 0
            if p.open.meta.first_seq != last or p.open.meta.end_seq != p.next_seq:
                raise CodecError(f"snapshot partition {p.stream}/{p.partition} is inconsistent")
            if (p.stream, p.partition) not in marked and p.next_seq:
                # A snapshot from before watermarks: everything in it was written locally.
                p.mark = StoreWatermark(p.epoch, Seq(p.next_seq - 1))
            if p.mark.seq != p.next_seq - 1 or (
                p.runs and p.runs[-1][0] + p.runs[-1][1] != p.next_seq
            ):
                raise CodecError(f"snapshot partition {p.stream}/{p.partition} is inconsistent")
            # the same step as _add_run, never tighter: the index must stay what the
            # snapshot's source (and every replica that applied the log) holds, or a failback
            # cuts its quarantined runs, and shipping its producers, differently here
            cap = self.limits.geo_batches_max
            if len(p.runs) > cap + (cap >> 3):
                del p.runs[: len(p.runs) - cap]
            for m in p.sealed:
                bkey = (p.stream, p.partition, m.block_no)
                present = bkey in received if include_blocks else self.blocks.has(*bkey)
                if not present:
                    raise StorageError(f"snapshot block {'/'.join(map(str, bkey))} is missing")
            for q in p.quarantine:
                bkey = (p.stream, p.partition, quarantine_block_no(q.slot))
                if bkey not in received and not self.blocks.has(*bkey):
                    raise StorageError(
                        f"snapshot quarantined run {p.stream}/{p.partition} slot {q.slot} "
                        "is missing"
                    )
        if include_blocks:
            # Installed from another node: this state, and every snapshot the host kept of
            # it, is replaced, so the bodies of its runs (live or cleared, not yet deleted)
            # that the new state has no run for can go; the source deleted its copies, maybe
            # long enough ago that its snapshot no longer lists them as "qdrop".
            live = {
                (p.stream, p.partition, q.slot) for p in partitions.values() for q in p.quarantine
            }
            old = [
                (q.stream, q.partition, q.slot)
                for p in self._partitions.values()
                for q in p.quarantine
            ]
            old += [(s, part, slot) for _, s, part, slot in self._dropped]
            dropped += [key for key in old if key not in live]
        self._streams, self._partitions, self._producers = streams, partitions, producers
        self.applied_index = applied
        runs = [q for p in partitions.values() for q in p.quarantine]
        self._q_runs = len(runs)
        self._q_events = sum(q.record_count for q in runs)
        self._q_bytes = sum(q.size_bytes for q in runs)
        # Only this snapshot is in use now (a restart, or an installed one replaced the
        # rest): the bodies it says were cleared can go.
        for stream, part, slot in dropped:
            self.blocks.remove(stream, part, quarantine_block_no(slot))
        self._dropped, self._snapshot_marks = [], [int(applied)]
        for key, subs in list(self._subscribers.items()):
            p2 = partitions.get(key)
            if p2 is None or not p2.next_seq:
                continue
            for cb in list(subs):
                cb(p2.stream, p2.partition, Seq(p2.next_seq - 1))

    # --- introspection (tests, metrics) ------------------------------------------------

    def producer_count(self) -> int:
        return len(self._producers)


_GET_BODY = operator.itemgetter("body")
#: the fields of an event that names no partition (the common request)
_EVENT_FIELDS_UNPARTITIONED = frozenset({"ts", "key", "body"})
_INT_TYPE = frozenset({int})
_KEY_TYPES = frozenset({str, type(None)})


def _single_event(
    ev: Any, now_us: int, nparts: int, rr: int, event_bytes_max: int, key_bytes_max: int
) -> tuple[int, bytes, int] | None:
    """The one event of a single-event append (no schema, no key field, no explicit
    partition): its partition, its encoded batch (the bytes ``encode_batch`` gives) and the
    round-robin counter after it; None for anything else or anything wrong, which the
    column and loop paths then decide (this path never decides an error)."""
    if type(ev) is not dict or not ev.keys() <= _EVENT_FIELDS_UNPARTITIONED or "body" not in ev:
        return None
    ts = ev.get("ts")
    if ts is None:
        ts = now_us
    elif type(ts) is not int or not INT64_MIN <= ts <= INT64_MAX:
        return None
    key = ev.get("key")
    if key is None:
        key_bytes = 0
        part = rr % nparts
        rr += 1
    elif type(key) is str:
        kb = key.encode()
        key_bytes = len(kb)
        if key_bytes > key_bytes_max:
            return None
        part = zlib.crc32(kb) % nparts
    else:
        return None
    try:
        body = cbor2.dumps(ev["body"])
    except Exception:  # cbor2 raises several types; the loop reports it with the path
        return None
    if len(body) + key_bytes > event_bytes_max:
        return None
    return part, encode_batch([ts], [key], [body]), rr


def _fast_columns(
    events: list[Any],
    now_us: int,
    nparts: int,
    rr: int,
    event_bytes_max: int,
    key_bytes_max: int,
) -> tuple[list[int], list[int], list[str | None], list[bytes], int] | None:
    """The columns of an append in whole-column passes (C-level ``map``), or None.

    For the common request (plain dict events, no schema, no key field, no explicit
    partition) this does what the per-event loop of ``validate_append`` does at a fraction
    of the cost. Anything unusual answers None and the loop runs instead: it gives the exact
    error, so this path never decides an error and never accepts what the loop refuses.
    Returns partitions, ts, keys, encoded bodies and the round-robin counter after them.
    """
    if set(map(type, events)) != {dict}:
        return None
    # every event's fields are allowed iff all of them together are (one C-level union of
    # the keys: a quarter of the cost of a superset check per event)
    fields = set().union(*events)
    if not fields <= _EVENT_FIELDS_UNPARTITIONED:
        # some event has a partition field (or an unknown one): only None passes here
        if not fields <= _EVENT_FIELDS:
            return None
        if set(map(dict.get, events, repeat("partition"))) != {None}:
            return None
    try:
        raw_bodies = list(map(_GET_BODY, events))
    except KeyError:
        return None
    ts_col: list[Any] = list(map(dict.get, events, repeat("ts")))
    if None in ts_col:
        ts_col = [now_us if t is None else t for t in ts_col]
    if (
        not set(map(type, ts_col)) <= _INT_TYPE
        or min(ts_col) < INT64_MIN
        or max(ts_col) > INT64_MAX
    ):
        return None
    keys: list[str | None] = list(map(dict.get, events, repeat("key")))
    if not set(map(type, keys)) <= _KEY_TYPES:
        return None
    named = [k for k in keys if k is not None]
    # UTF-8 takes at most 4 bytes a character: under this bound no key can be too long
    key_bound = 4 * max(map(len, named)) if named else 0
    if key_bound > key_bytes_max:
        return None
    try:
        bodies = _cbor.dumps_each(raw_bodies)
    except Exception:  # cbor2 raises several types; the loop reports it with the path
        return None
    if max(map(len, bodies)) + key_bound > event_bytes_max:
        return None
    if nparts == 1:
        parts = [0] * len(events)
        rr += len(keys) - len(named)
    else:
        parts = []
        crc = zlib.crc32
        for k in keys:
            if k is None:
                parts.append(rr % nparts)
                rr += 1
            else:
                parts.append(crc(k.encode()) % nparts)
    return parts, ts_col, keys, bodies, rr


def _event_shape_error(i: int, ev: Mapping[Any, Any]) -> NoReturn:
    path = f"events[{i}]"
    bad = sorted(map(str, ev.keys() - _EVENT_FIELDS))
    if bad:
        raise malformed(f"{path} has unknown fields {bad}", path=path)
    raise malformed(f"{path}.body is missing", path=f"{path}.body")


def _tuning_wire(t: StoreTuning) -> list[int]:
    return [
        t.block_events_max,
        t.block_bytes_max,
        t.index_fanout,
        t.producer_window,
        t.producers_max,
        t.producer_idle_entries,
        t.producer_outcomes_max,
    ]


def _definition(cmd: CreateStream) -> StreamDef:
    return StreamDef(cmd.name, cmd.partitions, cmd.key_field, cmd.schema)


def _conflict(existing: StreamDef) -> ApiError:
    return ApiError(
        ErrorCode.CONFLICT,
        f"stream {existing.name!r} exists with another definition",
        stream=existing.name,
        existing=existing.to_json(),
    )


def _window(start: int, end: int, acc: _Acc) -> WindowAggregate:
    return WindowAggregate(start, end, acc.freeze())


def _scan_values(
    cols: Columns, field: str, ts: list[int], lo_ts: int, hi_ts: int
) -> list[Number | None]:
    """The numeric values of ``field`` in the bodies of a block (None where not a number)."""
    out: list[Number | None] = []
    for i, t in enumerate(ts):
        v: Any = None
        if lo_ts <= t < hi_ts:
            body = _cbor.loads_fast(cols.body_bytes(i))
            if isinstance(body, Mapping):
                v = body.get(field)
                if not is_number(v) or (type(v) is float and not math.isfinite(v)):
                    v = None
        out.append(v)
    return out


class _BlockCursor:
    """Cuts runs of events out of a partition's blocks (one decoded block kept at a time)."""

    __slots__ = ("bd", "p", "store")

    def __init__(self, store: EventStore, p: _Partition) -> None:
        self.store = store
        self.p = p
        self.bd: BlockData | None = None

    def block_at(self, seq: int) -> BlockData:
        bd = self.bd
        if bd is None or not bd.first_seq <= seq < bd.first_seq + len(bd.cols):
            meta = next(self.p.metas_from(seq))
            bd = self.bd = self.store._load(self.p, meta)
            assert bd.first_seq <= seq < bd.first_seq + len(bd.cols)
        return bd

    def encode(self, lo: int, hi: int) -> bytes:
        """The batch encoding (as :func:`encode_batch` makes it) of events ``lo..hi-1``."""
        ts: list[int] = []
        keys: list[str | None] = []
        attrs: dict[str, list[Any]] = {name: [] for name in self.p.indexed}
        ends: list[int] = []
        bodies: list[bytes | bytearray] = []
        size = 0
        seq = lo
        while seq < hi:
            bd = self.block_at(seq)
            c = bd.cols
            i = seq - bd.first_seq
            j = min(hi - bd.first_seq, len(c))
            ts += c.ts[i:j]
            keys += c.keys[i:j]
            for name, col in attrs.items():
                col += c.attrs[name][i:j]
            start = c.ends[i - 1] if i else c.base
            stop = c.ends[j - 1]
            shift = size - start
            ends += [e + shift for e in c.ends[i:j]]
            bodies.append(c.bodies[start - c.base : stop - c.base])
            size += stop - start
            seq = bd.first_seq + j
        return _cbor.dumps([BATCH_FORMAT, ts, keys, attrs, ends, b"".join(bodies)])


def _check_remote_shape(cmd: ApplyRemote, where: str) -> None:
    """Entries must hold ``src_start..src_end`` densely, in order, each of one epoch."""
    if not 0 <= cmd.src_start <= cmd.src_end or not cmd.entries or cmd.epoch < 0:
        raise malformed(f"{where}: empty or inverted range")
    seq: int = cmd.src_start
    prev_epoch = 0
    for e in cmd.entries:
        if e.seq != seq or e.record_count < 1:
            raise malformed(f"{where}: entries are not dense (entry at {e.seq}, expected {seq})")
        if (e.producer_id is None) != (e.producer_seq is None):
            raise malformed(f"{where}: entry at {e.seq} has half a producer")
        if e.epoch is not None:
            if not prev_epoch <= e.epoch <= cmd.epoch:
                raise malformed(f"{where}: entry epochs must grow up to the batch epoch")
            prev_epoch = e.epoch
        seq += e.record_count
    if seq != cmd.src_end + 1:
        raise malformed(f"{where}: entries end at {seq - 1}, not at src_end")


def _run_wire(q: QuarantinedRun) -> list[Any]:
    """A run's metadata for a snapshot (its body is in the block store, or a ``qbody``)."""
    return [
        q.stream,
        q.partition,
        q.epoch,
        q.superseded_by,
        q.fork_seq,
        q.first_seq,
        q.record_count,
        q.size_bytes,
        q.crc,
        q.slot,
        q.producer_id,
        q.producer_seq,
        q.parts,
    ]


def _run_from_wire(raw: list[Any]) -> QuarantinedRun:
    try:
        stream, part, epoch, by, fork, first, count, size, crc, slot, pid, pseq, parts = raw
        assert type(count) is int and count >= 1 and type(parts) is int and parts >= 1
        assert type(size) is int and type(crc) is int and type(slot) is int and slot >= 0
        return QuarantinedRun(
            StreamName(stream),
            PartitionId(part),
            Epoch(epoch),
            Epoch(by),
            Seq(fork),
            Seq(first),
            count,
            size,
            crc,
            slot,
            pid,
            pseq,
            parts,
        )
    except (AssertionError, TypeError, ValueError) as exc:
        raise CodecError(f"snapshot quarantine record is bad: {exc}") from exc


def _chain(h: bytes, block: bytes) -> bytes:
    """Extend a rolling hash by one block's bytes (BLAKE2b-128 of the previous hash and them).

    A block encodes first seq, epochs, ts, keys and body bytes of its events, and the block
    layout depends only on the event sequence and the block sizing (never on how events were
    batched), so replicas with the same :class:`StoreTuning` that applied the same events hold
    the same hash. Hashing blocks, not events, keeps this off the per-event path.
    """
    d = hashlib.blake2b(h, digest_size=16)
    d.update(block)
    return d.digest()


def _log_hash(p: _Partition) -> bytes:
    """The partition's rolling hash including its open block (cached per open-block size)."""
    n = p.open.meta.count
    if not n:
        return p.log_hash
    if p.open_hash is None or p.open_hash[0] != p.next_seq:  # seqs only grow: a unique key
        p.open_hash = (p.next_seq, _chain(p.log_hash, p.open.encode()))
    return p.open_hash[1]
