"""Running many independent seeds: in this process, or in forked worker processes.

Every simulator (Raft, geo, failover) runs its seeds the same way: one seed per task, results
handed to a callback as they finish (progress, failures printed at once), collected in
completion order. ``fork`` lets the workers inherit the imported modules and anything trained
before the pool starts, so starting them costs milliseconds. The geo and failover results
also share how a failure is printed (:func:`format_failure`: what failed, the plan, the
command that replays the seed) and how a seed set's coverage is checked
(:func:`missing_coverage`).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

S = TypeVar("S")
R = TypeVar("R")


def run_pool(
    run: Callable[[S], R],
    specs: Sequence[S],
    jobs: int,
    on_result: Callable[[R], None] | None = None,
) -> list[R]:
    """``run`` over every spec (``jobs`` processes; 1 runs here), in completion order.

    ``run`` must be a module-level function (the workers find it by name).
    """
    out: list[R] = []

    def collect(result: R) -> None:
        out.append(result)
        if on_result is not None:
            on_result(result)

    if jobs <= 1 or len(specs) <= 1:
        for spec in specs:
            collect(run(spec))
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(processes=min(jobs, len(specs))) as pool:
            for result in pool.imap_unordered(run, specs, chunksize=1):
                collect(result)
    return out


class SeedResult(Protocol):
    """What a seed's result shows when it failed."""

    @property
    def title(self) -> str:
        """The seed and how it ran (mode, negative control), e.g. ``geo seed 7 (safety)``."""
        ...

    @property
    def violations(self) -> list[str]: ...

    @property
    def plan(self) -> str: ...

    @property
    def replay(self) -> str:
        """The command that runs this seed again."""
        ...


class Covered(Protocol):
    @property
    def coverage(self) -> Mapping[str, int]: ...


def format_failure(result: SeedResult) -> str:
    """A failed seed for the terminal: its violations, its plan and its replay command."""
    return (
        f"{result.title} failed:\n  "
        + "\n  ".join(result.violations)
        + f"\n  plan: {result.plan}\n  replay: {result.replay}"
    )


def missing_coverage(results: Iterable[Covered], required: Sequence[str]) -> list[str]:
    """The ``required`` coverage counters that stayed at zero over ``results``."""
    total: Counter[str] = Counter()
    for r in results:
        total.update(r.coverage)
    return [name for name in required if total.get(name, 0) == 0]
