"""The seed-pool helpers every simulator shares: run_pool returns one result per seed, here and
in forked workers; a failed seed prints its violations, plan and replay command; and a seed
set's coverage names exactly the required counters no seed reached."""

from __future__ import annotations

from dataclasses import dataclass, field

from geostore.sim.failover import FoRunResult
from geostore.sim.geo import GeoRunResult
from geostore.sim.pool import format_failure, missing_coverage, run_pool


def _square(n: int) -> int:
    return n * n


@dataclass
class _Result:
    coverage: dict[str, int] = field(default_factory=dict)


def test_run_pool_runs_every_spec_here_and_in_workers() -> None:
    seen: list[int] = []
    assert run_pool(_square, [1, 2, 3], 1, seen.append) == [1, 4, 9] and seen == [1, 4, 9]
    assert sorted(run_pool(_square, list(range(6)), 2)) == [0, 1, 4, 9, 16, 25]


def test_missing_coverage_sums_over_the_seeds() -> None:
    results = [_Result({"a": 1, "extra": 3}), _Result({"b": 0}), _Result({"b": 2})]
    assert missing_coverage(results, ("a", "b", "c", "d")) == ["c", "d"]
    assert missing_coverage([], ("a",)) == ["a"]


def test_a_failed_geo_and_failover_seed_print_how_to_replay_them() -> None:
    geo = GeoRunResult(7, "safety", "accept_noncontiguous", False, ["G1: gap", "G2: late"],
                       "crash a1 @ 30 ms", {}, "h", 0, 0, 0, 0.0)  # fmt: skip
    text = format_failure(geo)
    assert text.startswith("geo seed 7 (safety, unsafe accept_noncontiguous) failed:")
    assert "\n  G1: gap\n  G2: late\n  plan: crash a1 @ 30 ms\n" in text
    assert text.endswith(f"replay: {geo.replay}") and "--start 7" in geo.replay
    fo = FoRunResult(9, None, False, ["G6: lost"], "lose b", {}, "h", 0, 0, 0, [], [], 0.0)
    assert format_failure(fo).startswith("failover seed 9 failed:\n  G6: lost\n  plan: lose b")
    assert format_failure(fo).endswith(fo.replay)
