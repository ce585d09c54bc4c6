"""Coverage counters (C4): how often each fault kind and each rare path ran.

Theory of operation: a checker that never sees a path cannot find its bugs, and a generator
can silently stop producing a fault after a change. Each run counts, under fixed names, the
faults it injected and the rare protocol paths the system took; the CI seed set sums them and
fails when any name in :data:`REQUIRED` is zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from geostore.sim.faults import ALL_KINDS

#: Rare protocol paths that the CI seed set must take at least once.
RARE_PATHS: tuple[str, ...] = (
    "election",
    "snapshot_taken",
    "snapshot_install",
    "leader_transfer",
    "membership_add_learner",
    "membership_promote",
    "membership_remove",
    "prevote_rejected",
    "checkquorum_stepdown",
    "read_index_served",
    "proposal_rejected",
    "proposal_overwritten",
    "log_truncated",
    "torn_write",
    "msg_dropped",
    "msg_duplicated",
    "msg_reordered",
)

#: Every counter the CI run requires to be non-zero.
REQUIRED: tuple[str, ...] = (
    *(f"fault_{k}" for k in ALL_KINDS),
    "fault_crash_point",
    *RARE_PATHS,
)


def aggregate(counters: Iterable[Mapping[str, int]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for c in counters:
        total.update(c)
    return total


def missing(total: Mapping[str, int]) -> list[str]:
    """Required counters that stayed at zero."""
    return [name for name in REQUIRED if total.get(name, 0) == 0]


def format_table(total: Mapping[str, int], runs: int) -> str:
    """Counters with their rate per 1,000 runs, one per line, required ones first."""
    names = list(REQUIRED) + sorted(k for k in total if k not in REQUIRED)
    width = max(len(n) for n in names)
    lines = [f"{'counter'.ljust(width)}  {'total':>9}  {'per 1000 runs':>13}"]
    for name in names:
        count = total.get(name, 0)
        per = 1000.0 * count / runs if runs else 0.0
        lines.append(f"{name.ljust(width)}  {count:>9}  {per:>13.1f}")
    return "\n".join(lines)
