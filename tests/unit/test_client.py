"""The client builds contract-shaped requests, maps errors to typed exceptions, retries only
when it is safe (an idempotent producer makes a retried append apply once), fails over to
other nodes, keeps tokens for read-your-writes, and resumes a dropped tail without gaps.

The server here is a *contract fixture*: a small aiohttp app that implements only the shapes
of the HTTP contract (docs/api.md) with switchable faults. It is not shipped and proves
nothing about the real node; tests/integration/test_client_cluster.py runs the client
against real node processes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest
from aiohttp import web

from geostore.client import (
    CallTimeout,
    GeostoreClient,
    Producer,
    RequestFailed,
    Unreachable,
    load_cluster,
    parse_cluster,
)
from geostore.client.client import LEADER_HEADER
from geostore.client.sse import SseParser
from geostore.errors import ApiError, ErrorCode


class ContractFixture:
    """Test double of one node: stores appends per (stream, partition), dedups producers."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.dedup: dict[tuple[str, int, str, int], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, str], Any, str, str]] = []
        self.authorization: list[str | None] = []  # each request's Authorization header
        self.fail_next: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self.delay_after_apply_s = 0.0
        self.delay_count = 0
        self.hang = False
        self.tail_drop_after = 0
        self.partial_fail_once: int | None = None
        self.status_body: dict[str, Any] = {"node": "n1", "region": "r1"}
        #: headers of every answer (a forwarding node's X-Geostore-Leader)
        self.answer_headers: dict[str, str] = {}
        #: like the server's dedup window: a seq this far below the id's latest is refused
        self.window = 1 << 30
        self.max_seq: dict[str, int] = {}
        #: the first append hangs without being applied (its answer never comes)
        self.stall_first_unapplied = False
        #: set by a test: retries of seq 0 wait for it (so the later appends come first)
        self.release_retry = asyncio.Event()
        self.release_retry.set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/streams", self.create)
        app.router.add_post("/v1/streams/{s}/events", self.append)
        app.router.add_get("/v1/streams/{s}/events", self.read)
        app.router.add_get("/v1/streams/{s}/aggregate", self.aggregate)
        app.router.add_get("/v1/streams/{s}/tail", self.tail)
        app.router.add_get("/v1/health", self.health)
        app.router.add_get("/v1/status", self.status)
        app.router.add_post("/v1/admin/quarantine/clear", self.quarantine_clear)
        return app

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        if request.content_type == "application/cbor":
            return cbor2.loads(raw)
        return json.loads(raw)

    def _answer(self, request: web.Request, status: int, body: Any, **headers: str) -> web.Response:
        headers = {**self.answer_headers, **headers}
        if "application/cbor" in request.headers.get("Accept", ""):
            return web.Response(
                status=status,
                body=cbor2.dumps(body),
                content_type="application/cbor",
                headers=headers,
            )
        return web.json_response(body, status=status, headers=headers)

    async def _record(self, request: web.Request) -> tuple[Any, web.Response | None]:
        body = await self._body(request) if request.method == "POST" else None
        self.authorization.append(request.headers.get("Authorization"))
        self.requests.append(
            (
                request.method,
                request.path,
                dict(request.query),
                body,
                request.content_type,
                request.raw_path,
            )
        )
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail_next:
            status, err, headers = self.fail_next.pop(0)
            return body, self._answer(request, status, {"error": err}, **headers)
        return body, None

    async def create(self, request: web.Request) -> web.Response:
        body, failed = await self._record(request)
        if failed is not None:
            return failed
        homes = [{"partition": p, "home": "r1", "epoch": 1} for p in range(body["partitions"])]
        return self._answer(request, 201, {**body, "schema": None, "homes": homes})

    async def append(self, request: web.Request) -> web.Response:
        body, failed = await self._record(request)
        if failed is not None:
            return failed
        stream = request.match_info["s"]
        if stream == "missing":
            return self._answer(
                request, 404, {"error": {"code": "unknown_stream", "message": "no stream"}}
            )
        prod = body.get("producer")
        if self.stall_first_unapplied:
            self.stall_first_unapplied = False
            self.release_retry.clear()
            await asyncio.sleep(1.0)
            return self._answer(request, 200, {"results": [], "token": None})
        if prod and prod["seq"] == 0:
            await self.release_retry.wait()
        if prod and (prod["id"], prod["seq"]) not in {(k[2], k[3]) for k in self.dedup}:
            if prod["seq"] <= self.max_seq.get(prod["id"], -1) - self.window:
                err = {"code": "conflict", "message": "older than the dedup window"}
                return self._answer(request, 409, {"error": err})
            self.max_seq[prod["id"]] = max(prod["seq"], self.max_seq.get(prod["id"], -1))
        by_part: dict[int, list[dict[str, Any]]] = {}
        for ev in body["events"]:
            by_part.setdefault(ev.get("partition", 0), []).append(ev)
        results: list[dict[str, Any]] = []
        for part, evs in sorted(by_part.items()):
            if self.partial_fail_once == part:
                self.partial_fail_once = None
                results.append(
                    {"partition": part, "error": {"code": "no_quorum", "message": "later"}}
                )
                continue
            key = (stream, part, prod["id"], prod["seq"]) if prod else None
            if key is not None and key in self.dedup:
                results.append(self.dedup[key])
                continue
            log = self.events.setdefault((stream, part), [])
            first = len(log)
            for ev in evs:
                log.append(
                    {
                        "seq": len(log),
                        "ts": ev.get("ts", 1),
                        "key": ev.get("key"),
                        "body": ev["body"],
                        "epoch": 1,
                    }
                )
            res = {"partition": part, "first_seq": first, "last_seq": len(log) - 1, "epoch": 1}
            if key is not None:
                self.dedup[key] = res
            results.append(res)
        if self.delay_count > 0:
            self.delay_count -= 1
            await asyncio.sleep(self.delay_after_apply_s)
        token = base64.urlsafe_b64encode(json.dumps(results).encode()).decode()
        return self._answer(request, 200, {"results": results, "token": token})

    async def read(self, request: web.Request) -> web.Response:
        _, failed = await self._record(request)
        if failed is not None:
            return failed
        log = self.events.get((request.match_info["s"], int(request.query["partition"])), [])
        start = int(request.query.get("from_seq", 0))
        page = log[start : start + int(request.query.get("limit", 1000))]
        return self._answer(
            request, 200, {"events": page, "next_seq": start + len(page), "stats": {}}
        )

    async def aggregate(self, request: web.Request) -> web.Response:
        _, failed = await self._record(request)
        if failed is not None:
            return failed
        body = {
            "count": 2,
            "min": 1,
            "max": 3,
            "sum": 4,
            "avg": 2.0,
            "windows": [
                {"start_ts": 0, "end_ts": 10, "count": 2, "min": 1, "max": 3, "sum": 4, "avg": 2.0}
            ],
            "stats": {"blocks_read": 0, "summaries_used": 1},
        }
        return self._answer(request, 200, body)

    async def tail(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        log = self.events.get((request.match_info["s"], int(request.query["partition"])), [])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": keep-alive\n\n")
        for sent, ev in enumerate(log[int(request.query.get("from_seq", 0)) :], 1):
            data = json.dumps(ev)
            await resp.write(f"id: {ev['seq']}\nevent: event\ndata: {data}\n\n".encode())
            if self.tail_drop_after and sent >= self.tail_drop_after:
                assert request.transport is not None
                request.transport.close()  # drop the stream mid-way
                return resp
        await asyncio.sleep(3600)
        return resp

    async def health(self, request: web.Request) -> web.Response:
        return self._answer(request, 200, {"status": "ok"})

    async def status(self, request: web.Request) -> web.Response:
        _, failed = await self._record(request)
        if failed is not None:
            return failed
        return self._answer(request, 200, self.status_body)

    async def quarantine_clear(self, request: web.Request) -> web.Response:
        _, failed = await self._record(request)
        if failed is not None:
            return failed
        size = {"runs": 0, "events": 0, "bytes": 0}
        return self._answer(request, 200, {"region": "r1", "cleared": size, "left": size})


async def _serve(fake: ContractFixture) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(fake.app(), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _dead_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
async def node() -> AsyncIterator[tuple[ContractFixture, str]]:
    fake = ContractFixture()
    runner, url = await _serve(fake)
    yield fake, url
    await runner.cleanup()


async def test_append_json_request_shape_and_result(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    async with GeostoreClient([url], "r1", producer_id="p1") as c:
        res = await c.append("s", [{"body": {"x": 1}}, {"body": {"x": 2}, "partition": 1}])
    method, path, _, body, ctype, _ = fake.requests[0]
    assert (method, path, ctype) == ("POST", "/v1/streams/s/events", "application/json")
    assert body["producer"] == {"id": "p1.0", "seq": 0}
    assert body["events"][1] == {"body": {"x": 2}, "partition": 1}
    assert [(r.partition, r.first_seq, r.last_seq, r.epoch) for r in res.results] == [
        (0, 0, 0, 1),
        (1, 0, 0, 1),
    ]
    assert res.token and res.producer == Producer("p1.0", 0) and res.count == 2


async def test_cbor_both_ways(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    async with GeostoreClient([url], content_type="cbor") as c:
        await c.append("s", [{"body": {"b": b"\x00\x01"}}])
        page = await c.read("s", 0)
    assert fake.requests[0][4] == "application/cbor"
    assert page.events[0].body == {"b": b"\x00\x01"}  # bytes survive only through CBOR


async def test_producer_seq_increases_per_call(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    async with GeostoreClient([url], producer_id="p", producer_span=2) as c:
        for _ in range(3):
            await c.append("s", [{"body": 1}])
        await c.append("s", [{"body": 1}], producer=Producer("other", 7))
        await c.append("s", [{"body": 1}], producer=False)
    sent = [r[3].get("producer") for r in fake.requests]
    assert sent == [
        {"id": "p.0", "seq": 0},
        {"id": "p.0", "seq": 1},
        {"id": "p.1", "seq": 2},
        {"id": "other", "seq": 7},
        None,
    ]


async def test_read_and_aggregate_query_params(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    async with GeostoreClient([url]) as c:
        await c.read("s", 2, from_seq=5, limit=10, consistency="local")
        await c.read_time("s", 1, 100, 200, limit=3)
        agg = await c.aggregate("s", "dep_delay", 0, 10, window_us=5)
    assert fake.requests[0][2] == {
        "partition": "2",
        "from_seq": "5",
        "limit": "10",
        "consistency": "local",
    }
    assert fake.requests[1][2] == {"partition": "1", "from_ts": "100", "to_ts": "200", "limit": "3"}
    assert fake.requests[2][1] == "/v1/streams/s/aggregate"
    assert fake.requests[2][2] == {
        "field": "dep_delay",
        "from_ts": "0",
        "to_ts": "10",
        "window_us": "5",
    }
    assert (agg.count, agg.min, agg.max, agg.sum, agg.avg) == (2, 1, 3, 4, 2.0)
    assert agg.windows is not None and agg.windows[0].count == 2
    assert agg.stats["summaries_used"] == 1


async def test_stream_name_is_quoted(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    async with GeostoreClient([url]) as c:
        await c.read("a/b c", 0)
    assert fake.requests[0][5].startswith("/v1/streams/a%2Fb%20c/events")


async def test_errors_are_typed_and_not_retried(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    async with GeostoreClient([url, url]) as c:
        with pytest.raises(RequestFailed) as info:
            await c.append("missing", [{"body": 1}])
    err = info.value
    assert isinstance(err, ApiError)
    assert (err.code, err.status, err.http_status) == (ErrorCode.UNKNOWN_STREAM, 404, 404)
    assert err.node == url and not err.retryable
    assert len(fake.requests) == 1


async def test_unknown_code_keeps_status_and_raw_code(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    fake.fail_next.append((418, {"code": "teapot", "message": "short and stout", "x": 1}, {}))
    async with GeostoreClient([url]) as c:
        with pytest.raises(RequestFailed) as info:
            await c.status()
    assert info.value.code is ErrorCode.INTERNAL and info.value.status == 418
    assert info.value.details == {"x": 1, "unknown_code": "teapot"}


async def test_503_is_retried_with_the_same_producer(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    fake.fail_next.append(
        (503, {"code": "no_quorum", "message": "electing"}, {"Retry-After": "0.01"})
    )
    async with GeostoreClient([url], producer_id="p") as c:
        res = await c.append("s", [{"body": 1}])
        assert c.retries == 1
    assert [r[3]["producer"] for r in fake.requests] == [{"id": "p.0", "seq": 0}] * 2
    assert res.results[0].first_seq == 0


async def test_retry_after_timeout_is_deduplicated(node: tuple[ContractFixture, str]) -> None:
    """The first answer comes too late (applied, answer lost): the retry carries the same
    producer pair, the server recognises it, and the event is stored once."""
    fake, url = node
    fake.delay_after_apply_s, fake.delay_count = 2.0, 1
    async with GeostoreClient([url], producer_id="p", attempt_timeout_s=0.2) as c:
        res = await c.append("s", [{"body": "once"}])
    assert len(fake.requests) == 2
    assert fake.requests[0][3] == fake.requests[1][3]
    assert [e["body"] for e in fake.events[("s", 0)]] == ["once"]
    assert (res.results[0].first_seq, res.results[0].last_seq) == (0, 0)


async def test_no_producer_timeout_is_not_retried(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    fake.delay_after_apply_s, fake.delay_count = 2.0, 1
    async with GeostoreClient([url], idempotent=False, attempt_timeout_s=0.2) as c:
        with pytest.raises(CallTimeout, match="outcome is unknown"):
            await c.append("s", [{"body": 1}])
    assert len(fake.requests) == 1


async def test_wait_timeout_retried_only_for_producer_appends(
    node: tuple[ContractFixture, str],
) -> None:
    fake, url = node
    timeout_504: tuple[int, dict[str, str], dict[str, str]] = (
        504,
        {"code": "wait_timeout", "message": "outcome unknown"},
        {},
    )
    fake.fail_next.append(timeout_504)
    async with GeostoreClient([url]) as c:
        await c.append("s", [{"body": 1}])
        fake.fail_next.append(timeout_504)
        with pytest.raises(RequestFailed) as info:
            await c.append("s", [{"body": 1}], producer=False)
        assert info.value.code is ErrorCode.WAIT_TIMEOUT
        fake.fail_next.append(timeout_504)
        with pytest.raises(RequestFailed):
            await c.read("s", 0)  # a read's wait bound is the caller's answer, not retried
    assert len(fake.requests) == 4  # 504 + retry, then one each


async def test_partition_errors_retried_with_producer(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    fake.partial_fail_once = 1
    async with GeostoreClient([url], backoff_s=0.01) as c:
        res = await c.append("s", [{"body": 0, "partition": 0}, {"body": 1, "partition": 1}])
    assert not res.errors and len(res.results) == 2
    assert len(fake.events[("s", 0)]) == 1  # partition 0 deduplicated on the retry
    assert len(fake.events[("s", 1)]) == 1


async def test_partition_errors_surface_without_producer(
    node: tuple[ContractFixture, str],
) -> None:
    fake, url = node
    fake.partial_fail_once = 1
    async with GeostoreClient([url], idempotent=False) as c:
        res = await c.append("s", [{"body": 0, "partition": 0}, {"body": 1, "partition": 1}])
    assert [r.partition for r in res.results] == [0]
    assert [(e.partition, e.error.code) for e in res.errors] == [(1, ErrorCode.NO_QUORUM)]


async def test_fails_over_to_a_live_node(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    async with GeostoreClient([_dead_url(), url], "r1", idempotent=False) as c:
        res = await c.append("s", [{"body": 1}])  # never connected: safe even unkeyed
        await c.read("s", 0)
    assert res.results[0].first_seq == 0
    assert len(fake.requests) == 2  # the live node answered both; the dead one got nothing


async def test_all_nodes_down_is_unreachable() -> None:
    async with GeostoreClient([_dead_url(), _dead_url()], "r9", backoff_s=0.01) as c:
        with pytest.raises(Unreachable, match="no node of region r9 answered") as info:
            await c.read("s", 0)
    assert info.value.code is ErrorCode.UNAVAILABLE


async def test_every_call_has_a_deadline(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    fake.hang = True
    async with GeostoreClient([url], timeout_s=0.3) as c:
        with pytest.raises(CallTimeout):
            await c.read("s", 0)
        with pytest.raises(CallTimeout):
            await c.status(timeout_s=0.2)


async def test_read_your_writes_token(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    async with GeostoreClient([url], token_wait_ms=500) as c:
        await c.read("s", 0, read_your_writes=True)  # nothing written yet: no token
        first = await c.append("s", [{"body": 1}])
        await c.append("s", [{"body": 2, "partition": 1}])
        await c.read("s", 0)  # not asked
        await c.read("s", 0, read_your_writes=True)
        await c.read("s", 1, read_your_writes=True)
        assert c.token("s", 0) == first.token and c.token("s") != first.token
        await c.read("s", 0, after="explicit", wait_ms=7)
    queries = [r[2] for r in fake.requests if r[0] == "GET"]
    assert "after" not in queries[0] and "after" not in queries[1]
    assert queries[2]["after"] == first.token and queries[2]["wait_ms"] == "500"
    assert queries[3]["after"] == c.token("s", 1)
    assert (queries[4]["after"], queries[4]["wait_ms"]) == ("explicit", "7")


async def test_tail_resumes_after_a_drop_without_gaps(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    async with GeostoreClient([url], backoff_s=0.01) as c:
        await c.append("s", [{"body": i} for i in range(5)])
        fake.tail_drop_after = 2
        got = []
        async for ev in c.tail("s", 0, from_seq=0):
            got.append((ev.seq, ev.body))
            if len(got) == 5:
                break
    assert got == [(i, i) for i in range(5)]
    tails = [r[2] for r in fake.requests if r[1].endswith("/tail")]
    assert [t["from_seq"] for t in tails] == ["0", "2", "4"]


async def test_create_stream_and_health(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    async with GeostoreClient([url, _dead_url()]) as c:
        info = await c.create_stream("f", 3, key_field="origin", homes={0: "r1"})
        health = await c.health_all(timeout_s=1)
    assert fake.requests[0][3] == {
        "name": "f",
        "partitions": 3,
        "key_field": "origin",
        "homes": {"0": "r1"},
    }
    assert info.partitions == 3 and [h.partition for h in info.homes] == [0, 1, 2]
    assert [(h.ok, h.status) for h in health] == [(True, 200), (False, 0)]


def test_cluster_json(tmp_path: Path) -> None:
    doc = {
        "mode": "multi-leader",
        "regions": {
            "r1": {"nodes": [{"id": "a", "api": "http://127.0.0.1:1/", "pid": 1}]},
            "r2": {"nodes": [{"id": "b", "api": "http://127.0.0.1:2"}]},
        },
    }
    (tmp_path / "cluster.json").write_text(json.dumps(doc))
    cluster = load_cluster(tmp_path)
    assert cluster.urls("r1") == ["http://127.0.0.1:1"] and cluster.mode == "multi-leader"
    client = GeostoreClient.from_cluster(tmp_path / "cluster.json", "r2")
    assert client.urls == ["http://127.0.0.1:2"] and client.region == "r2"
    with pytest.raises(ApiError, match="name one with --region"):
        GeostoreClient.from_cluster(tmp_path)
    with pytest.raises(ApiError, match="no region 'r3'"):
        cluster.urls("r3")
    with pytest.raises(ApiError, match="cluster up"):
        load_cluster(tmp_path / "nope")
    with pytest.raises(ApiError, match="must be a URL"):
        parse_cluster({"regions": {"r": {"nodes": [{"api": "127.0.0.1:1"}]}}})


def test_cluster_json_tls_fields(tmp_path: Path) -> None:
    doc = {
        "tls": True,
        "ca": "certs/ca.pem",
        "regions": {"r1": {"nodes": [{"id": "a", "api": "http://127.0.0.1:1"}]}},
    }
    cluster = parse_cluster(doc, str(tmp_path / "cluster.json"))
    assert cluster.tls and cluster.urls("r1") == ["https://127.0.0.1:1"]
    assert cluster.ca == str(tmp_path / "certs" / "ca.pem")
    plain = parse_cluster({"regions": {"r": {"nodes": [{"api": "https://h:1"}]}}})
    assert plain.tls and plain.ca is None  # https addresses say TLS on their own
    assert not parse_cluster({"regions": {"r": {"nodes": [{"api": "http://h:1"}]}}}).tls
    with pytest.raises(ApiError, match="'tls' must be"):
        parse_cluster({**doc, "tls": "yes"})
    with pytest.raises(ApiError, match="'ca' must be"):
        parse_cluster({**doc, "ca": 3})
    (tmp_path / "cluster.json").write_text(json.dumps(doc))
    with pytest.raises(ApiError, match="cannot load TLS files"):  # the CA file is not there
        GeostoreClient.from_cluster(tmp_path)


async def test_token_is_sent_and_never_shown(node: tuple[ContractFixture, str]) -> None:
    fixture, url = node
    secret = "gst_unit-secret-4242424242"
    async with GeostoreClient([url], token=secret) as client:
        assert secret not in repr(client) and "token=<set>" in repr(client)
        await client.append("s", [{"body": 1}])
    assert fixture.authorization[-1] == f"Bearer {secret}"
    async with GeostoreClient([url]) as anonymous:
        await anonymous.append("s", [{"body": 1}])
    assert fixture.authorization[-1] is None


def test_auth_answers_are_typed() -> None:
    from geostore.client import Forbidden, Unauthenticated
    from geostore.client.errors import error_from_body

    body = {"error": {"code": "forbidden", "message": "token 'r' lacks the 'write' role"}}
    err = error_from_body(403, body, retry_after_s=None, node="n")
    assert isinstance(err, Forbidden) and err.code is ErrorCode.FORBIDDEN and not err.retryable
    bare = error_from_body(401, "", retry_after_s=None, node=None)
    assert isinstance(bare, Unauthenticated) and bare.code is ErrorCode.UNAUTHORIZED


def test_sse_parser() -> None:
    p = SseParser()
    lines = [
        ": keep-alive",
        "",
        "id: 3",
        "event: event",
        'data: {"a":',
        "data: 1}",
        "",
        "data:x",
        "",
    ]
    msgs = [m for m in (p.feed_line(line) for line in lines) if m is not None]
    assert [(m.event, m.data, m.id) for m in msgs] == [
        ("event", '{"a":\n1}', "3"),
        ("message", "x", "3"),
    ]


async def test_client_session_is_shared_and_not_closed(node: tuple[ContractFixture, str]) -> None:
    _, url = node
    async with aiohttp.ClientSession() as session:
        async with GeostoreClient([url], session=session) as c:
            await c.status()
        assert not session.closed


async def test_find_leader_moves_to_the_leaders_url(node: tuple[ContractFixture, str]) -> None:
    fake, url = node
    runner2, url2 = await _serve(ContractFixture())
    try:
        c = GeostoreClient([url, url2], "r1", node_ids=["n1", "n2"])
        async with c:
            fake.status_body = {"groups": {"data-r1": {"region": "r1", "leader": "n2"}}}
            assert await c.find_leader() == url2
            await c.read("s", 0)
        assert not [r for r in fake.requests if r[1].endswith("/events")]
    finally:
        await runner2.cleanup()


def _event_calls(fake: ContractFixture) -> int:
    return len([r for r in fake.requests if r[1].endswith("/events")])


async def test_a_named_leader_takes_the_later_calls(node: tuple[ContractFixture, str]) -> None:
    follower, url = node
    leader = ContractFixture()
    runner2, url2 = await _serve(leader)
    try:
        follower.answer_headers = {LEADER_HEADER: "n2"}  # it forwarded to n2
        async with GeostoreClient([url, url2], "r1", node_ids=["n1", "n2"]) as c:
            await c.append("s", [{"body": 1}])
            await c.append("s", [{"body": 2}])
            await c.read("s", 0)
        assert _event_calls(follower) == 1 and _event_calls(leader) == 2
    finally:
        await runner2.cleanup()


@pytest.mark.parametrize("named", ["n9", "", "n1 n2", "N2"])
async def test_a_leader_the_client_does_not_know_is_ignored(
    node: tuple[ContractFixture, str], named: str
) -> None:
    follower, url = node
    other = ContractFixture()
    runner2, url2 = await _serve(other)
    try:
        follower.answer_headers = {LEADER_HEADER: named}
        async with GeostoreClient([url, url2], "r1", node_ids=["n1", "n2"]) as c:
            for i in range(3):
                await c.append("s", [{"body": i}])
        # without node ids the client cannot tell whom a header names: it stays too
        follower.answer_headers = {LEADER_HEADER: "n2"}
        async with GeostoreClient([url, url2], "r1") as c:
            for i in range(3):
                await c.append("s", [{"body": i}])
        assert _event_calls(follower) == 6 and _event_calls(other) == 0
    finally:
        await runner2.cleanup()


async def test_a_pinned_call_does_not_move_the_client(node: tuple[ContractFixture, str]) -> None:
    follower, url = node
    leader = ContractFixture()
    runner2, url2 = await _serve(leader)
    try:
        async with GeostoreClient([url, url2], "r1", node_ids=["n1", "n2"]) as c:
            leader.answer_headers = {LEADER_HEADER: "n2"}
            follower.answer_headers = {LEADER_HEADER: "n2"}
            await c.status(node=url)  # pinned to n1: its answer names n2, the client stays
            await c.read("s", 0)  # so this one goes to n1 (and its answer moves the client)
            await c.read("s", 0)
        assert _event_calls(follower) == 1 and _event_calls(leader) == 1
    finally:
        await runner2.cleanup()


async def test_not_leader_naming_the_leader_is_retried_there(
    node: tuple[ContractFixture, str],
) -> None:
    old_leader, url = node
    fakes = [ContractFixture(), ContractFixture()]
    served = [await _serve(f) for f in fakes]
    try:
        refusal = {"code": "not_leader", "message": "n1 does not lead", "leader": "n2"}
        old_leader.fail_next = [(503, refusal, {"Retry-After": "1", LEADER_HEADER: "n2"})]
        urls = [url, served[0][1], served[1][1]]
        async with GeostoreClient(urls, "r1", node_ids=["n1", "n3", "n2"]) as c:
            res = await c.append("s", [{"body": 1}])
        assert res.results[0].first_seq == 0
        # rotation would have tried n3 next; the named leader n2 took the retry
        assert [_event_calls(f) for f in (old_leader, *fakes)] == [1, 0, 1]
    finally:
        for runner, _ in served:
            await runner.cleanup()


async def test_tail_carries_large_events(node: tuple[ContractFixture, str]) -> None:
    _, url = node
    big = "x" * 300_000  # one SSE line far beyond aiohttp's default 64 KiB line buffer
    async with GeostoreClient([url]) as c:
        await c.append("s", [{"body": big}])
        async for ev in c.tail("s", 0, from_seq=0, reconnect=False):
            assert ev.body == big
            break


@pytest.mark.parametrize("span", [4, 1000])
async def test_late_retry_stays_inside_the_dedup_window(
    node: tuple[ContractFixture, str], span: int
) -> None:
    """The first append's answer is lost and its retry comes after 20 later appends. With
    one producer id (span 1000) that seq fell out of an 8-seq window and is refused; the
    client's id rotation (span 4) keeps it recognisable, so the retry is applied."""
    fake, url = node
    fake.window, fake.stall_first_unapplied = 8, True
    async with GeostoreClient([url], attempt_timeout_s=0.3, producer_span=span) as c:
        first = asyncio.create_task(c.append("s", [{"body": "first"}]))
        while not fake.requests:  # the first request is at the fixture, stalled
            await asyncio.sleep(0.01)
        for i in range(20):
            await c.append("s", [{"body": i}])
        fake.release_retry.set()
        if span == 1000:
            with pytest.raises(RequestFailed) as info:
                await first
            assert info.value.code is ErrorCode.CONFLICT
        else:
            assert (await first).count == 1
            assert sum(e["body"] == "first" for e in fake.events[("s", 0)]) == 1


async def test_quarantine_clear_is_never_retried_once_sent(
    node: tuple[ContractFixture, str],
) -> None:
    """A repeated clear could drop runs a failback added meanwhile: one request, whatever the
    answer (even a retryable 503 or no answer at all), and it needs the admin role."""
    from geostore.transport.auth import default_role_for

    assert default_role_for("POST", "/v1/admin/quarantine/clear") == "admin"
    fake, url = node
    async with GeostoreClient([url, url]) as c:
        answer = await c.quarantine_clear("s", 1, through_epoch=2)
    assert fake.requests[-1][:2] == ("POST", "/v1/admin/quarantine/clear")
    assert fake.requests[-1][3] == {"stream": "s", "partition": 1, "through_epoch": 2}
    assert answer["cleared"]["runs"] == 0
    fake.requests.clear()
    fake.fail_next.append((503, {"code": "no_quorum", "message": "electing"}, {}))
    async with GeostoreClient([url, url]) as c:
        with pytest.raises(RequestFailed) as info:
            await c.quarantine_clear()
    assert info.value.retryable and len(fake.requests) == 1
    fake.requests.clear()
    fake.hang = True
    async with GeostoreClient([url, url], attempt_timeout_s=0.2) as c:
        with pytest.raises(CallTimeout, match="outcome is unknown"):
            await c.quarantine_clear()
    assert len(fake.requests) == 1
