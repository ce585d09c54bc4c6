"""Toxic definitions: names, attributes, JSON shapes and validation, as Toxiproxy 2.x has them.

Theory of operation
-------------------
A toxic is a record (``name``, ``type``, ``stream``, ``toxicity``, ``attributes``) kept by a
proxy in one of two ordered lists, one per stream direction (``upstream``: client to server,
``downstream``: server to client). This module only parses, validates and renders those
records; what a toxic does to bytes lives in :mod:`netem.chain`.

Parsing follows Toxiproxy's Go decoder where a client could notice: unknown keys are ignored,
missing attributes are zero, a name defaults to ``<type>_<stream>``, the stream to
``downstream`` and the toxicity to 1; integer attributes refuse non-integer numbers; the first
JSON value of a body is read and anything after it is ignored. Errors carry Toxiproxy's
messages and statuses. Where Toxiproxy would accept a value that breaks it (a negative delay,
a slicer with ``average_size`` 0, which panics Toxiproxy's slicer) this module refuses it with
a 400, so one bad request never disturbs the other proxies.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "ATTRIBUTES",
    "STREAMS",
    "ApiProblem",
    "ToxicSpec",
    "decode_body",
    "parse_toxic",
    "update_toxic",
]

#: Attribute names of each toxic type, in Toxiproxy's field order (the JSON key order).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
    "noop": (),
}

STREAMS = ("upstream", "downstream")

#: The largest time any attribute may name: a day, in ms (slicer's delay is in µs).
_DAY_MS = 86_400_000
_INT64_MAX = 2**63 - 1
#: Upper bound of each attribute; the lower bound is 0 for all but slicer's average_size.
_MAX: dict[tuple[str, str], int] = {
    ("latency", "latency"): _DAY_MS,
    ("latency", "jitter"): _DAY_MS,
    ("bandwidth", "rate"): _INT64_MAX // 1000,
    ("slow_close", "delay"): _DAY_MS,
    ("timeout", "timeout"): _DAY_MS,
    ("reset_peer", "timeout"): _DAY_MS,
    ("slicer", "average_size"): 1 << 30,
    ("slicer", "size_variation"): 1 << 30,
    ("slicer", "delay"): _DAY_MS * 1000,
    ("limit_data", "bytes"): _INT64_MAX,
}

_uids = itertools.count(1)


class ApiProblem(Exception):
    """An error answered as Toxiproxy answers it: ``{"error": message, "status": status}``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


def bad_body(reason: str) -> ApiProblem:
    return ApiProblem(f"bad request body: {reason}", 400)


@dataclass(frozen=True, slots=True)
class ToxicSpec:
    """One toxic as the API shows it. ``uid`` identifies it across updates (never shown)."""

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int]
    uid: int = field(default_factory=lambda: next(_uids))

    def attr(self, key: str) -> int:
        return self.attributes.get(key, 0)

    def to_json(self) -> dict[str, Any]:
        """Toxiproxy's key order: attributes, name, type, stream, toxicity."""
        toxicity: float | int = self.toxicity
        if float(toxicity).is_integer():
            toxicity = int(toxicity)  # Go prints float32(1) as 1
        return {
            "attributes": {k: self.attr(k) for k in ATTRIBUTES[self.type]},
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": toxicity,
        }


def decode_body(raw: bytes) -> Any:
    """The first JSON value of ``raw`` (Go's json.Decoder ignores what follows it)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_body(f"invalid UTF-8: {exc.reason}") from None
    text = text.lstrip(" \t\r\n")
    if not text:
        raise bad_body("EOF")
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        raise bad_body(exc.msg) from None
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def expect_str(body: dict[str, Any], key: str, where: str, default: str) -> str:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_body(
            f"cannot unmarshal {_type_name(value)} into field {where}.{key} of type string"
        )
    return value


def expect_bool(body: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_body(
            f"cannot unmarshal {_type_name(value)} into field {where}.{key} of type bool"
        )
    return value


def expect_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_body(f"cannot unmarshal {_type_name(value)} into {where} of type object")
    return value


def _toxicity(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_body(f"cannot unmarshal {_type_name(value)} into field toxicity of type float32")
    if not 0.0 <= float(value) <= 1.0:
        raise bad_body(f"toxicity {value} is not a probability in [0, 1]")
    return float(value)


def _attributes(kind: str, raw: Any, base: dict[str, int]) -> dict[str, int]:
    """Attributes of a ``kind`` toxic: ``base`` overlaid with ``raw``, checked."""
    out = dict(base)
    if raw is None:
        raw = {}
    raw = expect_object(raw, "attributes")
    for key in ATTRIBUTES[kind]:
        if key not in raw or raw[key] is None:
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_body(
                f"cannot unmarshal {_type_name(value)} {value!r} into field "
                f"attributes.{key} of type int64"
            )
        out[key] = value
    for key in ATTRIBUTES[kind]:
        value = out.get(key, 0)
        low = 1 if (kind, key) == ("slicer", "average_size") else 0
        high = _MAX[(kind, key)]
        if not low <= value <= high:
            raise bad_body(f"attributes.{key} = {value} is out of range [{low}, {high}]")
        out[key] = value
    if kind == "slicer" and out["size_variation"] >= out["average_size"]:
        raise bad_body("attributes.size_variation must be smaller than attributes.average_size")
    return out


def parse_toxic(body: Any, existing_names: set[str]) -> ToxicSpec:
    """A new toxic from a create request, in Toxiproxy's order of checks."""
    body = expect_object(body, "toxic")
    name = expect_str(body, "name", "toxic", "")
    kind = expect_str(body, "type", "toxic", "")
    stream = expect_str(body, "stream", "toxic", "downstream")
    toxicity = _toxicity(body.get("toxicity"), 1.0)
    if stream.lower() not in STREAMS:
        raise ApiProblem("stream was invalid, can be either upstream or downstream", 400)
    stream = stream.lower()
    if not name:
        name = f"{kind}_{stream}"
    if kind not in ATTRIBUTES:
        raise ApiProblem("invalid toxic type", 400)
    if name in existing_names:
        raise ApiProblem("toxic already exists", 409)
    attributes = _attributes(kind, body.get("attributes"), {})
    return ToxicSpec(name=name, type=kind, stream=stream, toxicity=toxicity, attributes=attributes)


def update_toxic(current: ToxicSpec, body: Any) -> ToxicSpec:
    """``current`` with the ``attributes`` and ``toxicity`` of an update request overlaid.

    As in Toxiproxy, name, type and stream cannot change (they are ignored); attributes not
    named keep their values.
    """
    body = expect_object(body, "toxic")
    toxicity = _toxicity(body.get("toxicity"), current.toxicity)
    attributes = _attributes(current.type, body.get("attributes"), current.attributes)
    return replace(current, toxicity=toxicity, attributes=attributes)
