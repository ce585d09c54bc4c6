"""The comparison runner's pure parts turn real /proc reads, real metrics text and collected
samples into a result that passes the schema, and reject what does not."""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import pytest

from bench.compare import (
    STREAM,
    bucket_delta,
    bucket_quantile_ms,
    build_result,
    compare_topology_toml,
    cpu_result,
    fsync_percentiles,
    link_results,
    machine_cpu_pct,
    parse_histogram,
    parse_proc_pid_stat,
    parse_proc_stat,
    parse_schedstat,
    percentiles_of,
    summary_line,
    wire_bytes_per_link,
)
from bench.compare_schema import ComparisonError, validate_comparison
from bench.geo import apply_lag_buckets_of
from geostore.config import parse_topology
from geostore.runtime.metrics import Registry

ROOT = Path(__file__).resolve().parents[2]


def _spin(seconds: float) -> int:
    """Burn ``seconds`` of this process's CPU time (not wall time: on a loaded machine a
    wall-clock spin may get little CPU)."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def test_machine_cpu_from_real_proc_stat_reads() -> None:
    first = parse_proc_stat(Path("/proc/stat").read_text())
    _spin(0.2)  # this process keeps at least part of one core busy in between
    second = parse_proc_stat(Path("/proc/stat").read_text())
    busy0, total0 = first
    busy1, total1 = second
    assert 0 <= busy0 <= total0 and 0 <= busy1 <= total1
    assert total1 > total0 and busy1 > busy0  # the counters only grow, and we were busy
    pct = machine_cpu_pct(first, second)
    cores = os.cpu_count() or 1
    assert 100.0 / cores * 0.3 <= pct <= 100.0  # one spinning core is a share of all cores
    assert machine_cpu_pct(second, second) == 0.0  # no time passed: nothing to divide


def test_process_cpu_seconds_from_real_proc_pid_stat() -> None:
    tck = float(os.sysconf("SC_CLK_TCK"))
    before = parse_proc_pid_stat(Path("/proc/self/stat").read_text(), tck)
    _spin(0.3)
    after = parse_proc_pid_stat(Path("/proc/self/stat").read_text(), tck)
    times = os.times()
    assert after - before >= 0.1  # spinning costs CPU time
    assert after == pytest.approx(times.user + times.system, abs=0.05)


def test_cpu_result_flags_a_busy_machine_from_real_reads() -> None:
    tck = float(os.sysconf("SC_CLK_TCK"))
    m0 = parse_proc_stat(Path("/proc/stat").read_text())
    c0 = {"self": parse_proc_pid_stat(Path("/proc/self/stat").read_text(), tck)}
    _spin(0.2)
    m1 = parse_proc_stat(Path("/proc/stat").read_text())
    c1 = {"self": parse_proc_pid_stat(Path("/proc/self/stat").read_text(), tck)}
    cpu = cpu_result(c0, c1, m0, m1, 0.2)
    assert cpu["processes"]["self"]["cpu_s"] > 0
    assert cpu["cpu_bound"] == (cpu["machine_cpu_pct"] > 80.0)
    # the flag follows the 80% rule on synthetic edges too
    assert cpu_result({}, {}, (0, 0), (90, 100), 1)["cpu_bound"] is True
    assert cpu_result({}, {}, (0, 0), (50, 100), 1)["cpu_bound"] is False


def test_fsync_percentiles_from_a_real_registry_delta() -> None:
    reg = Registry()
    hist = reg.histogram("geostore_fsync_seconds", "fsync")
    hist.observe(0.5)  # before the window: must not count
    start = parse_histogram(reg.render(), "geostore_fsync_seconds")
    rng = random.Random(7)
    values = [rng.uniform(0.002, 0.004) for _ in range(200)]
    for v in values:
        hist.observe(v)
    end = parse_histogram(reg.render(), "geostore_fsync_seconds")
    assert end[math.inf] == 201
    delta = bucket_delta(start, end)
    assert delta[math.inf] == 200
    p = fsync_percentiles(delta)
    assert p is not None
    # the median lies in the bucket holding 2-4 ms, whatever its bounds are
    bounds = sorted(le for le in delta if delta[le] >= 100)
    assert p["p50"] <= bounds[0] * 1000
    assert 0 < p["p50"] <= p["p90"] <= p["p99"] < 500
    assert fsync_percentiles(bucket_delta(end, end)) is None  # nothing in the window
    assert bucket_quantile_ms({}, 0.5) is None


def _summed_into_b(nodes: list[Registry]) -> dict[tuple[str, str], dict[float, float]]:
    """The runner's sum: every node of destination region "b", per source region."""
    out: dict[tuple[str, str], dict[float, float]] = {}
    for reg in nodes:
        for (_, src), b in apply_lag_buckets_of(reg.render(), STREAM).items():
            per = out.setdefault((src, "b"), {})
            for le, v in b.items():
                per[le] = per.get(le, 0.0) + v
    return out


def test_per_event_apply_lag_per_link_from_real_registries() -> None:
    """Two nodes of one destination region (a leader change in the window) each count what
    they applied: the link's histogram is their sum over the window, per source region,
    other streams left out."""
    nodes = [Registry(), Registry()]
    hists = [
        r.histogram("geostore_geo_apply_lag_seconds", "lag", (0.05, 0.1, 0.2, 0.4)) for r in nodes
    ]
    hists[0].observe_many(0.3, 5, stream=STREAM, partition="0", source="a")  # before
    start = _summed_into_b(nodes)
    hists[0].observe_many(0.04, 60, stream=STREAM, partition="0", source="a")
    hists[1].observe_many(0.15, 40, stream=STREAM, partition="1", source="a")
    hists[1].observe_many(0.15, 7, stream=STREAM, partition="0", source="c")
    hists[1].observe_many(0.39, 9, stream="other", partition="0", source="a")
    end = _summed_into_b(nodes)
    apply = {k: bucket_delta(start.get(k, {}), v) for k, v in end.items()}
    links = link_results({}, {}, {}, {}, apply)
    ab = links["a->b"]
    assert ab["apply_lag_events"] == 100  # the 5 before the window and the other stream: out
    assert ab["apply_lag_ms"]["p50"] <= 50.0 < ab["apply_lag_ms"]["p99"] <= 200.0
    assert links["c->b"]["apply_lag_events"] == 7
    validate_comparison(
        {
            "schema": "geostore-comparison/1",
            "config": {
                "topology": "t",
                "rtt_scale": 1.0,
                "mode": "multi-leader",
                "workload": "w",
                "duration_s": 1.0,
            },
            "environment": {},
            "regions": {"b": {"throughput_events_per_s": 1.0, "latency_ms": {"p50": 1, "p99": 2}}},
            "links": links,
        },
        "apply",
    )


def test_links_and_build_result_validate() -> None:
    lag = {("a", "b"): [(0.0, 30.0), (1.0, 40.0), (2.0, 35.0)], ("b", "a"): [(0.0, 20.0)]}
    geo = {("a", "b"): (1000, 400), ("b", "a"): (600, 300), ("a", "c"): (10, 5)}
    links = link_results(lag, geo, {"a": ["b", "c"], "b": ["a"]}, {("a", "b"): 900})
    assert set(links) == {"a->b", "b->a", "a->c"}
    ab = links["a->b"]
    assert ab["lag_ms"]["p50"] == 35.0 and ab["lag_ms"]["max"] == 40.0
    # each link gets its own shipper bytes, not the home's total split over its links
    assert ab["wan_bytes_raw"] == 1000 and ab["wan_bytes_compressed"] == 400
    assert links["a->c"]["wan_bytes_raw"] == 10 and links["a->c"]["wan_bytes_compressed"] == 5
    assert ab["wan_bytes_wire"] == 900
    assert percentiles_of([5.0])["p99"] == 5.0
    region = {
        "throughput_events_per_s": 12.5,
        "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0},
        "latency_cdf": [[1.0, 0.5], [4.0, 1.0]],
    }
    config = {
        "topology": "t",
        "rtt_scale": 1.0,
        "mode": "multi-leader",
        "workload": "flights",
        "duration_s": 5.0,
    }
    doc = build_result(config, {"cpu_count": 2}, {"a": region, "b": region}, links=links)
    assert validate_comparison(doc) is doc
    assert "a" in summary_line("multi-leader", "a", region)
    with pytest.raises(ComparisonError):
        build_result({**config, "mode": "both"}, {}, {"a": region})
    with pytest.raises(ComparisonError):
        build_result(config, {}, {})


def test_compare_stream_is_homed_once_per_region() -> None:
    text = (ROOT / "regions" / "three-continents.toml").read_text()
    regions = ["us-east-1", "eu-west-1", "ap-southeast-1"]
    topo = parse_topology(compare_topology_toml(text, regions))
    spec = next(s for s in topo.streams if s.name == STREAM)
    assert spec.partitions == 3
    homes = {int(p): str(r) for p, r in dict(spec.homes).items()}
    assert homes == {0: "us-east-1", 1: "eu-west-1", 2: "ap-southeast-1"}


async def test_wire_bytes_count_both_streams_of_every_proxy_per_direction() -> None:
    """The emulator's own metrics text: proxy "a->b1" carries connections region a opened to
    node b1; its upstream bytes went a -> b, its downstream bytes (answers) b -> a."""
    from netem.api import Netem

    netem = Netem()
    for name in ("a->b1", "a->b2", "b->a1"):
        await netem.create({"name": name, "listen": "127.0.0.1:0", "upstream": "x:1",
                            "enabled": False})  # fmt: skip
    counts = {
        ("a->b1", "upstream"): 100,
        ("a->b1", "downstream"): 7,
        ("a->b2", "upstream"): 50,
        ("b->a1", "upstream"): 30,
        ("b->a1", "downstream"): 3,
    }
    for (name, stream), value in counts.items():
        netem.proxies[name].counters[stream].received = value
        netem.proxies[name].counters[stream].sent = value + 1000  # not what is counted
    wire = wire_bytes_per_link(netem.metrics_text(), {"b1": "b", "b2": "b", "a1": "a"})
    assert wire == {("a", "b"): 100 + 50 + 3, ("b", "a"): 7 + 30}
    # a proxy whose node the cluster does not know is left out
    assert wire_bytes_per_link(netem.metrics_text(), {"b1": "b"}) == {
        ("a", "b"): 100,
        ("b", "a"): 7,
    }


def test_run_queue_wait_from_real_schedstat_reads() -> None:
    path = Path(f"/proc/self/task/{os.getpid()}/schedstat")
    if not path.exists():
        pytest.skip("kernel without schedstats")
    first = parse_schedstat(path.read_text())
    _spin(0.05)
    second = parse_schedstat(path.read_text())
    assert 0 <= first <= second  # a counter of seconds, only growing
    cpu = cpu_result(
        {"n": 1.0}, {"n": 1.5}, (0, 100), (50, 200), 1.0, {"n": first}, {"n": first + 0.25}
    )
    assert cpu["processes"]["n"] == {"cpu_s": 0.5, "cpu_pct": 50.0, "runq_wait_s": 0.25}
    assert cpu["machine_cpu_pct"] == 50.0 and cpu["cpu_bound"] is False
    assert (
        "runq_wait_s"
        not in cpu_result({"n": 1.0}, {"n": 2.0}, (0, 1), (1, 2), 1.0)["processes"]["n"]
    )
