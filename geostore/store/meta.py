"""The global metadata state machine: stream catalog, placement, regions, home leases.

Theory of operation.

*Where it runs.* One Raft group (``meta``) spans every region in multi-leader mode: one
voter per region, every other node a learner, so every node holds this state locally. The
runtime (:mod:`geostore.runtime.meta`) feeds :meth:`MetaState.apply_entry` with committed
entries in log order; like the event store, apply is deterministic and never reads a clock.

*State.*

- The **catalog**: per stream its definition (name, partitions, key field, schema: the
  event store's :class:`~geostore.store.model.StreamDef`) and per partition its home region
  and epoch. :class:`MetaCreateStream` is idempotent for the same definition (homes are
  placement, not definition) and a ``conflict`` for another one. :class:`MetaMoveHome`
  moves a home with a strictly larger epoch (``superseded_epoch`` otherwise): the
  failover's command. Each region's data-group leader mirrors this catalog into its own
  data group with the store's ``CreateStream``/``SetHome``, so the data path reads homes
  and epochs from its own store as before.
- **Regions and nodes** (:class:`MetaSetRegion`), registered from the topology by the
  meta leader.
- **Home leases**: per region, the last :class:`MetaRenewLease` applied: holder node,
  duration and the log index it applied at. There is no time here: the runtime reads the
  lease against its own monotonic clock. The holder counts it valid until the time it
  *sent* the renewal plus the duration minus a drift margin, once the renewal committed;
  any other observer counts it possibly valid until the time it *applied* the renewal plus
  the duration plus the drift margin. Sending precedes every apply, so the holder's window
  always closes first, on any clock whose rate differs by less than the margin allows.
- **Compression dictionaries** by id (:class:`MetaPutDictionary`), bounded in total bytes
  (:data:`DICTIONARY_BYTES_MAX`) and in count; a re-put of the same bytes is idempotent, of
  other bytes a conflict (an id names one dictionary forever).

*Encoding.* A command is a CBOR array ``[META_FORMAT, kind, ...]`` (:func:`encode_meta`);
anything else decodes to a typed :class:`~geostore.errors.CodecError` and applies as a
``Rejected`` no-op. *Snapshots* are one CBOR map of the whole state, sorted, so equal
states give equal bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geostore.errors import ApiError, CodecError, ErrorCode, GeostoreError
from geostore.ids import (
    INDEX_ZERO,
    Epoch,
    LogIndex,
    NodeId,
    PartitionId,
    RegionId,
    Seq,
    StreamName,
)

from . import _cbor
from .commands import CreateStream
from .model import (
    APPLY_LIMITS,
    FIRST_EPOCH,
    PartitionHome,
    Rejected,
    Schema,
    StreamDef,
    StreamInfo,
    check_stream_name,
    malformed,
    too_large,
)

META_FORMAT = 1
SNAPSHOT_FORMAT = 1
#: Longest lease a renewal may ask for, ms (a typo of minutes for ms must not pin a home).
LEASE_MS_MAX = 600_000
#: Total bytes of the stored compression dictionaries (they travel in every snapshot).
DICTIONARY_BYTES_MAX = 8 << 20
#: Most stored dictionaries.
DICTIONARIES_MAX = 256
#: Most regions and nodes per region (bounded like everything else).
REGIONS_MAX = 64
#: Moves remembered per partition. A region that was away during more moves than this cannot
#: fail back by itself (its leader logs that it refuses to guess the forks it missed and
#: leaves the partition as it was); its nodes are then replaced and catch up by snapshot.
MOVES_KEPT = 64
NODES_PER_REGION_MAX = 256


# --- commands --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetaCreateStream:
    """Create a stream in the catalog; ``stream`` is the store's validated command."""

    stream: CreateStream


@dataclass(frozen=True, slots=True)
class MetaMoveHome:
    """Move one partition's home; ``epoch`` must exceed the current one.

    ``fork_seq``: the last seq the new epoch keeps (the store's ``SetHome.fork_seq``, which
    the region leaders mirror with it); None: wherever each region's log ends.
    """

    stream: StreamName
    partition: PartitionId
    home: RegionId
    epoch: Epoch
    fork_seq: Seq | None = None


@dataclass(frozen=True, slots=True)
class PartitionMove:
    """One recorded change of a partition's home: the new home, its epoch and its fork."""

    home: RegionId
    epoch: Epoch
    fork_seq: Seq | None


@dataclass(frozen=True, slots=True)
class MetaRenewLease:
    """The region's data-group leader (``holder``) renews its region's home lease."""

    region: RegionId
    holder: NodeId
    duration_ms: int


@dataclass(frozen=True, slots=True)
class MetaSetRegion:
    """Register a region and its nodes (replaces the node list; idempotent)."""

    region: RegionId
    nodes: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class MetaPutDictionary:
    """Store a trained compression dictionary under ``dict_id`` (ids are never reused)."""

    dict_id: int
    data: bytes


MetaCommand = MetaCreateStream | MetaMoveHome | MetaRenewLease | MetaSetRegion | MetaPutDictionary


# --- records and results ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The last renewal of a region's lease: by whom, for how long, at which log index."""

    region: RegionId
    holder: NodeId
    duration_ms: int
    index: LogIndex
    renewals: int

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "holder": self.holder,
            "duration_ms": self.duration_ms,
            "index": self.index,
            "renewals": self.renewals,
        }


@dataclass(frozen=True, slots=True)
class MetaStream:
    """A stream in the catalog: its definition and every partition's home and epoch."""

    definition: StreamDef
    homes: tuple[PartitionHome, ...]

    def info(self, created: bool) -> StreamInfo:
        return StreamInfo(self.definition, self.homes, created=created)

    def home_of(self, partition: int) -> PartitionHome | None:
        if 0 <= partition < len(self.homes):
            return self.homes[partition]
        return None


@dataclass(frozen=True, slots=True)
class Applied:
    """A command that changed nothing but is fine (e.g. a region registered again)."""

    changed: bool


MetaResult = StreamInfo | PartitionHome | LeaseRecord | Applied | Rejected


# --- encoding --------------------------------------------------------------------------------


def encode_meta(cmd: MetaCommand) -> bytes:
    match cmd:
        case MetaCreateStream():
            s = cmd.stream
            schema = s.schema.to_json() if s.schema is not None else None
            body: list[Any] = [
                "create",
                s.name,
                s.partitions,
                s.key_field,
                schema,
                [[p, r] for p, r in s.homes],
            ]
        case MetaMoveHome():
            body = ["move", cmd.stream, cmd.partition, cmd.home, cmd.epoch, cmd.fork_seq]
        case MetaRenewLease():
            body = ["lease", cmd.region, cmd.holder, cmd.duration_ms]
        case MetaSetRegion():
            body = ["region", cmd.region, list(cmd.nodes)]
        case MetaPutDictionary():
            body = ["dict", cmd.dict_id, cmd.data]
    return _cbor.dumps([META_FORMAT, *body])


def decode_meta(data: bytes) -> MetaCommand:
    """Decode a metadata entry; CodecError for anything that is not a valid command."""
    raw = _cbor.loads(data)
    if type(raw) is not list or len(raw) < 2 or raw[0] != META_FORMAT:
        raise CodecError("not a version-1 metadata command")
    kind, n = raw[1], len(raw)
    try:
        if kind == "create" and n == 7:
            _, _, name, parts, key_field, schema, homes = raw
            _need(type(name) is str and type(parts) is int and type(homes) is list, "header")
            _need(key_field is None or type(key_field) is str, "key_field")
            sch = Schema.from_json(schema, APPLY_LIMITS) if schema is not None else None
            hs = []
            for h in homes:
                _need(type(h) is list and len(h) == 2, "homes")
                _need(type(h[0]) is int and type(h[1]) is str, "homes")
                hs.append((PartitionId(h[0]), RegionId(h[1])))
            return MetaCreateStream(
                CreateStream(StreamName(name), parts, key_field, sch, tuple(hs))
            )
        if kind == "move" and n == 7:
            _, _, stream, part, home, epoch, fork = raw
            _need(type(stream) is str and type(part) is int, "header")
            _need(type(home) is str and type(epoch) is int, "home")
            _need(fork is None or type(fork) is int, "fork seq")
            return MetaMoveHome(StreamName(stream), PartitionId(part), RegionId(home), epoch, fork)
        if kind == "lease" and n == 5:
            _, _, region, holder, duration = raw
            _need(type(region) is str and type(holder) is str, "lease holder")
            _need(type(duration) is int, "lease duration")
            return MetaRenewLease(RegionId(region), NodeId(holder), duration)
        if kind == "region" and n == 4:
            _, _, region, nodes = raw
            _need(type(region) is str and type(nodes) is list, "region")
            _need(all(type(x) is str for x in nodes), "region nodes")
            return MetaSetRegion(RegionId(region), tuple(NodeId(x) for x in nodes))
        if kind == "dict" and n == 4:
            _, _, dict_id, blob = raw
            _need(type(dict_id) is int and type(blob) is bytes, "dictionary")
            return MetaPutDictionary(dict_id, blob)
    except CodecError:
        raise
    except (ValueError, TypeError, GeostoreError) as exc:  # GeostoreError: a bad schema
        raise CodecError(f"metadata command has bad fields: {exc}") from exc
    raise CodecError(f"unknown or malformed metadata command {str(kind)[:40]!r}")


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise CodecError(f"metadata command has a bad {what}")


# --- the state machine -----------------------------------------------------------------------


class MetaState:
    """The replicated metadata (see the module docstring)."""

    def __init__(self) -> None:
        self.applied_index: LogIndex = INDEX_ZERO
        self._streams: dict[StreamName, MetaStream] = {}
        self._regions: dict[RegionId, tuple[NodeId, ...]] = {}
        self._leases: dict[RegionId, LeaseRecord] = {}
        self._dicts: dict[int, bytes] = {}
        #: each partition's moves, oldest first, at most ``MOVES_KEPT``: a region that missed
        #: several (it was down) applies every one in epoch order, each with its own fork
        self._moves: dict[tuple[StreamName, PartitionId], tuple[PartitionMove, ...]] = {}

    # -- queries ---------------------------------------------------------------------------

    def stream(self, name: str) -> MetaStream | None:
        return self._streams.get(StreamName(name))

    def streams(self) -> list[MetaStream]:
        return [self._streams[n] for n in sorted(self._streams)]

    def home_of(self, stream: str, partition: int) -> PartitionHome | None:
        """A partition's home region and epoch; None for an unknown stream or partition."""
        s = self._streams.get(StreamName(stream))
        return None if s is None else s.home_of(partition)

    def fork_of(self, stream: str, partition: int) -> Seq | None:
        """The fork seq of the partition's last move (None: not moved, or no fork named)."""
        moves = self._moves.get((StreamName(stream), PartitionId(partition)))
        return moves[-1].fork_seq if moves else None

    def moves_of(self, stream: str, partition: int) -> tuple[PartitionMove, ...]:
        """The partition's recorded moves, oldest first (the last ``MOVES_KEPT``)."""
        return self._moves.get((StreamName(stream), PartitionId(partition)), ())

    def regions(self) -> dict[RegionId, tuple[NodeId, ...]]:
        return dict(sorted(self._regions.items()))

    def lease(self, region: str) -> LeaseRecord | None:
        return self._leases.get(RegionId(region))

    def leases(self) -> dict[RegionId, LeaseRecord]:
        return dict(sorted(self._leases.items()))

    def dictionary(self, dict_id: int) -> bytes | None:
        return self._dicts.get(dict_id)

    def dictionary_ids(self) -> list[int]:
        return sorted(self._dicts)

    def dictionary_bytes(self) -> int:
        return sum(len(d) for d in self._dicts.values())

    # -- apply -----------------------------------------------------------------------------

    def advance(self, index: LogIndex) -> None:
        """An entry that is not a metadata command (no-op, membership) was applied."""
        assert index > self.applied_index, "entries are applied once, in order"
        self.applied_index = index

    def apply_entry(self, index: LogIndex, data: bytes) -> MetaResult:
        """Decode and apply an entry's data; undecodable data is rejected (deterministic)."""
        try:
            cmd = decode_meta(data)
        except CodecError as exc:
            self.advance(index)
            return Rejected(malformed(f"entry {index} is not a metadata command: {exc.message}"))
        return self.apply(index, cmd)

    def apply(self, index: LogIndex, cmd: MetaCommand) -> MetaResult:
        """Apply one committed command at log ``index``; deterministic on every replica."""
        self.advance(index)
        try:
            match cmd:
                case MetaCreateStream():
                    return self._create(cmd.stream)
                case MetaMoveHome():
                    return self._move(cmd)
                case MetaRenewLease():
                    return self._renew(index, cmd)
                case MetaSetRegion():
                    return self._set_region(cmd)
                case MetaPutDictionary():
                    return self._put_dict(cmd)
        except ApiError as err:
            return Rejected(err)

    def _create(self, cmd: CreateStream) -> StreamInfo:
        check_stream_name(cmd.name, APPLY_LIMITS)
        if not 1 <= cmd.partitions <= APPLY_LIMITS.partitions_max:
            raise too_large(f"{cmd.partitions} partitions, at most {APPLY_LIMITS.partitions_max}")
        homes = dict(cmd.homes)
        if len(homes) != len(cmd.homes) or any(not 0 <= p < cmd.partitions for p in homes):
            raise malformed("homes name a partition twice or one the stream does not have")
        d = StreamDef(cmd.name, cmd.partitions, cmd.key_field, cmd.schema)
        existing = self._streams.get(d.name)
        if existing is not None:
            if existing.definition != d:
                raise ApiError(
                    ErrorCode.CONFLICT,
                    f"stream {d.name!r} exists with another definition",
                    stream=d.name,
                    existing=existing.definition.to_json(),
                )
            return existing.info(created=False)
        placed = tuple(
            PartitionHome(PartitionId(p), homes.get(PartitionId(p)), FIRST_EPOCH)
            for p in range(d.partitions)
        )
        s = MetaStream(d, placed)
        self._streams[d.name] = s
        return s.info(created=True)

    def _move(self, cmd: MetaMoveHome) -> PartitionHome:
        s = self._streams.get(cmd.stream)
        if s is None:
            raise ApiError(ErrorCode.UNKNOWN_STREAM, f"no stream {cmd.stream!r}", stream=cmd.stream)
        current = s.home_of(cmd.partition)
        if current is None:
            raise ApiError(
                ErrorCode.UNKNOWN_PARTITION,
                f"stream {cmd.stream!r} has no partition {cmd.partition}",
                stream=cmd.stream,
            )
        if cmd.fork_seq is not None and cmd.fork_seq < -1:
            raise malformed(f"fork seq {cmd.fork_seq} is below -1 (nothing kept)")
        if cmd.epoch <= current.epoch:
            raise ApiError(
                ErrorCode.SUPERSEDED_EPOCH,
                f"{cmd.stream}/{cmd.partition} is at epoch {current.epoch}; "
                f"epoch {cmd.epoch} is stale",
                epoch=current.epoch,
            )
        moved = PartitionHome(cmd.partition, cmd.home, cmd.epoch)
        homes = list(s.homes)
        homes[cmd.partition] = moved
        self._streams[cmd.stream] = MetaStream(s.definition, tuple(homes))
        key = (cmd.stream, cmd.partition)
        record = PartitionMove(cmd.home, Epoch(cmd.epoch), cmd.fork_seq)
        self._moves[key] = (*self._moves.get(key, ())[-(MOVES_KEPT - 1) :], record)
        return moved

    def _renew(self, index: LogIndex, cmd: MetaRenewLease) -> LeaseRecord:
        if not cmd.region or not cmd.holder:
            raise malformed("a lease names a region and a holder")
        if not 1 <= cmd.duration_ms <= LEASE_MS_MAX:
            raise malformed(f"lease duration {cmd.duration_ms} ms, allowed 1..{LEASE_MS_MAX}")
        if cmd.region not in self._leases and len(self._leases) >= REGIONS_MAX:
            raise too_large(f"leases of more than {REGIONS_MAX} regions")
        old = self._leases.get(cmd.region)
        renewals = 1 if old is None else old.renewals + 1
        rec = LeaseRecord(cmd.region, cmd.holder, cmd.duration_ms, index, renewals)
        self._leases[cmd.region] = rec
        return rec

    def _set_region(self, cmd: MetaSetRegion) -> Applied:
        if not cmd.region or any(not n for n in cmd.nodes):
            raise malformed("a region and its nodes need names")
        if len(cmd.nodes) > NODES_PER_REGION_MAX or len(set(cmd.nodes)) != len(cmd.nodes):
            raise malformed(f"a region lists at most {NODES_PER_REGION_MAX} distinct nodes")
        if cmd.region not in self._regions and len(self._regions) >= REGIONS_MAX:
            raise too_large(f"more than {REGIONS_MAX} regions")
        if self._regions.get(cmd.region) == cmd.nodes:
            return Applied(changed=False)
        self._regions[cmd.region] = cmd.nodes
        return Applied(changed=True)

    def _put_dict(self, cmd: MetaPutDictionary) -> Applied:
        if cmd.dict_id < 1 or not cmd.data:
            raise malformed("a dictionary has an id >= 1 and some bytes")
        old = self._dicts.get(cmd.dict_id)
        if old is not None:
            if old == cmd.data:
                return Applied(changed=False)
            raise ApiError(ErrorCode.CONFLICT, f"dictionary {cmd.dict_id} exists with other bytes")
        if len(self._dicts) >= DICTIONARIES_MAX:
            raise too_large(f"{DICTIONARIES_MAX} dictionaries stored already")
        total = self.dictionary_bytes() + len(cmd.data)
        if total > DICTIONARY_BYTES_MAX:
            raise too_large(
                f"dictionaries would take {total} bytes, at most {DICTIONARY_BYTES_MAX}"
            )
        self._dicts[cmd.dict_id] = cmd.data
        return Applied(changed=True)

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as one CBOR map (sorted: equal states give equal bytes)."""
        streams = []
        for s in self.streams():
            d = s.definition
            streams.append(
                [
                    d.name,
                    d.partitions,
                    d.key_field,
                    d.schema.to_json() if d.schema is not None else None,
                    [[h.home, h.epoch] for h in s.homes],
                ]
            )
        return _cbor.dumps(
            {
                "format": SNAPSHOT_FORMAT,
                "applied": self.applied_index,
                "streams": streams,
                "regions": [[r, list(ns)] for r, ns in sorted(self._regions.items())],
                "leases": [
                    [r.region, r.holder, r.duration_ms, r.index, r.renewals]
                    for r in self.leases().values()
                ],
                "dicts": [[i, self._dicts[i]] for i in sorted(self._dicts)],
                "moves": [
                    [s, p, [[m.home, m.epoch, m.fork_seq] for m in ms]]
                    for (s, p), ms in sorted(self._moves.items())
                ],
            }
        )

    def restore(self, data: bytes) -> None:
        """Replace the state by a snapshot's (CodecError when the bytes are not one)."""
        raw = _cbor.loads(data)
        if type(raw) is not dict or raw.get("format") != SNAPSHOT_FORMAT:
            raise CodecError("not a version-1 metadata snapshot")
        try:
            streams: dict[StreamName, MetaStream] = {}
            for name, parts, key_field, schema, homes in raw["streams"]:
                sch = Schema.from_json(schema, APPLY_LIMITS) if schema is not None else None
                d = StreamDef(StreamName(name), int(parts), key_field, sch)
                placed = tuple(
                    PartitionHome(PartitionId(i), None if h is None else RegionId(h), Epoch(e))
                    for i, (h, e) in enumerate(homes)
                )
                streams[d.name] = MetaStream(d, placed)
            regions = {RegionId(r): tuple(NodeId(n) for n in nodes) for r, nodes in raw["regions"]}
            leases = {
                RegionId(r): LeaseRecord(RegionId(r), NodeId(h), int(ms), LogIndex(i), int(n))
                for r, h, ms, i, n in raw["leases"]
            }
            dicts = {int(i): bytes(b) for i, b in raw["dicts"]}
            moves = {
                (StreamName(str(st)), PartitionId(int(p))): tuple(
                    PartitionMove(
                        RegionId(str(h)), Epoch(int(e)), None if f is None else Seq(int(f))
                    )
                    for h, e, f in ms
                )
                for st, p, ms in raw.get("moves", [])
            }
            applied = LogIndex(int(raw["applied"]))
        except (KeyError, ValueError, TypeError, GeostoreError) as exc:
            raise CodecError(f"metadata snapshot has bad fields: {exc}") from exc
        self._streams, self._regions, self._leases, self._dicts = streams, regions, leases, dicts
        self._moves = moves
        self.applied_index = applied
