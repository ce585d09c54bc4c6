"""Records of the event store: stream definitions, schemas, limits, and query answers.

Theory of operation: everything here is an immutable value. A :class:`StreamDef` is what
``POST /v1/streams`` defines and what the catalog compares to decide "same definition"
(idempotent) versus "another definition" (conflict). A :class:`Schema` lists typed body
attributes; it validates bodies deterministically (same verdict on every node, no clock, no
locale), and names the indexed numeric attributes whose per-block summaries serve aggregates.
User input is parsed by the ``from_json`` constructors, which raise typed
:class:`~geostore.errors.ApiError` values; programmer errors are assertions.

Answers (:class:`AppendResult`, :class:`ReadResult`, :class:`AggregateResult`, ...) carry
``to_json()`` giving exactly the bodies of the HTTP contract.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from geostore.config.settings import LimitsSettings
from geostore.errors import ApiError, ErrorCode
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: The epoch every partition starts with (it increases on every change of home).
FIRST_EPOCH = Epoch(1)

_STREAM_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_ATTR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def malformed(message: str, **details: Any) -> ApiError:
    return ApiError(ErrorCode.MALFORMED, message, **details)


def too_large(message: str, **details: Any) -> ApiError:
    return ApiError(ErrorCode.TOO_LARGE, message, **details)


def is_int(value: object) -> bool:
    """An integer that is not a bool (bool is an int subclass in Python, not in JSON)."""
    return type(value) is int


def is_number(value: object) -> bool:
    return type(value) is int or type(value) is float


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Request and query limits of the store (operating limits, local to a node).

    :meth:`from_settings` maps ``geostore.config.settings.LimitsSettings``:
    ``events_per_request_max``, ``event_bytes_max``, ``read_limit_max`` and
    ``query_range_us_max`` come from there (same names); the others have no config field yet
    and keep these defaults. Over a limit is TOO_LARGE (413), never a silent clamp.
    """

    events_per_request_max: int = 10_000
    #: Encoded body plus key, per event.
    event_bytes_max: int = 1_048_576
    read_limit_max: int = 10_000
    read_limit_default: int = 1_000
    #: Widest ``[from_ts, to_ts)`` of one time-range read or aggregate.
    query_range_us_max: int = 366 * 86_400 * 1_000_000
    #: Blocks one time-range read may decode before it answers a partial page.
    read_blocks_max: int = 256
    windows_max: int = 10_000
    #: The largest ``scan_limit`` an aggregate on a non-indexed field may ask for.
    scan_limit_max: int = 1_000_000
    partitions_max: int = 1_024
    stream_name_bytes_max: int = 128
    key_bytes_max: int = 1_024
    producer_id_bytes_max: int = 256
    schema_attributes_max: int = 256
    #: Append-batch boundaries (seq range, epoch, producer) remembered per partition, so
    #: :meth:`~geostore.store.EventStore.committed_entries` ships one entry per original
    #: batch with its producer. About 150 bytes each; older ranges ship without producers.
    geo_batches_max: int = 16_384

    def __post_init__(self) -> None:
        assert self.events_per_request_max >= 1
        assert self.event_bytes_max >= 1
        assert 1 <= self.read_limit_default <= self.read_limit_max
        assert self.read_blocks_max >= 1
        assert self.windows_max >= 1
        assert self.scan_limit_max >= 1
        assert self.partitions_max >= 1
        assert self.query_range_us_max >= 1
        assert self.geo_batches_max >= 1

    @staticmethod
    def from_settings(settings: LimitsSettings) -> StoreLimits:
        """The store's limits from the node configuration's ``[limits]`` section."""
        return StoreLimits(
            events_per_request_max=settings.events_per_request_max,
            event_bytes_max=settings.event_bytes_max,
            read_limit_max=settings.read_limit_max,
            read_limit_default=min(1_000, settings.read_limit_max),
            query_range_us_max=settings.query_range_us_max,
        )


#: What apply itself accepts, independent of any node's configured limits: configured limits
#: are enforced before proposing, and apply must give the same verdict on every replica.
APPLY_LIMITS = StoreLimits(
    partitions_max=1 << 16, stream_name_bytes_max=1 << 10, schema_attributes_max=1 << 16
)


@dataclass(frozen=True, slots=True)
class StoreTuning:
    """Parameters of the replicated state itself: every replica of a group uses the same.

    The producer parameters decide which appends count as duplicates; the block sizing and
    the index fanout decide the block layout and the order in which summaries add up, hence
    the rolling hash, the ``stats`` of queries and the last bits of float sums. A snapshot
    records them and a restore refuses others.
    """

    block_events_max: int = 1_024
    block_bytes_max: int = 262_144
    #: Recent sequence numbers remembered per producer (older ones are refused).
    producer_window: int = 1_024
    #: A producer idle for more than this many log entries is forgotten.
    producer_idle_entries: int = 1_000_000
    #: Producers remembered per store; beyond it the least recently used is forgotten.
    producers_max: int = 10_000
    #: Remembered outcomes over all producers (about 200 bytes each, so about 20 MB); beyond
    #: it whole least recently used producers are forgotten. Bounds memory when many
    #: producers fill their windows.
    producer_outcomes_max: int = 100_000
    #: Sealed blocks per segment of the upper index level.
    index_fanout: int = 64

    @staticmethod
    def from_settings(settings: LimitsSettings) -> StoreTuning:
        """The tuning with the dedup table's bounds from the ``[limits]`` section."""
        return StoreTuning(
            producer_window=settings.producer_window,
            producer_idle_entries=settings.producer_idle_entries,
            producers_max=settings.producers_max,
            producer_outcomes_max=settings.producer_outcomes_max,
        )

    def __post_init__(self) -> None:
        assert self.block_events_max >= 1
        assert self.block_bytes_max >= 1
        assert self.producer_window >= 1
        assert self.producer_idle_entries >= 1
        assert self.producers_max >= 1
        assert self.producer_outcomes_max >= self.producer_window
        assert self.index_fanout >= 1


class AttrType(enum.StrEnum):
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STR = "str"


@dataclass(frozen=True, slots=True)
class Attribute:
    """A named, typed attribute of an event body. Only numeric attributes can be indexed."""

    name: str
    type: AttrType
    required: bool = False
    indexed: bool = False

    def __post_init__(self) -> None:
        assert not self.indexed or self.type in (AttrType.INT, AttrType.FLOAT)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": str(self.type),
            "required": self.required,
            "indexed": self.indexed,
        }


@dataclass(frozen=True, slots=True)
class Schema:
    """Typed attributes of the body, sorted by name (so equal definitions compare equal)."""

    attributes: tuple[Attribute, ...]

    def __post_init__(self) -> None:
        names = [a.name for a in self.attributes]
        assert names == sorted(set(names)), "attributes sorted by name, unique"

    @property
    def indexed(self) -> tuple[str, ...]:
        """Names of the indexed numeric attributes (sorted): the summary columns."""
        return tuple(a.name for a in self.attributes if a.indexed)

    def attribute(self, name: str) -> Attribute | None:
        for a in self.attributes:
            if a.name == name:
                return a
        return None

    def to_json(self) -> dict[str, Any]:
        return {"attributes": [a.to_json() for a in self.attributes]}

    @staticmethod
    def from_json(obj: Any, limits: StoreLimits | None = None) -> Schema:
        """Parse ``{"attributes": [{"name", "type", "required"?, "indexed"?}, ...]}``.

        The map form ``{"attributes": {name: {"type", ...}}}`` is accepted too.
        """
        lim = limits or StoreLimits()
        if not isinstance(obj, Mapping) or set(obj) - {"attributes"}:
            raise malformed('schema must be an object {"attributes": [...]}', field="schema")
        raw = obj.get("attributes", [])
        items: list[tuple[Any, Any]]
        if isinstance(raw, Mapping):
            items = [(name, spec) for name, spec in raw.items()]
        elif isinstance(raw, list):
            items = []
            for i, spec in enumerate(raw):
                if not isinstance(spec, Mapping):
                    raise malformed("schema attribute must be an object", field=f"schema[{i}]")
                items.append((spec.get("name"), {k: v for k, v in spec.items() if k != "name"}))
        else:
            raise malformed("schema attributes must be a list or an object", field="schema")
        if len(items) > lim.schema_attributes_max:
            raise too_large(
                f"schema has {len(items)} attributes, at most {lim.schema_attributes_max}",
                field="schema",
            )
        attrs: dict[str, Attribute] = {}
        for name, spec in items:
            if not isinstance(name, str) or not _ATTR_NAME_RE.fullmatch(name):
                raise malformed(f"bad attribute name {name!r}", field="schema")
            if name in attrs:
                raise malformed(f"attribute {name!r} declared twice", field=f"schema.{name}")
            if not isinstance(spec, Mapping) or set(spec) - {"type", "required", "indexed"}:
                raise malformed(
                    "attribute must be {type, required?, indexed?}", field=f"schema.{name}"
                )
            try:
                typ = AttrType(str(spec.get("type")))
            except ValueError:
                raise malformed(
                    f"attribute {name!r} has type {spec.get('type')!r}; "
                    "expected one of bool, int, float, str",
                    field=f"schema.{name}",
                ) from None
            required = spec.get("required", False)
            indexed = spec.get("indexed", False)
            if type(required) is not bool or type(indexed) is not bool:
                raise malformed("required and indexed must be booleans", field=f"schema.{name}")
            if indexed and typ not in (AttrType.INT, AttrType.FLOAT):
                raise malformed(
                    f"attribute {name!r}: only int and float attributes can be indexed",
                    field=f"schema.{name}",
                )
            attrs[name] = Attribute(name, typ, required, indexed)
        return Schema(tuple(attrs[n] for n in sorted(attrs)))

    def fast_checks(self) -> tuple[tuple[str, Callable[[Any], bool]], ...]:
        """Per attribute, a predicate that is True when the value conforms (None: absent).

        The hot path of validation; :meth:`validate_body` gives the error with its path.
        """
        out = []
        for a in self.attributes:
            check = _CHECKS[a.type]
            out.append((a.name, check if not a.required else _required(check)))
        return tuple(out)

    def validate_body(self, body: Any, path: str) -> None:
        """Raise SCHEMA_VIOLATION naming the attribute path when ``body`` does not conform."""
        if not self.attributes:
            return
        if not isinstance(body, Mapping):
            raise ApiError(
                ErrorCode.SCHEMA_VIOLATION,
                f"{path}: the stream has a schema, so the body must be an object",
                path=path,
            )
        for a in self.attributes:
            apath = f"{path}.{a.name}"
            if a.name not in body or body[a.name] is None:
                if a.required:
                    raise ApiError(
                        ErrorCode.SCHEMA_VIOLATION,
                        f"{apath}: required {a.type} attribute is missing",
                        path=apath,
                    )
                continue
            value = body[a.name]
            ok: bool
            if a.type is AttrType.BOOL:
                ok = type(value) is bool
            elif a.type is AttrType.INT:
                ok = is_int(value) and INT64_MIN <= value <= INT64_MAX
            elif a.type is AttrType.FLOAT:
                ok = is_number(value) and math.isfinite(value) and abs(value) <= 2.0**1023
                if ok and type(value) is int:
                    ok = INT64_MIN <= value <= INT64_MAX
            else:
                ok = type(value) is str
            if not ok:
                raise ApiError(
                    ErrorCode.SCHEMA_VIOLATION,
                    f"{apath}: expected {a.type}, got {_describe(value)}",
                    path=apath,
                )


def _check_int(v: Any) -> bool:
    return v is None or (type(v) is int and INT64_MIN <= v <= INT64_MAX)


def _check_float(v: Any) -> bool:
    if type(v) is float:
        return math.isfinite(v) and abs(v) <= 2.0**1023
    return v is None or (type(v) is int and INT64_MIN <= v <= INT64_MAX)


def _check_bool(v: Any) -> bool:
    return v is None or type(v) is bool


def _check_str(v: Any) -> bool:
    return v is None or type(v) is str


_CHECKS: dict[AttrType, Callable[[Any], bool]] = {
    AttrType.INT: _check_int,
    AttrType.FLOAT: _check_float,
    AttrType.BOOL: _check_bool,
    AttrType.STR: _check_str,
}


def _required(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is not None and check(v)


def _describe(value: Any) -> str:
    if type(value) is float and not math.isfinite(value):
        return f"non-finite float {value}"
    if is_int(value):
        return "an out-of-range int" if not INT64_MIN <= value <= INT64_MAX else "int"
    return {bool: "bool", float: "float", str: "str", type(None): "null"}.get(
        type(value), type(value).__name__
    )


@dataclass(frozen=True, slots=True)
class StreamDef:
    """The definition of a stream: what "same definition" compares (homes are placement)."""

    name: StreamName
    partitions: int
    key_field: str | None = None
    schema: Schema | None = None

    def __post_init__(self) -> None:
        assert self.partitions >= 1

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "partitions": self.partitions,
            "key_field": self.key_field,
            "schema": self.schema.to_json() if self.schema is not None else None,
        }


def check_stream_name(name: Any, limits: StoreLimits) -> StreamName:
    if (
        not isinstance(name, str)
        or len(name.encode()) > limits.stream_name_bytes_max
        or not _STREAM_NAME_RE.fullmatch(name)
    ):
        raise malformed(
            f"bad stream name {name!r}: 1 to {limits.stream_name_bytes_max} characters "
            "of A-Z a-z 0-9 _ . - starting with a letter or digit",
            field="name",
        )
    return StreamName(name)


@dataclass(frozen=True, slots=True)
class ProducerRef:
    """An idempotent producer's identity and the sequence number of one request."""

    id: str
    seq: int

    @staticmethod
    def from_json(obj: Any, limits: StoreLimits) -> ProducerRef:
        if type(obj) is dict and len(obj) == 2:  # the usual one: no ABC checks
            pid, seq = obj.get("id"), obj.get("seq")
            if (
                type(pid) is str
                and type(seq) is int
                and pid
                and 0 <= seq <= INT64_MAX
                and len(pid.encode()) <= limits.producer_id_bytes_max
            ):
                return ProducerRef(pid, seq)
        if isinstance(obj, ProducerRef):
            obj = {"id": obj.id, "seq": obj.seq}
        if not isinstance(obj, Mapping) or set(obj) != {"id", "seq"}:
            raise malformed('producer must be {"id": str, "seq": int}', field="producer")
        pid, seq = obj["id"], obj["seq"]
        if not isinstance(pid, str) or not pid or len(pid.encode()) > limits.producer_id_bytes_max:
            raise malformed(
                f"producer.id must be a non-empty string of at most "
                f"{limits.producer_id_bytes_max} bytes",
                field="producer.id",
            )
        if not is_int(seq) or not 0 <= seq <= INT64_MAX:
            raise malformed("producer.seq must be an integer >= 0", field="producer.seq")
        return ProducerRef(pid, seq)


@dataclass(frozen=True, slots=True)
class PartitionHome:
    partition: PartitionId
    home: RegionId | None
    epoch: Epoch

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "home": self.home, "epoch": self.epoch}


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """The answer to a stream creation: the definition and each partition's home and epoch.

    ``created`` is False when an identical stream existed already (idempotent create).
    """

    definition: StreamDef
    homes: tuple[PartitionHome, ...]
    created: bool = True

    def to_json(self) -> dict[str, Any]:
        return {**self.definition.to_json(), "homes": [h.to_json() for h in self.homes]}


@dataclass(frozen=True, slots=True)
class AppendResult:
    """One partition's part of an append. ``duplicate``: a producer retry, nothing stored."""

    stream: StreamName
    partition: PartitionId
    first_seq: Seq
    last_seq: Seq
    epoch: Epoch
    duplicate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "epoch": self.epoch,
        }


_SEQ_NONE = Seq(-1)


@dataclass(frozen=True, slots=True)
class HomeResult:
    """The answer to a change of home.

    ``fork_seq`` is where the new epoch starts from (its first seq is ``fork_seq + 1``);
    ``quarantined`` how many events this region moved to its quarantine (a failback).
    """

    stream: StreamName
    partition: PartitionId
    home: RegionId | None
    epoch: Epoch
    fork_seq: Seq = _SEQ_NONE
    quarantined: int = 0


@dataclass(frozen=True, slots=True)
class QuarantineCleared:
    """The answer to a :class:`~geostore.store.commands.ClearQuarantine`: what it dropped
    (all zero when nothing matched), and what the region's quarantine holds afterwards."""

    runs: int
    events: int
    bytes: int
    runs_left: int
    events_left: int
    bytes_left: int

    def to_json(self) -> dict[str, Any]:
        return {
            "cleared": {"runs": self.runs, "events": self.events, "bytes": self.bytes},
            "left": {"runs": self.runs_left, "events": self.events_left, "bytes": self.bytes_left},
        }


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command that apply refused deterministically: nothing changed, on any replica."""

    error: ApiError


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: Seq
    ts: int
    key: str | None
    body: Any
    epoch: Epoch

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "key": self.key,
            "body": self.body,
            "epoch": self.epoch,
        }


@dataclass(frozen=True, slots=True)
class ReadStats:
    """What a query cost: blocks read (decoded), events looked at, summaries used instead."""

    blocks_read: int = 0
    events_decoded: int = 0
    summaries_used: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "blocks_read": self.blocks_read,
            "events_decoded": self.events_decoded,
            "summaries_used": self.summaries_used,
        }


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Events in seq order; continue with ``from_seq=next_seq`` (every seq below was seen)."""

    events: tuple[StoredEvent, ...]
    next_seq: Seq
    stats: ReadStats = field(default_factory=ReadStats)

    def to_json(self) -> dict[str, Any]:
        return {
            "events": [e.to_json() for e in self.events],
            "next_seq": self.next_seq,
            "stats": self.stats.to_json(),
        }


Number = int | float


@dataclass(frozen=True, slots=True)
class Aggregate:
    """count/min/max/sum/avg of a field; min/max/avg are None when count is 0."""

    count: int = 0
    min: Number | None = None
    max: Number | None = None
    sum: Number = 0

    @property
    def avg(self) -> float | None:
        return self.sum / self.count if self.count else None

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "sum": self.sum,
            "avg": self.avg,
        }


@dataclass(frozen=True, slots=True)
class WindowAggregate:
    """One fixed window ``[start_ts, end_ts)`` (the last one is clipped at ``to_ts``)."""

    start_ts: int
    end_ts: int
    value: Aggregate

    def to_json(self) -> dict[str, Any]:
        return {"start_ts": self.start_ts, "end_ts": self.end_ts, **self.value.to_json()}


@dataclass(frozen=True, slots=True)
class AggregateResult:
    value: Aggregate
    windows: tuple[WindowAggregate, ...] | None
    stats: ReadStats

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.value.to_json(), "stats": self.stats.to_json()}
        if self.windows is not None:
            out["windows"] = [w.to_json() for w in self.windows]
        return out


@dataclass(frozen=True, slots=True, order=True)
class StoreWatermark:
    """A partition's replication watermark: the last seq it applied and the epoch it came under.

    One value for every partition, whatever its source: a local append moves it to
    ``(partition epoch, last seq)``, an applied :class:`~geostore.store.commands.ApplyRemote`
    to ``(batch epoch, src_end)``. So ``seq`` is always ``last_seq`` and the epoch and the
    position change together (the Pulsar #25860 lesson); it is the store-side twin of
    ``geostore.geo.Watermark`` (same fields, same order, -1 for "nothing applied").
    """

    epoch: Epoch
    seq: Seq

    def to_json(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seq": self.seq}


#: The watermark of a partition of which nothing was applied (seqs start at 0).
WATERMARK_NONE = StoreWatermark(Epoch(0), Seq(-1))


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """For ``/v1/debug/partitions``: identical on replicas that applied the same events."""

    stream: StreamName
    partition: PartitionId
    home: RegionId | None
    epoch: Epoch
    last_seq: Seq  # -1 when empty
    log_hash: str  # hex of the rolling hash over (seq, epoch, ts, key, body bytes)
    blocks_sealed: int
    #: What the partition has applied, local or shipped (see :class:`StoreWatermark`).
    watermark: StoreWatermark = WATERMARK_NONE

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "partition": self.partition,
            "home": self.home,
            "epoch": self.epoch,
            "last_seq": self.last_seq,
            "hash": self.log_hash,
            "blocks": self.blocks_sealed,
            "watermark": self.watermark.to_json(),
        }


class RemoteVerdict(enum.StrEnum):
    """What applying an ApplyRemote did; the values are those of ``geostore.geo.ApplyVerdict``."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already covered by the watermark: nothing changes
    GAP = "gap"  # does not start at watermark + 1: nothing changes
    FENCED = "fenced"  # an older epoch than the partition knows: nothing changes


@dataclass(frozen=True, slots=True)
class RemoteResult:
    """The answer to an applied ApplyRemote: the partition's watermark after it, and the verdict."""

    stream: StreamName
    partition: PartitionId
    watermark: StoreWatermark
    verdict: RemoteVerdict

    @property
    def applied(self) -> bool:
        return self.verdict is RemoteVerdict.APPLIED
