"""Client history of a simulation run and the checker of its client-visible invariants.

Theory of operation: every client operation is recorded as an :class:`Op` with its invoke and
complete times (virtual ms) and an outcome: ``ok`` (it happened, with its result), ``fail``
(it definitely did not happen) or ``info`` (unknown: timed out, or its node crashed). The
offset of an append is the Raft index of its entry; reads are linearizable tail reads that
return every value at offsets ``[start, end]`` as the state machine held them when served.

:func:`check_history` takes such a history, and optionally the final log ``F`` (offset ->
value, read from converged replicas after heal), and reports the anomalies of the invariant
catalogue by name. It is a pure function over plain records so that handcrafted, mutated
histories can prove each check able to fail (tests/unit/test_checker_history.py).
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class OpKind(enum.StrEnum):
    APPEND = "append"
    READ = "read"


class Outcome(enum.StrEnum):
    OK = "ok"  #: happened; the result fields are set
    FAIL = "fail"  #: definitely did not happen
    INFO = "info"  #: indeterminate (timeout, crash of the node holding it)


@dataclass(slots=True)
class Op:
    """One client operation. ``complete_ms`` and ``outcome`` are None while it is in flight."""

    process: int
    kind: OpKind
    invoke_ms: int
    value: str | None = None  #: the unique value of an append
    start: int = 0  #: first offset a read asks for
    complete_ms: int | None = None
    outcome: Outcome | None = None
    offset: int | None = None  #: the offset of an ok append
    end: int | None = None  #: last offset covered by an ok read (applied index when served)
    observed: tuple[tuple[int, str], ...] = ()  #: (offset, value) pairs an ok read returned
    committed_at_invoke: int = 0  #: ghost: the highest index committed anywhere at invoke


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A named violation of a client-visible invariant, with a human explanation."""

    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass(slots=True)
class HistoryReport:
    anomalies: list[Anomaly] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def add(self, name: str, detail: str) -> None:
        # Cap the list: one broken run can otherwise produce thousands of lines.
        if len(self.anomalies) < 50:
            self.anomalies.append(Anomaly(name, detail))


def _completed(ops: Sequence[Op], kind: OpKind) -> list[Op]:
    return [op for op in ops if op.kind is kind and op.outcome is Outcome.OK]


def check_history(ops: Sequence[Op], final: Mapping[int, str] | None = None) -> HistoryReport:
    """Every client-visible anomaly of ``ops`` (and of the final log ``final`` when given).

    Checks: inconsistent-offsets (A1), duplicate (A2), lost-write (A3), phantom and
    aborted-read (A4), realtime-order (A6), stale-read and nonmonotonic-read (A7),
    nonmonotonic-send (A9).
    """
    report = HistoryReport()
    appends = _completed(ops, OpKind.APPEND)
    reads = _completed(ops, OpKind.READ)
    invoked = {op.value: op for op in ops if op.kind is OpKind.APPEND and op.value is not None}

    # A1 / A2: the version order built from acks, reads and the final log.
    value_at: dict[int, str] = {}
    offset_of: dict[str, int] = {}

    def observe(offset: int, value: str, source: str) -> None:
        prior = value_at.get(offset)
        if prior is None:
            value_at[offset] = value
        elif prior != value:
            report.add(
                "inconsistent-offsets", f"offset {offset} holds {prior!r} and {value!r} ({source})"
            )
        where = offset_of.get(value)
        if where is None:
            offset_of[value] = offset
        elif where != offset:
            report.add("duplicate", f"value {value!r} at offsets {where} and {offset} ({source})")

    for op in appends:
        assert op.offset is not None and op.value is not None
        observe(op.offset, op.value, f"ack to process {op.process}")
    for op in reads:
        for offset, value in op.observed:
            observe(offset, value, f"read by process {op.process} at {op.complete_ms} ms")
    if final is not None:
        for offset in sorted(final):
            observe(offset, final[offset], "final log")

    # A4: every observed value was appended, and not by an append that failed.
    for offset in sorted(value_at):
        value = value_at[offset]
        origin = invoked.get(value)
        if origin is None:
            report.add("phantom", f"value {value!r} at offset {offset} was never appended")
        elif origin.outcome is Outcome.FAIL:
            report.add(
                "aborted-read", f"value {value!r} at offset {offset} was from a failed append"
            )

    # A3: every ok append is in the final log, and in every read that covers its offset.
    for op in appends:
        assert op.offset is not None
        if final is not None and final.get(op.offset) != op.value:
            report.add(
                "lost-write",
                f"acked {op.value!r} at offset {op.offset} is missing from the final log",
            )
    acked_at = {op.offset: op for op in appends}
    for r in reads:
        assert r.end is not None
        seen = dict(r.observed)
        for offset in range(r.start, r.end + 1):
            a = acked_at.get(offset)
            if a is not None and offset not in seen:
                report.add(
                    "lost-write",
                    f"acked {a.value!r} at offset {offset} missing from a read of "
                    f"[{r.start}, {r.end}] by process {r.process}",
                )

    # A6 (realtime order of appends) and A7 (no stale reads): sweep ops by invoke time against
    # the maximum offset among appends completed strictly before.
    by_complete = sorted(appends, key=lambda op: (op.complete_ms or 0, op.offset or 0))
    complete_times = [op.complete_ms or 0 for op in by_complete]
    prefix_max: list[tuple[int, Op]] = []
    best: tuple[int, Op] | None = None
    for op in by_complete:
        assert op.offset is not None
        if best is None or op.offset > best[0]:
            best = (op.offset, op)
        prefix_max.append(best)

    def max_before(t: int) -> tuple[int, Op] | None:
        n = bisect.bisect_left(complete_times, t)
        return prefix_max[n - 1] if n else None

    for b in appends:
        assert b.offset is not None
        prior = max_before(b.invoke_ms)
        if prior is not None and prior[0] >= b.offset:
            report.add(
                "realtime-order",
                f"{b.value!r} at offset {b.offset} invoked after {prior[1].value!r} "
                f"(offset {prior[0]}) completed",
            )
    for r in reads:
        assert r.end is not None
        prior = max_before(r.invoke_ms)
        if prior is not None and prior[0] > r.end:
            report.add(
                "stale-read",
                f"read by process {r.process} invoked at {r.invoke_ms} ms ends at {r.end}, but "
                f"{prior[1].value!r} was acked at offset {prior[0]} before",
            )
    reads_by_complete = sorted(reads, key=lambda op: (op.complete_ms or 0, op.end or 0))
    read_times = [op.complete_ms or 0 for op in reads_by_complete]
    read_max: list[int] = []
    high = -1
    for r in reads_by_complete:
        assert r.end is not None
        high = max(high, r.end)
        read_max.append(high)
    for r in reads:
        assert r.end is not None
        n = bisect.bisect_left(read_times, r.invoke_ms)
        if n and read_max[n - 1] > r.end:
            report.add(
                "nonmonotonic-read",
                f"read invoked at {r.invoke_ms} ms ends at {r.end}, an earlier read saw "
                f"{read_max[n - 1]}",
            )

    # A9: one process's sequential appends get increasing offsets.
    last_offset: dict[int, int] = {}
    for op in sorted(appends, key=lambda op: op.invoke_ms):
        assert op.offset is not None
        prev = last_offset.get(op.process)
        if prev is not None and op.offset <= prev:
            report.add(
                "nonmonotonic-send",
                f"process {op.process} got offset {op.offset} after {prev}",
            )
        last_offset[op.process] = op.offset
    return report
