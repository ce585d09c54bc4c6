"""The comparison result: one JSON file per run of one mode on one topology (docs/benchmarks.md).

Theory of operation
-------------------
The mode comparison (issue: single-leader against multi-leader under the same emulated WAN)
writes one file per run; the report (bench/report.py) groups files by topology and RTT scale
and puts the modes side by side. The TypedDicts below are the contract between the runner
that writes a file and the report that reads it. A document is recognised by
``"schema": "geostore-comparison/1"``; everything marked ``NotRequired`` may be absent and the
report then prints "not measured".

Required: ``schema``, ``config`` (``topology``, ``rtt_scale``, ``mode``, ``workload``,
``duration_s``), ``environment`` (bench/results.py's ``environment()``), and ``regions`` with,
per client region, ``throughput_events_per_s`` and ``latency_ms`` (p50/p90/p99/max).

:func:`validate_comparison` checks a decoded document and returns the first problem as
``ComparisonError(file, field, reason)``. Helpers turn latency samples or an HDR histogram
into the CDF sample list that the plots draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, TypedDict

from geostore.errors import ConfigError

SCHEMA = "geostore-comparison/1"
#: A run whose machine was busier than this (percent of all cores) is flagged CPU-bound.
CPU_BOUND_PCT = 80.0
#: How many points a CDF keeps for plotting (enough for a smooth curve, small in JSON).
CDF_POINTS = 200


class ComparisonError(ConfigError):
    """A comparison result file that does not follow the schema: file, field, reason."""


class Percentiles(TypedDict):
    p50: float
    p90: NotRequired[float]
    p99: float
    max: NotRequired[float]


class RunConfig(TypedDict):
    topology: str
    rtt_scale: float
    mode: str  # "multi-leader" | "single-leader"
    workload: str  # "flights" | "weather" | "synthetic"
    duration_s: float
    warmup_s: NotRequired[float]
    loop: NotRequired[str]  # "closed" | "open"
    concurrency_per_region: NotRequired[int]  # closed loop: outstanding requests per region
    rate_per_region: NotRequired[float]  # open loop: offered requests/s per region
    batch: NotRequired[int]  # events per request
    leader_region: NotRequired[str | None]  # single-leader: where the group is led from
    remote_write_share: NotRequired[float]  # share of writes to partitions homed elsewhere
    intra_rtt_emulated: NotRequired[bool]  # False (default): floors use 0 ms inside a region
    experiment: NotRequired[str]  # the experiment file's name, when run from one
    topology_toml: NotRequired[str]  # the exact (unscaled) topology, for self-contained floors


class RegionResult(TypedDict):
    throughput_events_per_s: float
    throughput_requests_per_s: NotRequired[float]
    requests_ok: NotRequired[int]
    requests_failed: NotRequired[int]
    requests_late: NotRequired[int]  # open loop: sends that waited for a free slot
    latency_ms: Percentiles
    latency_cdf: NotRequired[list[list[float]]]  # [[latency_ms, fraction <= it], ...]
    latency_hdr: NotRequired[str]  # hdrhistogram's encode(), microseconds


class LinkResult(TypedDict):
    src: str
    dst: str
    lag_ms: NotRequired[Percentiles]
    lag_samples: NotRequired[list[list[float]]]  # [[seconds since start, lag_ms], ...]
    wan_bytes_raw: NotRequired[int]
    wan_bytes_compressed: NotRequired[int]
    wan_bytes_wire: NotRequired[int]
    #: each event's home commit to its apply at the destination (the receiving leader's
    #: histogram over the window; exact on one machine, clock skew included across machines)
    apply_lag_ms: NotRequired[Percentiles]
    apply_lag_events: NotRequired[int]


class ProcessCpu(TypedDict):
    cpu_s: float
    cpu_pct: NotRequired[float]  # of one core
    runq_wait_s: NotRequired[float]  # ready to run but waiting for a core (all its threads)


class CpuResult(TypedDict):
    processes: NotRequired[dict[str, ProcessCpu]]
    machine_cpu_pct: NotRequired[float]  # of all cores, over the measured window
    cpu_bound: NotRequired[bool]  # machine_cpu_pct > CPU_BOUND_PCT (derived when absent)


class OneRegion(TypedDict):
    """Multi-leader runs only: the first region's nodes alone (no WAN, no geo layer), the same
    closed loop, measured on the same machine right after: the "one-region figure"."""

    region: str
    duration_s: float
    concurrency: NotRequired[int]
    throughput_events_per_s: float
    latency_ms: Percentiles
    fsync_ms: NotRequired[Percentiles]
    machine_cpu_pct: NotRequired[float]


class ComparisonResult(TypedDict):
    schema: str
    config: RunConfig
    environment: dict[str, Any]
    regions: dict[str, RegionResult]
    links: NotRequired[dict[str, LinkResult]]  # key "SRC->DST"
    cpu: NotRequired[CpuResult]
    fsync_ms: NotRequired[Percentiles]  # fsync latency measured in the same run
    one_region: NotRequired[OneRegion]  # multi-leader: the one-region baseline


def is_comparison(doc: Mapping[str, Any]) -> bool:
    return doc.get("schema") == SCHEMA


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_percentiles(file: str, where: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise ComparisonError(file, where, "must be an object with p50 and p99")
    for key in ("p50", "p99"):
        if key not in value:
            raise ComparisonError(file, f"{where}.{key}", "missing")
    for key, v in value.items():
        if not _number(v) or v < 0:
            raise ComparisonError(file, f"{where}.{key}", f"must be a number >= 0, got {v!r}")


def _check_pairs(file: str, where: str, value: Any) -> None:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(_number(x) for x in p) for p in value
    ):
        raise ComparisonError(file, where, "must be a list of [number, number] pairs")


def validate_comparison(doc: Any, file: str = "<result>") -> ComparisonResult:
    """Check ``doc`` against the schema; return it typed, or raise ComparisonError."""
    if not isinstance(doc, Mapping):
        raise ComparisonError(file, "<top>", "must be a JSON object")
    if doc.get("schema") != SCHEMA:
        raise ComparisonError(file, "schema", f"must be {SCHEMA!r}, got {doc.get('schema')!r}")
    for key in ("config", "environment", "regions"):
        if not isinstance(doc.get(key), Mapping):
            raise ComparisonError(file, key, "missing or not an object")
    config = doc["config"]
    for key in ("topology", "mode", "workload"):
        if not isinstance(config.get(key), str):
            raise ComparisonError(file, f"config.{key}", "missing or not a string")
    if config["mode"] not in ("multi-leader", "single-leader"):
        raise ComparisonError(file, "config.mode", f"unknown mode {config['mode']!r}")
    for key in ("rtt_scale", "duration_s"):
        if not _number(config.get(key)) or config[key] < 0:
            raise ComparisonError(file, f"config.{key}", "missing or not a number >= 0")
    if not doc["regions"]:
        raise ComparisonError(file, "regions", "no region measured")
    for name, region in doc["regions"].items():
        where = f"regions.{name}"
        if not isinstance(region, Mapping):
            raise ComparisonError(file, where, "must be an object")
        if not _number(region.get("throughput_events_per_s")):
            raise ComparisonError(file, f"{where}.throughput_events_per_s", "missing")
        _check_percentiles(file, f"{where}.latency_ms", region.get("latency_ms"))
        if "latency_cdf" in region:
            _check_pairs(file, f"{where}.latency_cdf", region["latency_cdf"])
    links = doc.get("links", {})
    if not isinstance(links, Mapping):
        raise ComparisonError(file, "links", "must be an object")
    for key, link in links.items():
        where = f"links.{key}"
        if not isinstance(link, Mapping) or not all(
            isinstance(link.get(k), str) for k in ("src", "dst")
        ):
            raise ComparisonError(file, where, "must be an object with src and dst")
        if "lag_ms" in link:
            _check_percentiles(file, f"{where}.lag_ms", link["lag_ms"])
        if "lag_samples" in link:
            _check_pairs(file, f"{where}.lag_samples", link["lag_samples"])
        if "apply_lag_ms" in link:
            _check_percentiles(file, f"{where}.apply_lag_ms", link["apply_lag_ms"])
    if "fsync_ms" in doc:
        _check_percentiles(file, "fsync_ms", doc["fsync_ms"])
    if "one_region" in doc:
        one = doc["one_region"]
        if not isinstance(one, Mapping) or not isinstance(one.get("region"), str):
            raise ComparisonError(file, "one_region", "must be an object with a region")
        if not _number(one.get("throughput_events_per_s")):
            raise ComparisonError(file, "one_region.throughput_events_per_s", "missing")
        _check_percentiles(file, "one_region.latency_ms", one.get("latency_ms"))
    cpu = doc.get("cpu", {})
    if not isinstance(cpu, Mapping):
        raise ComparisonError(file, "cpu", "must be an object")
    return doc  # type: ignore[return-value]


def cpu_bound(doc: Mapping[str, Any]) -> bool | None:
    """Whether the run's machine was over CPU_BOUND_PCT; None when not measured."""
    cpu = doc.get("cpu") or {}
    if "cpu_bound" in cpu:
        return bool(cpu["cpu_bound"])
    pct = cpu.get("machine_cpu_pct")
    return None if pct is None else float(pct) > CPU_BOUND_PCT


def cdf_from_samples(samples: Sequence[float], points: int = CDF_POINTS) -> list[list[float]]:
    """At most ``points`` pairs [value, fraction of samples <= value], evenly spaced in rank."""
    data = sorted(samples)
    n = len(data)
    if n == 0:
        return []
    step = max(1, n // points)
    ranks = list(range(step - 1, n, step))
    if ranks[-1] != n - 1:
        ranks.append(n - 1)
    return [[float(data[i]), (i + 1) / n] for i in ranks]


def cdf_from_histogram(hist: Any, unit_per_ms: float = 1000.0) -> list[list[float]]:
    """The CDF of an hdrhistogram ``HdrHistogram`` recorded in microseconds (by default)."""
    total = hist.get_total_count()
    if total == 0:
        return []
    out: list[list[float]] = []
    seen = 0
    for item in hist.get_recorded_iterator():
        seen += item.count_added_in_this_iter_step
        out.append([item.value_iterated_to / unit_per_ms, seen / total])
    if len(out) > CDF_POINTS:  # thin evenly, keep the last (the maximum)
        step = len(out) / CDF_POINTS
        out = [out[int(i * step)] for i in range(CDF_POINTS)] + [out[-1]]
    return out


def region_from_phase(stats: Any) -> RegionResult:
    """One region's entry from a ``bench.loadgen.PhaseStats`` (duck-typed): throughput, the
    percentiles, the CDF and the encoded HDR histogram (microseconds) of its measured window."""
    hist = stats.histogram
    out: RegionResult = {
        "throughput_events_per_s": float(stats.events_per_s),
        "throughput_requests_per_s": float(stats.requests_per_s),
        "requests_ok": int(stats.requests_ok),
        "requests_failed": int(sum(stats.failed.values())),
        "latency_ms": stats.latency_ms(),
    }
    if stats.phase.mode == "open":
        out["requests_late"] = int(stats.late)
    if hist.get_total_count():
        out["latency_cdf"] = cdf_from_histogram(hist)
        out["latency_hdr"] = hist.encode().decode("ascii")
    return out
