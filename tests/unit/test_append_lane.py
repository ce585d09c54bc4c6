"""The append lane: which heads it takes (anything unusual goes to aiohttp), and its connection
handling over real sockets, on asyncio's loop and on uvloop's (whose transports are not
subclasses of asyncio's): answers in order on a pipelined connection, a handover to aiohttp
from the first byte not served, a refused caller, the body, head and keep-alive deadlines,
a half-closed client, and the head deadline of the guard on both loops."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop
from aiohttp import web

from geostore.config.settings import LimitsSettings
from geostore.runtime.guard import GuardedSite, GuardStats
from geostore.runtime.lane import AppendLane, LaneHead, answer_bytes, parse_head

pytestmark = pytest.mark.timeout(60)

HEAD = (
    b"POST /v1/streams/s-1.x_y/events HTTP/1.1\r\nHost: 127.0.0.1:80\r\n"
    b"Content-Type: application/json\r\nAccept: application/json\r\n"
    b"User-Agent: t\r\nContent-Length: 12"
)


def test_the_usual_append_head_is_the_lanes() -> None:
    assert parse_head(HEAD) == LaneHead("s-1.x_y", 12, None)
    assert parse_head(HEAD + b"\r\nAuthorization: Bearer abc") == LaneHead(
        "s-1.x_y", 12, "Bearer abc"
    )
    assert parse_head(HEAD + b"\r\nconnection: Keep-Alive\r\naccept-encoding: gzip") is not None
    assert parse_head(HEAD.replace(b"json\r\nAccept", b"json; charset=UTF-8\r\nAccept")) is not None
    assert parse_head(HEAD) is parse_head(HEAD)  # the second is a lookup


@pytest.mark.parametrize(
    "head",
    [
        HEAD.replace(b"POST", b"PUT"),
        HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
        HEAD.replace(b"/events", b"/events?route=reject"),
        HEAD.replace(b"s-1.x_y", b"s%20x"),
        HEAD.replace(b"s-1.x_y", b""),
        HEAD.replace(b"/v1/streams/", b"/v1/streamz/"),
        HEAD + b"\r\nTransfer-Encoding: chunked",
        HEAD + b"\r\nExpect: 100-continue",
        HEAD + b"\r\nContent-Encoding: gzip",
        HEAD + b"\r\nConnection: close",
        HEAD + b"\r\nConnection: Upgrade",
        HEAD + b"\r\nX-Geostore-Forwarded: n2",
        HEAD + b"\r\nX-Geostore-From-Region: r2",
        HEAD + b"\r\nContent-Length: 12",
        HEAD + b"\r\nAuthorization: a\r\nAuthorization: b",
        HEAD.replace(b"Content-Length: 12", b"Content-Length: +12"),
        HEAD.replace(b"Content-Length: 12", b"Content-Length: 0"),
        HEAD.replace(b"\r\nContent-Length: 12", b""),
        HEAD.replace(b"application/json\r\nAccept", b"application/cbor\r\nAccept"),
        HEAD.replace(b"Content-Type: application/json", b"Content-Type: text/plain"),
        HEAD.replace(b"Accept: application/json", b"Accept: application/cbor"),
        HEAD.replace(b"User-Agent: t", b"User-Agent : t"),
        HEAD.replace(b"User-Agent: t", b" folded"),
        HEAD.replace(b"User-Agent: t", b"no colon"),
        HEAD.replace(b"User-Agent: t", b"User-Agent: t\x00"),
        HEAD.replace(b"User-Agent: t", b"User-Agent: a\nb"),
        HEAD + b"\r\nHost: x" * 20,
    ],
)
def test_anything_unusual_goes_to_aiohttp(head: bytes) -> None:
    assert parse_head(head) is None


def test_answers_are_complete_http_answers() -> None:
    data = answer_bytes(503, b'{"e":1}', {"Retry-After": "1"})
    head, body = data.split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"Content-Length: 7" in lines and b"Retry-After: 1" in lines
    assert b"Content-Type: application/json; charset=utf-8" in lines
    assert any(line.startswith(b"Date: ") and line.endswith(b" GMT") for line in lines)
    assert body == b'{"e":1}'


# --- over real sockets -----------------------------------------------------------------------

LIMITS = LimitsSettings(
    body_bytes_max=1000,
    header_timeout_s=0.5,
    body_timeout_s=0.5,
    keepalive_timeout_s=0.6,
    write_timeout_s=0.5,
)

Handler = Callable[[str, bytes], Awaitable[Any]]


class Server:
    """A GuardedSite with a lane whose handler a test gives, and an aiohttp app behind it
    that answers every request ``aiohttp <method> <path> <body>``."""

    def __init__(
        self, handle: Handler, authorize: Any = None, limits: LimitsSettings = LIMITS
    ) -> None:
        self.lane = AppendLane(handle, authorize)
        self.stats = GuardStats()
        self.limits = limits
        self.port = 0

    async def __aenter__(self) -> Server:
        async def general(request: web.Request) -> web.Response:
            body = await request.read()
            return web.Response(text=f"aiohttp {request.method} {request.path} {body.decode()}")

        app = web.Application(client_max_size=self.limits.body_bytes_max)
        app.router.add_route("*", "/{tail:.*}", general)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = GuardedSite(
            self.runner, "127.0.0.1", 0, limits=self.limits, stats=self.stats, lane=self.lane
        )
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stats.close_lanes()
        await self.runner.cleanup()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


def request(body: bytes, stream: bytes = b"s1", extra: bytes = b"") -> bytes:
    return (
        b"POST /v1/streams/" + stream + b"/events HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, body


async def echo(stream: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
    await asyncio.sleep(0.01)
    return 200, b"lane " + stream.encode() + b" " + body, {}


LOOPS = ["asyncio", "uvloop"]


def run_on(loop_kind: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop_kind == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_pipelined_requests_are_answered_in_order_by_the_lane(loop_kind: str) -> None:
    async def main() -> None:
        async with Server(echo) as srv:
            reader, writer = await srv.connect()
            writer.write(b"".join(request(b"{%d}" % i) for i in range(5)))
            for i in range(5):
                status, headers, body = await read_answer(reader)
                assert (status, body) == (200, b"lane s1 {%d}" % i)
                assert headers["content-type"] == "application/json; charset=utf-8"
            # a body in pieces
            data = request(b"{" + b"x" * 500 + b"}")
            for k in range(0, len(data), 97):
                writer.write(data[k : k + 97])
                await asyncio.sleep(0.001)
            assert (await read_answer(reader))[2] == b"lane s1 {" + b"x" * 500 + b"}"
            assert (srv.stats.lane_requests, srv.stats.lane_handovers) == (6, 0)
            writer.close()

    run_on(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_handover_gives_aiohttp_every_byte_not_yet_served(loop_kind: str) -> None:
    async def handle(stream: str, body: bytes) -> Any:
        if stream == "general":
            return None  # the general path, before anything changed
        return await echo(stream, body)

    async def main() -> None:
        async with Server(handle) as srv:
            reader, writer = await srv.connect()
            # the lane answers the first, hands the second (and all after it) over
            writer.write(request(b"{1}") + request(b"{2}", b"general") + request(b"{3}"))
            assert (await read_answer(reader))[2] == b"lane s1 {1}"
            assert (await read_answer(reader))[2] == b"aiohttp POST /v1/streams/general/events {2}"
            assert (await read_answer(reader))[2] == b"aiohttp POST /v1/streams/s1/events {3}"
            # an unusual head on a fresh connection: aiohttp from its first byte
            reader, writer2 = await srv.connect()
            writer2.write(request(b"{4}", extra=b"Traceparent: 00-ab-cd-01\r\n"))
            assert (await read_answer(reader))[2] == b"aiohttp POST /v1/streams/s1/events {4}"
            # a body over the limit: aiohttp's answer (the node's says 413)
            reader, writer3 = await srv.connect()
            writer3.write(request(b"{" + b"y" * 2000 + b"}"))
            status, _, _ = await read_answer(reader)
            assert status == 413
            assert (srv.stats.lane_requests, srv.stats.lane_handovers) == (1, 3)
            for w in (writer, writer2, writer3):
                w.close()

    run_on(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_caller_the_lane_refuses_is_answered_by_the_general_path(loop_kind: str) -> None:
    async def main() -> None:
        seen: list[str | None] = []

        def authorize(value: str | None, transport: Any) -> bool:
            assert transport is not None
            seen.append(value)
            return value == "Bearer good"

        async with Server(echo, authorize) as srv:
            reader, writer = await srv.connect()
            writer.write(request(b"{1}", extra=b"Authorization: Bearer good\r\n"))
            assert (await read_answer(reader))[2] == b"lane s1 {1}"
            writer.write(request(b"{2}", extra=b"Authorization: Bearer bad\r\n"))
            assert (await read_answer(reader))[2] == b"aiohttp POST /v1/streams/s1/events {2}"
            assert seen == ["Bearer good", "Bearer bad"]
            writer.close()

    run_on(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_deadlines_hold_in_the_lane(loop_kind: str) -> None:
    async def main() -> None:
        async with Server(echo) as srv:
            # a body that stops arriving: 400 and closed at body_timeout_s
            reader, writer = await srv.connect()
            writer.write(request(b"{" + b"z" * 100 + b"}")[:-20])
            status, _, body = await read_answer(reader)
            assert status == 400 and b"did not arrive within 0.5 s" in body
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert srv.stats.body_timeouts == 1
            # a head that stops arriving: dropped at header_timeout_s (on both loops)
            reader, writer = await srv.connect()
            writer.write(request(b"{1}")[:20])
            t0 = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert time.monotonic() - t0 < 3 and srv.stats.header_timeouts == 1
            # an idle keep-alive connection: closed after keepalive_timeout_s, not before
            reader, writer = await srv.connect()
            writer.write(request(b"{1}"))
            assert (await read_answer(reader))[0] == 200
            await asyncio.sleep(0.3)
            writer.write(request(b"{2}"))
            assert (await read_answer(reader))[0] == 200
            t0 = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert 0.4 < time.monotonic() - t0 < 3
            assert srv.stats.header_timeouts == 1  # an idle connection is not a slow head

    run_on(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_client_that_pipelines_and_never_reads_is_bounded_and_dropped(loop_kind: str) -> None:
    """Requests held while answers cannot be written stop the reading (bounded buffer); the
    answer that cannot be written is dropped at the write deadline."""

    async def big(stream: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        return 200, b"x" * 65536, {}

    async def main() -> None:
        limits = dataclasses.replace(LIMITS, write_timeout_s=3.0)
        async with Server(big, limits=limits) as srv:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.port))
            one = request(b"{" + b"p" * 900 + b"}")
            sent = 0
            t0 = time.monotonic()
            with contextlib.suppress(ConnectionError):
                while time.monotonic() - t0 < 5 and srv.stats.write_timeouts == 0:
                    try:
                        sent += sock.send(one * 64)
                    except BlockingIOError:  # the server stopped reading: the buffers are full
                        await asyncio.sleep(0.05)
            assert srv.stats.write_timeouts == 1, srv.stats
            # reading stopped: what went out is what the kernel's buffers and the lane's
            # bound hold, not 3 s of loopback bandwidth
            assert sent < 32 * 1024 * 1024, sent
            sock.close()
            reader, writer = await srv.connect()  # the server keeps serving others
            writer.write(request(b"{1}"))
            assert (await read_answer(reader))[0] == 200
            writer.close()

    run_on(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_half_closed_client_gets_its_answer_then_the_connection_closes(loop_kind: str) -> None:
    async def main() -> None:
        async with Server(echo) as srv:
            reader, writer = await srv.connect()
            writer.write(request(b"{1}"))
            writer.write_eof()
            assert (await read_answer(reader))[2] == b"lane s1 {1}"
            assert await asyncio.wait_for(reader.read(), 5) == b""

    run_on(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_handler_bug_is_a_500_and_the_connection_keeps_serving(loop_kind: str) -> None:
    async def handle(stream: str, body: bytes) -> Any:
        if body == b"{boom}":
            raise RuntimeError("a bug")
        return await echo(stream, body)

    async def main() -> None:
        async with Server(handle) as srv:
            reader, writer = await srv.connect()
            writer.write(request(b"{boom}") + request(b"{1}"))
            status, _, body = await read_answer(reader)
            assert status == 500 and b'"code":"internal"' in body and b"RuntimeError" in body
            assert (await read_answer(reader))[2] == b"lane s1 {1}"
            writer.close()

    run_on(loop_kind, main)


def test_the_guard_drops_a_slow_head_and_refuses_over_the_cap_on_uvloop() -> None:
    """Without the lane (aiohttp from the first byte): uvloop's transports failed the
    guard's old ``isinstance(..., asyncio.Transport)`` checks, so a slow head was logged but
    never dropped, and a connection over the cap raised instead of getting its 503."""

    async def main() -> None:
        async def general(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", general)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stats = GuardStats()
        limits = LimitsSettings(header_timeout_s=0.3, connections_max=1)
        site = GuardedSite(runner, "127.0.0.1", 0, limits=limits, stats=stats)
        await site.start()
        assert site._server is not None
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHo")
            # a second connection over the cap: a complete 503 answer
            reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
            refusal = await asyncio.wait_for(reader2.read(), 5)
            assert refusal.startswith(b"HTTP/1.1 503 ") and b'"unavailable"' in refusal
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert stats.header_timeouts == 1 and stats.connections_refused == 1
            writer.close()
            writer2.close()
        finally:
            await runner.cleanup()

    uvloop.run(main())
