"""Proves `geostore bench`: list names the benchmarks and experiment files, run executes a real
benchmark in a child process and its JSON renders through report, a missing bench/ is one
clear error, and experiment files are validated with file, field and reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import geostore
from bench.experiments import (
    ExperimentError,
    experiment_files,
    load_experiment,
)
from geostore.cli.cmd_bench import benchmarks, repo_root
from geostore.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_list_names_benchmarks_and_experiments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    assert "raft_core" in out and "Committed entries per second" in out
    assert "storage" in out and "codec" in out
    for name in ("modes-three-continents", "rtt-sweep", "region-count", "remote-writes"):
        assert f"{name}.toml" in out
    assert "INVALID" not in out
    # library modules are not benchmarks
    found = benchmarks(ROOT)
    assert "results" not in found and "report" not in found and "floor" not in found


def test_run_then_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = tmp_path / "raft.json"
    status = main(["bench", "run", "raft_core", "--entries", "1000", "--json-out", str(result)])
    assert status == 0
    doc = json.loads(result.read_text())
    assert doc["name"] == "raft_core" and doc["metrics"]
    out_dir = tmp_path / "report"
    assert main(["bench", "report", str(result), "--out", str(out_dir), "--no-plots"]) == 0
    assert f"report: {out_dir / 'report.md'}" in capsys.readouterr().out
    text = (out_dir / "report.md").read_text()
    assert "## raft_core" in text and "| entries_per_s_1_per_proposal |" in text
    assert "| metric | value | unit | target | met? |" in text


def test_run_passes_the_exit_status(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "run", "raft_core", "--no-such-flag"]) == 2  # argparse's status
    assert "unrecognized arguments" in capfd.readouterr().err  # the child's stderr, streamed


def test_run_unknown_benchmark_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "run", "no_such_bench"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("geostore bench: error: no benchmark 'no_such_bench'")
    assert "\n" not in err


def test_report_of_a_bad_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert main(["bench", "report", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "x.json: neither a comparison result" in err and "\n" not in err


def test_missing_bench_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "site-packages" / "geostore" / "__init__.py"
    monkeypatch.setattr(geostore, "__file__", str(fake))
    with pytest.raises(geostore.errors.GeostoreError, match="no bench/ folder"):
        repo_root()
    assert main(["bench", "list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("geostore bench: error: no bench/ folder beside the geostore package")
    assert "\n" not in err


# --- experiment files ---------------------------------------------------------------------


def test_shipped_experiments_validate() -> None:
    names = {p.stem: load_experiment(p) for p in experiment_files()}
    assert set(names) == {
        "modes-three-continents",
        "rtt-sweep",
        "region-count",
        "remote-writes",
        "open-loop-weather",
    }
    modes = names["modes-three-continents"]
    assert [r.mode for r in modes.runs()] == ["multi-leader", "single-leader"]
    assert modes.duration_s == 60 and modes.workload.concurrency_per_region == 4
    assert modes.workload.name == "flights" and modes.workload.loop == "closed"
    assert names["rtt-sweep"].rtt_scales == (0.0, 0.25, 0.5, 1.0, 2.0)
    assert [len(t.regions) for t in names["region-count"].topologies] == [2, 3, 5]
    assert 0.0 < max(names["remote-writes"].workload.remote_write_shares) <= 1
    config = modes.runs()[1].config()
    assert config["mode"] == "single-leader" and config["leader_region"] == "us-east-1"
    assert config["topology"] == "three-continents" and config["concurrency_per_region"] == 4
    assert "[[regions]]" in config["topology_toml"]
    assert modes.one_region_baseline_s == 20 and names["rtt-sweep"].one_region_baseline_s == 0
    weather = names["open-loop-weather"]
    assert weather.workload.name == "weather" and weather.workload.loop == "open"
    open_config = weather.runs()[0].config()
    assert open_config["loop"] == "open" and open_config["rate_per_region"] == 20
    assert "concurrency_per_region" not in open_config


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = str(ROOT / "bench" / "experiments" / "rtt-sweep.toml")
    assert main(["bench", "check", good]) == 0
    assert "rtt-sweep: 10 runs" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(_experiment(modes='["multi-leader", "raft"]'))
    assert main(["bench", "check", good, str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}: modes[1]: must be one of multi-leader, single-leader, got 'raft'"


def _experiment(
    *,
    modes: str = '["multi-leader", "single-leader"]',
    topologies: str = '["three-continents"]',
    extra: str = "",
    workload: str = 'name = "flights"\nconcurrency_per_region = 4',
) -> str:
    return (
        f'name = "t"\ntopologies = {topologies}\nmodes = {modes}\nduration_s = 10\n{extra}\n'
        f"[workload]\n{workload}\n"
    )


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        (_experiment(extra="colour = 1"), "colour", "unknown key"),
        (_experiment(topologies='["atlantis"]'), "topologies[0]", "no topology file"),
        (_experiment(topologies="[]"), "topologies", "non-empty array"),
        (_experiment(extra="rtt_scales = [1, -0.5]"), "rtt_scales[1]", ">= 0"),
        (_experiment(extra="rtt_scales = [1, 1]"), "rtt_scales", "duplicates"),
        (_experiment(extra='leader_region = "mars"'), "leader_region", "not a region"),
        (
            _experiment(modes='["multi-leader"]', extra='leader_region = "us-east-1"'),
            "leader_region",
            "no single-leader mode",
        ),
        (_experiment(extra="warmup_s = true"), "warmup_s", "finite number"),
        (
            _experiment(modes='["single-leader"]', extra="one_region_baseline_s = 10"),
            "one_region_baseline_s",
            "no multi-leader mode",
        ),
        (_experiment(workload='name = "taxis"'), "workload.name", "must be one of"),
        (
            _experiment(workload='name = "flights"\nloop = "open"'),
            "workload.rate_per_region",
            "missing",
        ),
        (
            _experiment(workload='name = "flights"\nconcurrency_per_region = 0'),
            "workload.concurrency_per_region",
            "integer >= 1",
        ),
        (
            _experiment(workload='name = "flights"\nremote_write_shares = [0.1, 1.5]'),
            "workload.remote_write_shares[1]",
            "at most 1",
        ),
        (
            _experiment(workload='name = "flights"\nbatch = 2\nspeed = 3'),
            "workload.speed",
            "unknown key",
        ),
        ('name = "t"\nmodes = [', "<toml>", "invalid TOML"),
        ('name = "t"\nmodes = ["multi-leader"]', "topologies", "missing required key"),
    ],
)
def test_experiment_validation_errors(tmp_path: Path, text: str, field: str, reason: str) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    with pytest.raises(ExperimentError) as info:
        load_experiment(path)
    assert info.value.file == str(path)
    assert info.value.field == field
    assert reason in info.value.reason


def test_experiment_topology_path_relative_to_file(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(
        (ROOT / "regions" / "two-near.toml").read_text().replace('"two-near"', '"mine"')
    )
    path = tmp_path / "exp.toml"
    path.write_text(_experiment(topologies='["mine.toml"]', extra="rtt_scales = [0, 2]"))
    exp = load_experiment(path)
    runs = exp.runs()
    assert [(r.topology.name, r.rtt_scale, r.mode) for r in runs] == [
        ("mine", 0.0, "multi-leader"),
        ("mine", 0.0, "single-leader"),
        ("mine", 2.0, "multi-leader"),
        ("mine", 2.0, "single-leader"),
    ]
    assert runs[3].scaled_topology().rtt_ms("eu-west-1", "eu-central-1") == pytest.approx(54.2)
