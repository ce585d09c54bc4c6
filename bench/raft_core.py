"""Committed entries per second of a 3-node Raft group in one process (the core's ceiling).

Three :class:`~geostore.raft.core.RaftCore` instances over in-memory log stores, joined by a
zero-latency in-process network and driven by the standard host loop (persist, send, apply,
advance). A client keeps at least ``--outstanding`` proposals uncommitted at the leader, in
two shapes: single-entry proposals, and batches of 64 entries proposed in one call. The
figure is entries committed (applied at the leader) per wall-clock second.

    .venv/bin/python bench/raft_core.py [--entries N] [--outstanding K] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Metric, Result, emit
from geostore.ids import GroupId, NodeId
from geostore.raft.core import RaftConfig, RaftCore, Role
from geostore.raft.messages import Message
from geostore.raft.types import ConfState, HardState
from geostore.storage.memory import MemoryHardStateStore, MemoryLogStore

TARGET_PER_S = 100_000


def run(entries: int, outstanding: int, batch: int, payload: bytes) -> dict[str, float]:
    ids = [NodeId(f"n{i}") for i in range(1, 4)]
    conf = ConfState(voters=frozenset(ids))
    stores = {n: MemoryLogStore() for n in ids}
    hss = {n: MemoryHardStateStore() for n in ids}
    cores = {
        n: RaftCore(
            RaftConfig(node_id=n, group=GroupId("bench")),
            stores[n],
            HardState(),
            conf,
            random.Random(i),
        )
        for i, n in enumerate(ids)
    }
    inbox: list[Message] = []
    leader_id = ids[0]
    leader = cores[leader_id]

    def pump() -> int:
        """One host-loop pass over every node, then deliver; returns entries the leader applied."""
        applied = 0
        for n in ids:
            core = cores[n]
            if not core.has_ready():
                continue
            rd = core.ready()
            if rd.entries:
                stores[n].append(rd.entries)
            if rd.hard_state is not None:
                hss[n].save(rd.hard_state)
            if rd.must_sync:
                stores[n].sync()
            inbox.extend(rd.messages)
            if n == leader_id:
                applied += len(rd.committed)
            core.advance(rd)
        if inbox:
            msgs = inbox[:]
            inbox.clear()
            for m in msgs:
                cores[m.dst].step(m)
        return applied

    leader.campaign()
    for _ in range(50):
        pump()
    assert leader.role is Role.LEADER
    while leader.status().applied < leader.status().last_index:
        pump()

    datas = [payload] * batch
    proposed = committed = 0
    t0 = time.perf_counter()
    while committed < entries:
        while proposed - committed < outstanding and proposed < entries:
            if batch == 1:
                res = leader.propose(payload)
            else:
                res = leader.propose_batch(datas)
            assert not hasattr(res, "reason"), res
            proposed += batch
        committed += pump()
    elapsed = time.perf_counter() - t0
    st = leader.status()
    assert all(cores[n].status().commit >= st.commit - 10 * outstanding for n in ids)
    return {"entries_per_s": committed / elapsed, "seconds": elapsed, "committed": committed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--outstanding", type=int, default=256)
    ap.add_argument("--payload-bytes", type=int, default=100)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    payload = b"x" * args.payload_bytes
    one = run(args.entries, args.outstanding, 1, payload)
    many = run(args.entries, args.outstanding, 64, payload)
    result = Result(
        "raft_core",
        {
            "nodes": 3,
            "entries": args.entries,
            "outstanding": args.outstanding,
            "payload_bytes": args.payload_bytes,
            "storage": "geostore.storage.memory",
        },
        [
            Metric("entries_per_s_1_per_proposal", one["entries_per_s"], "1/s", TARGET_PER_S),
            Metric("entries_per_s_64_per_proposal", many["entries_per_s"], "1/s", TARGET_PER_S),
        ],
    )
    emit(result, json_out=args.json_out)


if __name__ == "__main__":
    main()
