"""`geostore sim` runs seeds, reports failures with a replay command and coverage, ends with
`N passed, M failed` (exit 1 on failure), and never imports asyncio or aiohttp."""

from __future__ import annotations

import subprocess
import sys

import pytest

from geostore.cli.main import main
from geostore.sim.runner import auto_spec, commit_start_seed, replay_command, specs_for


def test_passing_run(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["sim", "--seeds", "2", "--start", "10", "--jobs", "2"])
    out = capsys.readouterr().out
    assert status == 0
    assert out.rstrip().splitlines()[-1] == "2 passed, 0 failed"
    assert "seeds/s" in out
    assert "snapshot_taken" in out


def test_failing_run_prints_replay(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "sim",
            "--seeds",
            "1",
            "--start",
            "3",
            "--nodes",
            "3",
            "--mode",
            "safety",
            "--jobs",
            "1",
            "--unsafe",
            "commit_without_quorum",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL seed 3 (3 nodes, safety)" in out
    assert "R4" in out
    assert "profile:" in out
    assert (
        "replay: geostore sim --seeds 1 --start 3 --nodes 3 --mode safety "
        "--unsafe commit_without_quorum" in out
    )
    assert out.rstrip().splitlines()[-1] == "0 passed, 1 failed"


def test_mode_both_runs_each_seed_twice() -> None:
    specs = specs_for(7, 3, 5, "both")
    assert [(s.seed, s.mode) for s in specs] == [
        (7, "safety"),
        (7, "liveness"),
        (8, "safety"),
        (8, "liveness"),
        (9, "safety"),
        (9, "liveness"),
    ]
    assert {s.nodes for s in specs} == {5}


def test_auto_spec_alternates_and_replays() -> None:
    kinds = {
        (auto_spec(s, None, None, None).nodes, auto_spec(s, None, None, None).mode)
        for s in range(4)
    }
    assert kinds == {(3, "safety"), (5, "safety"), (3, "liveness"), (5, "liveness")}
    spec = auto_spec(12, None, None, None)
    assert replay_command(spec) == f"geostore sim --seeds 1 --start 12 --nodes 3 --mode {spec.mode}"


def test_commit_start_seed_is_stable() -> None:
    assert commit_start_seed() == commit_start_seed()


def test_sim_never_imports_asyncio() -> None:
    code = (
        "import sys; from geostore.cli.main import main;"
        "rc = main(['sim', '--seeds', '1', '--jobs', '1']);"
        "bad = [m for m in ('asyncio', 'aiohttp', 'uvloop') if m in sys.modules];"
        "print('BAD', bad); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "BAD []" in out.stdout, out.stdout


def test_topology_drives_the_rtt_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from geostore.config.topology import load_topology
    from geostore.sim.simulation import SeedSpec, Simulation

    path = Path(__file__).resolve().parents[2] / "regions" / "three-continents.toml"
    topo = load_topology(path)
    sim = Simulation(SeedSpec(seed=1, nodes=3, mode="safety", topology=str(path)))
    regions = topo.region_names()
    rtts = {topo.rtt_ms(a, b) for a in regions for b in regions}
    assert set(sim.network.rtt_ms.values()) <= rtts
    voters = [n for n in sim.voters0]
    assert min(sim.network.rtt_ms[(a, b)] for a in voters for b in voters if a != b) > 10.0
    assert sim.election_ms > 3 * max(sim.network.rtt_ms.values())
    status = main(["sim", "--seeds", "1", "--start", "2", "--jobs", "1", "--topology", str(path)])
    out = capsys.readouterr().out
    assert status == 0 and out.rstrip().endswith("1 passed, 0 failed")
