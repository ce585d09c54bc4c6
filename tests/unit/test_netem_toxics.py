"""netem's toxic records parse like Toxiproxy's (defaults, order of checks, errors), updates
merge attributes, the slicer's cuts cover every byte, and rebuilding a live toxic chain in
any sequence of changes neither loses nor reorders a byte."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netem.chain import Counters, Pipe, slice_sizes
from netem.toxics import ApiProblem, ToxicSpec, decode_body, parse_toxic, update_toxic


def test_defaults_follow_toxiproxy() -> None:
    spec = parse_toxic({"type": "latency"}, set())
    assert spec.name == "latency_downstream" and spec.stream == "downstream"
    assert spec.toxicity == 1.0 and spec.attributes == {"latency": 0, "jitter": 0}
    assert spec.to_json() == {
        "attributes": {"latency": 0, "jitter": 0},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1,
    }
    up = parse_toxic(
        {"type": "bandwidth", "stream": "UPSTREAM", "attributes": {"rate": 5, "x": 1}}, set()
    )
    assert up.name == "bandwidth_upstream" and up.attributes == {"rate": 5}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"type": "nope"}, 400, "invalid toxic type"),
        ({"type": "noop", "stream": "both"}, 400, "stream was invalid"),
        ({"type": "nope", "stream": "both"}, 400, "stream was invalid"),  # stream checked first
        ({"type": "noop"}, 409, "toxic already exists"),
        ({"type": "nope", "name": "noop_downstream"}, 400, "invalid toxic type"),  # type first
        ({"type": "noop", "toxicity": 1.5}, 400, "probability"),
        ({"type": "limit_data", "attributes": {"bytes": True}}, 400, "bad request body"),
        ({"type": "slicer", "attributes": {"average_size": 0}}, 400, "out of range"),
        ({"type": "timeout", "attributes": {"timeout": -5}}, 400, "out of range"),
        ([], 400, "bad request body"),
        ({"type": 3}, 400, "bad request body"),
    ],
)
def test_checks_in_toxiproxys_order(body: object, status: int, message: str) -> None:
    with pytest.raises(ApiProblem) as info:
        parse_toxic(body, {"noop_downstream"})
    assert info.value.status == status and message in info.value.message
    assert info.value.body() == {"error": info.value.message, "status": status}


def test_update_merges_attributes_and_keeps_identity() -> None:
    spec = parse_toxic({"type": "latency", "attributes": {"latency": 10, "jitter": 2}}, set())
    updated = update_toxic(spec, {"attributes": {"jitter": 5}, "name": "ignored"})
    assert updated.attributes == {"latency": 10, "jitter": 5} and updated.uid == spec.uid
    assert updated.name == spec.name and updated.toxicity == 1.0
    assert update_toxic(spec, {"toxicity": 0}).toxicity == 0.0
    with pytest.raises(ApiProblem):
        update_toxic(spec, {"attributes": {"latency": -1}})


def test_body_decoding_reads_the_first_json_value_only() -> None:
    assert decode_body(b' {"a": 1} trailing') == {"a": 1}
    for raw in (b"", b"   ", b"{", b"\xff"):
        with pytest.raises(ApiProblem) as info:
            decode_body(raw)
        assert info.value.status == 400


@given(
    total=st.integers(0, 20_000),
    average=st.integers(1, 500),
    variation_share=st.floats(0, 0.99),
    seed=st.integers(0, 2**32),
)
def test_slicer_cuts_cover_every_byte(
    total: int, average: int, variation_share: float, seed: int
) -> None:
    variation = int(average * variation_share)
    sizes = slice_sizes(total, average, variation, random.Random(seed))
    assert sum(sizes) == total
    assert all(0 < s <= average + variation for s in sizes)


class _Source:
    def pause(self, reason: int) -> None:
        pass

    def resume(self, reason: int) -> None:
        pass


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False

    def write(self, data: bytes) -> None:
        self.data += data

    def write_eof(self) -> None:
        self.eof = True

    def writable(self) -> bool:
        return True

    async def wait_writable(self) -> None:
        return None


def _random_chain(rng: random.Random, pool: list[ToxicSpec]) -> list[ToxicSpec]:
    """A chain Toxiproxy could reach: some of the pool, in pool (insertion) order."""
    return [spec for spec in pool if rng.random() < 0.6]


@pytest.mark.parametrize("seed", range(6))
async def test_rebuilding_the_chain_keeps_every_byte_in_order(seed: int) -> None:
    rng = random.Random(seed)
    pool = [
        parse_toxic(
            {"type": "latency", "name": "l1", "attributes": {"latency": 2, "jitter": 2}}, set()
        ),
        parse_toxic(
            {"type": "slicer", "name": "s", "attributes": {"average_size": 7, "size_variation": 3}},
            set(),
        ),
        parse_toxic({"type": "bandwidth", "name": "b", "attributes": {"rate": 5_000}}, set()),
        parse_toxic({"type": "noop", "name": "n", "toxicity": 0.5}, set()),
        parse_toxic({"type": "latency", "name": "l2", "attributes": {"latency": 1}}, set()),
        parse_toxic({"type": "slow_close", "name": "c", "attributes": {"delay": 1}}, set()),
    ]
    sink = _Sink()
    ended: list[object] = []
    counters = Counters()
    pipe = Pipe("downstream", _Source(), sink, rng, ended.append, counters)
    sent = bytearray()
    for _ in range(300):
        data = rng.randbytes(rng.randint(1, 300))
        sent += data
        pipe.feed(data)
        if rng.random() < 0.15:
            chain = _random_chain(rng, pool)
            if rng.random() < 0.3 and chain:  # an update of one toxic's attributes
                chain[0] = update_toxic(chain[0], {"toxicity": 1})
                pool[pool.index(next(p for p in pool if p.uid == chain[0].uid))] = chain[0]
            pipe.apply(chain)
        if rng.random() < 0.3:
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.003]))
    pipe.feed_eof()
    for _ in range(400):
        if sink.eof:
            break
        await asyncio.sleep(0.005)
    else:
        pipe.apply([])  # release whatever is still delayed
    assert bytes(sink.data) == bytes(sent)
    assert counters.received == counters.sent == len(sent)
    assert sink.eof
    pipe.close()
