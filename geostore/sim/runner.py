"""Running many seeds in parallel processes; the code path shared by the CLI and the tests.

Theory of operation: a run is fixed by a :class:`SeedSpec` (seed, node count, mode, optional
unsafe switch). Worker processes each run one spec at a time and send back a small
:class:`~geostore.sim.simulation.SeedOutcome`; the parent collects them in completion order
and the caller sorts by seed for reporting. The CI seed set moves with each commit: its start
is derived from ``git rev-parse HEAD`` so every commit explores new seeds, and the seeds of
the regression list (every seed that ever failed) always run too.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from geostore.sim.pool import run_pool
from geostore.sim.simulation import MODES, UNSAFE_SWITCHES, SeedOutcome, SeedSpec, run_seed

#: Used when git is unavailable (a source tarball), so the CI set is still fixed.
FALLBACK_START = 1_000_000
#: The regression list, relative to the repository root.
REGRESSIONS = Path("tests") / "sim_regressions.txt"


def auto_spec(
    seed: int,
    nodes: int | None,
    mode: str | None,
    unsafe: str | None,
    topology: str | None = None,
) -> SeedSpec:
    """The spec of ``seed``; node count and mode alternate with the seed unless given."""
    n = nodes if nodes is not None else (3 if seed % 2 == 0 else 5)
    m = mode if mode is not None else MODES[(seed // 2) % 2]
    return SeedSpec(seed=seed, nodes=n, mode=m, unsafe=unsafe, topology=topology)


def specs_for(
    start: int,
    count: int,
    nodes: int | None,
    mode: str,
    unsafe: str | None = None,
    topology: str | None = None,
) -> list[SeedSpec]:
    """Specs for seeds ``start .. start+count-1``; mode "both" runs each seed in each mode."""
    out: list[SeedSpec] = []
    for seed in range(start, start + count):
        if mode == "both":
            out.extend(auto_spec(seed, nodes, m, unsafe, topology) for m in MODES)
        elif mode == "auto":
            out.append(auto_spec(seed, nodes, None, unsafe, topology))
        else:
            out.append(auto_spec(seed, nodes, mode, unsafe, topology))
    return out


def commit_start_seed(repo: Path | None = None) -> int:
    """A start seed derived from the current commit (FALLBACK_START without git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return FALLBACK_START
    if not head:
        return FALLBACK_START
    digest = hashlib.blake2b(head.encode(), digest_size=8).digest()
    return 10_000_000 + int.from_bytes(digest, "big") % 1_000_000_000


def read_regressions(path: Path) -> list[SeedSpec]:
    """Lines ``SEED NODES MODE`` (``#`` starts a comment) of the regression list."""
    if not path.exists():
        return []
    out: list[SeedSpec] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        assert len(parts) == 3, f"{path}: bad line {raw!r} (want: SEED NODES MODE)"
        seed, nodes, mode = int(parts[0]), int(parts[1]), parts[2]
        assert nodes in (3, 5) and mode in MODES, f"{path}: bad line {raw!r}"
        out.append(SeedSpec(seed=seed, nodes=nodes, mode=mode, unsafe=None))
    return out


def ci_specs(count: int, repo: Path) -> list[SeedSpec]:
    """The CI seed set: ``count`` seeds from the commit-derived start, then the regressions."""
    specs = specs_for(commit_start_seed(repo), count, None, "auto")
    seen = set(specs)
    for spec in read_regressions(repo / REGRESSIONS):
        if spec not in seen:
            specs.append(spec)
            seen.add(spec)
    return specs


def replay_command(spec: SeedSpec) -> str:
    cmd = f"geostore sim --seeds 1 --start {spec.seed} --nodes {spec.nodes} --mode {spec.mode}"
    if spec.unsafe:
        cmd += f" --unsafe {spec.unsafe}"
    if spec.topology:
        cmd += f" --topology {spec.topology}"
    return cmd


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def run_many(
    specs: Sequence[SeedSpec],
    jobs: int,
    on_outcome: Callable[[SeedOutcome], None] | None = None,
) -> list[SeedOutcome]:
    """Run every spec (``jobs`` processes; 1 runs in this process) and return their outcomes
    sorted by (seed, nodes, mode)."""
    outcomes = run_pool(run_seed, specs, jobs, on_outcome)
    outcomes.sort(key=lambda o: (o.spec.seed, o.spec.nodes, o.spec.mode))
    return outcomes


__all__ = [
    "MODES",
    "UNSAFE_SWITCHES",
    "SeedOutcome",
    "SeedSpec",
    "auto_spec",
    "ci_specs",
    "commit_start_seed",
    "default_jobs",
    "read_regressions",
    "replay_command",
    "run_many",
    "specs_for",
]
