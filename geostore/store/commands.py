"""Commands: what a committed Raft entry carries to the event store, and their encoding.

Theory of operation: the receiving node validates a request against the catalog, fills in
missing event times from its own clock, routes events to partitions and encodes each
partition's events once as a batch (see :mod:`geostore.store.blocks`); only then does it
propose a command. Every replica applies the same command bytes, so the state machine
never reads a clock or a random source. An entry's ``data`` is ``encode_command(cmd)``: a
CBOR array whose first element names the command, so unknown or damaged entries are
rejected with a typed :class:`~geostore.errors.CodecError` rather than misread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from geostore.errors import CodecError, GeostoreError
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName

from . import _cbor
from .model import APPLY_LIMITS, ProducerRef, Schema

COMMAND_FORMAT = 1


@dataclass(frozen=True, slots=True)
class CreateStream:
    """Create a stream (idempotent for the same definition; conflict for another one).

    ``homes`` maps partitions to home regions, sorted by partition; unnamed partitions have
    no home (None) until the geo layer assigns one.
    """

    name: StreamName
    partitions: int = 1
    key_field: str | None = None
    schema: Schema | None = None
    homes: tuple[tuple[PartitionId, RegionId], ...] = ()


@dataclass(frozen=True, slots=True)
class AppendBatch:
    """Append one partition's events, encoded once by the receiving node.

    ``epoch`` is the partition epoch the proposer validated against (None: do not check);
    apply refuses the batch with ``superseded_epoch`` when the epoch moved on meanwhile.

    ``crc`` (crc32 of ``events``) is set only by
    :meth:`~geostore.store.EventStore.validate_append`, which checked every event when it
    encoded the batch: apply then checks the bytes against the crc and the columns' shape,
    and not every value again (validate once). A batch without it gets the full check.
    """

    stream: StreamName
    partition: PartitionId
    events: bytes
    record_count: int
    producer: ProducerRef | None = None
    epoch: Epoch | None = None
    crc: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class SetHome:
    """Move a partition's home, with a strictly larger epoch (the geo layer proposes it).

    ``fork_seq`` is the last seq the new epoch keeps of the old ones (the new home's
    watermark at the move): the new epoch writes from ``fork_seq + 1``. A region that holds
    events beyond it moves them to its quarantine when this applies (a failback; see
    :mod:`geostore.store.failover`). None (the older form): the fork is wherever this
    region's log ends, which is right only where nothing beyond the fork was written.
    """

    stream: StreamName
    partition: PartitionId
    home: RegionId | None
    epoch: Epoch
    fork_seq: Seq | None = None


@dataclass(frozen=True, slots=True)
class FenceHome:
    """Stop (``fenced``) or resume appends at a partition's home under ``epoch``.

    The first phase of a planned move, proposed into the old home region's own log so that
    every leader of that region refuses appends (503 ``moving``) from then on; the answer's
    ``fork_seq`` is the exact last seq, the fork of the move. The move's ``SetHome`` lifts it
    (so does ``fenced=False``, when a move is abandoned before the bump).
    """

    stream: StreamName
    partition: PartitionId
    epoch: Epoch
    fenced: bool = True


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One append batch of the home region, as shipped: the store twin of ``geo.GeoEntry``.

    ``seq`` is the seq of its first event; ``events`` the batch encoding exactly as an
    :class:`AppendBatch` carries it; the producer fields travel so the receiving store dedups
    retries as the home did. ``epoch`` is the epoch the home wrote the events under (None:
    the command's epoch, which is right unless the events predate a change of home).
    """

    seq: Seq
    record_count: int
    events: bytes
    producer_id: str | None = None
    producer_seq: int | None = None
    epoch: Epoch | None = None

    @property
    def last_seq(self) -> Seq:
        return Seq(self.seq + self.record_count - 1)


@dataclass(frozen=True, slots=True)
class ApplyRemote:
    """Apply a batch shipped from the partition's home region: the store twin of ``GeoApply``.

    ``entries`` hold seqs ``src_start..src_end`` densely, in order; ``crc`` is the shipped
    batch's checksum (kept for the receiver's re-acknowledgement and traces: the apply rule,
    like geo's, decides from the watermark alone). The runtime maps ``GeoApply`` to this
    field by field (``GeoEntry`` to :class:`RemoteEntry`) and the
    :class:`~geostore.store.model.RemoteResult` back to a ``GeoApplyResult``.
    """

    stream: StreamName
    partition: PartitionId
    epoch: Epoch
    src_start: Seq
    src_end: Seq
    crc: int
    entries: tuple[RemoteEntry, ...]


@dataclass(frozen=True, slots=True)
class ClearQuarantine:
    """Drop quarantined runs (an operator's decision, after an export or a re-append).

    ``stream`` None: every partition of every stream; ``partition`` None (with a stream):
    every partition of it. ``through_epoch`` keeps runs superseded after that epoch (None:
    drop whatever the filter names). Pure and deterministic like every command: the answer
    (a :class:`~geostore.store.model.QuarantineCleared`) says how many runs, events and
    bytes went, the same on every replica.
    """

    stream: StreamName | None = None
    partition: PartitionId | None = None
    through_epoch: Epoch | None = None

    def __post_init__(self) -> None:
        assert self.partition is None or self.stream is not None, "a partition needs a stream"


Command = CreateStream | AppendBatch | SetHome | ApplyRemote | FenceHome | ClearQuarantine


def encode_command(cmd: Command) -> bytes:
    match cmd:
        case CreateStream():
            schema = cmd.schema.to_json() if cmd.schema is not None else None
            homes = [[p, r] for p, r in cmd.homes]
            body: list[Any] = ["create", cmd.name, cmd.partitions, cmd.key_field, schema, homes]
        case AppendBatch():
            prod = [cmd.producer.id, cmd.producer.seq] if cmd.producer is not None else None
            body = [
                "append",
                cmd.stream,
                cmd.partition,
                cmd.events,
                cmd.record_count,
                prod,
                cmd.epoch,
            ]
            if cmd.crc is not None:
                body.append(cmd.crc)
        case FenceHome():
            body = ["fence", cmd.stream, cmd.partition, cmd.epoch, cmd.fenced]
        case SetHome():
            body = ["home", cmd.stream, cmd.partition, cmd.home, cmd.epoch]
            if cmd.fork_seq is not None:
                body.append(cmd.fork_seq)
        case ClearQuarantine():
            body = ["qclear", cmd.stream, cmd.partition, cmd.through_epoch]
        case ApplyRemote():
            entries = [
                [e.seq, e.record_count, e.events, e.producer_id, e.producer_seq, e.epoch]
                for e in cmd.entries
            ]
            body = [
                "remote",
                cmd.stream,
                cmd.partition,
                cmd.epoch,
                cmd.src_start,
                cmd.src_end,
                cmd.crc,
                entries,
            ]
    return _cbor.dumps([COMMAND_FORMAT, *body])


def decode_command(data: bytes) -> Command:
    """Decode an entry's data; raises CodecError for anything that is not a valid command.

    Explicit type checks rather than ``match`` sequence patterns: this runs once per applied
    entry, and the checks cost a fraction of the patterns' ABC machinery.
    """
    # Entries come from the checksummed Raft log: the fast decoder is enough here.
    raw = _cbor.loads_fast(data)
    if type(raw) is not list or len(raw) < 2 or raw[0] != COMMAND_FORMAT:
        raise CodecError("not a version-1 store command")
    kind, n = raw[1], len(raw)
    try:
        if kind == "append" and (n == 8 or n == 9):
            # 9 fields: a validated batch with the crc of its events (see AppendBatch)
            stream, part, events, count, prod, epoch = raw[2:8]
            crc = raw[8] if n == 9 else None
            _need(
                type(stream) is str
                and type(part) is int
                and type(count) is int
                and type(events) is bytes
                and (epoch is None or type(epoch) is int)
                and (crc is None or type(crc) is int),
                "header",
            )
            pr = None
            if prod is not None:
                _need(type(prod) is list and len(prod) == 2, "producer")
                pid, pseq = prod
                _need(type(pid) is str and type(pseq) is int, "producer")
                pr = ProducerRef(pid, pseq)
            return AppendBatch(stream, part, events, count, pr, epoch, crc)
        if kind == "create" and n == 7:
            _, _, name, parts, key_field, schema, homes = raw
            _need(type(name) is str and type(parts) is int and type(homes) is list, "header")
            _need(key_field is None or type(key_field) is str, "key_field")
            sch = Schema.from_json(schema, APPLY_LIMITS) if schema is not None else None
            hs = tuple((PartitionId(int(p)), RegionId(str(r))) for p, r in homes)
            return CreateStream(StreamName(name), parts, key_field, sch, hs)
        if kind == "remote" and n == 9:
            _, _, stream, part, epoch, start, end, crc, raw_entries = raw
            _need(type(stream) is str and type(part) is int and type(epoch) is int, "header")
            _need(type(start) is int and type(end) is int and type(crc) is int, "range")
            _need(type(raw_entries) is list, "entries")
            entries = []
            for e in raw_entries:
                _need(type(e) is list and len(e) == 6, "entry")
                seq, count, events, pid, pseq, eepoch = e
                _need(type(seq) is int and type(count) is int and type(events) is bytes, "entry")
                _need(
                    (pid is None and pseq is None) or (type(pid) is str and type(pseq) is int),
                    "producer",
                )
                _need(eepoch is None or type(eepoch) is int, "entry epoch")
                entries.append(RemoteEntry(seq, count, events, pid, pseq, eepoch))
            return ApplyRemote(stream, part, epoch, start, end, crc, tuple(entries))
        if kind == "fence" and n == 6:
            _, _, stream, part, epoch, fenced = raw
            _need(type(stream) is str and type(part) is int and type(epoch) is int, "header")
            _need(type(fenced) is bool, "fenced")
            return FenceHome(stream, part, epoch, fenced)
        if kind == "home" and n in (6, 7):
            _, _, stream, part, home, epoch = raw[:6]
            fork = raw[6] if n == 7 else None
            _need(type(stream) is str and type(part) is int and type(epoch) is int, "header")
            _need(home is None or type(home) is str, "home")
            _need(fork is None or (type(fork) is int and fork >= -1), "fork seq")
            return SetHome(stream, part, home, epoch, fork)
        if kind == "qclear" and n == 5:
            _, _, stream, part, through = raw
            _need(stream is None or type(stream) is str, "stream")
            _need(part is None or (type(part) is int and part >= 0 and stream is not None), "part")
            _need(through is None or (type(through) is int and through >= 0), "epoch")
            return ClearQuarantine(stream, part, through)
    except CodecError:
        raise
    except (ValueError, TypeError, GeostoreError) as exc:  # GeostoreError: a bad schema
        raise CodecError(f"store command has bad fields: {exc}") from exc
    raise CodecError(f"unknown or malformed store command {str(kind)[:40]!r}")


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise CodecError(f"store command has a bad {what}")
