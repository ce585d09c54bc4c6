"""Wire messages round-trip for every supported field type, encode canonically, and decode
totally: bad types, tags, versions, shapes and arbitrary bytes give exactly one CodecError."""

from __future__ import annotations

import contextlib
import enum
import math
import typing
from dataclasses import dataclass, field
from typing import Any, NewType

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geostore.codec import (
    DEFAULT_LIMITS,
    CodecError,
    CodecLimits,
    decode_message,
    encode_message,
    registered_messages,
    wire_message,
)
from geostore.ids import LogIndex, NodeId, Term
from geostore.raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta
from tests.unit.codec_values import floats, ints, plain_values

# Tags from 0xFFFF0000 up are reserved for tests, so they never collide with real messages.
T0 = 0xFFFF_0000

Weight = NewType("Weight", float)


class Kind(enum.IntEnum):
    NORMAL = 0
    CONFIG = 1
    NOOP = 2


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, slots=True)
class Bare:
    """An unregistered dataclass: nested as the bare array of its fields."""

    term: Term
    data: bytes = b""


@wire_message(T0 + 1)
@dataclass(frozen=True, slots=True)
class Leaf:
    index: LogIndex
    kind: Kind


@wire_message(T0 + 2)
@dataclass(frozen=True, slots=True)
class Other:
    name: str


@wire_message(T0 + 3, version=1)
@dataclass(frozen=True, slots=True)
class Everything:
    i: int
    b: bool
    f: float
    s: str
    raw: bytes
    nothing: None
    maybe: int | None
    fixed: tuple[int, str]
    many: tuple[Leaf, ...]
    items: list[str]
    members: frozenset[NodeId]
    by_name: dict[str, int]
    by_id: dict[int, Leaf | None]
    kind: Kind
    colour: Colour
    term: Term
    weight: Weight
    leaf: Leaf
    bare: Bare
    either: Leaf | Other
    scalar: int | str
    anything: Any


@wire_message(T0 + 4, version=3)
@dataclass(frozen=True, slots=True)
class Evolving:
    a: int
    b: str = "default-b"
    c: tuple[int, ...] = field(default_factory=tuple)


@wire_message(T0 + 5)
@dataclass(frozen=True, slots=True)
class Tree:
    value: int
    children: tuple[Tree, ...] = ()


@wire_message(T0 + 6)
@dataclass(frozen=True, slots=True)
class Checked:
    positive: int

    def __post_init__(self) -> None:
        if self.positive <= 0:
            raise ValueError("must be positive")


# --- strategies ---------------------------------------------------------------------------------

texts = st.text(max_size=20)
leaves = st.builds(Leaf, st.integers(0, 2**40).map(LogIndex), st.sampled_from(Kind))
plain = plain_values(texts, binary_size_max=20)
everything = st.builds(
    Everything,
    i=ints,
    b=st.booleans(),
    f=floats,
    s=texts,
    raw=st.binary(max_size=64),
    nothing=st.none(),
    maybe=st.none() | ints,
    fixed=st.tuples(ints, texts),
    many=st.lists(leaves, max_size=4).map(tuple),
    items=st.lists(texts, max_size=4),
    members=st.frozensets(texts.map(NodeId), max_size=5),
    by_name=st.dictionaries(texts, ints, max_size=5),
    by_id=st.dictionaries(ints, st.none() | leaves, max_size=5),
    kind=st.sampled_from(Kind),
    colour=st.sampled_from(Colour),
    term=st.integers(0, 2**63).map(Term),
    weight=floats.map(Weight),
    leaf=leaves,
    bare=st.builds(Bare, st.integers(0, 2**63).map(Term), st.binary(max_size=8)),
    either=leaves | st.builds(Other, texts),
    scalar=ints | texts,
    anything=plain,
)


def sample() -> Everything:
    return Everything(
        i=-5,
        b=True,
        f=2.5,
        s="héllo",
        raw=b"\x00\xff",
        nothing=None,
        maybe=7,
        fixed=(1, "x"),
        many=(Leaf(LogIndex(1), Kind.NORMAL), Leaf(LogIndex(2), Kind.NOOP)),
        items=["a", "b"],
        members=frozenset({NodeId("n2"), NodeId("n1")}),
        by_name={"z": 1, "a": 2},
        by_id={3: None, 1: Leaf(LogIndex(9), Kind.CONFIG)},
        kind=Kind.CONFIG,
        colour=Colour.BLUE,
        term=Term(4),
        weight=Weight(0.5),
        leaf=Leaf(LogIndex(3), Kind.NORMAL),
        bare=Bare(Term(8), b"abc"),
        either=Other("o"),
        scalar="s",
        anything={"k": [1, 2.5, None, b"x"]},
    )


def reencode(msg: object, **replace: Any) -> bytes:
    """The message's plain array with some field positions replaced, as CBOR (to forge input)."""
    plain = cbor2.loads(encode_message(msg))
    names = [f for f in type(msg).__dataclass_fields__]  # type: ignore[attr-defined]
    for name, value in replace.items():
        plain[2 + names.index(name)] = value
    return cbor2.dumps(plain)


# --- round trips and canonical bytes ------------------------------------------------------------


@settings(max_examples=60)  # large generated values: bounded runtime
@given(everything)
def test_every_field_type_round_trips(msg: Everything) -> None:
    decoded = decode_message(encode_message(msg))
    assert decoded == msg
    assert type(decoded) is Everything
    assert type(decoded.kind) is Kind and type(decoded.colour) is Colour
    assert all(type(leaf) is Leaf for leaf in decoded.many)
    assert type(decoded.bare) is Bare


def test_sample_round_trips_with_exact_classes() -> None:
    msg = sample()
    decoded = decode_message(encode_message(msg))
    assert decoded == msg
    assert isinstance(decoded, Everything)
    assert type(decoded.either) is Other
    assert type(decoded.fixed) is tuple and type(decoded.items) is list
    assert type(decoded.members) is frozenset
    assert type(decoded.f) is float


@settings(max_examples=60)  # large generated values: bounded runtime
@given(everything)
def test_equal_values_give_equal_bytes(msg: Everything) -> None:
    # The same value built with other insertion orders (dicts, sets) must encode identically.
    shuffled = Everything(
        **{
            **{name: getattr(msg, name) for name in msg.__dataclass_fields__},
            "by_name": dict(reversed(list(msg.by_name.items()))),
            "by_id": dict(reversed(list(msg.by_id.items()))),
            "members": frozenset(sorted(msg.members, reverse=True)),
        }
    )
    assert shuffled == msg
    assert encode_message(shuffled) == encode_message(msg)


def test_canonical_bytes_are_stable() -> None:
    # Map keys sorted, shortest forms: the encoding of a fixed value never drifts silently.
    a = Evolving(1, "x", (1, 2))
    assert encode_message(a) == cbor2.dumps([T0 + 4, 3, 1, "x", [1, 2]], canonical=True)
    assert encode_message(Everything(**_fields(sample()))) == encode_message(sample())


def _fields(msg: object) -> dict[str, Any]:
    return {name: getattr(msg, name) for name in msg.__dataclass_fields__}  # type: ignore[attr-defined]


def test_float_field_takes_an_int_and_int_field_refuses_bool() -> None:
    msg = sample()
    decoded = decode_message(reencode(msg, f=3))
    assert decoded.f == 3.0 and type(decoded.f) is float  # type: ignore[attr-defined]
    with pytest.raises(CodecError, match=r"Everything\.i"):
        decode_message(reencode(msg, i=True))
    # An int given for a float field encodes as the float: equal values, equal bytes.
    assert encode_message(Other("x")) == encode_message(Other("x"))
    as_int = Everything(**{**_fields(msg), "f": 2})
    as_float = Everything(**{**_fields(msg), "f": 2.0})
    assert encode_message(as_int) == encode_message(as_float)


def test_registry_lists_the_test_messages() -> None:
    registry = registered_messages()
    assert registry[T0 + 3] is Everything
    assert registry[T0 + 1] is Leaf


# --- schema evolution ---------------------------------------------------------------------------


def test_older_version_fills_missing_fields_from_defaults() -> None:
    old = cbor2.dumps([T0 + 4, 1, 42])
    assert decode_message(old) == Evolving(42, "default-b", ())
    v2 = cbor2.dumps([T0 + 4, 2, 42, "b"])
    assert decode_message(v2) == Evolving(42, "b", ())


def test_newer_version_unknown_tag_and_bad_shapes_are_refused() -> None:
    cases = {
        "newer version": [T0 + 4, 4, 1, "b", []],
        "version zero": [T0 + 4, 0, 1],
        "unknown tag": [T0 + 999, 1, 1],
        "too few fields": [T0 + 4, 3],
        "too many fields": [T0 + 4, 3, 1, "b", [], "extra"],
        "not an array": {"tag": T0 + 4},
        "tag not int": ["x", 1, 1],
        "version not int": [T0 + 4, 1.0, 1],
        "nested wrong tag": [T0 + 5, 1, 1, [[T0 + 4, 1, 1]]],
        "nested not array": [T0 + 5, 1, 1, [5]],
    }
    for name, value in cases.items():
        with pytest.raises(CodecError):
            decode_message(cbor2.dumps(value))
            pytest.fail(name)


def test_wrong_field_types_are_refused() -> None:
    msg = sample()
    bad = {
        "i": "1",
        "b": 1,
        "f": "1.0",
        "s": b"s",
        "raw": "raw",
        "nothing": 0,
        "maybe": "x",
        "fixed": [1, "x", 3],
        "many": [[T0 + 2, 1, "not a leaf"]],
        "items": [1],
        "members": "ab",
        "by_name": {"a": "b"},
        "by_id": {"1": None},
        "kind": 7,
        "colour": "green",
        "term": -1.5,
        "weight": None,
        "leaf": [T0 + 1, 1, 1],
        "bare": [1, 2, 3],
        "either": [T0 + 3, 1],
        "scalar": 1.5,
    }
    for name, value in bad.items():
        with pytest.raises(CodecError, match=f"Everything.{name}"):
            decode_message(reencode(msg, **{name: value}))


def test_post_init_refusal_is_a_codec_error() -> None:
    assert decode_message(encode_message(Checked(3))) == Checked(3)
    with pytest.raises(CodecError):
        decode_message(cbor2.dumps([T0 + 6, 1, -1]))


def test_trailing_bytes_are_refused() -> None:
    data = encode_message(Other("x"))
    with pytest.raises(CodecError, match="trailing"):
        decode_message(data + b"\x00")


# --- limits -------------------------------------------------------------------------------------


def deep_tree(depth: int) -> Tree:
    tree = Tree(0)
    for value in range(1, depth):
        tree = Tree(value, (tree,))
    return tree


def test_nesting_within_depth_max_decodes_and_beyond_is_refused() -> None:
    limits = CodecLimits(depth_max=32)
    ok = deep_tree(15)  # two containers per level (the message array and its children tuple)
    assert decode_message(encode_message(ok), limits) == ok
    with pytest.raises(CodecError, match="depth"):
        decode_message(encode_message(deep_tree(40)), limits)


def test_hostile_nesting_and_declared_sizes_never_escape_as_other_errors() -> None:
    hostile = [
        b"\x81" * 200_000 + b"\x00",  # deep arrays: no RecursionError
        b"\xc6" * 200_000 + b"\x00",  # deep unknown tags
        b"\x9b" + (2**63).to_bytes(8, "big"),  # array declaring 2**63 items
        b"\xbb" + (2**63).to_bytes(8, "big"),  # map declaring 2**63 pairs
        b"\x5b" + (2**63).to_bytes(8, "big"),  # byte string declaring 2**63 bytes
        b"\x9f" * 10 + b"\xff" * 10,  # indefinite lengths
    ]
    for data in hostile:
        for limits in (DEFAULT_LIMITS, CodecLimits(items_max=4)):  # default path and pre-scan
            with pytest.raises(CodecError):
                decode_message(data, limits)


def test_items_max_counts_every_item() -> None:
    msg = Evolving(1, "b", tuple(range(50)))
    data = encode_message(msg)
    assert decode_message(data, CodecLimits(items_max=len(data))) == msg
    # 55 items (array of 5 + 50 ints) in fewer bytes than items_max triggers no scan ...
    assert decode_message(data, CodecLimits(items_max=56)) == msg
    # ... and a limit under the item count is enforced by the pre-scan.
    with pytest.raises(CodecError, match="items"):
        decode_message(data, CodecLimits(items_max=40))


def test_semantic_tags_are_refused_in_any_field() -> None:
    for tagged in (
        cbor2.CBORTag(1, 0),  # datetime
        cbor2.CBORTag(5, [2**62, 1]),  # bigfloat: unbounded CPU if evaluated
        cbor2.CBORTag(28, [1]),  # shared value (cycles)
        cbor2.CBORTag(35, "(a+)+"),  # regex
        cbor2.CBORTag(9999, 1),  # unknown tag
    ):
        with pytest.raises(CodecError):
            decode_message(cbor2.dumps([T0 + 4, 3, 1, tagged, []]))
    # bignums are plain ints and stay accepted
    big = Evolving(2**70)
    assert decode_message(encode_message(big)) == big


# --- totality on arbitrary and mutated bytes ----------------------------------------------------


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_message_or_a_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_message(data)


@settings(max_examples=60)  # large generated values: bounded runtime
@given(everything, st.data())
def test_mutated_messages_give_a_message_or_a_codec_error(msg: Everything, data: Any) -> None:
    encoded = bytearray(encode_message(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    for candidate in (bytes(encoded), bytes(encoded[:cut])):
        try:
            decoded = decode_message(candidate)
        except CodecError:
            continue
        assert dataclass_instance(decoded)


def dataclass_instance(value: object) -> bool:
    return hasattr(value, "__dataclass_fields__")


# --- registration and plan caching --------------------------------------------------------------


def test_type_hints_are_resolved_once_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = typing.get_type_hints

    def counting(obj: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(typing, "get_type_hints", counting)

    @wire_message(T0 + 100)
    @dataclass(frozen=True, slots=True)
    class Fresh:
        a: int
        b: tuple[int, ...]

    for n in range(50):
        assert decode_message(encode_message(Fresh(n, (n,)))) == Fresh(n, (n,))
    assert calls.count(Fresh) == 1


def test_registration_refuses_misuse() -> None:
    @dataclass(frozen=True)
    class NotSlotted:
        a: int

    @dataclass(slots=True)
    class NotFrozen:
        a: int

    with pytest.raises(AssertionError):
        wire_message(T0 + 200)(NotSlotted)
    with pytest.raises(AssertionError):
        wire_message(T0 + 201)(NotFrozen)

    @dataclass(frozen=True, slots=True)
    class Clash:
        a: int

    with pytest.raises(AssertionError, match="already used"):
        wire_message(T0 + 1)(Clash)


def test_nan_and_infinities_round_trip() -> None:
    for value in (math.inf, -math.inf, -0.0):
        msg = Everything(**{**_fields(sample()), "f": value})
        assert decode_message(encode_message(msg)) == msg
    nan = Everything(**{**_fields(sample()), "f": math.nan})
    assert math.isnan(decode_message(encode_message(nan)).f)  # type: ignore[attr-defined]


# --- the Raft value types travel inside messages unchanged --------------------------------------


def test_raft_value_types_nest_in_messages() -> None:
    # (annotations resolve in this module's globals, hence the imports at the top)
    @wire_message(T0 + 300)
    @dataclass(frozen=True, slots=True)
    class Append:
        entries: tuple[Entry, ...]
        hard: HardState
        snapshot: SnapshotMeta

    msg = Append(
        (
            Entry(Term(2), LogIndex(7), EntryKind.NORMAL, b"block"),
            Entry(Term(2), LogIndex(8), EntryKind.NOOP),
        ),
        HardState(Term(2), NodeId("n1"), LogIndex(6)),
        SnapshotMeta(LogIndex(5), Term(1), ConfState(frozenset({NodeId("b"), NodeId("a")}))),
    )
    assert decode_message(encode_message(msg)) == msg


def test_a_deep_error_is_reported_once_with_its_path() -> None:
    # The bottom value of a 15-level tree has the wrong type: one error naming the path
    # (decoding never retries a failed subtree, which would cost 2**depth).
    plain = cbor2.loads(encode_message(deep_tree(15)))
    node = plain
    while node[3]:
        node = node[3][0]
    node[2] = "not an int"
    with pytest.raises(CodecError) as caught:
        decode_message(cbor2.dumps(plain))
    assert caught.value.message.count("Tree.children") == 14
    assert caught.value.message.endswith("Tree.value: expected int, got str")
