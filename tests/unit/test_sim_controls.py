"""Negative controls (C1): each switch that breaks safety on purpose is caught by the
checkers within a bounded number of seeds, by the invariant it breaks."""

from __future__ import annotations

import dataclasses

import pytest

from geostore.sim.faults import FaultKind, PlanSpec
from geostore.sim.simulation import (
    UNSAFE_SWITCHES,
    SeedSpec,
    Simulation,
    control_settings,
    run_seed,
)

#: switch -> the invariant codes that may catch it
EXPECTED = {
    "ack_before_fsync": {"R4"},
    "commit_without_quorum": {"R4"},
    "ignore_figure8": {"P7"},
    "forget_vote": {"P6"},
    "count_learner_votes": {"P8"},
}
#: a switch must be caught within this many runs (seeds 0.., alternating 3 and 5 nodes)
RUNS_MAX = 10


def test_every_switch_has_a_control() -> None:
    assert set(EXPECTED) == set(UNSAFE_SWITCHES)


@pytest.mark.parametrize("switch", UNSAFE_SWITCHES)
def test_switch_is_caught(switch: str) -> None:
    for run in range(RUNS_MAX):
        outcome = run_seed(
            SeedSpec(seed=run // 2, nodes=(3, 5)[run % 2], mode="safety", unsafe=switch)
        )
        if not outcome.passed:
            codes = {v.split(" ", 1)[0] for v in outcome.violations}
            assert codes & EXPECTED[switch], outcome.violations
            return
    pytest.fail(f"{switch} was not caught in {RUNS_MAX} runs")


def test_same_seeds_pass_without_a_switch() -> None:
    for run in range(4):
        outcome = run_seed(SeedSpec(seed=run // 2, nodes=(3, 5)[run % 2], mode="safety"))
        assert outcome.passed, outcome.violations


#: invariants about outcomes (not protocol rules) a lost or overwritten commit breaks
OUTCOMES = {"P1", "P4", "P5", "R1", "R2", "history"}


@pytest.mark.parametrize("switch", ["ack_before_fsync", "commit_without_quorum"])
def test_switch_breaks_outcomes_not_only_rules(switch: str) -> None:
    """With the rule checks (R4 and friends) off, the same bug still surfaces as lost or
    diverging committed entries: the checkers see what a client would."""
    plan = PlanSpec(
        forced_kinds=(FaultKind.CRASH, FaultKind.ISOLATE),
        only_forced=True,
        faults_min=8,
        faults_max=16,
        crash_ms=(20, 300),
    )
    settings = dataclasses.replace(control_settings(switch), plan=plan, rule_checks=False)
    for run in range(12):
        spec = SeedSpec(seed=run // 2, nodes=(3, 5)[run % 2], mode="liveness", unsafe=switch)
        outcome = Simulation(spec, settings).run()
        codes = {v.split(" ", 1)[0] for v in outcome.violations}
        assert not codes & {"R4", "P6", "P7", "P8"}, outcome.violations  # rule checks are off
        if codes & OUTCOMES:
            return
    pytest.fail(f"{switch} broke no outcome invariant in 12 runs")
