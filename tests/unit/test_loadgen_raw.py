"""The load generator's lean HTTP client posts, reads Content-Length answers, reuses its keep-alive connections, speaks TLS with the cluster's CA and a bearer token (the default cluster), and samples RSS through a soak window."""

from __future__ import annotations

import asyncio
import os
import ssl
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
