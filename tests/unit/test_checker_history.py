"""The history checker accepts a valid history and flags each anomaly of a mutated one (C2)."""

from __future__ import annotations

import copy

import pytest

from geostore.sim.history import Op, OpKind, Outcome, check_history


def _append(process: int, value: str, invoke: int, complete: int, offset: int) -> Op:
    return Op(
        process,
        OpKind.APPEND,
        invoke,
        value=value,
        complete_ms=complete,
        outcome=Outcome.OK,
        offset=offset,
    )


def _read(process: int, invoke: int, complete: int, start: int, observed: dict[int, str]) -> Op:
    end = max(observed) if observed else start - 1
    return Op(
        process,
        OpKind.READ,
        invoke,
        start=start,
        complete_ms=complete,
        outcome=Outcome.OK,
        end=end,
        observed=tuple(sorted(observed.items())),
    )


def valid_history() -> tuple[list[Op], dict[int, str]]:
    """Two writers, a reader, an indeterminate and a failed append; offsets skip no-op 1."""
    ops = [
        _append(0, "a1", 0, 10, 2),
        _append(1, "b1", 5, 12, 3),
        _read(2, 13, 15, 2, {2: "a1", 3: "b1"}),
        _append(0, "a2", 20, 30, 4),
        Op(1, OpKind.APPEND, 21, value="b2", complete_ms=60, outcome=Outcome.INFO),
        Op(2, OpKind.APPEND, 22, value="c1", complete_ms=25, outcome=Outcome.FAIL),
        _read(2, 31, 35, 3, {3: "b1", 4: "a2", 5: "b2"}),
        _append(0, "a3", 40, 50, 6),
    ]
    final = {2: "a1", 3: "b1", 4: "a2", 5: "b2", 6: "a3"}
    return ops, final


def names(ops: list[Op], final: dict[int, str] | None) -> set[str]:
    return {a.name for a in check_history(ops, final).anomalies}


def test_valid_history_passes() -> None:
    ops, final = valid_history()
    report = check_history(ops, final)
    assert report.ok, report.anomalies
    assert check_history(ops, None).ok


def test_empty_history_passes() -> None:
    assert check_history([], {}).ok


def _mutated(mutate: str) -> tuple[list[Op], dict[int, str]]:
    ops, final = valid_history()
    ops = copy.deepcopy(ops)
    final = dict(final)
    if mutate == "lost-write":
        del final[4]  # the acked a2 vanished from the final log
    elif mutate == "lost-write-read":
        ops[6].observed = ((3, "b1"), (5, "b2"))  # a read covering offset 4 lacks a2
    elif mutate == "duplicate":
        final[7] = "a1"  # a1 stored twice
    elif mutate == "inconsistent-offsets":
        ops[2].observed = ((2, "a1"), (3, "zz"))
        ops.append(Op(3, OpKind.APPEND, 1, value="zz", complete_ms=70, outcome=Outcome.INFO))
    elif mutate == "phantom":
        final[7] = "never-written"
    elif mutate == "aborted-read":
        final[7] = "c1"  # the failed append shows up
    elif mutate == "stale-read":
        ops[6].observed = ((3, "b1"),)  # read invoked after a2 was acked at 4, ends at 3
        ops[6].end = 3
    elif mutate == "nonmonotonic-read":
        ops.append(_read(3, 36, 37, 2, {2: "a1", 3: "b1"}))  # after a read that saw 5
    elif mutate == "realtime-order":
        ops[7].offset = 1  # a3 invoked after a2 completed, yet at a lower offset
        final = {1: "a3", 2: "a1", 3: "b1", 4: "a2", 5: "b2"}
    elif mutate == "nonmonotonic-send":
        # process 0's later append gets an earlier offset, with no real-time overlap
        # others could explain: swap a2 and a1 and make them concurrent with nothing
        ops[0].offset, ops[3].offset = 4, 2
        ops[3].invoke_ms = 5
        ops[0].complete_ms = 21
        ops[2].observed = ((2, "a2"), (3, "b1"))
        ops[6].observed = ((3, "b1"), (4, "a1"), (5, "b2"))
        final = {2: "a2", 3: "b1", 4: "a1", 5: "b2", 6: "a3"}
    else:
        raise AssertionError(mutate)
    return ops, final


@pytest.mark.parametrize(
    ("mutation", "anomaly"),
    [
        ("lost-write", "lost-write"),
        ("lost-write-read", "lost-write"),
        ("duplicate", "duplicate"),
        ("inconsistent-offsets", "inconsistent-offsets"),
        ("phantom", "phantom"),
        ("aborted-read", "aborted-read"),
        ("stale-read", "stale-read"),
        ("nonmonotonic-read", "nonmonotonic-read"),
        ("realtime-order", "realtime-order"),
        ("nonmonotonic-send", "nonmonotonic-send"),
    ],
)
def test_each_anomaly_is_flagged(mutation: str, anomaly: str) -> None:
    ops, final = _mutated(mutation)
    found = names(ops, final)
    assert anomaly in found, f"{mutation}: found only {found}"


def test_info_and_fail_appends_need_not_appear() -> None:
    ops, final = valid_history()
    del final[5]  # b2 was indeterminate: absence is allowed ...
    ops[6].observed = ((3, "b1"), (4, "a2"))
    ops[6].end = 5
    assert check_history(ops, final).ok


def test_anomaly_list_is_bounded() -> None:
    ops = [_append(0, f"v{i}", i, i, 5) for i in range(200)]  # all at one offset
    report = check_history(ops, None)
    assert 0 < len(report.anomalies) <= 50
