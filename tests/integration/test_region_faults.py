"""Proves that a real 3-process region keeps the A (A1-A7, A9, A10) and R (R1, R5) properties of docs/testing.md
under process faults: client sessions append unique values with idempotent producers and read
regionally and locally while the leader is SIGKILLed and restarted from its data dir, a
follower and later the leader are SIGSTOPped past the election timeout, the leader is
restarted gracefully, and the leader is killed while a follower is paused (no quorum until it
returns); appends with unknown outcome and some acknowledged ones are resent
with their producer pair, and the history plus every node's final log go through the checker
of tests/integration/history.py. The checker itself is shown to catch each anomaly on
hand-made histories."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import pytest

from geostore.client import GeostoreClient, Producer
from tests.integration.history import (
    FinalState,
    History,
    Op,
    Region,
    Workload,
    check,
    final_state,
)

STREAM = "h"
PARTITIONS = 2
CONFIG = """
[raft]
tick_ms = 20
heartbeat_ticks = 5
election_ticks = 50
# snapshots and log compaction happen many times in a run, so a restarted or paused node may
# have to catch up from a snapshot (fault M3 of docs/testing.md)
snapshot_threshold_entries = 200
"""
#: the election timeout is election_ticks..2*election_ticks ticks: 1 to 2 s
PAUSE_S = 4.0
APPENDERS = 4
REGIONAL_READERS = 2
LOCAL_READERS = 1
RESENDS_OF_OK = 20
#: the deadline of the impatient session's appends (shorter than an election)
IMPATIENT_TIMEOUT_S = 0.6


async def faults(region: Region, history: History) -> None:
    """The nemesis: one scripted schedule of process faults (faults P1, P2 of docs/testing.md)."""

    def note(what: str) -> None:
        history.fault(time.monotonic(), what)
        print(f"fault t={time.monotonic() - history.t0_s:6.2f} s: {what}")

    await asyncio.sleep(3)
    leader = await region.leader()
    region.signal(leader, signal.SIGKILL)
    note(f"SIGKILL leader {leader}")
    await region.wait_dead(leader)
    await asyncio.sleep(3)
    region.restart(leader)
    note(f"restart {leader} from its data dir")

    await asyncio.sleep(3)
    now_leader = await region.leader()
    follower = next(n for n in region.nodes if n not in (now_leader, leader))
    region.signal(follower, signal.SIGSTOP)
    note(f"SIGSTOP follower {follower}")
    await asyncio.sleep(PAUSE_S)
    region.signal(follower, signal.SIGCONT)
    note(f"SIGCONT follower {follower}")

    await asyncio.sleep(3)
    leader = await region.leader()
    region.signal(leader, signal.SIGTERM)
    note(f"SIGTERM (graceful stop) leader {leader}")
    await region.wait_dead(leader)
    region.restart(leader)
    note(f"restart {leader} from its data dir")

    await asyncio.sleep(4)
    leader = await region.leader()
    region.signal(leader, signal.SIGSTOP)
    note(f"SIGSTOP leader {leader}")
    await asyncio.sleep(PAUSE_S)
    region.signal(leader, signal.SIGCONT)
    note(f"SIGCONT leader {leader}")

    # P6, correlated: a follower pauses, then the leader dies, so the one node left has no
    # quorum; when the paused (stale) follower returns, a majority forms with only one node
    # holding the latest entries, and it must be the one elected.
    await asyncio.sleep(3)
    leader = await region.leader()
    follower = next(n for n in region.nodes if n != leader)
    region.signal(follower, signal.SIGSTOP)
    note(f"SIGSTOP follower {follower}")
    await asyncio.sleep(1)
    region.signal(leader, signal.SIGKILL)
    note(f"SIGKILL leader {leader} (no quorum left)")
    await region.wait_dead(leader)
    await asyncio.sleep(2)
    region.signal(follower, signal.SIGCONT)
    note(f"SIGCONT follower {follower}")
    await asyncio.sleep(2)
    region.restart(leader)
    note(f"restart {leader} from its data dir")
    await asyncio.sleep(3)


@pytest.mark.timeout(400)
async def test_region_history_under_kill_pause_and_restart(tmp_path: Path) -> None:
    region = Region(tmp_path, CONFIG)
    history = History()
    region.up()
    try:
        async with GeostoreClient(region.urls, "r1", timeout_s=60) as c:
            await c.create_stream(STREAM, partitions=PARTITIONS)
        run = f"r{random.randrange(1 << 30)}"
        work = Workload(region, history, run, STREAM, PARTITIONS)
        history.t0_s = time.monotonic()
        sessions = [asyncio.create_task(work.appender(k)) for k in range(APPENDERS - 1)]
        # one impatient session, so that appends of unknown outcome occur and are resent
        sessions.append(asyncio.create_task(work.appender(APPENDERS - 1, IMPATIENT_TIMEOUT_S)))
        sessions += [
            asyncio.create_task(work.reader(k, "regional")) for k in range(REGIONAL_READERS)
        ]
        sessions += [asyncio.create_task(work.reader(k, "local")) for k in range(LOCAL_READERS)]
        try:
            await faults(region, history)
        finally:
            work.stop.set()
            await asyncio.gather(*sessions)
        for node_id in list(region.stopped):  # heal (the schedule already did)
            region.signal(node_id, signal.SIGCONT)
        await region.quiescent()

        # A10: resend every append of unknown outcome, and some acknowledged ones, with the
        # same producer pair: each is stored once and answers its original offset.
        rng = random.Random(run)
        unknown = [i for i, op in enumerate(history.ops) if op.f == "append" and op.type == "info"]
        acked = [i for i, op in enumerate(history.ops) if op.f == "append" and op.type == "ok"]
        resend = unknown + rng.sample(acked, min(RESENDS_OF_OK, len(acked)))
        async with work.client(region.urls, timeout_s=60.0) as client:
            for i in resend:
                orig = history.ops[i]
                assert orig.producer is not None and orig.value is not None
                op = await work.append(client, f"resend-{i}", orig.partition, orig.value,
                                       Producer(*orig.producer), retry_of=i)  # fmt: skip
                assert op.type == "ok", f"a resend after heal failed: {op.error}"

        final = await final_state(region, STREAM, PARTITIONS)
        print(history.summary())
        anomalies = check(history, final)
        for a in anomalies:
            print("ANOMALY", a)
        assert not anomalies, "\n".join(map(str, anomalies))

        # the run exercised what it claims to
        appends_ok = sum(op.f == "append" and op.type == "ok" for op in history.ops)
        reads = {m: sum(op.f == "read" and op.type == "ok" and op.mode == m for op in history.ops)
                 for m in ("regional", "local")}  # fmt: skip
        assert appends_ok >= 50 and all(reads.values()), (appends_ok, reads)
        assert len(history.faults) == 12, history.faults
        assert unknown, "the impatient session never saw an unknown outcome to resolve"
        assert all(len(final.regional[p]) > 0 for p in range(PARTITIONS))
    finally:
        region.down()


# --- the checker can fail: one hand-made history per anomaly (negative controls, docs/testing.md) -------------


def _ok_append(process: str, value: str, offset: int, t0: float, t1: float, seq: int,
               partition: int = 0, pid: str | None = None) -> Op:  # fmt: skip
    return Op(process, "append", partition, t0, t1, "ok", value, (pid or process, seq), offset)


def _read(process: str, start: int, pairs: list[tuple[int, str]], t0: float, t1: float,
          mode: str = "regional", end: int | None = None, node: str = "n1") -> Op:  # fmt: skip
    last = pairs[-1][0] if pairs else start - 1
    return Op(process, "read", 0, t0, t1, "ok", mode=mode, node=node, start=start,  # type: ignore[arg-type]
              end=last if end is None else end, observed=tuple(pairs))  # fmt: skip


def _final(log: dict[int, str], local: dict[str, list[tuple[int, str]]] | None = None,
           hashes: dict[str, str] | None = None) -> FinalState:  # fmt: skip
    nodes = ["n1", "n2", "n3"]
    pairs = sorted(log.items())
    loc = {n: {0: (local or {}).get(n, pairs)} for n in nodes}
    debug = {n: {"applied_index": 10, "partitions": [
        {"partition": 0, "last_seq": len(log) - 1, "hash": (hashes or {}).get(n, "h")}]}
        for n in nodes}  # fmt: skip
    return FinalState({0: log}, loc, debug)


def _good() -> list[Op]:
    return [
        _ok_append("a", "a-1", 0, 1.0, 2.0, 1),
        _ok_append("b", "b-1", 1, 3.0, 4.0, 1),
        _read("r", 0, [(0, "a-1"), (1, "b-1")], 5.0, 6.0),
        _ok_append("a", "a-2", 2, 7.0, 8.0, 2),
        _read("l", 1, [(1, "b-1")], 9.0, 10.0, mode="local"),
    ]


GOOD_LOG = {0: "a-1", 1: "b-1", 2: "a-2"}


def _names(ops: list[Op], final: FinalState) -> set[str]:
    return {a.name for a in check(ops, final)}


def test_checker_accepts_a_correct_history() -> None:
    assert check(_good(), _final(GOOD_LOG)) == []


def test_checker_inconsistent_offsets_a1() -> None:
    ops = [*_good(), _read("r", 0, [(0, "a-1"), (1, "a-2")], 11.0, 12.0, end=2)]
    assert "inconsistent-offsets" in _names(ops, _final(GOOD_LOG))


def test_checker_inconsistent_offsets_in_a_local_read_a1() -> None:
    ops = [*_good(), _read("l", 0, [(0, "b-1")], 11.0, 12.0, mode="local")]
    assert "inconsistent-offsets" in _names(ops, _final(GOOD_LOG))


def test_checker_duplicate_a2() -> None:
    log = {**GOOD_LOG, 3: "a-1"}
    assert "duplicate" in _names(_good(), _final(log))


def test_checker_lost_write_a3() -> None:
    log = {0: "a-1", 1: "b-1"}
    assert "lost-write" in _names(_good(), _final(log))


def test_checker_phantom_and_aborted_read_a4() -> None:
    log = {**GOOD_LOG, 3: "zz-9"}
    assert "phantom" in _names(_good(), _final(log))
    failed = Op("c", "append", 0, 1.0, 1.5, "fail", "c-1", ("c", 1))
    log = {**GOOD_LOG, 3: "c-1"}
    assert "aborted-read" in _names([*_good(), failed], _final(log))


def test_checker_gap_a5() -> None:
    log = {0: "a-1", 1: "b-1", 3: "a-2"}
    ops = _good()
    ops[3].offset = 3
    assert "int-poll-skip" in _names(ops, _final(log))
    gap_read = _read("r", 0, [(0, "a-1"), (2, "a-2")], 11.0, 12.0)
    assert "int-poll-skip" in _names([*_good(), gap_read], _final(GOOD_LOG))


def test_checker_realtime_order_a6() -> None:
    ops = [
        _ok_append("a", "a-1", 1, 1.0, 2.0, 1),
        _ok_append("b", "b-1", 0, 3.0, 4.0, 1),  # invoked after a-1 completed, offset lower
    ]
    assert "realtime-order" in _names(ops, _final({0: "b-1", 1: "a-1"}))


def test_checker_stale_regional_read_a7_but_not_local() -> None:
    stale = _read("r", 0, [(0, "a-1")], 11.0, 12.0)  # after a-2 was acked at offset 2
    assert "stale-read" in _names([*_good(), stale], _final(GOOD_LOG))
    lagging = _read("l", 0, [(0, "a-1")], 11.0, 12.0, mode="local")
    assert check([*_good(), lagging], _final(GOOD_LOG)) == []


def test_checker_nonmonotonic_regional_reads_a7() -> None:
    r1 = _read("r", 0, [(0, "a-1"), (1, "b-1"), (2, "a-2")], 11.0, 12.0)
    r2 = _read("q", 0, [(0, "a-1"), (1, "b-1")], 13.0, 14.0)  # began after r1 ended, saw less
    assert "nonmonotonic-read" in _names([*_good(), r1, r2], _final(GOOD_LOG))


def test_checker_session_order_a9() -> None:
    ops = [
        _ok_append("a", "a-1", 1, 1.0, 2.0, 1),
        _ok_append("a", "a-2", 0, 3.0, 4.0, 2),  # the session's next append, lower offset
    ]
    assert "nonmonotonic-send" in _names(ops, _final({0: "a-2", 1: "a-1"}))


def test_checker_producer_order_a9() -> None:
    ops = [
        _ok_append("a", "a-1", 1, 1.0, 2.0, 1),
        _ok_append("b", "a-2", 0, 1.0, 2.0, 2, pid="a"),  # same producer, later seq, lower offset
    ]
    assert "nonmonotonic-send" in _names(ops, _final({0: "a-2", 1: "a-1"}))


def test_checker_retry_offset_a10() -> None:
    ops = _good()
    resend = Op("resend", "append", 0, 20.0, 21.0, "ok", "a-1", ("a", 1), 3, retry_of=0)
    log = {**GOOD_LOG, 3: "a-1"}
    names = _names([*ops, resend], _final(log))
    assert {"retry-offset", "duplicate"} <= names
    # a resend that answers the original offset is fine, and resolves an unknown outcome
    ops[0].type, ops[0].offset = "info", None
    resend.offset = 0
    assert check([*ops, resend], _final(GOOD_LOG)) == []


def test_checker_replica_divergence_r1_r5() -> None:
    short = {"n2": sorted(GOOD_LOG.items())[:2]}
    assert "replica-divergence" in _names(_good(), _final(GOOD_LOG, local=short))
    assert "replica-divergence" in _names(_good(), _final(GOOD_LOG, hashes={"n3": "other"}))
