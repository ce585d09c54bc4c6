"""Proves, on a real in-process node over sockets and files, the failback side of the HTTP API
and CLI: after a change of home that forks a partition below what the region wrote, the
orphaned suffix is listed by ``GET /v1/quarantine`` and exported line by line by
``GET /v1/quarantine/export`` (exactly those events, never served by reads); a read whose
``after`` token names an orphaned position answers 409 ``superseded_epoch`` at once instead
of waiting (also when the fork lands while the read already waits), while a token naming a
kept position is served; ``geostore quarantine list|export`` print the same through a
cluster.json; and re-appending the quarantine stores the events once with new seqs, a rerun
storing nothing. Then the clear: ``geostore quarantine clear`` refuses without ``--yes`` (and
says how to export first), with it drops exactly the runs named (a partition, then all),
answered with the counts, shown empty by the list, the status and the metrics, while the
partition's served events and rolling hash do not move; the bodies live in the node's block
files, and the quarantine and its clear both survive a restart."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from geostore.cli.cmd_quarantine import reappend
from geostore.client import GeostoreClient
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName
from geostore.runtime.api import EXPORT_CHUNK_BYTES
from geostore.runtime.http import make_token
from geostore.store import SetHome, encode_command
from tests.integration.test_runtime import Running, call, free_port, start

pytestmark = pytest.mark.timeout(90)

STREAM = "orders"


async def fork(node: Running, partition: int, epoch: int, fork_seq: int) -> Any:
    """Commit a change of home in the node's data group, as a failover's mirror does."""
    group = node.node.data_group
    cmd = SetHome(StreamName(STREAM), PartitionId(partition), RegionId("r1"), Epoch(epoch),
                  Seq(fork_seq))  # fmt: skip
    (result,) = await asyncio.gather(*group.propose([encode_command(cmd)]))
    return result


async def setup(node: Running) -> list[dict[str, Any]]:
    """A 2-partition stream with 10 events in partition 0 (two producer batches) and 3 in 1."""
    s, b = await call(node.url + "/v1/streams", "POST", {"name": STREAM, "partitions": 2})
    assert s == 201, b
    ev = node.url + f"/v1/streams/{STREAM}/events"
    # events 4..9 (the ones the fork orphans) are large: their export takes several chunks
    bodies: list[dict[str, Any]] = [
        {"i": i, "text": "é" * (i % 3), "pad": "x" * (14_000 if i >= 4 else 0)} for i in range(10)
    ]
    for k, chunk in enumerate((bodies[:6], bodies[6:])):
        events = [{"partition": 0, "key": f"k{x['i']}", "body": x, "ts": 1000 + x["i"]}
                  for x in chunk]  # fmt: skip
        s, b = await call(ev, "POST", {"events": events, "producer": {"id": "p", "seq": k}})
        assert s == 200, b
    s, b = await call(
        ev, "POST", {"events": [{"partition": 1, "body": {"j": j}} for j in range(3)]}
    )
    assert s == 200, b
    return bodies


async def test_quarantine_routes_tokens_and_reappend(tmp_path: Path) -> None:
    node = await start(tmp_path / "n1", free_port())
    try:
        u = node.url
        bodies = await setup(node)
        ev = u + f"/v1/streams/{STREAM}/events"
        # a read already waiting for a position the fork will orphan answers 409 when it lands
        waiting = asyncio.ensure_future(
            call(f"{ev}?partition=0&after={make_token(STREAM, [(0, 1, 12)])}&wait_ms=20000")
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()
        result = await fork(node, 0, 2, 3)  # epoch 2 keeps seqs 0..3: 4..9 are orphaned
        assert result.quarantined == 6, result
        s, b = await asyncio.wait_for(waiting, 10)
        assert s == 409 and b["error"]["code"] == "superseded_epoch", (s, b)

        # reads serve only the kept prefix
        s, page = await call(f"{ev}?partition=0")
        assert s == 200 and [e["body"] for e in page["events"]] == bodies[:4]

        # the list: two runs (the second batch whole, the first cut at the fork)
        s, q = await call(u + "/v1/quarantine")
        assert s == 200, q
        assert (q["region"], q["runs_total"], q["events_total"]) == ("r1", 2, 6)
        runs = [(r["stream"], r["partition"], r["epoch"], r["superseded_by"], r["fork_seq"],
                 r["first_seq"], r["last_seq"], r["record_count"], r["producer_id"])
                for r in q["runs"]]  # fmt: skip
        assert runs[0][:8] == (STREAM, 0, 1, 2, 3, 4, 5, 2)
        assert runs[1] == (STREAM, 0, 1, 2, 3, 6, 9, 4, "p")
        s, q1 = await call(u + f"/v1/quarantine?stream={STREAM}&partition=1&consistency=local")
        assert s == 200 and q1["runs"] == [] and q1["events_total"] == 0
        s, q2 = await call(u + "/v1/quarantine?limit=1")
        assert s == 200 and len(q2["runs"]) == 1 and q2["truncated"] and q2["runs_total"] == 2
        s, b = await call(u + "/v1/quarantine?stream=nope")
        assert s == 404 and b["error"]["code"] == "unknown_stream", b
        s, b = await call(u + f"/v1/quarantine?stream={STREAM}&partition=2")
        assert s == 404 and b["error"]["code"] == "unknown_partition", b
        s, b = await call(u + "/v1/quarantine?partition=0")
        assert s == 400 and b["error"]["code"] == "malformed", b

        # the export: exactly the orphaned events, one JSON object a line (over 64 KiB)
        s, text = await call(u + f"/v1/quarantine/export?stream={STREAM}")
        assert s == 200 and len(text.encode()) > EXPORT_CHUNK_BYTES
        lines = [json.loads(line) for line in text.splitlines()]
        assert [(x["seq"], x["body"], x["key"], x["ts"]) for x in lines] == [
            (i, bodies[i], f"k{i}", 1000 + i) for i in range(4, 10)
        ]
        assert all(x["epoch"] == 1 and x["superseded_by"] == 2 for x in lines)

        # tokens: an orphaned position is refused at once, a kept one is served
        s, b = await call(f"{ev}?partition=0&after={make_token(STREAM, [(0, 1, 7)])}&wait_ms=20000")
        assert s == 409 and b["error"]["code"] == "superseded_epoch", b
        assert b["error"]["fork_seq"] == 3 and b["error"]["superseded_epoch"] == 1, b
        s, b = await call(f"{ev}?partition=0&after={make_token(STREAM, [(0, 1, 3)])}&wait_ms=1000")
        assert s == 200 and len(b["events"]) == 4, b
        s, b = await call(f"{ev}?partition=1&after={make_token(STREAM, [(1, 1, 2)])}")
        assert s == 200 and len(b["events"]) == 3, b

        # the CLI through a cluster.json naming the node
        folder = tmp_path / "c"
        folder.mkdir()
        (folder / "cluster.json").write_text(
            json.dumps({"regions": {"r1": {"nodes": [{"id": "n1", "api": u}]}}})
        )
        out = await cli("list", "--cluster", str(folder))
        assert "6 events in 2 runs in the quarantine of region r1" in out, out
        out = await cli("list", "--cluster", str(folder), f"{STREAM}/0", "--json")
        assert json.loads(out)["events_total"] == 6
        await cli("export", "--cluster", str(folder), "--out", str(tmp_path / "q.jsonl"))
        exported = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
        assert exported == lines

        # re-append: new seqs after the kept prefix, once; a rerun stores nothing
        async with GeostoreClient([u], "r1") as client:
            first = await reappend(client, "r1", STREAM, None, 3)
            again = await reappend(client, "r1", STREAM, None, 3)
        assert (first["events"], first["appended"], first["duplicates"]) == (6, 6, 0), first
        assert first["requests"] == 3, first  # runs of 2 and 4 events, 3 a request
        assert (again["appended"], again["duplicates"], again["failed"]) == (0, 6, 0), again
        s, page = await call(f"{ev}?partition=0")
        assert [e["body"] for e in page["events"]] == bodies[:4] + bodies[4:]
        assert [e["seq"] for e in page["events"]] == list(range(10))
        assert all(e["epoch"] == 2 for e in page["events"][4:])
        # the quarantine keeps them (it is a record, re-appending copies)
        s, q = await call(u + "/v1/quarantine")
        assert q["events_total"] == 6
    finally:
        await node.stop()


async def test_export_then_clear_with_yes_leaves_the_partition_as_it_was(tmp_path: Path) -> None:
    port = free_port()
    node = await start(tmp_path / "n1", port)
    try:
        u = node.url
        await setup(node)
        assert (await fork(node, 0, 2, 3)).quarantined == 6
        assert (await fork(node, 1, 2, 0)).quarantined == 2
        s, q = await call(u + "/v1/quarantine")
        assert (q["runs_total"], q["events_total"]) == (3, 8), q
        size = q["bytes_total"]
        assert size > 6 * 14_000 and sum(r["size_bytes"] for r in q["runs"]) == size
        # the bodies are in the node's block files (negative numbers), not only in memory
        hexname = STREAM.encode().hex()
        files = list((tmp_path / "n1").rglob(f"{hexname}/0/-*.blk"))
        assert len(files) == 2, files
        # ... so the quarantine survives a restart from the log and the block files
        await node.stop()
        node = await start(tmp_path / "n1", port)
        s, again = await call(u + "/v1/quarantine")
        assert again["runs"] == q["runs"], again
        s, before = await call(u + "/v1/debug/partitions")
        s, reads = await call(u + f"/v1/streams/{STREAM}/events?partition=0")
        assert s == 200 and len(reads["events"]) == 4
        s, status = await call(u + "/v1/status")
        assert status["quarantine"]["events"] == 8 and status["quarantine"]["bytes"] == size
        assert not status["quarantine"]["over_warn"]
        s, metrics = await call(u + "/metrics")
        assert re.search(r'^geostore_quarantine_events\{group="[^"]+"\} 8$', metrics, re.M), metrics

        folder = tmp_path / "c"
        folder.mkdir()
        (folder / "cluster.json").write_text(
            json.dumps({"regions": {"r1": {"nodes": [{"id": "n1", "api": u}]}}})
        )
        c = ("--cluster", str(folder), "--region", "r1")
        # export first (what the refusal asks for)
        await cli("export", *c, "--out", str(tmp_path / "q.jsonl"))
        exported = (tmp_path / "q.jsonl").read_text().splitlines()
        assert len(exported) == 8
        # no --yes: refused, nothing dropped, and it says how to export
        rc, out, err = await cli_rc("clear", *c, "--stream", STREAM, "--partition", "1")
        assert rc == 2 and out == "", out
        assert "--yes" in err and "geostore quarantine export --cluster" in err, err
        s, q2 = await call(u + "/v1/quarantine")
        assert q2["events_total"] == 8
        # partition 1 only
        out = await cli("clear", *c, "--stream", STREAM, "--partition", "1", "--yes", "--json")
        answer = json.loads(out)
        assert answer["cleared"]["runs"] == 1 and answer["cleared"]["events"] == 2, answer
        assert answer["left"]["events"] == 6 and answer["region"] == "r1", answer
        s, q3 = await call(u + "/v1/quarantine")
        assert {r["partition"] for r in q3["runs"]} == {0} and q3["events_total"] == 6
        # a stream the region does not know: 404, nothing dropped
        rc, out, err = await cli_rc("clear", *c, "--stream", "nope", "--yes")
        assert rc != 0 and "unknown_stream" in err + out, (out, err)
        # everything
        out = await cli("clear", *c, "--yes")
        assert "cleared 6 events in 2 runs" in out and "0 events in 0 runs left" in out, out
        out = await cli("list", *c)
        assert "0 events in 0 runs in the quarantine of region r1" in out, out
        s, text = await call(u + "/v1/quarantine/export")
        assert s == 200 and text == ""
        # and again: nothing to drop, answered 0
        s, b = await call(u + "/v1/admin/quarantine/clear", "POST", {})
        assert s == 200 and b["cleared"] == {"runs": 0, "events": 0, "bytes": 0}, b
        s, b = await call(u + "/v1/admin/quarantine/clear", "POST", {"partition": 0})
        assert s == 400 and b["error"]["code"] == "malformed", b
        s, b = await call(u + "/v1/admin/quarantine/clear", "POST", {"through_epoch": -1})
        assert s == 400 and b["error"]["code"] == "malformed", b
        # served events and hashes did not move; the size shows empty everywhere
        s, after = await call(u + "/v1/debug/partitions")
        assert after["partitions"] == before["partitions"], (before, after)
        s, reads2 = await call(u + f"/v1/streams/{STREAM}/events?partition=0")
        assert reads2["events"] == reads["events"]
        s, status = await call(u + "/v1/status")
        assert status["quarantine"] == {**status["quarantine"], "runs": 0, "events": 0, "bytes": 0}
        s, metrics = await call(u + "/metrics")
        assert re.search(r'^geostore_quarantine_events\{group="[^"]+"\} 0$', metrics, re.M), metrics
        # the clear survives a restart too (replayed from the log)
        await node.stop()
        node = await start(tmp_path / "n1", port)
        s, q4 = await call(u + "/v1/quarantine")
        assert q4["runs"] == [] and q4["events_total"] == 0, q4
        s, after2 = await call(u + "/v1/debug/partitions")
        assert after2["partitions"] == before["partitions"]
    finally:
        await node.stop()


async def cli_rc(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "geostore", "quarantine", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli(*args: str) -> str:
    rc, out, err = await cli_rc(*args)
    assert rc == 0, err
    return out
