"""Negative controls (C1): each switch that breaks safety on purpose is caught by the
checkers within a bounded number of seeds, by the invariant it breaks."""

from __future__ import annotations

import pytest

from geostore.sim.simulation import UNSAFE_SWITCHES, SeedSpec, run_seed

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
