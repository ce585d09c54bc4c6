"""The client against real node processes (``geostore cluster up``, one region of three):
create, idempotent appends (a resent producer pair is stored once), reads at every
consistency and with a token, time-range reads, aggregates from summaries, the live tail,
the CLI commands, and appends that keep succeeding when the node the client uses is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geostore.client import GeostoreClient, RequestFailed
from geostore.errors import ErrorCode
from tests.integration import secure

pytestmark = pytest.mark.timeout(120)

TOPOLOGY = """
name = "client-test"
[[regions]]
name = "r1"
intra_rtt_ms = 0.0
nodes = ["n1", "n2", "n3"]
"""


def _geostore(
    *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geostore", *args],
        capture_output=True, text=True, timeout=timeout, check=check,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("client-cluster")
    (root / "one.toml").write_text(TOPOLOGY)
    folder = root / "c"
    up = _geostore(
        "cluster", "up", "--topology", str(root / "one.toml"), "--dir", str(folder),
        "--no-netem", "--timeout", "60", check=False, timeout=90,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield folder
    finally:
        _geostore("cluster", "down", "--dir", str(folder), "--timeout", "10", check=False)


def _nodes(folder: Path) -> list[dict[str, Any]]:
    doc = secure.register(folder)
    nodes: list[dict[str, Any]] = doc["regions"]["r1"]["nodes"]
    return nodes


async def test_appends_reads_tokens_aggregates(cluster: Path) -> None:
    schema = {"attributes": [{"name": "dep_delay", "type": "int", "indexed": True}]}
    async with GeostoreClient.from_cluster(cluster, "r1", read_your_writes=True) as c:
        info = await c.create_stream("flights", 2, key_field="origin", schema=schema)
        assert info.partitions == 2
        again = await c.create_stream("flights", 2, key_field="origin", schema=schema)
        assert again.name == "flights"  # identical definition: idempotent
        with pytest.raises(RequestFailed) as conflict:
            await c.create_stream("flights", 3)
        assert conflict.value.code is ErrorCode.CONFLICT and conflict.value.status == 409

        events = [
            {"ts": 1_000 + i, "partition": 0, "body": {"origin": "JFK", "dep_delay": i}}
            for i in range(100)
        ]
        first = await c.append("flights", events)
        assert [(r.partition, r.first_seq, r.last_seq) for r in first.results] == [(0, 0, 99)]
        # the same producer pair again (what a retry after a lost answer sends): stored once
        assert first.producer is not None
        dup = await c.append("flights", events, producer=first.producer)
        assert dup.results == first.results
        page = await c.read("flights", 0, limit=1000)  # passes the token (read your writes)
        assert [e.seq for e in page.events] == list(range(100)) and page.next_seq == 100
        local = await c.read("flights", 0, from_seq=98, consistency="local")
        assert [e.body["dep_delay"] for e in local.events] == [98, 99]
        timed = await c.read_time("flights", 0, 1_010, 1_020)
        assert [e.ts for e in timed.events] == list(range(1_010, 1_020))
        agg = await c.aggregate("flights", "dep_delay", 0, 10_000, partition=0)
        assert (agg.count, agg.min, agg.max, agg.sum) == (100, 0, 99, 4950)
        windows = await c.aggregate("flights", "dep_delay", 1_000, 1_100, window_us=50)
        assert windows.windows is not None
        assert [w.count for w in windows.windows] == [50, 50]

        with pytest.raises(RequestFailed) as bad:
            await c.append("flights", [{"body": {"dep_delay": "late"}}])
        assert bad.value.code is ErrorCode.SCHEMA_VIOLATION and bad.value.status == 400
        with pytest.raises(RequestFailed) as missing:
            await c.read("nope", 0)
        assert missing.value.code is ErrorCode.UNKNOWN_STREAM
        with pytest.raises(RequestFailed) as not_indexed:
            await c.aggregate("flights", "origin", 0, 10)
        assert not_indexed.value.code is ErrorCode.FIELD_NOT_INDEXED

        cbor = GeostoreClient.from_cluster(cluster, "r1", content_type="cbor")
        async with cbor:
            res = await cbor.append("flights", [{"partition": 1, "body": {"origin": "EWR"}}])
            back = await cbor.read("flights", 1, from_seq=res.results[0].first_seq)
            assert back.events[0].body == {"origin": "EWR"}
        health = await c.health_all()
        assert all(h.ok for h in health)
        status = await c.status()
        assert status["region"] == "r1"


async def test_tail_sees_new_events(cluster: Path) -> None:
    async with GeostoreClient.from_cluster(cluster) as c:
        await c.create_stream("live")
        await c.append("live", [{"body": "before"}])

        async def follow() -> list[Any]:
            got = []
            async for ev in c.tail("live", 0, from_seq=0):
                got.append(ev.body)
                if len(got) == 3:
                    return got
            return got

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        await c.append("live", [{"body": "a"}, {"body": "b"}])
        assert await asyncio.wait_for(task, 20) == ["before", "a", "b"]


def test_cli_commands(cluster: Path) -> None:
    d = str(cluster)
    made = _geostore("append", "--cluster", d, "cli", "--body", "{}", check=False)
    assert made.returncode == 1 and "unknown_stream" in made.stderr
    assert "geostore stream create" in made.stderr  # says what to do next
    import argparse

    from geostore.cli import cmd_stream

    parser = argparse.ArgumentParser()
    cmd_stream.add_arguments(parser)
    args = parser.parse_args(["create", "--cluster", d, "cli", "--partitions", "2"])
    args.command = "stream"
    assert cmd_stream.run(args) == 0
    lines = "\n".join(json.dumps({"body": {"v": i}, "partition": i % 2}) for i in range(10))
    (cluster.parent / "ev.jsonl").write_text(lines + "\n")
    out = _geostore(
        "append", "--cluster", d, "--region", "r1", "cli", "--file",
        str(cluster.parent / "ev.jsonl"), "--batch", "4",
    ).stdout  # fmt: skip
    assert "10 events appended to cli" in out
    read = _geostore("read", "--cluster", d, "cli", "--partition", "1", "--json").stdout
    assert [json.loads(x)["body"]["v"] for x in read.splitlines()] == [1, 3, 5, 7, 9]
    table = _geostore("read", "--cluster", d, "cli", "--limit", "2", "--all").stdout
    assert "5 events from cli/0; continue with --from-seq 5" in table
    tail = _geostore("tail", "--cluster", d, "cli", "--from-seq", "0", "--count", "5", "--json")
    assert len(tail.stdout.splitlines()) == 5
    agg = _geostore(
        "aggregate", "--cluster", d, "cli", "--field", "v", "--scan-limit", "100", "--json"
    )
    assert json.loads(agg.stdout)["sum"] == 45


async def test_appends_survive_killing_the_clients_node(cluster: Path) -> None:
    """SIGKILL the node the client talks to (it may be the leader): the client moves on to
    another node and, with its idempotent producer, every acknowledged event is there once."""
    async with GeostoreClient.from_cluster(cluster, timeout_s=30, backoff_s=0.1) as c:
        await c.create_stream("failover")
        acked = []
        for i in range(20):
            if i == 5:
                victim = _nodes(cluster)[0]
                os.kill(victim["pid"], signal.SIGKILL)
            res = await c.append("failover", [{"body": i}])
            acked.append(res.results[0].first_seq)
        page = await c.read("failover", 0, limit=100)
    bodies = [e.body for e in page.events]
    assert bodies == list(range(20)), bodies  # each once, in order
    assert sorted(acked) == acked == list(range(20))
