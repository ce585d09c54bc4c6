"""bench/geo.py's arithmetic: quantiles interpolated within Prometheus buckets, WAN bytes per
event from each link's own shipper counters, the dictionary gain between the two runs, and the
config each run starts its cluster with."""

from __future__ import annotations

import math

import pytest

from bench.geo import _interpolated_quantile, dictionary_gain, geo_config, link_wan_bytes
from geostore.config import parse_config


def test_interpolated_quantile_within_buckets() -> None:
    buckets = {0.1: 5.0, 0.2: 10.0, math.inf: 20.0}
    assert _interpolated_quantile(buckets, 0.25) == 100.0  # rank 5: the first bound
    assert _interpolated_quantile({0.1: 0.0, 0.2: 10.0, math.inf: 10.0}, 0.5) == pytest.approx(150)
    assert _interpolated_quantile(buckets, 0.99) == 200.0  # in +Inf: the last finite bound
    assert _interpolated_quantile({}, 0.5) is None
    assert _interpolated_quantile({0.1: 0.0, math.inf: 0.0}, 0.5) is None


def test_wan_bytes_use_the_links_own_counters() -> None:
    def stats(scale: int) -> dict[str, object]:
        # the home shipped 10x more to b than to c: an even split would give both the mean
        dsts = {
            "b": {"bytes_raw": 1000 * scale, "bytes_compressed": 200 * scale,
                  "events_sent": 100 * scale, "batches_sent": 10 * scale, "retransmits": 0,
                  "envelope_bytes": 1200 * scale, "envelope_copies": scale},
            "c": {"bytes_raw": 100 * scale, "bytes_compressed": 20 * scale,
                  "events_sent": 10 * scale, "batches_sent": 1 * scale, "retransmits": scale},
        }  # fmt: skip
        return {"batches_sent": 11 * scale, "heartbeats_sent": 3 * scale, "destinations": dsts}

    s0, s1 = stats(1), stats(3)  # the window's delta is twice the first snapshot
    b = link_wan_bytes(s0, s1, "b", wire=3000, appended=200)
    assert b["events_shipped"] == 200 and b["batches"] == 20
    # at the shipper: its own envelope bytes; on the wire: the proxy's
    assert b["with_zstd"] == 12.0  # 2400 envelope bytes / 200 events
    assert b["without_zstd_computed"] == (2400 + 2000 - 400) / 200
    assert b["wire_with_zstd"] == 15.0  # 3000 wire bytes / 200 events
    assert b["wire_without_zstd_computed"] == (3000 + 2000 - 400) / 200
    assert b["envelope_copies"] == 2
    assert b["batches_all_destinations"] == 22 and b["heartbeats_all_destinations"] == 6
    c = link_wan_bytes(s0, s1, "c", wire=400, appended=20)
    # c resent each of its batches once: its payload crossed twice
    assert c["retransmitted_batches"] == 2 and c["batches"] == 2
    # c's nodes report no envelope bytes (an older node): the wire stands in
    assert c["without_zstd_computed"] == (400 + (200 - 40) * 2) / 20
    assert c["with_zstd"] == c["wire_with_zstd"]
    assert link_wan_bytes(s0, s1, "nowhere", wire=0, appended=0)["events_shipped"] == 0


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
