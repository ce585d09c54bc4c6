"""The load generator's scheduling and accounting are exact in virtual time: a closed loop
completes concurrency x window / service time requests, an open loop issues rate x window
requests on schedule and charges queueing to latency (no coordinated omission), warm-up is
excluded, failures are counted by code, and latencies land in the HDR histogram.
"""

from __future__ import annotations

import argparse
import itertools
import os

import pytest

from bench.loadgen import (
    CpuSampler,
    LoopClock,
    Phase,
    PhaseStats,
    VirtualClock,
    closed_loop,
    cpu_seconds,
    open_loop,
    rss_bytes,
    to_result,
)
from bench.workloads import batches, synthetic
from geostore.errors import ApiError, ErrorCode

SERVICE_S = 1 / 64  # exact in binary floating point


def _service(clock: VirtualClock, seconds: float = SERVICE_S):
    calls: list[float] = []

    async def op(batch: int) -> int:
        calls.append(clock.now())
        await clock.sleep(seconds)
        return batch

    return op, calls


async def test_closed_loop_count_and_latency_in_virtual_time() -> None:
    clock = VirtualClock()
    op, calls = _service(clock)
    stats = await clock.run(closed_loop(op, Phase("closed", 4, 10), 1.0, 0.25, clock))
    # 4 workers x (1.0 s / (1/64) s) completions in the window (0.25, 1.25]
    assert stats.requests_ok == 4 * 64
    assert stats.events_ok == 4 * 64 * 10
    assert stats.requests_per_s == 256 and stats.events_per_s == 2560
    # latencies of requests begun at/after 0.25 and done by 1.25: begins 0.25 .. 1.234375
    assert stats.histogram.get_total_count() == 4 * 64
    lat = stats.latency_ms()
    assert lat["p50"] == pytest.approx(SERVICE_S * 1000, rel=1e-3)
    assert lat["p99"] == pytest.approx(SERVICE_S * 1000, rel=1e-3)
    # every worker stopped sending once the window ended
    assert max(calls) < 1.25 and len(calls) == 4 * 80


async def test_closed_loop_concurrency_one_is_sequential() -> None:
    clock = VirtualClock()
    in_flight = 0
    peak = 0

    async def op(batch: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await clock.sleep(SERVICE_S)
        in_flight -= 1
        return 1

    stats = await clock.run(closed_loop(op, Phase("closed", 1), 0.5, 0.0, clock))
    assert peak == 1 and stats.requests_ok == 32


async def test_open_loop_issues_rate_times_duration_on_schedule() -> None:
    clock = VirtualClock()
    op, calls = _service(clock, 0.005)
    stats = await clock.run(open_loop(op, Phase("open", 1000), 1.0, 0.25, clock))
    assert len(calls) == 1250  # warm-up 250 + window 1000, nothing after the end
    assert calls[:3] == pytest.approx([0.0, 0.001, 0.002])
    assert calls[-1] == pytest.approx(1.249)
    # completions inside (0.25, 1.25]: requests sent from 0.246 to 1.245, 1 ms apart
    assert stats.requests_ok == 1000
    assert stats.late == 0
    assert stats.latency_ms()["p99"] == pytest.approx(5.0, rel=1e-3)


async def test_open_loop_counts_queueing_from_the_intended_time() -> None:
    """A server slower than the offered rate: with two slots, the k-th request waits, and its
    latency grows; a loop measuring from the actual send time would see 10 ms flat."""
    clock = VirtualClock()
    op, calls = _service(clock, 0.010)
    stats = await clock.run(open_loop(op, Phase("open", 400), 0.5, 0.0, clock, outstanding_max=2))
    assert stats.late > 0
    lat = stats.latency_ms()
    assert lat["p50"] > 50  # queueing: far above the 10 ms service time
    assert lat["max"] > lat["p50"]
    assert len(calls) == 200  # every scheduled request was still sent


async def test_failures_are_counted_by_code_and_warmup_is_excluded() -> None:
    clock = VirtualClock()
    n = itertools.count()

    async def op(batch: int) -> int:
        await clock.sleep(SERVICE_S)
        if next(n) % 2:
            raise ApiError(ErrorCode.NO_QUORUM, "electing")
        return 1

    stats = await clock.run(closed_loop(op, Phase("closed", 1), 1.0, 1.0, clock))
    assert stats.requests_ok > 0 and stats.failed["no_quorum"] > 0
    total = stats.requests_ok + stats.failed["no_quorum"]
    assert total < 64  # the pause after each failure, and nothing from the warm-up second


def test_phase_parsing() -> None:
    assert Phase.parse("closed:16") == Phase("closed", 16, 1)
    assert Phase.parse("open:2500:100") == Phase("open", 2500, 100)
    assert Phase.parse("closed:64:1").name == "closed-c64-b1"
    for bad in ("closed:1.5", "open:0", "half:3", "closed:4:0", "closed"):
        with pytest.raises(argparse.ArgumentTypeError):
            Phase.parse(bad)


def test_result_carries_phase_metrics() -> None:
    stats = PhaseStats(Phase("closed", 2, 5), 2.0, requests_ok=10, events_ok=50)
    stats.histogram.record_value(2_000)
    stats.cpu_us_per_event = {"n1": 12.5}
    doc = to_result("x", {"k": 1}, [stats]).to_dict()
    values = {m["name"]: m["value"] for m in doc["metrics"]}
    assert values["closed-c2-b5.events_per_s"] == 25
    assert values["closed-c2-b5.p50"] == pytest.approx(2.0, rel=1e-3)
    assert values["closed-c2-b5.cpu_us_per_event.n1"] == 12.5
    assert doc["config"]["phases"][0]["requests_ok"] == 10


def test_cpu_sampling_of_this_process() -> None:
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(300_000))
    assert cpu_seconds(os.getpid()) > before
    sampler = CpuSampler({"me": os.getpid()})
    sampler.start, sampler.end = {"me": 1.0}, {"me": 1.5}
    assert rss_bytes(os.getpid()) > 1_000_000
    assert sampler.per_event_us(1000) == {"me": 500.0}


def test_synthetic_workload_is_deterministic_and_batched() -> None:
    a = list(itertools.islice(synthetic(7), 5))
    assert a == list(itertools.islice(synthetic(7), 5))
    assert [e["ts"] for e in a] == sorted(e["ts"] for e in a)
    first = next(batches(synthetic(), 100))
    assert len(first) == 100 and first[0]["key"] == first[0]["body"]["sensor"]


def test_region_report_targets_and_ratio() -> None:
    from bench.region import comparison_table, to_result

    def doc(rate: float, p50: float) -> dict[str, object]:
        phase = {
            "phase": "closed-c64-b1", "batch": 1, "requests_per_s": rate, "events_per_s": rate,
            "latency_ms": {"p50": p50, "p99": 2 * p50}, "failed": {},
            "cpu_us_per_event": {"n1": 1.0, "n2": 2.0, "n3": 3.0, "loadgen": 4.0},
            "requests_ok": int(rate * 8),
        }  # fmt: skip
        return {"config": {"phases": [phase]}}

    docs = {"geostore": doc(3_200, 20.0), "pysyncobj": doc(800, 5.0)}
    metrics = {m.name: m for m in to_result(docs, {}).metrics}  # type: ignore[arg-type]
    assert metrics["geostore.closed-c64-b1.appends_per_s"].met is True
    assert metrics["geostore.closed-c64-b1.p50"].met is True
    assert metrics["pysyncobj.closed-c64-b1.appends_per_s"].target is None
    assert metrics["ratio_geostore_to_pysyncobj.closed-c64-b1"].value == 4.0
    # a phase nobody answered has no latency: its p50 of 0 ms does not meet the target
    silent = {m.name: m for m in to_result({"geostore": doc(0, 0.0)}, {}).metrics}  # type: ignore[dict-item]
    assert silent["geostore.closed-c64-b1.appends_per_s"].met is False
    assert silent["geostore.closed-c64-b1.p50"].met is None
    text = comparison_table({"geostore": docs["geostore"], "pysyncobj": None})  # type: ignore[dict-item]
    assert "1 2 3 | 4" in text and "NOT RUN" in text and "fsync before ack" in text


def test_flight_times_are_scheduled_departures_in_utc() -> None:
    import pandas as pd

    from bench.workloads import scheduled_departure_us

    df = pd.DataFrame(
        {
            "year": [2013, 2013, 2013],
            "month": [1, 7, 11],
            "day": [1, 1, 3],
            "hour": [5, 5, 1],
            "minute": [15, 15, 30],
            # the 3 Nov 01:30 local time happens twice; time_hour says which (EST, 06:00Z)
            "time_hour": ["2013-01-01T10:00:00Z", "2013-07-01T09:00:00Z", "2013-11-03T06:00:00Z"],
        }
    )
    us = scheduled_departure_us(df)
    to_us = lambda text: int(pd.Timestamp(text).value // 1000)  # noqa: E731
    assert us == [
        to_us("2013-01-01T10:15:00Z"),  # EST: UTC-5
        to_us("2013-07-01T09:15:00Z"),  # EDT: UTC-4
        to_us("2013-11-03T06:30:00Z"),
    ]


def test_flights_workload_reads_the_real_rows() -> None:
    from bench.workloads import flights

    first, second = itertools.islice(flights(limit=2), 2)
    assert first["key"] == "EWR" and first["body"]["carrier"] == "UA"
    assert first["ts"] == 1_357_035_300_000_000  # 2013-01-01 05:15 New York
    assert second["body"]["origin"] == second["key"]
    assert all(type(v) in (int, str, type(None)) for v in first["body"].values())


def test_weather_workload_reads_the_real_rows_in_hour_order() -> None:
    from bench.workloads import WEATHER_ROWS, endless, weather

    events = list(weather())
    assert len(events) == WEATHER_ROWS
    first = events[0]
    # the file's first row: EWR, 2013-01-01 01:00 local = 06:00 UTC
    assert first["key"] == "EWR" and first["body"]["time_hour"] == "2013-01-01T06:00:00Z"
    assert first["ts"] == 1_357_020_000_000_000
    assert first["body"]["wind_gust"] is None and first["body"]["temp"] == 39.02
    assert [e["key"] for e in events[:3]] == ["EWR", "JFK", "LGA"]  # stations interleave
    assert all(a["ts"] <= b["ts"] for a, b in itertools.pairwise(events))
    assert {e["key"] for e in events} == {"EWR", "JFK", "LGA"}
    looped = list(itertools.islice(endless("weather"), WEATHER_ROWS + 2))
    assert looped[WEATHER_ROWS] == first  # endless wraps around to the first observation
    with pytest.raises(ValueError, match="weather"):
        endless("nope")


def test_loop_clock_reads_below_a_millisecond() -> None:
    """uvloop's loop.time() moves in whole milliseconds; the load generator's clock must not."""
    uvloop = pytest.importorskip("uvloop")

    async def smallest_step() -> float:
        clock = LoopClock()
        steps = []
        for _ in range(50):  # the smallest of many, so a preemption between reads is harmless
            a = clock.now()
            while (b := clock.now()) == a:
                pass
            steps.append(b - a)
        return min(steps)

    assert uvloop.run(smallest_step()) < 0.0005
