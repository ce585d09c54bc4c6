"""The API's JSON body decoder gives exactly what ``json.loads`` gives: the same value with
the same types, or a refusal where it refuses (orjson is only the fast path)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geostore.runtime.http import decode_json

EDGE = [
    b'{"a":1,"a":2}',
    b"1e400",
    b"-0",
    b"-0.0",
    b"1.5e-400",
    b"123456789012345678901234567890",
    b"-123456789012345678901234567890",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"-9223372036854775808",
    b"[9999999999999999999, -99999999999999999999]",
    b'{"ts": 99999999999999999999999}',
    b'"\\ud800"',
    b'{"a":NaN,"b":-Infinity}',
    b"\xef\xbb\xbf{}",
    b' {"x": "\xc3\xa9"} ',
    b"0.1",
    b"1E2",
    b"[" * 300 + b"]" * 300,
    b'{"a":"\\u0000"}',
    '{"events":[{"body":{"v":1}}]}'.encode("utf-16"),
]

BAD = [b"[1,2,]", b'"\t"', b'"\xff"', b"{", b"", b"nul", b"[" * 5000 + b"]" * 5000]


def _same(a: Any, b: Any) -> bool:
    """Equal values with equal types all the way down (1 == 1.0 is not enough; NaN is)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("raw", EDGE)
def test_edge_cases_decode_as_json_loads_does(raw: bytes) -> None:
    assert _same(decode_json(raw), json.loads(raw))


@pytest.mark.parametrize("n", [2**64, 10**29, -(2**63) - 1, -(10**25)])
def test_a_big_integer_stays_an_integer(n: int) -> None:
    """orjson alone reads it as a float, silently: the decoder must not."""
    value = decode_json(b'{"n": %d}' % n)["n"]
    assert type(value) is int and value == n


@pytest.mark.parametrize("raw", BAD)
def test_refusals_are_json_loads_refusals(raw: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)) as mine:
        decode_json(raw)
    with pytest.raises((ValueError, RecursionError)) as theirs:
        json.loads(raw)
    assert type(mine.value) is type(theirs.value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300)
@given(json_values, st.booleans())
def test_any_json_document_decodes_as_json_loads_does(value: Any, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        expected = json.loads(raw)
    except ValueError:
        with pytest.raises(ValueError):
            decode_json(raw)
        return
    assert _same(decode_json(raw), expected)
