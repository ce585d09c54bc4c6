"""Proves the benchmark result format: targets judged on the right side, the environment
captured, the table and one-line JSON printed, files written, and percentiles by nearest rank."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bench.results import Metric, Result, emit, percentiles, table


def test_metric_met_respects_direction() -> None:
    assert Metric("x", 10, "1/s", target=5).met is True
    assert Metric("x", 4, "1/s", target=5).met is False
    assert Metric("lat", 4, "ms", target=5, better="lower").met is True
    assert Metric("lat", 6, "ms", target=5, better="lower").met is False
    assert Metric("x", 1, "1/s").met is None
    with pytest.raises(AssertionError):
        Metric("x", 1, "1/s", better="sideways")  # type: ignore[arg-type]


def test_result_captures_environment() -> None:
    doc = Result("demo", {"n": 1}, []).to_dict()
    env = doc["environment"]
    assert env["cpu_count"] >= 1 and env["python"].count(".") == 2
    assert env["timestamp_utc"].endswith("Z")
    assert len(env["load_average"]) == 3 and all(x >= 0 for x in env["load_average"])
    assert "git_commit" in env  # None outside a git checkout


def test_emit_prints_table_and_json_and_writes_files(tmp_path: Path) -> None:
    result = Result(
        "storage",
        {"quick": True},
        [
            Metric("appends_per_s", 250_000.0, "1/s", target=200_000),
            Metric("durable_p99", 7.5, "ms", target=5, better="lower"),
        ],
    )
    out = io.StringIO()
    doc = emit(result, tmp_path / "results", stream=out)
    lines = out.getvalue().splitlines()
    assert json.loads(lines[-1]) == doc
    text = "\n".join(lines[:-1])
    assert "appends_per_s" in text and "250,000" in text and "yes" in text and "NO" in text
    assert doc["targets_met"] is False
    assert [m["met"] for m in doc["metrics"]] == [True, False]
    (written,) = (tmp_path / "results").glob("storage-*.json")
    assert json.loads(written.read_text()) == doc
    target = tmp_path / "x" / "out.json"
    emit(result, json_out=target, stream=io.StringIO())
    assert json.loads(target.read_text())["name"] == "storage"


def test_table_has_header_and_a_row_per_metric() -> None:
    text = table(Result("t", {}, [Metric("a", 1.5, "ms"), Metric("b", 0.012, "ms")]))
    lines = text.splitlines()
    assert lines[1].split() == ["metric", "value", "unit", "target", "met?"]
    assert len(lines) == 5 and "0.012" in lines[-1]


def test_percentiles_nearest_rank() -> None:
    data = list(range(1, 101))
    assert percentiles(data) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([3.0]) == {"p50": 3.0, "p90": 3.0, "p99": 3.0, "max": 3.0}
    assert percentiles([])["max"] == 0.0
    assert percentiles([5, 1, 3])["p50"] == 3.0


def test_percentiles_of_an_hdr_histogram() -> None:
    hdrh = pytest.importorskip("hdrh.histogram")
    hist = hdrh.HdrHistogram(1, 1_000_000, 3)
    for v in range(1, 1001):
        hist.record_value(v)
    p = percentiles(hist)
    assert abs(p["p50"] - 500) <= 1 and abs(p["p99"] - 990) <= 1 and p["max"] >= 1000
