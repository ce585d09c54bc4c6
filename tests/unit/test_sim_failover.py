"""The failover simulation finds nothing wrong over a moving range of seeds, and catches each planted failover bug.

At least 60 seeds (their start derived from the current commit, as for the other simulators)
lose regions under load (crashes and isolations), fail over once the lease has run out, bring
the regions back, fail back with quarantine and move homes on purpose; the checkers G5-G8 must
pass and every coverage counter of :data:`FO_REQUIRED` must be non-zero. Each negative control
(failing over without waiting for the lease, failing back without the fork, forking at a stale
watermark) must be caught within 25 seeds, and a seed must always give the same trace.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from geostore.sim.failover import (
    FO_REQUIRED,
    FO_UNSAFE,
    FailoverSimulation,
    run_failover_range,
    run_failover_seed,
)
from geostore.sim.pool import format_failure, missing_coverage
from geostore.sim.runner import commit_start_seed, default_jobs

REPO = Path(__file__).resolve().parents[2]
CI_SEEDS = 60
#: Measured over seeds 100-109: no_lease_wait is caught in 6 of 10 (it needs an isolated home
#: noticed before its lease ran out), the two others in 8-9 of 10; 25 seeds miss the rarest
#: with probability about 0.4**25, 1e-10.
CONTROL_SEEDS_MAX = 25
EXPECTED = {"no_lease_wait": ("G5",), "no_quarantine": ("G7", "G8"), "stale_watermark": ("G6",)}


def test_ci_seed_range_passes_with_full_coverage() -> None:
    start = commit_start_seed(REPO) + 31_000
    t0 = time.perf_counter()
    results = run_failover_range(start, CI_SEEDS, jobs=min(2, default_jobs()))
    wall = time.perf_counter() - t0
    print(f"failover sim: {CI_SEEDS} seeds from {start} in {wall:.1f} s")
    assert len(results) == CI_SEEDS
    failed = [r for r in results if not r.passed]
    if failed:
        pytest.fail("\n".join(format_failure(r) for r in failed))
    assert missing_coverage(results, FO_REQUIRED) == []
    assert sum(r.acked for r in results) > 100 * CI_SEEDS


@pytest.mark.parametrize("unsafe", FO_UNSAFE)
def test_negative_control_is_caught(unsafe: str) -> None:
    start = commit_start_seed(REPO) + 41_000
    for seed in range(start, start + CONTROL_SEEDS_MAX):
        result = run_failover_seed(seed, unsafe)
        if not result.passed:
            assert result.violations[0].split()[0] in EXPECTED[unsafe], result.violations
            assert f"--failover-unsafe {unsafe}" in result.replay
            assert f"--start {seed}" in result.replay
            return
    pytest.fail(f"{unsafe} was not caught in {CONTROL_SEEDS_MAX} seeds from {start}")


def test_same_seed_same_trace() -> None:
    a, b = run_failover_seed(77), run_failover_seed(77)
    assert (a.trace_hash, a.coverage, a.acked) == (b.trace_hash, b.coverage, b.acked)
    assert run_failover_seed(78).trace_hash != a.trace_hash


def test_the_g5_ack_check_fires_on_a_late_ack() -> None:
    """Mutation test (C2): an ack under an epoch after the next one was committed."""
    from geostore.ids import Epoch, PartitionId, RegionId
    from geostore.sim.failover import _Ack

    sim = FailoverSimulation(5)
    p = PartitionId(0)
    sim.meta[p].epoch_committed_ms[2] = 100.0
    sim._check_g5_ack(_Ack("v1", p, RegionId("us-east-1"), Epoch(1), 3, 99.0))
    assert sim.violations == []
    sim._check_g5_ack(_Ack("v2", p, RegionId("us-east-1"), Epoch(1), 4, 100.0))
    assert [v.split()[0] for v in sim.violations] == ["G5"]


def test_cli_failover_closes_with_the_count_line(capsys: pytest.CaptureFixture[str]) -> None:
    from geostore.cli.main import main

    assert main(["sim", "--failover", "--seeds", "2", "--start", "3", "--jobs", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "2 passed, 0 failed"
