"""Hypothesis strategies the codec tests share: the plain values an event body may hold
(None, booleans, 64-bit and bignum-edge integers, finite floats, text, bytes) one level deep,
and two inside lists of maps. Deeper nesting is covered by the example tests; keeping it
shallow keeps generation cheap."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

#: Integers over the whole range CBOR encodes without a bignum tag (both signs).
ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
floats = st.floats(allow_nan=False)


def plain_values(texts: st.SearchStrategy[str], binary_size_max: int) -> st.SearchStrategy[Any]:
    """Plain values whose strings come from ``texts`` and whose byte strings are at most
    ``binary_size_max`` long."""
    scalars = (
        st.none() | st.booleans() | ints | floats | texts | st.binary(max_size=binary_size_max)
    )
    return (
        scalars
        | st.lists(scalars, max_size=3)
        | st.dictionaries(texts, scalars | st.lists(scalars, max_size=2), max_size=3)
    )
