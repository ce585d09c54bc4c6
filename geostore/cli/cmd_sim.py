"""``geostore sim``: seeded deterministic simulation runs with invariant checkers.

Runs seeds in parallel processes, prints each failure with its fault mix and a one-line
replay command, shows progress, seeds/s and the aggregated coverage counters, and closes
with ``N passed, M failed`` (exit 1 when any failed). Never imports asyncio or aiohttp.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HELP = "seeded deterministic simulation runs with invariant checkers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from geostore.sim.simulation import UNSAFE_SWITCHES

    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=None, help="first seed (default: 0)")
    parser.add_argument(
        "--ci",
        action="store_true",
        help="the CI set: start derived from the git commit, plus tests/sim_regressions.txt",
    )
    parser.add_argument(
        "--nodes",
        choices=("3", "5", "auto"),
        default="auto",
        help="group size (auto: alternates 3 and 5 with the seed)",
    )
    parser.add_argument(
        "--mode",
        choices=("safety", "liveness", "both", "auto"),
        default="auto",
        help="safety: faults to the end; liveness: faults then heal (auto: alternates)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPUs)")
    parser.add_argument(
        "--unsafe", choices=UNSAFE_SWITCHES, default=None, help="negative control: break safety"
    )
    parser.add_argument(
        "--topology",
        default=None,
        help="topology file: spread the group over its regions and use its RTT matrix",
    )
    parser.add_argument("--verbose", action="store_true", help="print every seed's fault plan")
    parser.add_argument(
        "--geo",
        action="store_true",
        help="simulate the cross-region layer (shipper and receiver over a WAN) instead of Raft",
    )
    parser.add_argument(
        "--geo-unsafe",
        default=None,
        help="with --geo, a negative control: accept_noncontiguous or watermark_not_durable",
    )
    parser.add_argument(
        "--failover",
        action="store_true",
        help="simulate region loss, failover, failback with quarantine and planned moves",
    )
    parser.add_argument(
        "--failover-unsafe",
        default=None,
        help="with --failover, a negative control: no_lease_wait, no_quarantine or stale_watermark",
    )


def run(args: argparse.Namespace) -> int:
    from geostore.sim import coverage
    from geostore.sim.runner import (
        ci_specs,
        default_jobs,
        replay_command,
        run_many,
        specs_for,
    )
    from geostore.sim.simulation import L1_TIMEOUTS_P99, SeedOutcome, l1_p99

    if args.failover:
        return _run_failover(args)
    if args.geo:
        return _run_geo(args)
    nodes = None if args.nodes == "auto" else int(args.nodes)
    if args.ci:
        specs = ci_specs(args.seeds, Path.cwd())
    else:
        topology = None
        if args.topology is not None:
            from geostore.config.topology import load_topology

            load_topology(args.topology)  # a bad file fails here, once, with a clear error
            topology = str(Path(args.topology).resolve())
        specs = specs_for(args.start or 0, args.seeds, nodes, args.mode, args.unsafe, topology)
    jobs = args.jobs or default_jobs()
    total = len(specs)
    done = 0
    failed: list[SeedOutcome] = []
    began = time.monotonic()
    tty = sys.stderr.isatty()

    def report(outcome: SeedOutcome) -> None:
        nonlocal done
        done += 1
        if not outcome.passed:
            failed.append(outcome)
            spec = outcome.spec
            print(f"FAIL seed {spec.seed} ({spec.nodes} nodes, {spec.mode})", flush=True)
            for line in outcome.violations[:10]:
                print(f"  {line}")
            for line in outcome.plan.splitlines():
                print(f"  {line}")
            print(f"  replay: {replay_command(spec)}", flush=True)
        elif args.verbose:
            print(f"ok seed {outcome.spec.seed}: {outcome.plan.splitlines()[0]}")
        if tty and (done % 10 == 0 or done == total):
            rate = done / max(time.monotonic() - began, 1e-9)
            print(f"\r{done}/{total} runs, {rate:.1f} seeds/s", end="", file=sys.stderr)

    outcomes = run_many(specs, jobs, report)
    elapsed = time.monotonic() - began
    if tty:
        print(file=sys.stderr)
    totals = coverage.aggregate(o.coverage for o in outcomes)
    print(coverage.format_table(totals, len(outcomes)))
    zero = coverage.missing(totals)
    if zero and len(outcomes) >= 100:
        print(f"coverage: never reached: {', '.join(zero)}")
    p99 = l1_p99(outcomes)
    l1_failed = False
    if p99 is not None:
        n_live = sum(1 for o in outcomes if o.l1_timeouts is not None)
        print(
            f"L1: heal to leader p99 {p99:.2f} election timeouts over {n_live} liveness runs "
            f"(bound {L1_TIMEOUTS_P99:g})"
        )
        l1_failed = n_live >= 100 and p99 > L1_TIMEOUTS_P99
        if l1_failed:
            print("L1: FAILED: p99 above the bound")
    cpu = sum(o.cpu_s for o in outcomes)
    print(
        f"{len(outcomes)} runs in {elapsed:.1f} s with {jobs} jobs: "
        f"{len(outcomes) / max(elapsed, 1e-9):.1f} seeds/s, {cpu / max(len(outcomes), 1):.3f} "
        "CPU s per seed"
    )
    print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or l1_failed else 0


class _Progress:
    """Per finished seed: print a failure at once (with its replay line), and on a terminal a
    running seeds/s line; ``finish`` prints the coverage totals and returns the elapsed time."""

    def __init__(self, label: str, total: int, verbose: bool) -> None:
        self.label = label
        self.total = total
        self.verbose = verbose
        self.began = time.monotonic()
        self.done = 0
        self.tty = sys.stderr.isatty()

    def __call__(self, result: Any) -> None:
        self.done += 1
        if not result.passed:
            from geostore.sim.pool import format_failure

            print(format_failure(result), flush=True)
        elif self.verbose:
            print(f"ok seed {result.seed}: {result.plan}")
        if self.tty and (self.done % 10 == 0 or self.done == self.total):
            rate = self.done / max(time.monotonic() - self.began, 1e-9)
            print(
                f"\r{self.done}/{self.total} {self.label} runs, {rate:.1f} seeds/s",
                end="",
                file=sys.stderr,
            )

    def finish(self, results: Sequence[Any]) -> float:
        elapsed = time.monotonic() - self.began
        if self.tty:
            print(file=sys.stderr)
        totals: dict[str, int] = {}
        for r in results:
            for name, n in r.coverage.items():
                totals[name] = totals.get(name, 0) + n
        for name in sorted(totals):
            print(f"  {name:28} {totals[name]:>10}")
        return elapsed

    def summary(self, results: Sequence[Any], elapsed: float, jobs: int) -> int:
        """Print the closing lines; the number of failed seeds."""
        failed = sum(1 for r in results if not r.passed)
        print(
            f"{len(results)} {self.label} runs in {elapsed:.1f} s with {jobs} jobs: "
            f"{len(results) / max(elapsed, 1e-9):.1f} seeds/s"
        )
        print(f"{len(results) - failed} passed, {failed} failed")
        return failed


def _start_seed(args: argparse.Namespace) -> int:
    from geostore.sim.runner import commit_start_seed

    if args.ci:
        return commit_start_seed(Path.cwd())
    return args.start if args.start is not None else 0


def _run_geo(args: argparse.Namespace) -> int:
    """``--geo``: seeds of the geo simulation (the geo core over a seeded WAN, crashes on both
    sides, link faults, corrupt and stale batches; checkers G1-G5, G9, G10)."""
    from geostore.sim.geo import GEO_REQUIRED, GEO_UNSAFE, run_geo_range
    from geostore.sim.pool import missing_coverage
    from geostore.sim.runner import default_jobs

    if args.geo_unsafe is not None and args.geo_unsafe not in GEO_UNSAFE:
        print(f"geostore sim: error: --geo-unsafe must be one of {', '.join(GEO_UNSAFE)}")
        return 2
    mode = args.mode if args.mode in ("safety", "liveness") else None
    jobs = args.jobs or default_jobs()
    progress = _Progress("geo", args.seeds, verbose=False)
    results = run_geo_range(_start_seed(args), args.seeds, mode, args.geo_unsafe, jobs, progress)
    elapsed = progress.finish(results)
    zero = missing_coverage(results, GEO_REQUIRED)
    if zero and len(results) >= 100:
        print(f"coverage: never reached: {', '.join(zero)}")
    return 1 if progress.summary(results, elapsed, jobs) else 0


def _run_failover(args: argparse.Namespace) -> int:
    """``--failover``: seeds of the failover simulation (region losses under load, lease-gated
    failover, failback with quarantine, planned moves; checkers G5-G8)."""
    from geostore.sim.failover import FO_REQUIRED, FO_UNSAFE, run_failover_range
    from geostore.sim.pool import missing_coverage
    from geostore.sim.runner import default_jobs

    if args.failover_unsafe is not None and args.failover_unsafe not in FO_UNSAFE:
        print(f"geostore sim: error: --failover-unsafe must be one of {', '.join(FO_UNSAFE)}")
        return 2
    jobs = args.jobs or default_jobs()
    progress = _Progress("failover", args.seeds, verbose=args.verbose)
    results = run_failover_range(
        _start_seed(args), args.seeds, args.failover_unsafe, jobs, progress
    )
    elapsed = progress.finish(results)
    rpo = sorted(x for r in results for x in r.rpo_ms)
    pauses = sorted(x for r in results for x in r.pauses_ms)
    if rpo:
        print(f"failover RPO ms: p50 {rpo[len(rpo) // 2]} max {rpo[-1]} over {len(rpo)} failovers")
    if pauses:
        print(
            f"planned move pause ms: p50 {pauses[len(pauses) // 2]} max {pauses[-1]} "
            f"over {len(pauses)} moves"
        )
    zero = missing_coverage(results, FO_REQUIRED)
    if zero and len(results) >= 60:
        print(f"coverage: never reached: {', '.join(zero)}")
    failed = progress.summary(results, elapsed, jobs)
    return 1 if failed or (zero and len(results) >= 60) else 0
