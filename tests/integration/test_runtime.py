"""Proves the node runtime in process over real sockets and files: a single-voter node
elects itself, answers appends only after commit and apply, shares one fsync among
appends queued together (group commit), serves JSON and CBOR, answers bad input with the
catalogue's status and error body and keeps serving, publishes parseable Prometheus text
and an OpenAPI document of every route, and after a graceful stop a node restarted on the
same data dir still has every acknowledged event."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest

from geostore.config import config_from_dict, topology_from_dict
from geostore.ids import NodeId
from geostore.runtime.api import ROUTES
from geostore.runtime.node import NodeRuntime
from geostore.store import encode_command

pytestmark = pytest.mark.timeout(90)

BODY_MAX = 64 * 1024
CONFIG = config_from_dict(
    {
        "raft": {"tick_ms": 10, "heartbeat_ticks": 2, "election_ticks": 10},
        "limits": {
            "body_bytes_max": BODY_MAX,
            "event_bytes_max": 16 * 1024,
            "events_per_request_max": 100,
        },
    }
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_node(data_dir: Path, port: int, *, unsafe_no_fsync: bool = False) -> NodeRuntime:
    topo = topology_from_dict(
        {
            "name": "solo",
            "regions": [{"name": "r1", "nodes": [{"id": "n1", "host": "127.0.0.1", "port": port}]}],
        }
    )
    return NodeRuntime(
        topo,
        NodeId("n1"),
        CONFIG,
        str(data_dir),
        unsafe_no_fsync=unsafe_no_fsync,
        seed=1,
        bootstrap=True,
    )


class Running:
    def __init__(self, node: NodeRuntime, task: asyncio.Task[None], url: str) -> None:
        self.node, self.task, self.url = node, task, url

    async def stop(self) -> None:
        self.node.request_stop()
        await asyncio.wait_for(self.task, 30)


async def start(data_dir: Path, port: int, **kw: Any) -> Running:
    node = make_node(data_dir, port, **kw)
    task = asyncio.create_task(node.run(handle_signals=False))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            assert not task.done(), task
            try:
                async with s.get(url + "/v1/health") as r:
                    if r.status == 200 and node.data_group.is_leader:
                        return Running(node, task, url)
            except aiohttp.ClientError:
                pass
            assert asyncio.get_running_loop().time() < deadline, "no leader in 30 s"
            await asyncio.sleep(0.05)


@pytest.fixture
async def solo(tmp_path: Path) -> AsyncIterator[Running]:
    running = await start(tmp_path / "n1", free_port())
    try:
        yield running
    finally:
        await running.stop()


async def call(
    url: str,
    method: str = "GET",
    body: Any = None,
    *,
    raw: bytes | None = None,
    ctype: str = "application/json",
    cbor_answer: bool = False,
) -> tuple[int, Any]:
    headers = {"Content-Type": ctype}
    if cbor_answer:
        headers["Accept"] = "application/cbor"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, data=data, headers=headers) as r,
    ):
        payload = await r.read()
        if r.content_type == "application/cbor":
            return r.status, cbor2.loads(payload)
        if r.content_type == "application/json":
            return r.status, json.loads(payload)
        return r.status, payload.decode()


def assert_error(status: int, body: Any, want_status: int, code: str) -> None:
    assert status == want_status, (status, body)
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


SCHEMA = {"attributes": [{"name": "v", "type": "int", "indexed": True}]}


async def test_append_read_aggregate_json_and_cbor(solo: Running) -> None:
    u = solo.url
    status, info = await call(u + "/v1/streams", "POST", {"name": "m", "schema": SCHEMA})
    assert status == 201 and info["name"] == "m", info
    status, again = await call(u + "/v1/streams", "POST", {"name": "m", "schema": SCHEMA})
    assert status == 200 and again == info
    status, body = await call(u + "/v1/streams", "POST", {"name": "m", "partitions": 3})
    assert_error(status, body, 409, "conflict")
    events = [{"ts": 1_000 + i, "body": {"v": i}} for i in range(10)]
    status, res = await call(u + "/v1/streams/m/events", "POST", {"events": events})
    assert status == 200, res
    assert res["results"] == [{"partition": 0, "first_seq": 0, "last_seq": 9, "epoch": 1}]
    assert isinstance(res["token"], str)
    # CBOR in, CBOR out
    cb = cbor2.dumps({"events": [{"ts": 5_000, "body": {"v": 100}}]})
    status, res2 = await call(
        u + "/v1/streams/m/events", "POST", raw=cb, ctype="application/cbor", cbor_answer=True
    )
    assert status == 200 and res2["results"][0]["first_seq"] == 10, res2
    for consistency in ("regional", "local", "strong"):
        status, page = await call(u + f"/v1/streams/m/events?consistency={consistency}")
        assert status == 200, page
        assert [e["seq"] for e in page["events"]] == list(range(11))
        assert page["next_seq"] == 11
    status, page = await call(u + "/v1/streams/m/events?from_seq=3&limit=2")
    assert [e["body"]["v"] for e in page["events"]] == [3, 4] and page["next_seq"] == 5
    status, page = await call(u + "/v1/streams/m/events?from_ts=1005&to_ts=5001")
    assert [e["seq"] for e in page["events"]] == [5, 6, 7, 8, 9, 10], page
    status, agg = await call(u + "/v1/streams/m/aggregate?field=v&from_ts=0&to_ts=10000")
    assert status == 200, agg
    assert (agg["count"], agg["min"], agg["max"], agg["sum"]) == (11, 0, 100, 145)
    assert "stats" in agg
    token = res2["token"]
    status, page = await call(u + f"/v1/streams/m/events?consistency=local&after={token}")
    assert status == 200 and page["next_seq"] == 11
    status, dbg = await call(u + "/v1/debug/partitions")
    assert dbg["partitions"][0]["last_seq"] == 10


async def test_idempotent_producer_retry(solo: Running) -> None:
    u = solo.url
    await call(u + "/v1/streams", "POST", {"name": "p"})
    req = {"events": [{"body": "a"}, {"body": "b"}], "producer": {"id": "w1", "seq": 7}}
    s1, r1 = await call(u + "/v1/streams/p/events", "POST", req)
    s2, r2 = await call(u + "/v1/streams/p/events", "POST", req)
    assert s1 == s2 == 200, (r1, r2)
    assert r1["results"][0]["first_seq"] == r2["results"][0]["first_seq"] == 0
    _, page = await call(u + "/v1/streams/p/events")
    assert len(page["events"]) == 2, page


async def test_group_commit_shares_one_fsync(solo: Running) -> None:
    """Appends queued before a flush become one Raft batch: one flush, one fsync."""
    u = solo.url
    await call(u + "/v1/streams", "POST", {"name": "g"})
    group = solo.node.data_group
    store = group.store
    datas = []
    for i in range(20):
        prepared = store.validate_append("g", [{"body": i}], now_us=1)
        datas.extend(encode_command(b) for b in prepared.batches)
    syncs_before = group.storage.log.syncs
    futures = [f for d in datas for f in group.propose([d])]  # 20 proposals, one loop step
    results = await asyncio.wait_for(asyncio.gather(*futures), 30)
    assert [r.first_seq for r in results] == list(range(20))
    assert group.storage.log.syncs - syncs_before == 1


async def test_bad_input_gets_catalogue_errors_and_node_keeps_serving(solo: Running) -> None:
    u = solo.url
    await call(u + "/v1/streams", "POST", {"name": "b", "schema": SCHEMA})
    ev = u + "/v1/streams/b/events"
    s, b = await call(ev, "POST", raw=b'{"events": [')
    assert_error(s, b, 400, "malformed")
    s, b = await call(ev, "POST", raw=b"\xff\x00\x01", ctype="application/cbor")
    assert_error(s, b, 400, "malformed")
    s, b = await call(ev, "POST", {"events": "nope"})
    assert_error(s, b, 400, "malformed")
    s, b = await call(ev, "POST", {"events": [{"body": {"v": "not an int"}}]})
    assert_error(s, b, 400, "schema_violation")
    s, b = await call(ev, "POST", {"events": [{"body": 1}] * 101})
    assert_error(s, b, 413, "too_large")
    s, b = await call(ev, "POST", raw=b'{"events": [{"body": "' + b"x" * BODY_MAX + b'"}]}')
    assert_error(s, b, 413, "too_large")
    s, b = await call(u + "/v1/streams/missing/events", "POST", {"events": [{"body": 1}]})
    assert_error(s, b, 404, "unknown_stream")
    s, b = await call(u + "/v1/streams/missing/events")
    assert_error(s, b, 404, "unknown_stream")
    s, b = await call(ev + "?partition=4")
    assert_error(s, b, 404, "unknown_partition")
    s, b = await call(ev + "?from_seq=-1")
    assert_error(s, b, 400, "malformed")
    s, b = await call(ev + "?from_seq=abc")
    assert_error(s, b, 400, "malformed")
    s, b = await call(ev + "?from_ts=10&to_ts=5")
    assert_error(s, b, 400, "malformed")
    s, b = await call(ev + "?consistency=psychic")
    assert_error(s, b, 400, "malformed")
    s, b = await call(u + "/v1/streams/b/aggregate?field=v&from_ts=0&to_ts=999999999999999999")
    assert_error(s, b, 413, "too_large")
    s, b = await call(ev + "?after=!!notatoken")
    assert_error(s, b, 400, "malformed")
    # nothing was stored, and the node still serves
    _, page = await call(ev)
    assert page["events"] == [] and page["next_seq"] == 0
    s, ok = await call(ev, "POST", {"events": [{"body": {"v": 1}}]})
    assert s == 200, ok
    s, health = await call(u + "/v1/health")
    assert s == 200, health


async def test_openapi_lists_every_route(solo: Running) -> None:
    s, doc = await call(solo.url + "/v1/openapi.json")
    assert s == 200
    assert doc["openapi"].startswith("3.")
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == {(r.method, r.path) for r in ROUTES}
    for path in ("/v1/streams", "/v1/streams/{s}/events", "/v1/streams/{s}/aggregate",
                 "/v1/streams/{s}/tail", "/v1/status", "/v1/health", "/metrics",
                 "/v1/openapi.json", "/v1/debug/partitions"):  # fmt: skip
        assert path in doc["paths"], path
    for ops in doc["paths"].values():
        for op in ops.values():
            for resp in op["responses"].values():
                for media in resp.get("content", {}).values():
                    ref = media["schema"]["$ref"].rsplit("/", 1)[1]
                    assert ref in doc["components"]["schemas"], ref


_SAMPLE = re.compile(
    r"^[a-zA-Z_:][a-zA-Z0-9_:]*"
    r'(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*)?\})?'
    r" (-?[0-9.eE+-]+|\+Inf|-Inf|NaN)$"
)


def check_prometheus(text: str) -> dict[str, float]:
    """A strict enough reading of the text exposition format; returns name{labels} -> value."""
    samples: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            typed.add(name)
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        assert _SAMPLE.match(line), line
        key, value = line.rsplit(" ", 1)
        base = re.sub(r"(_bucket|_sum|_count)$", "", key.split("{", 1)[0])
        assert base in typed, f"sample before its TYPE: {line}"
        samples[key] = float(value)
    return samples


async def test_metrics_parse_as_prometheus_text(solo: Running) -> None:
    u = solo.url
    await call(u + "/v1/streams", "POST", {"name": "x"})
    await call(u + "/v1/streams/x/events", "POST", {"events": [{"body": 1}]})
    async with aiohttp.ClientSession() as s, s.get(u + "/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    samples = check_prometheus(text)
    assert samples['geostore_raft_is_leader{group="data-r1"}'] == 1
    assert samples['geostore_raft_commit_index{group="data-r1"}'] >= 2
    assert samples["geostore_events_appended_total"] >= 1
    assert samples["geostore_append_latency_seconds_count"] >= 1
    assert any(k.startswith("geostore_fsync_seconds_count") for k in samples)


async def test_tail_streams_committed_events(solo: Running) -> None:
    u = solo.url
    await call(u + "/v1/streams", "POST", {"name": "t"})
    await call(u + "/v1/streams/t/events", "POST", {"events": [{"body": 0}]})
    got: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s, s.get(u + "/v1/streams/t/tail?from_seq=0") as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        await call(u + "/v1/streams/t/events", "POST", {"events": [{"body": 1}]})
        async with asyncio.timeout(20):
            async for line in r.content:
                if line.startswith(b"data: "):
                    got.append(json.loads(line[6:]))
                    if len(got) == 2:
                        break
    assert [e["body"] for e in got] == [0, 1]
    assert [e["seq"] for e in got] == [0, 1]


async def test_restart_keeps_acknowledged_events(tmp_path: Path) -> None:
    port = free_port()
    first = await start(tmp_path / "n1", port)
    try:
        await call(first.url + "/v1/streams", "POST", {"name": "d"})
        for i in range(5):
            s, _ = await call(first.url + "/v1/streams/d/events", "POST", {"events": [{"body": i}]})
            assert s == 200
    finally:
        await first.stop()
    second = await start(tmp_path / "n1", port)
    try:
        s, page = await call(second.url + "/v1/streams/d/events")
        assert s == 200 and [e["body"] for e in page["events"]] == [0, 1, 2, 3, 4], page
        s, status = await call(second.url + "/v1/status")
        assert status["groups"]["data-r1"]["fsync"] is True
    finally:
        await second.stop()


async def test_unsafe_no_fsync_is_visible(tmp_path: Path) -> None:
    running = await start(tmp_path / "n1", free_port(), unsafe_no_fsync=True)
    try:
        _s, status = await call(running.url + "/v1/status")
        assert status["groups"]["data-r1"]["fsync"] is False
    finally:
        await running.stop()


async def test_fsync_failure_stops_the_node(tmp_path: Path) -> None:
    """After a failed fsync the disk and memory may disagree: the node answers the append
    with storage_error, stops, and exits with status 1 (a restart recovers from disk)."""
    from geostore.errors import FsyncFailedError

    running = await start(tmp_path / "n1", free_port())
    try:
        await call(running.url + "/v1/streams", "POST", {"name": "f"})

        def broken_sync() -> None:
            raise FsyncFailedError("injected fsync failure")

        running.node.data_group.storage.log.sync = broken_sync  # type: ignore[method-assign]
        s, b = await call(running.url + "/v1/streams/f/events", "POST", {"events": [{"body": 1}]})
        assert_error(s, b, 500, "storage_error")
        await asyncio.wait_for(running.task, 30)
        assert running.node.exit_code == 1
    finally:
        if not running.task.done():
            await running.stop()
