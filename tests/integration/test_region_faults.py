"""Proves that a real 3-process region keeps RELIABILITY 4.A (A1-A7, A9, A10) and 4.R (R1, R5)
under process faults: client sessions append unique values with idempotent producers and read
regionally and locally while the leader is SIGKILLed and restarted from its data dir, a
follower and later the leader are SIGSTOPped past the election timeout, and the leader is
restarted gracefully; appends with unknown outcome and some acknowledged ones are resent
with their producer pair, and the history plus every node's final log go through the checker
of tests/integration/history.py. The checker itself is shown to catch each anomaly on
hand-made histories."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from geostore.client import GeostoreClient, Producer
from geostore.errors import ApiError
from tests.integration.history import FinalState, History, Op, Region, check

STREAM = "h"
PARTITIONS = 2
CONFIG = """
[raft]
tick_ms = 20
heartbeat_ticks = 5
election_ticks = 50
"""
#: the election timeout is election_ticks..2*election_ticks ticks: 1 to 2 s
PAUSE_S = 4.0
APPENDERS = 4
REGIONAL_READERS = 2
LOCAL_READERS = 1
#: below the server's producer dedup window (1024), so every resend is still recognised
APPENDS_PER_SESSION_MAX = 900
RESENDS_OF_OK = 20
READ_LIMIT = 10_000


class Workload:
    """Client sessions (one op at a time each) recording into one history."""

    def __init__(self, region: Region, history: History, run: str) -> None:
        self.region = region
        self.history = history
        self.run = run
        self.stop = asyncio.Event()
        #: highest offset acknowledged so far per partition (reads start at or below it)
        self.acked_high = [-1] * PARTITIONS

    def client(self, urls: list[str], **kw: object) -> GeostoreClient:
        opts: dict[str, object] = {"timeout_s": 15.0, "attempt_timeout_s": 3.0, "attempts_max": 30}
        opts.update(kw)
        return GeostoreClient(urls, "r1", **opts)  # type: ignore[arg-type]

    async def append(
        self, client: GeostoreClient, process: str, partition: int, value: str,
        producer: Producer, retry_of: int | None = None,
    ) -> Op:  # fmt: skip
        op = Op(process, "append", partition, time.monotonic(), value=value,
                producer=(producer.id, producer.seq), retry_of=retry_of)  # fmt: skip
        self.history.invoke(op)
        try:
            res = await client.append(STREAM, [{"body": value, "partition": partition}], producer)
            if res.errors or len(res.results) != 1:
                op.type, op.error = "info", str(res.errors)
            else:
                op.type, op.offset = "ok", res.results[0].first_seq
                self.acked_high[partition] = max(self.acked_high[partition], op.offset)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            # the client retried within its deadline; an earlier attempt may have been stored
            op.type, op.error = "info", f"{type(exc).__name__}: {exc}"
        op.complete_s = time.monotonic()
        return op

    async def appender(self, k: int) -> None:
        rng = random.Random(f"{self.run}-a{k}")
        async with self.client(self.region.urls) as client:
            for n in range(1, APPENDS_PER_SESSION_MAX + 1):
                if self.stop.is_set():
                    return
                p = rng.randrange(PARTITIONS)
                await self.append(client, f"a{k}", p, f"a{k}-{n}", Producer(f"{self.run}-a{k}", n))

    async def reader(self, k: int, mode: str) -> None:
        rng = random.Random(f"{self.run}-{mode}{k}")
        urls = self.region.urls
        node_ids = list(self.region.nodes)
        async with contextlib.AsyncExitStack() as stack:
            regional = await stack.enter_async_context(self.client(urls))
            # one client per node, so a local read asks exactly that node, once
            local = [
                await stack.enter_async_context(self.client([u], attempts_max=1, timeout_s=3.0))
                for u in urls
            ]
            while not self.stop.is_set():
                p = rng.randrange(PARTITIONS)
                high = self.acked_high[p]
                start = rng.choice([0, max(0, high - rng.randrange(40))])
                node = rng.randrange(len(urls))
                op = Op(f"{mode[0]}{k}", "read", p, time.monotonic(), mode=mode,  # type: ignore[arg-type]
                        start=start, node=node_ids[node] if mode == "local" else None)  # fmt: skip
                self.history.invoke(op)
                try:
                    page = await (local[node] if mode == "local" else regional).read(
                        STREAM,
                        p,
                        from_seq=start,
                        limit=READ_LIMIT,
                        consistency=mode,  # type: ignore[arg-type]
                    )
                    assert len(page.events) < READ_LIMIT, "a read must not be cut by its limit"
                    op.type, op.end = "ok", page.next_seq - 1
                    op.observed = tuple((e.seq, str(e.body)) for e in page.events)
                except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    op.type, op.error = (
                        "fail",
                        f"{type(exc).__name__}: {exc}",
                    )  # reads change nothing
                op.complete_s = time.monotonic()
                await asyncio.sleep(rng.uniform(0.01, 0.05))


async def faults(region: Region, history: History) -> None:
    """The nemesis: one scripted schedule of process faults (RELIABILITY 3.2 P1, P2)."""

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
    await asyncio.sleep(4)


async def final_state(region: Region, client_kw: dict[str, object]) -> FinalState:
    """Every partition read regionally through the leader and locally on every node."""
    groups = await region.quiescent()
    leader = next(n for n, g in groups.items() if g["role"] == "leader")
    regional: dict[int, dict[int, str]] = {}
    local: dict[str, dict[int, list[tuple[int, str]]]] = {n: {} for n in region.nodes}
    async with GeostoreClient([region.nodes[leader]["api"]], "r1", **client_kw) as c:  # type: ignore[arg-type]
        for p in range(PARTITIONS):
            page = await c.read(STREAM, p, limit=READ_LIMIT, consistency="regional")
            assert len(page.events) < READ_LIMIT
            regional[p] = {e.seq: str(e.body) for e in page.events}
    for node_id, n in region.nodes.items():
        async with GeostoreClient([n["api"]], "r1", **client_kw) as c:  # type: ignore[arg-type]
            for p in range(PARTITIONS):
                page = await c.read(STREAM, p, limit=READ_LIMIT, consistency="local")
                local[node_id][p] = [(e.seq, str(e.body)) for e in page.events]
    debug = {}
    for node_id in region.nodes:
        debug[node_id] = await region.get(node_id, "/v1/debug/partitions", 10)
        assert debug[node_id] is not None, f"{node_id}: no /v1/debug/partitions"
    return FinalState(regional, local, debug)


@pytest.mark.timeout(400)
async def test_region_history_under_kill_pause_and_restart(tmp_path: Path) -> None:
    region = Region(tmp_path, CONFIG)
    history = History()
    region.up()
    try:
        async with GeostoreClient(region.urls, "r1", timeout_s=60) as c:
            await c.create_stream(STREAM, partitions=PARTITIONS)
        run = f"r{random.randrange(1 << 30)}"
        work = Workload(region, history, run)
        history.t0_s = time.monotonic()
        sessions = [asyncio.create_task(work.appender(k)) for k in range(APPENDERS)]
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

        final = await final_state(region, {"timeout_s": 60.0})
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
        assert len(history.faults) == 8, history.faults
        assert all(len(final.regional[p]) > 0 for p in range(PARTITIONS))
    finally:
        region.down()


# --- the checker can fail: one hand-made history per anomaly (RELIABILITY 4.C C2) -------------


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
