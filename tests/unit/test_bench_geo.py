"""bench/geo.py's arithmetic: quantiles interpolated within Prometheus buckets, the dictionary
gain between the two runs, and the config each run starts its cluster with."""

from __future__ import annotations

import math

import pytest

from bench.geo import _interpolated_quantile, dictionary_gain, geo_config
from geostore.config import parse_config


def test_interpolated_quantile_within_buckets() -> None:
    buckets = {0.1: 5.0, 0.2: 10.0, math.inf: 20.0}
    assert _interpolated_quantile(buckets, 0.25) == 100.0  # rank 5: the first bound
    assert _interpolated_quantile({0.1: 0.0, 0.2: 10.0, math.inf: 10.0}, 0.5) == pytest.approx(150)
    assert _interpolated_quantile(buckets, 0.99) == 200.0  # in +Inf: the last finite bound
    assert _interpolated_quantile({}, 0.5) is None
    assert _interpolated_quantile({0.1: 0.0, math.inf: 0.0}, 0.5) is None


def test_dictionary_gain_compares_the_two_runs_link_by_link() -> None:
    def run(dictionary: bool, per_event: float) -> dict[str, object]:
        w = {"with_zstd": per_event, "events_per_batch": 10.0,
             "batches_with_dictionary_all_destinations": 8 if dictionary else 0,
             "batches_all_destinations": 10}  # fmt: skip
        return {"dictionary": dictionary, "wan": {"a->b": w}}

    gains = dictionary_gain(run(True, 40.0), run(False, 60.0))
    assert gains["a->b"]["gain"] == 1.5 and gains["a->b"]["dictionary_batch_share"] == 0.8
    assert dictionary_gain(run(True, 40.0), None) == {}
    assert dictionary_gain(run(False, 40.0), run(False, 60.0)) == {}


def test_each_run_config_is_a_valid_node_config() -> None:
    on = parse_config(geo_config(True, 20))
    off = parse_config(geo_config(False, 0))
    assert on.geo.use_dictionary and on.geo.batch_events_max == 20
    assert not off.geo.use_dictionary and off.geo.batch_events_max == 1000
