"""An answer whose client already closed the connection is counted as undelivered, never
treated as a server error (no 500, no logged traceback), on the node's guarded site and
without it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from geostore.config.settings import LimitsSettings
from geostore.runtime.guard import GuardedSite, GuardStats, write_deadline_middleware


async def _client_gone(request: web.Request) -> web.Response:
    # what a client that gave up looks like to the handler: its connection is closing by the
    # time the answer is ready
    assert request.transport is not None
    request.transport.close()
    return web.json_response({"ok": True})


@pytest.mark.parametrize("guarded", [True, False])
async def test_an_answer_to_a_client_that_left_is_counted_not_logged_as_an_error(
    guarded: bool, caplog: pytest.LogCaptureFixture
) -> None:
    limits, stats = LimitsSettings(), GuardStats()
    app = web.Application(middlewares=[write_deadline_middleware(limits, stats)])
    app.router.add_get("/gone", _client_gone)
    runner = web.AppRunner(app)
    await runner.setup()
    site: web.TCPSite
    if guarded:
        site = GuardedSite(runner, "127.0.0.1", 0, limits=limits, stats=stats)
    else:
        site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    caplog.set_level(logging.DEBUG)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        got = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        for _ in range(100):  # the handler finishes after the connection closed
            if stats.answers_undelivered:
                break
            await asyncio.sleep(0.01)
    finally:
        await runner.cleanup()
    assert stats.answers_undelivered == 1
    assert b"500" not in got
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
