"""Proves the physical floors (three-continents by hand, both modes), the comparison schema's
validation, and that the report renders Markdown and valid PNGs from comparison results built
from real in-process measurements and from plain benchmark results."""

from __future__ import annotations

import itertools
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from bench.compare_schema import (
    SCHEMA,
    ComparisonError,
    cdf_from_histogram,
    cdf_from_samples,
    cpu_bound,
    region_from_phase,
    validate_comparison,
)
from bench.floor import append_floor_ms, lag_ack_floor_ms, lag_floor_ms, quorum_rtt_ms, ratio
from bench.report import ReportError, render_report, written_files
from bench.results import Metric, Result, environment, percentiles
from geostore.codec import compress, dumps_plain
from geostore.config import load_topology, make_topology

ROOT = Path(__file__).resolve().parents[2]
THREE = load_topology(ROOT / "regions" / "three-continents.toml")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# --- floors ---------------------------------------------------------------------------------
# three-continents: 3 x 3 nodes, intra 0.5 ms; RTTs use1-euw1 69.6, use1-apse1 218.9,
# euw1-apse1 182.2. Single-leader voters: all 9 nodes, majority 5.


def test_quorum_rtt_by_hand() -> None:
    # from us-east-1: self 0, two local 0.5, three in eu-west-1 at 69.6 -> the 5th is 69.6
    assert quorum_rtt_ms(THREE, "us-east-1") == 69.6
    assert quorum_rtt_ms(THREE, "eu-west-1") == 69.6
    # from ap-southeast-1: self, 0.5, 0.5, then eu-west-1 (182.2) before us-east-1 (218.9)
    assert quorum_rtt_ms(THREE, "ap-southeast-1") == 182.2
    # a regional group of 3: self and one local node make the majority
    assert quorum_rtt_ms(THREE, "eu-west-1", ["eu-west-1"]) == 0.5
    assert quorum_rtt_ms(THREE, "eu-west-1", ["eu-west-1"], intra_rtt_ms=0.0) == 0.0


def test_multi_leader_floor_three_continents() -> None:
    # client hop (intra 0.5) + regional quorum (intra 0.5) + fsync 2.0
    for region in THREE.region_names():
        assert append_floor_ms(THREE, "multi-leader", region, 2.0) == pytest.approx(3.0)
        # loopback inside a region (the WAN emulator delays only inter-region links)
        assert append_floor_ms(
            THREE, "multi-leader", region, 2.0, intra_rtt_ms=0.0
        ) == pytest.approx(2.0)


def test_single_leader_floor_three_continents() -> None:
    def floor(region: str, **kw: Any) -> float:
        return append_floor_ms(THREE, "single-leader", region, 2.0, **kw)

    # RTT(r, us-east-1) + 69.6 (nearest quorum from us-east-1) + 2.0
    assert floor("us-east-1") == pytest.approx(0.5 + 69.6 + 2.0)  # 72.1
    assert floor("eu-west-1") == pytest.approx(69.6 + 69.6 + 2.0)  # 141.2
    assert floor("ap-southeast-1") == pytest.approx(218.9 + 69.6 + 2.0)  # 290.5
    assert floor("us-east-1", intra_rtt_ms=0.0) == pytest.approx(71.6)
    # led from ap-southeast-1: the quorum reaches eu-west-1 (182.2)
    assert floor("us-east-1", leader_region="ap-southeast-1") == pytest.approx(218.9 + 182.2 + 2.0)
    # the first region leads by default
    assert floor("eu-west-1") == floor("eu-west-1", leader_region="us-east-1")


def test_floors_follow_rtt_scale_and_region_sizes() -> None:
    half = THREE.scaled(0.5)
    assert append_floor_ms(half, "single-leader", "eu-west-1", 1.0) == pytest.approx(
        34.8 + 34.8 + 1.0
    )
    zero = THREE.scaled(0)
    assert append_floor_ms(zero, "single-leader", "ap-southeast-1", 1.0, intra_rtt_ms=0) == 1.0
    # uneven regions: a with 1 node, b with 4; leader in a needs 3 of 5 -> reaches b
    t = make_topology({"a": ["a1"], "b": ["b1", "b2", "b3", "b4"]}, 40.0)
    assert quorum_rtt_ms(t, "a") == 40.0
    assert quorum_rtt_ms(t, "b") == 0.5
    assert append_floor_ms(t, "multi-leader", "a", 1.0) == pytest.approx(0.5 + 0.0 + 1.0)


def test_lag_floor_and_ratio() -> None:
    assert lag_floor_ms(THREE, "us-east-1", "ap-southeast-1") == pytest.approx(109.45)
    assert lag_floor_ms(THREE.scaled(2), "us-east-1", "eu-west-1") == pytest.approx(69.6)
    # measured at the home, to the acknowledgement: the floor is the round trip
    assert lag_ack_floor_ms(THREE, "us-east-1", "ap-southeast-1") == pytest.approx(218.9)
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(None, 3.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None


# --- real in-process measurements for the report ------------------------------------------


def _fsync_ms(path: Path, n: int) -> list[float]:
    """Latencies of n real write+fsync calls (the probe's 'append')."""
    out = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 64)
            os.fsync(fd)
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
    return out


def _pipe_lag_samples(n: int) -> list[list[float]]:
    """[t, ms] of n real trips of 32 bytes through an OS pipe (stand-in for a link)."""
    r, w = os.pipe()
    start = time.perf_counter()
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(w, b"y" * 32)
            os.read(r, 32)
            out.append([t0 - start, (time.perf_counter() - t0) * 1000])
    finally:
        os.close(r)
        os.close(w)
    return out


def _machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def measured_comparison(
    work: Path, mode: str, scale: float, *, minimal: bool = False, links: bool = True
) -> dict[str, Any]:
    """A comparison result whose every figure was measured here, in-process: each region's
    'appends' are real write+fsync calls, lag samples are real pipe trips, WAN bytes are real
    zstd output. The config says what it is (workload 'in-process-probe'); no cluster ran."""
    busy0, total0 = _machine_busy()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    regions: dict[str, Any] = {}
    for name in THREE.region_names():
        start = time.perf_counter()
        lat = _fsync_ms(work / f"{mode}-{scale}-{name}.log", 25)
        elapsed = time.perf_counter() - start
        region: dict[str, Any] = {
            "throughput_events_per_s": len(lat) / elapsed,
            "latency_ms": percentiles(lat),
        }
        if not minimal:
            region["latency_cdf"] = cdf_from_samples(lat)
            region["requests_ok"] = len(lat)
        regions[name] = region
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "config": {
            "topology": "three-continents",
            "rtt_scale": scale,
            "mode": mode,
            "workload": "in-process-probe",
            "duration_s": round(time.perf_counter() - t0, 3),
        },
        "environment": environment(),
        "regions": regions,
    }
    if minimal:
        return doc
    doc["config"].update(loop="closed", concurrency_per_region=1, experiment="unit-test")
    if mode == "single-leader":
        doc["config"]["leader_region"] = "us-east-1"
    events = [{"n": i, "origin": random.Random(i).choice(["EWR", "JFK"])} for i in range(200)]
    raw = dumps_plain(events)
    link_results = {}
    for src in THREE.region_names():
        for dst in THREE.region_names():
            if src != dst and links:
                samples = _pipe_lag_samples(20)
                link_results[f"{src}->{dst}"] = {
                    "src": src,
                    "dst": dst,
                    "lag_samples": samples,
                    "lag_ms": percentiles(s[1] for s in samples),
                    # measured pipe trips stand in for the receiving leader's histogram
                    "apply_lag_ms": percentiles(s[1] / 2 for s in samples),
                    "apply_lag_events": len(samples),
                    "wan_bytes_raw": len(raw),
                    "wan_bytes_compressed": len(compress(raw)),
                }
    if link_results:
        doc["links"] = link_results
    fsync = _fsync_ms(work / f"fsync-{mode}-{scale}.log", 10)
    doc["fsync_ms"] = percentiles(fsync)
    busy1, total1 = _machine_busy()
    cpu_s = time.process_time() - cpu0
    wall = time.perf_counter() - t0
    pct = 100.0 * (busy1 - busy0) / max(1, total1 - total0)
    doc["cpu"] = {
        "processes": {"pytest": {"cpu_s": cpu_s, "cpu_pct": 100.0 * cpu_s / wall}},
        "machine_cpu_pct": pct,
    }
    return validate_comparison(doc, "measured")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def results_dir() -> Any:
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        paths = []
        # both modes at RTT x1; single-leader also at x0 (no links: lag not measured there)
        for mode, scale in (("multi-leader", 1.0), ("single-leader", 1.0), ("single-leader", 0)):
            doc = measured_comparison(work, mode, scale, links=scale > 0)
            p = work / f"cmp-{mode}-x{scale:g}.json"
            p.write_text(json.dumps(doc))
            paths.append(p)
        yield work, paths


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1000, path


def test_report_renders_comparison(results_dir: tuple[Path, list[Path]]) -> None:
    work, paths = results_dir
    report = render_report(paths, work / "out")
    assert report == work / "out" / "report.md"
    text = report.read_text()
    for png in (
        "latency-cdf-three-continents-x1.png",
        "throughput-three-continents-x1.png",
        "lag-three-continents-x1.png",
        "latency-cdf-three-continents-x0.png",
        "throughput-three-continents-x0.png",
        "sweep-three-continents.png",
        "overview.png",  # two settings (RTT x1 and x0): every setting side by side
    ):
        _assert_png(work / "out" / png)
        assert f"({png})" in text
    files = written_files(report)
    assert len(files) == 8 and all(f.exists() for f in files)  # report + 7 plots
    assert not (work / "out" / "lag-three-continents-x0.png").exists()
    assert "Lag over time: not measured." in text
    assert "| mode | p50 (ms) | p99 (ms) | floor (ms) | p50 / floor | p99 / floor |" in text
    assert "| link | mode | p50 (ms) | p99 (ms) | floor: RTT (ms) |" in text
    header = "| link | mode | p50 (ms) | p99 (ms) | floor: one-way (ms) | p99 - one-way (ms) |"
    assert header in text
    assert "per-event replication lag (home commit to apply) p99 minus the one-way" in text
    assert "oldest unacknowledged event's age (sampled each second) p99 minus RTT" in text
    assert "| link | mode | raw | compressed | ratio | wire |" in text
    assert "## three-continents, RTT x1" in text and "## RTT sweep, three-continents" in text
    assert "**ap-southeast-1**" in text and "## Environment" in text
    assert "load average 1/5/15 min" in text and " / " in text.split("## Environment")[1]
    # the floor printed beside the p50 is the one bench/floor.py computes from the run's fsync
    doc = json.loads(paths[1].read_text())  # single-leader, x1
    floor = append_floor_ms(
        THREE, "single-leader", "eu-west-1", doc["fsync_ms"]["p50"], intra_rtt_ms=0.0
    )
    p50 = doc["regions"]["eu-west-1"]["latency_ms"]["p50"]
    r = p50 / floor  # printed with 2 decimals, or 2 significant digits below 0.1
    shown = f"{r:.2g}x" if r < 0.1 else f"{r:.2f}x"
    assert f"| {floor:,.2f} | {shown} |" in text
    assert "aggregate throughput multi-leader / single-leader" in text
    assert "machine at" in text  # the CPU line (CPU-bound or not, as measured)


def test_report_cpu_bound_flag(results_dir: tuple[Path, list[Path]], tmp_path: Path) -> None:
    _, paths = results_dir
    doc = json.loads(paths[0].read_text())
    doc["cpu"]["machine_cpu_pct"] = 100.0  # the flag's rule, not a latency figure
    assert cpu_bound(doc) is True
    p = tmp_path / "busy.json"
    p.write_text(json.dumps(doc))
    report = render_report([p], tmp_path / "out", plots=False)
    text = report.read_text()
    assert "**CPU-bound**" in text and "| yes |" in text  # the overview's CPU-bound column
    assert written_files(report) == [report]  # tables only


def test_report_states_the_one_region_target(
    results_dir: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    _, paths = results_dir
    doc = json.loads(paths[0].read_text())  # multi-leader, x1
    assert doc["config"]["mode"] == "multi-leader"
    worst = max(doc["regions"], key=lambda r: doc["regions"][r]["latency_ms"]["p50"])
    p50 = doc["regions"][worst]["latency_ms"]["p50"]
    doc["one_region"] = {
        "region": "us-east-1",
        "duration_s": 1.0,
        "throughput_events_per_s": 10.0,
        "latency_ms": {"p50": p50 / 4, "p99": p50},  # the worst region at 4x: not met
    }
    doc["links"]["us-east-1->eu-west-1"]["wan_bytes_wire"] = 123_456
    validate_comparison(doc)
    p = tmp_path / "ml.json"
    p.write_text(json.dumps(doc))
    text = render_report([p], tmp_path / "out", plots=False).read_text()
    assert f"one-region p50: 4.00x, worst region {worst}" in text
    assert "target ≤ 2x: NOT met" in text
    assert "| 120.6 KiB |" in text  # the emulator's wire bytes of that link
    doc["one_region"] = {"region": "us-east-1"}  # no figures
    with pytest.raises(ComparisonError, match="one_region"):
        validate_comparison(doc)


def test_report_minimal_comparison_says_not_measured(tmp_path: Path) -> None:
    doc = measured_comparison(tmp_path, "single-leader", 1.0, minimal=True)
    p = tmp_path / "min.json"
    p.write_text(json.dumps(doc))
    report = render_report([p], tmp_path / "out")
    text = report.read_text()
    assert "not measured" in text
    assert "Lag over time: not measured." in text
    assert "fsync not measured" in text
    _assert_png(tmp_path / "out" / "latency-cdf-three-continents-x1.png")
    assert not (tmp_path / "out" / "lag-three-continents-x1.png").exists()


def test_report_renders_plain_benchmark_results(tmp_path: Path) -> None:
    lat = _fsync_ms(tmp_path / "f.log", 10)
    p = tmp_path / "plain.json"
    result = Result(
        "fsync_probe",
        {"n": 10},
        [Metric("fsync_p50", percentiles(lat)["p50"], "ms", target=1e9, better="lower")],
    )
    p.write_text(json.dumps(result.to_dict()))
    text = render_report([p], tmp_path / "out").read_text()
    assert "| metric | value | unit | target | met? |" in text
    assert "| fsync_p50 |" in text and "| yes |" in text


def test_report_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match=r"bad\.json: not a JSON result"):
        render_report([bad], tmp_path / "out")
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(ReportError, match="neither a comparison result"):
        render_report([other], tmp_path / "out")
    with pytest.raises(ReportError, match="no result files"):
        render_report([], tmp_path / "out")


def test_schema_validation_names_the_field(tmp_path: Path) -> None:
    doc = measured_comparison(tmp_path, "multi-leader", 1.0, minimal=True)
    validate_comparison(doc, "ok.json")
    broken = json.loads(json.dumps(doc))
    broken["config"]["mode"] = "leaderless"
    with pytest.raises(ComparisonError, match=r"x.json: config.mode: unknown mode"):
        validate_comparison(broken, "x.json")
    broken = json.loads(json.dumps(doc))
    del broken["regions"]["eu-west-1"]["latency_ms"]["p99"]
    with pytest.raises(ComparisonError, match=r"regions.eu-west-1.latency_ms.p99: missing"):
        validate_comparison(broken, "x.json")
    broken = json.loads(json.dumps(doc))
    broken["links"] = {"a->b": {"src": "a", "dst": "b", "lag_samples": [[1.0]]}}
    with pytest.raises(ComparisonError, match=r"links.a->b.lag_samples"):
        validate_comparison(broken, "x.json")


def test_cdf_helpers() -> None:
    cdf = cdf_from_samples([float(i) for i in range(1, 1001)], points=100)
    assert len(cdf) == 100 and cdf[-1] == [1000.0, 1.0]
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in itertools.pairwise(cdf))
    assert cdf_from_samples([]) == []
    from hdrh.histogram import HdrHistogram

    hist = HdrHistogram(1, 10_000_000, 3)
    for v in (1000, 2000, 2000, 50_000):
        hist.record_value(v)
    hcdf = cdf_from_histogram(hist)
    assert hcdf[-1][1] == 1.0 and hcdf[0][0] == pytest.approx(1.0, rel=1e-2)
    assert hcdf[1][1] == 0.75


async def test_region_from_a_real_loadgen_phase(tmp_path: Path) -> None:
    from bench.loadgen import LoopClock, Phase, closed_loop

    fd = os.open(tmp_path / "probe.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def op(batch: int) -> int:  # a real durable write per request
        os.write(fd, b"z" * 64 * batch)
        os.fsync(fd)
        return batch

    try:
        stats = await closed_loop(op, Phase("closed", 2, 1), 0.3, 0.05, LoopClock())
    finally:
        os.close(fd)
    region = region_from_phase(stats)
    assert region["requests_ok"] == stats.requests_ok > 0
    assert region["throughput_events_per_s"] == stats.events_per_s
    assert region["latency_cdf"][-1][1] == 1.0
    from hdrh.histogram import HdrHistogram

    decoded = HdrHistogram.decode(region["latency_hdr"])
    assert decoded.get_total_count() == stats.histogram.get_total_count()
    doc = {
        "schema": SCHEMA,
        "config": {
            "topology": "three-continents",
            "rtt_scale": 1.0,
            "mode": "multi-leader",
            "workload": "in-process-probe",
            "duration_s": 0.3,
        },
        "environment": environment(),
        "regions": {"us-east-1": json.loads(json.dumps(region))},
    }
    validate_comparison(doc, "phase")
    p = tmp_path / "phase.json"
    p.write_text(json.dumps(doc))
    text = render_report([p], tmp_path / "out", plots=False).read_text()
    assert "**us-east-1**" in text
