"""The CI seed set (a commit-derived range of >= 300 runs over 3 and 5 nodes, safety and
liveness modes, plus every seed of tests/sim_regressions.txt) passes every invariant checker,
and over the set every fault kind and rare path is exercised at least once (C4)."""

from __future__ import annotations

from pathlib import Path

from geostore.sim import coverage
from geostore.sim.runner import ci_specs, default_jobs, read_regressions, replay_command, run_many
from geostore.sim.simulation import L1_TIMEOUTS_P99, l1_p99

ROOT = Path(__file__).resolve().parents[2]
CI_SEEDS = 300


def test_ci_seed_set_passes_and_covers_every_path() -> None:
    specs = ci_specs(CI_SEEDS, ROOT)
    assert len(specs) >= CI_SEEDS
    combos = {(s.nodes, s.mode) for s in specs}
    assert combos == {(3, "safety"), (3, "liveness"), (5, "safety"), (5, "liveness")}
    outcomes = run_many(specs, default_jobs())
    failed = [o for o in outcomes if not o.passed]
    report = "\n".join(
        f"seed {o.spec.seed} ({o.spec.nodes} nodes, {o.spec.mode}): {o.violations[:3]}\n"
        f"  replay: {replay_command(o.spec)}"
        for o in failed
    )
    assert not failed, f"{len(failed)} of {len(outcomes)} runs failed:\n{report}"
    totals = coverage.aggregate(o.coverage for o in outcomes)
    assert coverage.missing(totals) == [], coverage.format_table(totals, len(outcomes))
    assert all(o.ops >= 200 for o in outcomes)
    p99 = l1_p99(outcomes)
    assert p99 is not None and p99 <= L1_TIMEOUTS_P99, f"L1 p99 {p99} election timeouts"


def test_regression_list_is_well_formed_and_included() -> None:
    regressions = read_regressions(ROOT / "tests" / "sim_regressions.txt")
    assert regressions, "the regression list must not be empty"
    specs = set(ci_specs(10, ROOT))
    assert all(r in specs for r in regressions)
