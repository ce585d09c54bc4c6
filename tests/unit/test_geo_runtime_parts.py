"""The runtime's geo helpers on real files and numbers: the fsync'd dictionary store keeps
exactly the dictionaries whose bytes match their id, survives a torn write and removes what
the receiver evicted; the per-event lag histogram gives p50/p99 within one bucket."""

from __future__ import annotations

import os
from pathlib import Path

from geostore.codec import CompressionDictionary
from geostore.runtime.geo import FileDictionaryStore
from geostore.runtime.metrics import Histogram, QuantileHistogram


def test_file_store_round_trip_torn_write_and_bad_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "dictionaries"
    store = FileDictionaryStore(str(folder), bytes_max=1000)
    assert store.load() == []
    a = CompressionDictionary.from_bytes(b"a" * 100)
    b = CompressionDictionary.from_bytes(b"b" * 200)
    store.put(a)
    store.put(b)
    os.utime(folder / f"{a.dict_id}.zdict", (1, 1))  # a is the older one
    assert store.load() == [a, b]
    # a crash mid-write leaves a temporary file; a flipped byte no longer matches its id;
    # an oversized file is over the bound: all three are dropped, the good one stays
    (folder / f"{a.dict_id}.zdict.tmp").write_bytes(b"partial")
    (folder / f"{b.dict_id}.zdict").write_bytes(b"c" + b.data[1:])
    big = CompressionDictionary.from_bytes(b"z" * 2000)
    (folder / f"{big.dict_id}.zdict").write_bytes(big.data)
    assert store.load() == [a]
    assert sorted(os.listdir(folder)) == [f"{a.dict_id}.zdict"]
    store.remove(a.dict_id)
    store.remove(a.dict_id)  # already gone: fine
    assert store.load() == []


def test_quantile_histogram_is_within_one_bucket() -> None:
    h = QuantileHistogram()
    assert h.quantile(0.5) is None
    for v in range(1, 1001):
        h.observe(float(v))
    h.observe(5000.0, 10)
    assert h.count == 1010 and h.max_ms == 5000.0
    p50 = h.quantile(0.5)
    p99 = h.quantile(0.99)
    assert p50 is not None and 505 <= p50 <= 505 * 1.05
    assert p99 is not None and 990 <= p99 <= 5000
    assert h.quantile(1.0) == 5000.0
    tiny = QuantileHistogram()
    tiny.observe(0.0, 3)
    assert tiny.quantile(0.99) == 0.0


def test_prometheus_histogram_counts_many_observations_at_once() -> None:
    h = Histogram("x_seconds", "help", (0.1, 1.0))
    h.observe_many(0.5, 7, source="a")
    text = "\n".join(h.render())
    assert 'x_seconds_bucket{source="a",le="1"} 7' in text
    assert 'x_seconds_count{source="a"} 7' in text and 'x_seconds_sum{source="a"} 3.5' in text
