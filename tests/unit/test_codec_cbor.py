"""Plain CBOR decoding is total and bounded: the item pre-scan for long inputs agrees with
cbor2's own depth limit, refuses oversized declarations at once, no semantic tag but the
bignums is decoded, and only CodecError escapes."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geostore.codec import CodecError, CodecLimits, dumps_canonical, dumps_plain, loads_plain
from geostore.codec.cbor import _prescan

PAD = b"\x58\x32" + b"x" * 50  # one item of 52 bytes: makes inputs longer than their item count


@pytest.mark.parametrize("wrapper", [b"\x81", b"\xc6", b"\xa1\x00"])
def test_prescan_and_cbor2_agree_on_depth(wrapper: bytes) -> None:
    # Wrapping with an unknown tag (0xc6) still fails later (tags are refused), so compare
    # only which inputs each path refuses for depth.
    for depth_max in (1, 2, 3, 5):
        for levels in range(8):
            data = wrapper * levels + PAD
            items = levels * (2 if wrapper == b"\xa1\x00" else 1) + 1
            verdicts = []
            for items_max in (10**6, items):  # no scan (input shorter) / scan (input longer)
                assert (len(data) > items_max) == (items_max == items)
                try:
                    loads_plain(data, CodecLimits(depth_max=depth_max, items_max=items_max))
                    verdicts.append("ok")
                except CodecError as exc:
                    verdicts.append("deep" if "depth" in str(exc) or "deep" in str(exc) else "bad")
            assert verdicts[0] == verdicts[1], (wrapper, depth_max, levels, verdicts)
            assert (verdicts[0] == "deep") == (levels > depth_max)


def test_prescan_refuses_oversized_declarations_and_too_many_items() -> None:
    limits = CodecLimits(items_max=100)
    declared = b"\x9a" + (10**6).to_bytes(4, "big") + b"\x00" * 200
    with pytest.raises(CodecError, match="items"):
        loads_plain(declared, limits)
    many = cbor2.dumps(list(range(150)))
    assert len(many) > 100
    with pytest.raises(CodecError, match="items"):
        loads_plain(many, limits)
    assert loads_plain(many, CodecLimits(items_max=151)) == list(range(150))


def test_plain_values_round_trip_and_trailing_bytes_are_refused() -> None:
    value = {"b": [1, 2.5, None, True, b"x", "é"], "a": {"nested": []}}
    assert loads_plain(dumps_plain(value), CodecLimits()) == value
    assert list(loads_plain(dumps_plain(value), CodecLimits())) == ["b", "a"]  # order kept
    assert dumps_canonical({"b": 1, "a": 2}) == dumps_canonical({"a": 2, "b": 1})
    with pytest.raises(CodecError, match="trailing"):
        loads_plain(dumps_plain(value) + b"\x00", CodecLimits())
    with pytest.raises(CodecError):
        dumps_plain(object())
    with pytest.raises(CodecError, match="Duplicate"):
        loads_plain(b"\xa2\x01\x02\x01\x03", CodecLimits())


@given(st.binary(max_size=300), st.integers(1, 400))
def test_arbitrary_bytes_give_a_value_or_a_codec_error(data: bytes, items_max: int) -> None:
    # small items_max values push most inputs through the pre-scan path as well
    with contextlib.suppress(CodecError):
        loads_plain(data, CodecLimits(items_max=items_max, depth_max=8))


def count_items(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(count_items(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(count_items(k) + count_items(v) for k, v in value.items())
    return 1


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=30)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=60)  # large generated values: bounded runtime
@given(values)
def test_prescan_counts_items_exactly(value: Any) -> None:
    data = dumps_plain(value)
    items = count_items(value)
    _prescan(data, CodecLimits(items_max=items))
    if items > 1:
        with pytest.raises(CodecError, match="items"):
            _prescan(data, CodecLimits(items_max=items - 1))


def test_decoding_after_errors_is_unaffected() -> None:
    # the decoder objects are reused: a failed decode must leave nothing behind
    limits = CodecLimits(depth_max=4)
    good = dumps_plain([[1, {"a": [2]}], "x"])
    for bad in (
        b"\x81" * 10 + b"\x00",
        b"\x82\x01",
        b"\xd8\x1c\x81\x00",
        b"\x9f\x01\xff",
        good + b"\x00",
    ):
        with pytest.raises(CodecError):
            loads_plain(bad, limits)
        assert loads_plain(good, limits) == [[1, {"a": [2]}], "x"]


def test_no_semantic_tag_gets_through_but_bignums() -> None:
    # Guards a cbor2 upgrade that starts decoding a new tag into some rich object.
    tags = [*range(0, 1200), 1004, 1040, 43000, 55799, 2**32 - 1, 2**63, 2**64 - 1]
    shapes: list[object] = [0, b"\x01" * 16, "1970-01-01T00:00:00Z", [1, 2], {}]
    for tag in tags:
        for shape in shapes:
            data = cbor2.dumps(cbor2.CBORTag(tag, shape))
            if tag in (2, 3) and isinstance(shape, bytes):
                assert type(loads_plain(data, CodecLimits())) is int
                continue
            with pytest.raises(CodecError):
                loads_plain(data, CodecLimits())
