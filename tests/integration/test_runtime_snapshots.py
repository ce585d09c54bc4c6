"""Proves snapshots in the real runtime: with a small snapshot threshold a node restarts
from its snapshot plus the log after it, and a follower that was down while the leader
compacted its log catches up by an InstallSnapshot transfer over the peer links, ending
with the same events and the same rolling hash as the leader."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from geostore.config import config_from_dict, topology_from_dict
from geostore.ids import NodeId
from geostore.runtime.node import NodeRuntime

pytestmark = pytest.mark.timeout(120)

CONFIG = config_from_dict(
    {
        "raft": {
            "tick_ms": 10,
            "heartbeat_ticks": 3,
            "election_ticks": 30,
            "snapshot_threshold_entries": 20,
        },
    }
)
IDS = ("n1", "n2", "n3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, data=data, headers=headers) as r,
    ):
        return r.status, json.loads(await r.read())


async def eventually(what: str, fn: Any, timeout_s: float = 60) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: Any = None
    while loop.time() < deadline:
        try:
            last = await fn()
            if last:
                return last
        except aiohttp.ClientError as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s (last {last!r})")


class Cluster:
    def __init__(self, root: Path, ids: tuple[str, ...]) -> None:
        self.root = root
        self.ports = {n: free_port() for n in ids}
        self.topology = topology_from_dict(
            {
                "name": "snap",
                "regions": [
                    {
                        "name": "r1",
                        "nodes": [
                            {"id": n, "host": "127.0.0.1", "port": p} for n, p in self.ports.items()
                        ],
                    }
                ],
            }
        )
        self.nodes: dict[str, tuple[NodeRuntime, asyncio.Task[None]]] = {}

    def url(self, n: str) -> str:
        return f"http://127.0.0.1:{self.ports[n]}"

    def start(self, n: str) -> NodeRuntime:
        node = NodeRuntime(
            self.topology, NodeId(n), CONFIG, str(self.root / n), seed=hash(n), bootstrap=True
        )
        self.nodes[n] = (node, asyncio.create_task(node.run(handle_signals=False)))
        return node

    async def stop(self, n: str) -> None:
        node, task = self.nodes.pop(n)
        node.request_stop()
        await asyncio.wait_for(task, 30)

    async def leader(self) -> str:
        async def find() -> str | None:
            for n, (node, _) in self.nodes.items():
                if node.data_group.is_leader:
                    return n
            return None

        found: str = await eventually("a leader", find)
        return found

    async def close(self) -> None:
        for n in list(self.nodes):
            await self.stop(n)


async def test_follower_catches_up_by_snapshot_and_restarts_from_one(tmp_path: Path) -> None:
    c = Cluster(tmp_path, IDS)
    try:
        for n in IDS:
            c.start(n)
        leader = await c.leader()
        lagging = next(n for n in IDS if n != leader)
        u = c.url(leader)
        status, _ = await call(u + "/v1/streams", "POST", {"name": "s"})
        assert status == 201
        lag_last = c.nodes[lagging][0].data_group.storage.log.last_index()
        await c.stop(lagging)
        for i in range(60):  # 60 entries: three snapshots at threshold 20
            status, res = await call(u + "/v1/streams/s/events", "POST", {"events": [{"body": i}]})
            assert status == 200, res
        leader_node = c.nodes[leader][0]
        first = leader_node.data_group.storage.log.first_index()
        assert first > lag_last + 1, "the follower's next entry is compacted: snapshot needed"
        assert leader_node.data_group.storage.snapshots.latest() is not None
        c.start(lagging)
        lag_url = c.url(lagging)

        async def caught_up() -> Any:
            s, page = await call(lag_url + "/v1/streams/s/events?consistency=local&limit=100")
            return page if s == 200 and len(page["events"]) == 60 else None

        page = await eventually("the restarted follower catches up", caught_up)
        assert [e["body"] for e in page["events"]] == list(range(60))
        _, mine = await call(lag_url + "/v1/debug/partitions")
        _, theirs = await call(u + "/v1/debug/partitions")
        assert mine["partitions"] == theirs["partitions"]
        # the leader itself restarts from its snapshot and the log after it
        await c.stop(leader)
        c.start(leader)

        async def restored() -> Any:
            s, page = await call(u + "/v1/streams/s/events?consistency=local&limit=100")
            return page if s == 200 and len(page["events"]) == 60 else None

        page = await eventually("the old leader serves after restart", restored)
        assert [e["body"] for e in page["events"]] == list(range(60))
    finally:
        await c.close()
