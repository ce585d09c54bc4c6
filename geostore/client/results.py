"""What the client's calls return: frozen records parsed from the contract's bodies.

Each ``from_body`` accepts the JSON/CBOR answer of one endpoint and keeps unknown extra
fields out of the way (the contract may be extended); a body missing a required field is a
``RequestFailed``-free programming surprise, so it raises :class:`~geostore.errors.CodecError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from geostore.errors import ApiError, CodecError, ErrorCode
from geostore.ids import Epoch, PartitionId, RegionId, Seq


def _int(body: Any, key: str, where: str) -> int:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise CodecError(f"{where}: field {key!r} must be an integer, got {value!r}")
    return value


def _opt_num(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class Producer:
    """An idempotent producer's identity and one request's sequence number."""

    id: str
    seq: int

    def to_body(self) -> dict[str, Any]:
        return {"id": self.id, "seq": self.seq}


@dataclass(frozen=True, slots=True)
class PartitionResult:
    """Where one partition's events of an append landed (``first_seq..last_seq``)."""

    partition: PartitionId
    first_seq: Seq
    last_seq: Seq
    epoch: Epoch
    #: a producer retry the server recognised: nothing new stored, the original result
    #: (not compared: a duplicate answer equals the original one)
    duplicate: bool = field(default=False, compare=False)

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True, slots=True)
class PartitionError:
    """A partition of a multi-partition append that failed (no atomicity across partitions)."""

    partition: PartitionId
    error: ApiError


@dataclass(frozen=True, slots=True)
class AppendResult:
    results: tuple[PartitionResult, ...]
    token: str | None
    errors: tuple[PartitionError, ...] = ()
    #: the producer pair the request carried (None when sent without one)
    producer: Producer | None = None

    @property
    def count(self) -> int:
        return sum(r.count for r in self.results)

    @staticmethod
    def from_body(body: Any, producer: Producer | None = None) -> AppendResult:
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise CodecError(f"append answer without a results list: {str(body)[:200]}")
        ok: list[PartitionResult] = []
        failed: list[PartitionError] = []
        for item in body["results"]:
            if not isinstance(item, dict):
                raise CodecError(f"append answer: result {item!r} is not an object")
            part = PartitionId(_int(item, "partition", "append result"))
            err = item.get("error")
            if isinstance(err, dict):
                try:
                    code = ErrorCode(str(err.get("code")))
                except ValueError:
                    code = ErrorCode.INTERNAL
                failed.append(PartitionError(part, ApiError(code, str(err.get("message", "")))))
                continue
            ok.append(
                PartitionResult(
                    part,
                    Seq(_int(item, "first_seq", "append result")),
                    Seq(_int(item, "last_seq", "append result")),
                    Epoch(_int(item, "epoch", "append result")),
                    item.get("duplicate") is True,
                )
            )
        token = body.get("token")
        return AppendResult(
            tuple(ok), token if isinstance(token, str) else None, tuple(failed), producer
        )


@dataclass(frozen=True, slots=True)
class Event:
    seq: Seq
    ts: int
    key: str | None
    body: Any
    epoch: Epoch

    @staticmethod
    def from_body(item: Any) -> Event:
        if not isinstance(item, dict):
            raise CodecError(f"event {str(item)[:200]} is not an object")
        key = item.get("key")
        return Event(
            Seq(_int(item, "seq", "event")),
            _int(item, "ts", "event"),
            key if isinstance(key, str) else None,
            item.get("body"),
            Epoch(_int(item, "epoch", "event")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "key": self.key,
            "body": self.body,
            "epoch": self.epoch,
        }


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Events in seq order; continue with ``from_seq=next_seq``."""

    events: tuple[Event, ...]
    next_seq: Seq
    stats: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_body(body: Any) -> ReadResult:
        if not isinstance(body, dict) or not isinstance(body.get("events"), list):
            raise CodecError(f"read answer without an events list: {str(body)[:200]}")
        stats = body.get("stats")
        return ReadResult(
            tuple(Event.from_body(e) for e in body["events"]),
            Seq(_int(body, "next_seq", "read answer")),
            stats if isinstance(stats, dict) else {},
        )


@dataclass(frozen=True, slots=True)
class Window:
    """One fixed window ``[start_ts, end_ts)`` of an aggregate."""

    start_ts: int
    end_ts: int
    count: int
    min: int | float | None
    max: int | float | None
    sum: int | float
    avg: float | None


@dataclass(frozen=True, slots=True)
class AggregateResult:
    count: int
    min: int | float | None
    max: int | float | None
    sum: int | float
    avg: float | None
    windows: tuple[Window, ...] | None
    stats: dict[str, Any]

    @staticmethod
    def from_body(body: Any) -> AggregateResult:
        if not isinstance(body, dict):
            raise CodecError(f"aggregate answer is not an object: {str(body)[:200]}")
        windows = None
        if isinstance(body.get("windows"), list):
            windows = tuple(
                Window(
                    _int(w, "start_ts", "window"),
                    _int(w, "end_ts", "window"),
                    _int(w, "count", "window"),
                    _opt_num(w.get("min")),
                    _opt_num(w.get("max")),
                    _opt_num(w.get("sum")) or 0,
                    _float(w.get("avg")),
                )
                for w in body["windows"]
            )
        stats = body.get("stats")
        return AggregateResult(
            _int(body, "count", "aggregate answer"),
            _opt_num(body.get("min")),
            _opt_num(body.get("max")),
            _opt_num(body.get("sum")) or 0,
            _float(body.get("avg")),
            windows,
            stats if isinstance(stats, dict) else {},
        )


def _float(value: Any) -> float | None:
    num = _opt_num(value)
    return None if num is None else float(num)


@dataclass(frozen=True, slots=True)
class PartitionHome:
    partition: PartitionId
    home: RegionId | None
    epoch: Epoch


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream's definition and each partition's home and epoch (the create answer)."""

    name: str
    partitions: int
    key_field: str | None
    schema: dict[str, Any] | None
    homes: tuple[PartitionHome, ...]

    @staticmethod
    def from_body(body: Any) -> StreamInfo:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise CodecError(f"stream answer without a name: {str(body)[:200]}")
        homes: list[PartitionHome] = []
        raw = body.get("homes")
        if isinstance(raw, list):
            for h in raw:
                if isinstance(h, dict):
                    region = h.get("home")
                    homes.append(
                        PartitionHome(
                            PartitionId(_int(h, "partition", "home")),
                            RegionId(region) if isinstance(region, str) else None,
                            Epoch(_int(h, "epoch", "home")),
                        )
                    )
        elif isinstance(raw, dict):  # {partition: region} form
            for k, region in raw.items():
                homes.append(
                    PartitionHome(
                        PartitionId(int(k)),
                        RegionId(region) if isinstance(region, str) else None,
                        Epoch(0),
                    )
                )
        key_field = body.get("key_field")
        schema = body.get("schema")
        return StreamInfo(
            body["name"],
            _int(body, "partitions", "stream answer"),
            key_field if isinstance(key_field, str) else None,
            schema if isinstance(schema, dict) else None,
            tuple(homes),
        )


@dataclass(frozen=True, slots=True)
class Health:
    """One node's ``/v1/health``: ``ok`` on 200, else the reason it gave."""

    node: str
    ok: bool
    status: int
    body: Any
