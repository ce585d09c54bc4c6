"""The comparison runner drives a real two-region cluster through the WAN emulator in both
modes (multi-leader closed loop, single-leader open loop), each run yields a schema-valid
result with every measured section, the one-region baseline attaches to the multi-leader
result, the demo's side-by-side table prints from them and the report renders from the two
files with its plots."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.compare import attach_one_region, one_region_baseline, run_mode
from bench.compare_schema import validate_comparison
from bench.report import render_report, written_files
from geostore.cli.cmd_demo import comparison_tables
from geostore.config import load_topology

pytestmark = pytest.mark.timeout(240)

TOPOLOGY = """
name = "compare-two"
description = "two regions, one node each, 20 ms apart"

[[regions]]
name = "a"
intra_rtt_ms = 0.5
nodes = ["a1"]

[[regions]]
name = "b"
intra_rtt_ms = 0.5
nodes = ["b1"]

[[links]]
a = "a"
b = "b"
rtt_ms_p50 = 20.0
jitter_ms = 0.5
bandwidth_kbps = 20000
"""

PNG = b"\x89PNG\r\n\x1a\n"


def test_both_modes_measure_and_report(tmp_path: Path) -> None:
    topo = tmp_path / "compare-two.toml"
    topo.write_text(TOPOLOGY)
    lines: list[str] = []
    docs = {}
    for mode in ("multi-leader", "single-leader"):
        docs[mode] = run_mode(
            topo,
            mode,
            duration_s=4.0,
            warmup_s=2.0,
            concurrency_per_region=2,
            batch=1,
            workload="synthetic" if mode == "multi-leader" else "weather",
            leader_region="a",
            out_dir=tmp_path / "results",
            progress=lines.append,
            loop="closed" if mode == "multi-leader" else "open",
            rate_per_region=None if mode == "multi-leader" else 10.0,
        )
    baseline = one_region_baseline(
        topo,
        "a",
        duration_s=2.0,
        warmup_s=1.0,
        concurrency_per_region=2,
        batch=1,
        workload="synthetic",
        out_dir=tmp_path,
        progress=lines.append,
    )
    assert baseline["region"] == "a" and baseline["latency_ms"]["p50"] > 0
    docs["multi-leader"] = attach_one_region(
        tmp_path / "results" / "compare-two-multi-leader.json", baseline
    )
    files = sorted((tmp_path / "results").glob("*.json"))
    assert [f.name for f in files] == [
        "compare-two-multi-leader.json",
        "compare-two-single-leader.json",
    ]
    for mode, doc in docs.items():
        assert validate_comparison(doc) is doc
        assert doc["config"]["mode"] == mode
        for region in ("a", "b"):
            r = doc["regions"][region]
            assert r["requests_ok"] > 0, (mode, region, r)
            assert r["throughput_events_per_s"] > 0
            assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
            assert r["latency_cdf"][-1][1] == pytest.approx(1.0)
        assert doc["fsync_ms"]["p50"] > 0
        cpu = doc["cpu"]
        assert {"a1", "b1"} <= set(cpu["processes"])
        assert 0 <= cpu["machine_cpu_pct"] <= 100
        assert isinstance(cpu["cpu_bound"], bool)
    multi = docs["multi-leader"]
    ab = multi["links"]["a->b"]
    assert ab["lag_samples"] and ab["lag_ms"]["p50"] >= 0
    # every event the receiving region applied in the window, from its leader's histogram
    assert (
        ab["apply_lag_events"] > 0 and 0 <= ab["apply_lag_ms"]["p50"] <= ab["apply_lag_ms"]["p99"]
    )
    assert ab["wan_bytes_raw"] > 0 and ab["wan_bytes_compressed"] > 0
    single = docs["single-leader"]
    assert single["config"]["leader_region"] == "a"
    assert single["config"]["loop"] == "open" and single["config"]["rate_per_region"] == 10.0
    assert "concurrency_per_region" not in single["config"]
    assert all("requests_late" in r for r in single["regions"].values())
    # the emulator's wire bytes, both directions of the link, in both modes
    for doc in docs.values():
        assert doc["links"]["a->b"]["wan_bytes_wire"] > 0, doc["links"]
        assert doc["links"]["b->a"]["wan_bytes_wire"] > 0, doc["links"]
    # one progress line per second of load at least, and a summary per region and mode
    assert sum("measuring" in line for line in lines) >= 3
    # a summary per region and mode, plus the baseline's own (region a alone)
    assert sum(line.lstrip().startswith(("multi-leader", "single-leader")) for line in lines) == 5

    # the demo's side-by-side table: both modes per region, floors and ratios, links
    table = comparison_tables(docs, load_topology(topo))
    for needle in (
        "ML p50",
        "SL p50",
        "SL x floor",
        "a->b",
        "aggregate throughput",
        "one-region p50",
        "event p99",
        "one-way+50",
        "zstd B",
    ):
        assert needle in table, (needle, table)
    assert table.count("x ") >= 2

    report = render_report(files, tmp_path / "report")
    written = written_files(report)
    text = report.read_text()
    assert text.count("multi-leader") >= 2
    assert "multi-leader local append p50 / one-region p50" in text
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) >= 3
    for png in pngs:
        assert png.read_bytes()[:8] == PNG
