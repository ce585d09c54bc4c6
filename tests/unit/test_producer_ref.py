"""A producer pair is read the same way by the dict fast path and the general one: the same
ProducerRef, or the same typed refusal (empty or over-long ids, bools, negative or huge
seqs, missing or extra fields)."""

from __future__ import annotations

import types
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from geostore.errors import ApiError
from geostore.store.model import ProducerRef, StoreLimits

LIMITS = StoreLimits(producer_id_bytes_max=8)
_ids = st.text(max_size=5) | st.text(min_size=6, max_size=12) | st.integers() | st.none()
_seqs = st.integers(-3, 3) | st.integers(2**63 - 2, 2**64) | st.booleans() | st.floats()
_producers = st.fixed_dictionaries({"id": _ids, "seq": _seqs}) | st.dictionaries(
    st.sampled_from(["id", "seq", "x"]), _ids | _seqs, max_size=3
)


def _read(obj: Any) -> Any:
    try:
        return ProducerRef.from_json(obj, LIMITS)
    except ApiError as err:
        return (err.code, err.message, err.details)


@settings(max_examples=500, deadline=None)
@given(obj=_producers)
def test_the_dict_fast_path_reads_producers_as_the_general_path_does(obj: dict[str, Any]) -> None:
    assert _read(obj) == _read(types.MappingProxyType(obj))


def test_producer_refusals() -> None:
    assert ProducerRef.from_json({"id": "p", "seq": 3}, LIMITS) == ProducerRef("p", 3)
    for bad in (
        {"id": "", "seq": 1},
        {"id": "é" * 5, "seq": 1},  # 10 bytes of UTF-8
        {"id": "p", "seq": -1},
        {"id": "p", "seq": True},
        {"id": "p", "seq": 2**63},
        {"id": "p"},
        {"id": "p", "seq": 1, "x": 2},
    ):
        assert isinstance(_read(bad), tuple), bad
