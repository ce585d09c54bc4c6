"""Wire messages: frozen dataclasses with a type tag and a schema version, as canonical CBOR.

Theory of operation:

- ``@wire_message(tag, version)`` registers a frozen, slotted dataclass under a unique tag.
  A message encodes as the CBOR array ``[tag, version, field_1, ..., field_n]`` in field
  declaration order, with canonical CBOR, so equal messages give equal bytes (signatures,
  deduplication and the tests can rely on it). Positional fields keep Raft traffic small.
- Schema evolution: fields are only ever appended, with defaults, and the version bumped.
  A decoder fills the missing trailing fields of an older version from their defaults, and
  refuses a version newer than it knows (it cannot know what the extra fields mean).
- Each class is compiled once, on first use, into a plan: ``typing.get_type_hints`` is
  resolved once and turned into one small encode and one decode function per field, so a
  message costs a cbor2 call plus one function call per non-trivial field.
- Field types: int, bool, float, str, bytes, None, ``X | None`` and other unions, tuple
  (fixed or ``...``), list, frozenset (encoded sorted), dict with str/int keys, IntEnum and
  StrEnum (as their values), NewTypes of these, ``Any``/``object`` (any plain CBOR value),
  and nested dataclasses: a registered one encodes as its own tagged array (so unions of
  messages work), an unregistered one as the bare array of its fields.
- Decoding checks every value against the annotation (``int`` refuses ``bool``; ``float``
  accepts an int, as typing does) and is total: any input gives a message or exactly one
  CodecError; even an exception from a class's ``__post_init__`` is reported as one.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from geostore.codec.cbor import dumps_canonical, loads_plain
from geostore.codec.limits import DEFAULT_LIMITS, CodecLimits
from geostore.errors import CodecError

T = TypeVar("T")

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _WireInfo:
    tag: int
    version: int


#: tag -> registered class, and the reverse.
_REGISTRY: dict[int, type] = {}
_INFO: dict[type, _WireInfo] = {}


def wire_message(tag: int, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a frozen, slotted dataclass as a wire message under ``tag``.

    Also usable on an existing class (``wire_message(7)(Entry)``). A tag is registered once.
    """
    assert isinstance(tag, int) and 0 <= tag <= 0xFFFF_FFFF, f"bad tag {tag!r}"
    assert isinstance(version, int) and version >= 1, f"bad version {version!r}"

    def register(cls: type[T]) -> type[T]:
        assert dataclasses.is_dataclass(cls), f"{cls.__name__} is not a dataclass"
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen, f"{cls.__name__} must be frozen"
        assert "__slots__" in cls.__dict__, f"{cls.__name__} must be slotted"
        known = _REGISTRY.get(tag)
        assert known is None or known is cls, f"tag {tag} already used by {known}"
        assert cls not in _INFO or _INFO[cls].tag == tag, f"{cls.__name__} already registered"
        assert cls in _INFO or cls not in _PLANS, f"{cls.__name__} was used before registration"
        _REGISTRY[tag] = cls
        _INFO[cls] = _WireInfo(tag, version)
        return cls

    return register


def registered_messages() -> Mapping[int, type]:
    """The registry, tag -> class (a read-only view, for docs and tests)."""
    return types.MappingProxyType(_REGISTRY)


def encode_message(msg: object) -> bytes:
    """Canonical CBOR of a registered message. Raises CodecError on an unencodable value."""
    plan = _PLANS.get(type(msg)) or _plan_for(type(msg))
    assert plan.info is not None, f"{type(msg).__name__} is not a registered wire message"
    return dumps_canonical(plan.encode(msg))


def decode_message(
    data: bytes | bytearray | memoryview, limits: CodecLimits = DEFAULT_LIMITS
) -> object:
    """Rebuild the message encoded in ``data``, or raise exactly one CodecError."""
    plain = loads_plain(data, limits)
    try:
        return _decode_tagged(plain, None)
    except CodecError:
        raise
    except Exception as exc:  # totality: e.g. a __post_init__ refusing a decoded value
        raise CodecError(f"invalid message: {exc!r}") from exc


# --- plans -------------------------------------------------------------------------------------


class _Plan:
    """How one dataclass encodes and decodes; built once per class.

    ``encode`` and ``decode`` are generated as straight-line functions (as ``dataclasses``
    generates ``__init__``): one attribute read or type check per plain field, one call per
    field that needs conversion. ``decode`` handles the common shape (current version, every
    field present, no error) and hands anything else to ``decode_fields``, the general loop
    that fills defaults and names the failing field.
    """

    __slots__ = ("cls", "decode", "decoders", "encode", "info", "kw", "names", "required")

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.info = _INFO.get(cls)
        fields = list(dataclasses.fields(cls))
        assert all(f.init for f in fields), f"{cls.__name__}: init=False fields are not supported"
        hints = typing.get_type_hints(cls)
        self.names = tuple(f.name for f in fields)
        codecs = [_compile(hints[f.name]) for f in fields]
        self.decoders: tuple[Decoder, ...] = tuple(c.decode for c in codecs)
        self.required = sum(
            1
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        defaults_ok = all(
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            for f in fields[self.required :]
        )
        assert defaults_ok, f"{cls.__name__}: fields with defaults must come last"
        self.kw = any(f.kw_only for f in fields)
        self.encode: Callable[[Any], list[Any]] = self._generate_encode(codecs)
        self.decode: Callable[[list[Any]], Any] = self._generate_decode(codecs)

    def _generate_encode(self, codecs: Sequence[_Codec]) -> Callable[[Any], list[Any]]:
        namespace: dict[str, Any] = {}
        items = [] if self.info is None else [repr(self.info.tag), repr(self.info.version)]
        for i, (name, codec) in enumerate(zip(self.names, codecs, strict=True)):
            if codec.encode is None:
                items.append(f"obj.{name}")
            else:
                namespace[f"e{i}"] = codec.encode
                items.append(f"e{i}(obj.{name})")
        source = f"def encode(obj):\n    return [{', '.join(items)}]\n"
        exec(source, namespace)  # generated from field names, like dataclasses
        encode: Callable[[Any], list[Any]] = namespace["encode"]
        return encode

    def _generate_decode(self, codecs: Sequence[_Codec]) -> Callable[[list[Any]], Any]:
        start = 0 if self.info is None else 2
        namespace: dict[str, Any] = {
            "cls": self.cls,
            "CodecError": CodecError,
            "slow": lambda plain: self.decode_fields(plain, start),
            "failed": self._field_error,
            "mismatch": _mismatch,
        }
        lines = [
            "def decode(plain):",
            f"    if len(plain) != {start + len(codecs)}:",
            "        return slow(plain)",
        ]
        args = []
        # Each failure is reported once, where it happens: never decoded again by a slower path
        # (re-decoding on error would cost 2**depth on nested messages).
        for i, (name, codec) in enumerate(zip(self.names, codecs, strict=True)):
            if codec.exact is not None:
                namespace[f"t{i}"] = codec.exact
                lines.append(f"    v{i} = plain[{start + i}]")
                lines.append(f"    if type(v{i}) is not t{i}:")
                lines.append(f"        raise failed({i}, mismatch(t{i}.__name__, v{i}))")
            else:
                namespace[f"d{i}"] = codec.decode
                lines.append("    try:")
                lines.append(f"        v{i} = d{i}(plain[{start + i}])")
                lines.append("    except CodecError as exc:")
                lines.append(f"        raise failed({i}, exc) from exc")
            args.append(f"{name}=v{i}" if self.kw else f"v{i}")
        lines.append(f"    return cls({', '.join(args)})")
        exec("\n".join(lines) + "\n", namespace)  # see _generate_encode
        decode: Callable[[list[Any]], Any] = namespace["decode"]
        return decode

    def _field_error(self, index: int, exc: CodecError) -> CodecError:
        return CodecError(f"{self.cls.__name__}.{self.names[index]}: {exc.message}")

    def decode_fields(self, plain: list[Any], start: int) -> object:
        count = len(plain) - start
        if count < self.required or count > len(self.names):
            raise CodecError(
                f"{self.cls.__name__}: {count} fields, expected {self.required}..{len(self.names)}"
            )
        values = []
        index = 0
        try:
            for index in range(count):
                values.append(self.decoders[index](plain[start + index]))
        except CodecError as exc:
            raise self._field_error(index, exc) from exc
        if self.kw:
            return self.cls(**dict(zip(self.names, values, strict=False)))
        return self.cls(*values)


_PLANS: dict[type, _Plan] = {}


def _plan_for(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _Plan(cls)
        _PLANS[cls] = plan
    return plan


def _decode_tagged(plain: Any, allowed: Mapping[int, type] | None) -> object:
    """Decode ``[tag, version, fields...]``; ``allowed`` restricts the tags (None: any)."""
    if type(plain) is not list or len(plain) < 2:
        raise CodecError("a message is an array [tag, version, fields...]")
    tag, version = plain[0], plain[1]
    if type(tag) is not int or type(version) is not int:
        raise CodecError("message tag and version must be ints")
    cls = _REGISTRY.get(tag) if allowed is None else allowed.get(tag)
    if cls is None:
        raise CodecError(f"unknown or unexpected message tag {tag}", tag=tag)
    plan = _PLANS.get(cls) or _plan_for(cls)
    assert plan.info is not None
    if not 1 <= version <= plan.info.version:
        raise CodecError(
            f"{cls.__name__}: schema version {version} not supported "
            f"(this build knows 1..{plan.info.version})",
            tag=tag,
            version=version,
        )
    return plan.decode(plain)


# --- per-type codecs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Codec:
    """``encode`` None means the value is already plain; ``accepts`` dispatches unions."""

    encode: Encoder | None
    decode: Decoder
    accepts: Callable[[Any], bool]
    #: unions try lower ranks first: float (which takes ints too) goes after int
    rank: int = 0
    #: set when decoding is only ``type(value) is exact`` (lets generated code inline it)
    exact: type | None = None


def _mismatch(expected: str, value: Any) -> CodecError:
    return CodecError(f"expected {expected}, got {type(value).__name__}")


def _exact(tp: type) -> _Codec:
    name = tp.__name__

    def decode(value: Any) -> Any:
        if type(value) is not tp:
            raise _mismatch(name, value)
        return value

    def accepts(value: Any) -> bool:
        return type(value) is tp or (tp is not bool and isinstance(value, tp))

    return _Codec(None, decode, accepts, exact=tp)


def _float_codec() -> _Codec:
    def decode(value: Any) -> float:
        if type(value) is float:
            return value
        if type(value) is int:
            return float(value)
        raise _mismatch("float", value)

    def accepts(value: Any) -> bool:
        return type(value) is float or type(value) is int

    return _Codec(float, decode, accepts, rank=1)


def _none_codec() -> _Codec:
    def decode(value: Any) -> None:
        if value is not None:
            raise _mismatch("None", value)

    return _Codec(None, decode, lambda value: value is None)


def _any_codec() -> _Codec:
    return _Codec(None, lambda value: value, lambda value: True)


def _enum_codec(tp: type[enum.Enum]) -> _Codec:
    if issubclass(tp, enum.IntEnum):
        base: type = int
    elif issubclass(tp, enum.StrEnum):
        base = str
    else:
        raise AssertionError(f"{tp.__name__}: only IntEnum and StrEnum are wire types")
    members: dict[Any, enum.Enum] = {member.value: member for member in tp}

    def encode(value: Any) -> Any:
        return value.value

    def decode(value: Any) -> Any:
        member = members.get(value) if type(value) is base else None
        if member is None:
            raise CodecError(f"{value!r} is not a {tp.__name__}")
        return member

    return _Codec(encode, decode, lambda value: isinstance(value, tp))


def _sequence_codec(item: _Codec, build: Callable[[Any], Any], kind: type) -> _Codec:
    enc, dec = item.encode, item.decode

    def encode(value: Any) -> list[Any]:
        return list(value) if enc is None else [enc(x) for x in value]

    def decode(value: Any) -> Any:
        if type(value) is not list:
            raise _mismatch("array", value)
        return build([dec(x) for x in value])

    return _Codec(encode, decode, lambda value: isinstance(value, kind))


def _fixed_tuple_codec(items: Sequence[_Codec]) -> _Codec:
    size = len(items)

    def encode(value: Any) -> list[Any]:
        return [v if c.encode is None else c.encode(v) for c, v in zip(items, value, strict=True)]

    def decode(value: Any) -> tuple[Any, ...]:
        if type(value) is not list or len(value) != size:
            raise CodecError(f"expected an array of {size} items")
        return tuple(c.decode(v) for c, v in zip(items, value, strict=True))

    return _Codec(encode, decode, lambda value: isinstance(value, tuple) and len(value) == size)


def _frozenset_codec(item: _Codec) -> _Codec:
    enc, dec = item.encode, item.decode

    def encode(value: Any) -> list[Any]:
        plain = list(value) if enc is None else [enc(x) for x in value]
        try:
            return sorted(plain)
        except TypeError:  # mixed types (a union): a total order on canonical bytes
            return sorted(plain, key=lambda x: dumps_canonical(x))

    def decode(value: Any) -> frozenset[Any]:
        if type(value) is not list:
            raise _mismatch("array", value)
        return frozenset([dec(x) for x in value])

    return _Codec(encode, decode, lambda value: isinstance(value, frozenset))


def _dict_codec(key: _Codec, val: _Codec) -> _Codec:
    kenc, kdec, venc, vdec = key.encode, key.decode, val.encode, val.decode

    def encode(value: Any) -> dict[Any, Any]:
        return {
            (k if kenc is None else kenc(k)): (v if venc is None else venc(v))
            for k, v in value.items()
        }

    def decode(value: Any) -> dict[Any, Any]:
        if type(value) is not dict:
            raise _mismatch("map", value)
        return {kdec(k): vdec(v) for k, v in value.items()}

    return _Codec(encode, decode, lambda value: isinstance(value, Mapping))


def _dataclass_codec(cls: type) -> _Codec:
    # Resolved lazily: the class may be defined after the one that refers to it (or be itself).
    if cls in _INFO:
        tag, version = _INFO[cls].tag, _INFO[cls].version
        allowed = {tag: cls}

        def decode_tagged(value: Any) -> Any:
            # fast path: this class at its current version; anything else takes the full checks
            if (
                type(value) is list
                and len(value) >= 2
                and value[0] == tag
                and value[1] == version
                and type(value[0]) is int
                and type(value[1]) is int
            ):
                return (_PLANS.get(cls) or _plan_for(cls)).decode(value)
            return _decode_tagged(value, allowed)

        return _Codec(
            lambda value: _plan_for(type(value)).encode(value),
            decode_tagged,
            lambda value: type(value) is cls,
        )

    def decode_bare(value: Any) -> Any:
        if type(value) is not list:
            raise _mismatch(f"{cls.__name__} array", value)
        return (_PLANS.get(cls) or _plan_for(cls)).decode(value)

    return _Codec(
        lambda value: _plan_for(cls).encode(value), decode_bare, lambda value: type(value) is cls
    )


def _union_codec(options: Sequence[_Codec], args: Sequence[Any]) -> _Codec:
    options = sorted(options, key=lambda o: o.rank)  # stable: declaration order otherwise
    classes = [a for a in args if dataclasses.is_dataclass(a)]
    tagged = {_INFO[c].tag: c for c in classes if c in _INFO}
    assert len(classes) <= 1 or len(tagged) == len(classes), (
        f"a union of several dataclasses needs registered (tagged) classes: {args}"
    )
    if tagged and len(options) == len(classes) + (1 if type(None) in args else 0):
        # The common case, ``A | B | None`` of messages: dispatch on the tag, not by trial.
        def decode_messages(value: Any) -> Any:
            if value is None and type(None) in args:
                return None
            return _decode_tagged(value, tagged)

        decode: Decoder = decode_messages
    else:

        def decode_first(value: Any) -> Any:
            for option in options:
                try:
                    return option.decode(value)
                except CodecError:
                    continue
            raise CodecError(f"{type(value).__name__} matches none of {list(args)}")

        decode = decode_first

    def encode(value: Any) -> Any:
        for option in options:
            if option.accepts(value):
                return value if option.encode is None else option.encode(value)
        raise CodecError(f"{type(value).__name__} matches none of {list(args)}")

    return _Codec(encode, decode, lambda value: any(o.accepts(value) for o in options))


def _compile(tp: Any) -> _Codec:
    """Turn one resolved annotation into its codec (at plan time, never per message)."""
    while hasattr(tp, "__supertype__"):  # NewType: the wire sees the underlying type
        tp = tp.__supertype__
    if tp is Any or tp is object:
        return _any_codec()
    if tp is None or tp is type(None):
        return _none_codec()
    if tp is float:
        return _float_codec()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_codec(tp)
    if tp in (int, bool, str, bytes):
        return _exact(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_codec(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _union_codec([_compile(a) for a in args], args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence_codec(_compile(args[0]), tuple, tuple)
        return _fixed_tuple_codec([_compile(a) for a in args])
    if origin is list:
        return _sequence_codec(_compile(args[0]), list, list)
    if origin is Sequence:
        return _sequence_codec(_compile(args[0]), tuple, Sequence)
    if origin is frozenset:
        return _frozenset_codec(_compile(args[0]))
    if origin is dict or origin is Mapping:
        key = tp_key = args[0]
        while hasattr(tp_key, "__supertype__"):
            tp_key = tp_key.__supertype__
        assert tp_key in (int, str) or (
            isinstance(tp_key, type) and issubclass(tp_key, (enum.IntEnum, enum.StrEnum))
        ), f"dict keys must be int or str (or enums/NewTypes of them), not {key}"
        return _dict_codec(_compile(key), _compile(args[1]))
    raise AssertionError(f"unsupported wire field type {tp!r}")
