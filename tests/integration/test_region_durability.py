"""Proves that nothing acknowledged is lost in a power loss of a whole real region (docs/testing.md:
S1, A3, R4), and that the check can fail: under a concurrent idempotent append
load every node of a 3-process region reports its fsync watermarks (``/v1/status``), then all
are SIGKILLed at once, each segment file is cut back to its watermark (what a power loss may
leave: SIGKILL alone keeps the page cache), the region restarts from those files and every
append acknowledged before the watermarks were taken must be in the final log, with the
replicas identical; also when a random part of each unsynced tail survives (S2, a torn write).
Under ``--unsafe-no-fsync`` the very same procedure must lose acknowledged appends, and the
checker must say so.

The model and its limits. A node's watermarks are read over HTTP while it runs, not at the
instant it dies, so each node "loses power" at the moment its watermarks were read: bytes it
fsynced between that read and the SIGKILL are discarded too (more loss than a power loss at
the kill, never less). Only appends acknowledged before the first read (``cut``) are
required to survive: such an append was fsynced on a majority before the cut (a node updates
its watermark when the fsync returns, before it reports the entry durable), so every later
read covers it there. Appends acknowledged after the cut may have counted a node whose
watermark was read earlier, so their outcome is unknown to this model. Only the Raft log
segments are cut: hard state, snapshots and block files keep whatever the kernel holds (the
node fsyncs them itself; this test does not model their loss)."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from geostore.client import GeostoreClient
from geostore.storage.faults import lose_unsynced_writes
from tests.integration.history import (
    History,
    Op,
    Region,
    Workload,
    check,
    final_state,
    lost_acknowledged,
    wait_for,
)

STREAM = "d"
PARTITIONS = 2
CONFIG = """
[raft]
tick_ms = 20
heartbeat_ticks = 5
election_ticks = 50
"""
#: Snapshots and compaction during the load, so a restart recovers from a snapshot plus a cut
#: log. Not for the negative control: a snapshot taken just before the cut would leave it
#: nothing acknowledged to lose.
SNAPSHOTS = """
snapshot_threshold_entries = 40
"""
APPENDERS = 3
#: acknowledged appends the load must reach before the power loss
ACKED_MIN = 60


async def power_loss(
    tmp_path: Path, unsafe: bool, torn: bool = False
) -> tuple[History, Any, float]:
    """Run the load, take every node's watermarks, kill and cut every node, restart.
    ``torn``: keep a random part of each unsynced tail (S2, a torn write) instead of none.

    Returns the history, the final state after the restart and the moment the watermarks
    started to be taken (appends acknowledged before it must survive)."""
    region = Region(tmp_path, CONFIG + ("" if unsafe else SNAPSHOTS), unsafe_no_fsync=unsafe)
    history = History()
    region.up()
    try:
        async with GeostoreClient(region.urls, "r1", timeout_s=60) as c:
            await c.create_stream(STREAM, partitions=PARTITIONS)
        run = f"d{random.randrange(1 << 30)}"
        work = Workload(region, history, run, STREAM, PARTITIONS, timeout_s=5.0)
        history.t0_s = time.monotonic()
        sessions = [asyncio.create_task(work.appender(k)) for k in range(APPENDERS)]
        sessions.append(asyncio.create_task(work.reader(0, "regional")))
        try:
            await wait_for(
                f"{ACKED_MIN} acknowledged appends",
                lambda: True if _acked(history.ops) >= ACKED_MIN else None,
                120,
            )
            # The cut: appends acknowledged before this moment were fsynced on a majority
            # before it, so the watermarks taken after it cover them there.
            cut_s = time.monotonic()
            marks = {}
            for node_id in region.nodes:
                # however late a node answers, its marks cover what it fsynced before the cut
                g = await wait_for(
                    f"{node_id}'s fsync watermarks", functools.partial(region.group, node_id), 60
                )
                assert g["durable_watermarks"], f"{node_id} reported no watermarks: {g}"
                assert g["fsync"] is not unsafe, g
                marks[node_id] = g
            history.fault(cut_s, "fsync watermarks of every node taken")
            for node_id in region.nodes:  # the load is still running: a real power loss
                region.signal(node_id, signal.SIGKILL)
            history.fault(time.monotonic(), "SIGKILL every node")
        finally:
            work.stop.set()
            await asyncio.gather(*sessions)
        for node_id in region.nodes:
            await region.wait_dead(node_id)
        for node_id, g in marks.items():
            rng = random.Random(f"{run}-{node_id}") if torn else None
            before = {
                f: os.path.getsize(os.path.join(g["log_dir"], f)) for f in g["durable_watermarks"]
            }
            sizes = lose_unsynced_writes(g["log_dir"], g["durable_watermarks"], rng)
            cuts = ", ".join(
                f"{f}: {before.get(f, 0)} -> {kept} bytes (fsynced {g['durable_watermarks'].get(f, 0)})"
                for f, kept in sizes.items()
            )
            history.fault(time.monotonic(), f"{node_id}: {cuts}")
        for node_id in region.nodes:
            region.restart(node_id)
        history.fault(time.monotonic(), "restart every node from its data dir")
        final = await final_state(region, STREAM, PARTITIONS, missing_ok=unsafe)
        print(history.summary())
        return history, final, cut_s
    finally:
        region.down()


def _acked(ops: list[Op]) -> int:
    return sum(op.f == "append" and op.type == "ok" for op in ops)


@pytest.mark.parametrize("torn", [False, True], ids=["cut-to-watermark", "torn-tail"])
async def test_acknowledged_appends_survive_a_power_loss(tmp_path: Path, torn: bool) -> None:
    history, final, cut_s = await power_loss(tmp_path, unsafe=False, torn=torn)
    lost = lost_acknowledged(history.ops, final.regional, cut_s)
    assert not lost, "\n".join(map(str, lost))
    # The rest of the history must hold too. An append acknowledged after the cut may be
    # gone (a node whose watermark was taken before it counted towards its quorum): its
    # outcome is unknown to this model, so it is checked as one.
    for op in history.ops:
        if op.f == "append" and op.type == "ok" and op.complete_s and op.complete_s >= cut_s:
            op.type = "info"
    anomalies = check(history, final)
    assert not anomalies, "\n".join(map(str, anomalies))
    survivors = sum(len(log) for log in final.regional.values())
    assert survivors >= ACKED_MIN, survivors


async def test_unsafe_no_fsync_loses_acknowledged_appends(tmp_path: Path) -> None:
    history, final, cut_s = await power_loss(tmp_path, unsafe=True)
    lost = lost_acknowledged(history.ops, final.regional, cut_s)
    print(f"{len(lost)} of {_acked(history.ops)} acknowledged appends lost")
    assert lost, "the negative control must lose acknowledged appends (A3 must fail)"
    assert "lost-write" in {a.name for a in check(history, final)}
