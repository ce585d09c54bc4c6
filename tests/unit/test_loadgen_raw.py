"""The load generator's lean HTTP client posts, reads Content-Length answers, reuses its keep-alive connections, speaks TLS with the cluster's CA and a bearer token (the default cluster), and samples RSS through a soak window."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from bench.loadgen import CpuSampler, RawHttp, VirtualClock
from geostore.config.topology import make_topology
from geostore.transport.certs import CA_CERT, init_certs, load_node_tls


async def test_raw_client_posts_and_reuses_connections() -> None:
    seen: list[tuple[str, bytes, str]] = []
    peers: set[object] = set()

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path, await request.read(), request.content_type))
        peers.add(request.transport)
        status = 200 if request.path == "/ok" else 503
        return web.json_response({"n": len(seen)}, status=status)

    app = web.Application()
    app.router.add_post("/{name}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    raw = RawHttp(f"http://127.0.0.1:{port}", timeout_s=5.0)
    try:
        for i in range(3):
            status, data = await raw.post("/ok", b'{"i": %d}' % i, "application/json")
            assert status == 200 and data == b'{"n": %d}' % (i + 1)
        status, _ = await raw.post("/busy", b"{}", "application/json")
        assert status == 503
        # two at once need two connections; afterwards both are idle and reused
        await asyncio.gather(*(raw.post("/ok", b"{}", "application/json") for _ in range(2)))
        assert len(peers) == 2
        assert seen[0] == ("/ok", b'{"i": 0}', "application/json")
    finally:
        await raw.close()
        await runner.cleanup()


async def test_raw_client_speaks_tls_with_the_cluster_ca_and_token(tmp_path: Path) -> None:
    init_certs(make_topology({"r1": ["a"]}, 0.0, name="c1"), tmp_path)
    tls = load_node_tls(tmp_path, "a", require_client_cert=False)
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"ok": request.secure})

    app = web.Application()
    app.router.add_post("/x", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_ctx).start()
    port = runner.addresses[0][1]
    ctx = ssl.create_default_context(cafile=str(tmp_path / CA_CERT))
    raw = RawHttp(
        f"https://127.0.0.1:{port}", 5.0, ssl=ctx, headers={"Authorization": "Bearer s3cret"}
    )
    try:
        for _ in range(2):
            status, data = await raw.post("/x", b"{}", "application/json")
            assert (status, data) == (200, b'{"ok": true}')
        assert seen == ["Bearer s3cret", "Bearer s3cret"]
        # without the cluster's CA the server is not trusted
        untrusted = RawHttp(f"https://127.0.0.1:{port}", 5.0)
        try:
            await untrusted.post("/x", b"{}", "application/json")
            raise AssertionError("an untrusted certificate was accepted")
        except ssl.SSLError:
            pass
        finally:
            await untrusted.close()
    finally:
        await raw.close()
        await runner.cleanup()


async def test_soak_sampler_takes_rss_every_period() -> None:
    clock = VirtualClock()
    sampler = CpuSampler({"me": os.getpid()}, rss_every_s=60.0)
    await clock.run(sampler.around(clock, 10.0, 10.0 + 300.0))
    assert [t for t, _ in sampler.rss_series] == [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]
    assert all(rss["me"] > 0 for _, rss in sampler.rss_series)


async def test_lean_appender_falls_back_to_the_client_with_the_same_producer_pair() -> None:
    """Clean answers go the lean way; a refusal, a partition error or a cut connection is
    retried through the client library with the same producer pair (what makes the retry
    safe), and the lean path then aims at the node the client moved to."""
    from bench.loadgen import LeanAppender
    from geostore.client import GeostoreClient

    bodies: list[tuple[str, dict[str, object]]] = []
    script: dict[str, list[str]] = {"a": ["ok", "refuse", "partition_error", "cut"], "b": []}

    def handler_for(node: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            body = json.loads(await request.read())
            bodies.append((node, body["producer"]))
            what = script[node].pop(0) if script[node] else "ok"
            n = len(body["events"])
            if what == "refuse":
                error = {"code": "unavailable", "message": "not now"}
                return web.json_response({"error": error}, status=503)
            if what == "cut":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            if what == "partition_error":
                error = {"code": "not_leader", "message": "moved"}
                return web.json_response({"results": [{"partition": 0, "error": error}]})
            result = {"partition": 0, "first_seq": 1, "last_seq": n, "epoch": 1}
            return web.json_response({"results": [result]})

        return handler

    runners = []
    urls = []
    for node in ("a", "b"):
        app = web.Application()
        app.router.add_post("/v1/streams/{stream}/events", handler_for(node))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    client = GeostoreClient(urls, "r1", timeout_s=10.0, backoff_s=0.01)
    appender = LeanAppender(client, "s")
    try:
        assert await appender.append([{"body": {"i": 1}}, {"body": {"i": 2}}]) == 2
        assert (appender.lean, appender.fallbacks) == (1, 0)
        # lean to a: 503. The client's retry (same pair) meets a partition error on a, retries
        # that, finds a's connection cut and rotates to b, which stores it
        assert await appender.append([{"body": {"i": 3}}]) == 1
        assert (appender.lean, appender.fallbacks) == (1, 1)
        assert [n for n, _ in bodies] == ["a", "a", "a", "a", "b"]
        assert bodies[1][1] == bodies[2][1] == bodies[3][1] == bodies[4][1]
        assert bodies[0][1] != bodies[1][1]
        # the lean path follows the client to b
        assert await appender.append([{"body": {"i": 4}}]) == 1
        assert (appender.lean, appender.fallbacks) == (2, 1) and bodies[-1][0] == "b"
        # on the lean path itself: a partition error, then a cut connection
        for what in ("partition_error", "cut"):
            script["b"] = [what]
            assert await appender.append([{"body": {"i": 5}}]) == 1
            (n1, p1), (n2, p2) = bodies[-2:]
            assert n1 == n2 == "b" and p1 == p2
        assert (appender.lean, appender.fallbacks) == (2, 3)
    finally:
        await appender.close()
        await client.close()
        for runner in runners:
            await runner.cleanup()


async def test_raw_client_never_reads_unsolicited_bytes_as_the_next_answer() -> None:
    """Bytes a server sends on an idle kept-alive connection (a refusal before it closes)
    are not taken for the answer to the next request: that one goes on a fresh connection."""
    answered = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        answered += 1
        body = b'{"n": %d}' % answered
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await asyncio.sleep(0.05)
        stray = b'{"stray": 1}'
        writer.write(b"HTTP/1.1 408 Timeout\r\nContent-Length: %d\r\n\r\n" % len(stray) + stray)
        await asyncio.sleep(5)  # keeps the connection open

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    raw = RawHttp(f"http://127.0.0.1:{port}", timeout_s=5.0)
    try:
        assert await raw.post("/x", b"{}", "application/json") == (200, b'{"n": 1}')
        await asyncio.sleep(0.2)  # the stray answer arrives on the idle connection
        assert await raw.post("/x", b"{}", "application/json") == (200, b'{"n": 2}')
    finally:
        await raw.close()
        server.close()
