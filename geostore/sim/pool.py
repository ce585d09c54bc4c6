"""Running many independent seeds: in this process, or in forked worker processes.

Every simulator (Raft, geo, failover) runs its seeds the same way: one seed per task, results
handed to a callback as they finish (progress, failures printed at once), collected in
completion order. ``fork`` lets the workers inherit the imported modules and anything trained
before the pool starts, so starting them costs milliseconds.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import TypeVar

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
