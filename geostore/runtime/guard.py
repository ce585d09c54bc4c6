"""Slow and greedy clients: connection cap, header, body and write deadlines of the node's port.

Theory of operation
-------------------
aiohttp bounds what one request may hold (request line and header field sizes, header count,
body size through ``client_max_size``, decompressed size because it checks the body size on
the decompressed bytes) but not how *long* or how *many*: a client that trickles its headers
one byte every few seconds, never finishes its body, or never reads its answer holds a
connection, a handler and buffers for as long as it likes, and nothing caps the number of
connections. This module adds what is missing, each check before any work is done:

* :class:`GuardedSite`, a ``TCPSite`` whose protocol factory wraps aiohttp's request handler
  in a :class:`_GuardedProtocol`: a connection over ``limits.connections_max`` is answered
  ``503`` (a complete, parseable HTTP answer with the ``unavailable`` error body) and closed
  before aiohttp sees a byte; a new connection that has not sent the end of its first request
  head (``\\r\\n\\r\\n``) within ``limits.header_timeout_s`` is closed. The TLS handshake,
  which runs before the protocol sees the connection, has the same deadline
  (``ssl_handshake_timeout``). On a keep-alive connection the deadline is armed again once
  an answer was written, from the first byte of the next request (an idle connection is left
  to aiohttp's keep-alive timeout); a pipelined head that arrived before the previous answer
  went out is not timed.
* :func:`body_deadline_middleware`: a request with a body has it read, within
  ``limits.body_timeout_s``, after the caller was authorised and before the handler runs (the
  body is cached by aiohttp, so the handler's own read returns it at once). Too large: 413.
  Too slow: 400 ``malformed`` and the connection is closed. A body that has wholly arrived
  (its stream saw its end, the usual small request) is read without a timer: that read
  cannot wait.
* :func:`write_deadline_middleware` (outermost): the answer is written within
  ``limits.write_timeout_s``, or the connection is closed; a client that does not read cannot
  hold a handler. Streamed answers (the live tail, the peer WebSocket) prepare themselves;
  the tail bounds each write on its own with the same deadline.
  Writing an answer can only wait while the transport has paused the protocol (its buffer
  is over the high-water mark: the client does not read): so rather than a timer per
  answer, the connection's protocol arms one timer at the first pause during an answer and
  keeps it until the answer is written (a resume does not disarm it, so a client that reads
  in trickles is bounded too); when it fires the connection is aborted. The bound is the
  same, ``write_timeout_s`` from the first moment the write could wait; an answer that
  never waits (the usual small one) costs no timer.
* :func:`deadlines_middleware`: both of the above as one layer, for a node without tokens
  (nothing has to run between them: with tokens, authorisation comes before the body read).

The same protocol first serves each connection through the append lane
(:mod:`geostore.runtime.lane`), which keeps these deadlines itself (head, body, write, and
aiohttp's keep-alive timeout on an idle connection), and creates aiohttp's request handler
only when it hands the connection over. uvloop's transports are not subclasses of asyncio's
transport classes, so nothing here checks a transport's type.

Timers (``asyncio.timeout``) cost tens of microseconds per use on the request path; a node
answering thousands of appends a second spends a visible share of its CPU on them, hence
the two shortcuts above, each justified by a condition under which the guarded step cannot
wait at all.

Refusals are counted in :class:`GuardStats` (``/v1/status`` ``guard`` and the metrics) and
logged at most once per interval per kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from aiohttp.tcp_helpers import tcp_keepalive
from aiohttp.typedefs import Middleware

from geostore.config.settings import LimitsSettings
from geostore.errors import ApiError, ErrorCode
from geostore.runtime.http import encode_answer, error_response, internal_error
from geostore.runtime.lane import HEAD_BYTES_MAX, AppendLane, LaneHead, answer_bytes, parse_head

log = logging.getLogger("geostore.runtime")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HEAD_END = b"\r\n\r\n"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(slots=True)
class GuardStats:
    """What the guard refused, by kind. Mutable, owned by the node's event loop."""

    connections: int = 0  # open now
    connections_refused: int = 0  # over connections_max: 503 and closed
    header_timeouts: int = 0  # first request head not complete in time
    body_timeouts: int = 0  # body not read in time: 408
    write_timeouts: int = 0  # answer not written in time: connection closed
    #: the client closed its connection before its answer was written (it gave up waiting):
    #: counted, never an error of the server's (aiohttp would log each with its traceback,
    #: milliseconds of CPU apiece on a node that is already behind, and try to send a 500)
    answers_undelivered: int = 0
    #: requests the append lane answered, and connections it handed to aiohttp
    lane_requests: int = 0
    lane_handovers: int = 0
    #: id(transport) -> its guarded protocol (the write deadline and the next head's)
    protocols: dict[int, _GuardedProtocol] = field(default_factory=dict, repr=False)

    def close_lanes(self) -> None:
        """Graceful shutdown: close the append lane's connections that have nothing in
        flight (aiohttp closes its own)."""
        for protocol in list(self.protocols.values()):
            protocol.close_idle()

    def to_json(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "connections_refused": self.connections_refused,
            "header_timeouts": self.header_timeouts,
            "body_timeouts": self.body_timeouts,
            "write_timeouts": self.write_timeouts,
            "answers_undelivered": self.answers_undelivered,
            "lane_requests": self.lane_requests,
            "lane_handovers": self.lane_handovers,
        }


class LogEvery:
    """One warning per kind per interval, with the count it hid."""

    def __init__(self, interval_s: float = 30.0) -> None:
        self._interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, fmt: str, *args: object) -> None:
        now = time.monotonic()
        last, hidden = self._last.get(kind, (-math.inf, 0))
        if now - last < self._interval_s:
            self._last[kind] = (last, hidden + 1)
            return
        self._last[kind] = (now, 0)
        suffix = f" ({hidden} similar since the last report)" if hidden else ""
        log.warning(fmt + suffix, *args)


_LOG = LogEvery()


def _refusal_bytes() -> bytes:
    body = (
        b'{"error":{"code":"unavailable","message":"too many connections to this node",'
        b'"retry_after_s":1}}'
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


_REFUSAL = _refusal_bytes()
#: How long a refused connection stays half-closed so the client reads the 503 (s).
_REFUSAL_LINGER_S = 1.0


class _GuardedProtocol(asyncio.Protocol):
    """Serves a connection under the cap and the deadlines: through the append lane while
    its requests are the lane's (:mod:`geostore.runtime.lane`), then through aiohttp's
    request handler, created when the connection is handed over (for good)."""

    def __init__(
        self,
        inner_factory: Callable[[], asyncio.Protocol],
        stats: GuardStats,
        limits: LimitsSettings,
        lane: AppendLane | None = None,
    ) -> None:
        self._inner_factory = inner_factory
        self._inner: asyncio.Protocol | None = None  # aiohttp's, once handed over
        self._stats = stats
        self._limits = limits
        self._counted = False
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, to find a head's end across reads
        self._in_head = True  # the next bytes belong to a request head
        #: (uvloop's transports are not subclasses of asyncio's: no isinstance checks)
        self._transport: asyncio.Transport | None = None
        self._write_paused = False  # the transport's buffer is over its high-water mark
        #: whose answer is being written (a request, or the lane's description of one)
        self._answering: web.BaseRequest | str | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        #: the write deadline fired during the current answer (the connection was aborted)
        self.write_timed_out = False
        # -- the lane (unused once handed over) --
        self._lane = lane
        self._buf = bytearray()  # received, not yet served
        self._head: LaneHead | None = None  # parsed, its body awaited
        self._head_len = 0
        self._busy = False  # a request is being served: the next waits (answers in order)
        self._eof = False  # the client half-closed: answer what is in flight, then close
        self._read_paused = False  # reading paused: requests held past the bound
        self._body_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        self._task: asyncio.Task[None] | None = None
        #: a longer head is aiohttp's (which applies the configured header limits)
        self._head_max = min(HEAD_BYTES_MAX, limits.header_bytes_max)
        #: more held than a head and a largest body while one is served: stop reading
        self._held_max = HEAD_BYTES_MAX + limits.body_bytes_max

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = self._transport = cast(asyncio.Transport, transport)
        if self._stats.connections >= self._limits.connections_max:
            self._refused = True
            self._stats.connections_refused += 1
            _LOG.warning(
                "refused",
                "refused a connection from %s: %d open, at most %d",
                transport.get_extra_info("peername"),
                self._stats.connections,
                self._limits.connections_max,
            )
            transport.write(_REFUSAL)
            # Half-close, and close a moment later: closing with the client's request unread
            # would reset the connection, and the client could lose the answer with it.
            if transport.can_write_eof():
                transport.write_eof()
            asyncio.get_running_loop().call_later(_REFUSAL_LINGER_S, transport.close)
            return
        self._stats.connections += 1
        self._counted = True
        self._stats.protocols[id(transport)] = self
        if self._lane is None:
            self._hand_over()  # arms the first head's deadline
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._limits.header_timeout_s, self._header_deadline)
        tcp_keepalive(transport)  # what aiohttp's handler turns on
        self._last_active = loop.time()
        if self._limits.keepalive_timeout_s > 0:
            self._idle_timer = loop.call_at(
                self._last_active + self._limits.keepalive_timeout_s, self._idle_check
            )

    @property
    def in_lane(self) -> bool:
        """The connection is still served by the append lane."""
        return self._inner is None and not self._refused

    def expect_head(self) -> None:
        """An answer went out: the next request's head, once it starts, has the deadline too
        (from its first byte, so an idle keep-alive connection is left to the keep-alive
        timeout)."""
        self._in_head = True
        self._tail = b""

    def begin_answer(self, request: web.BaseRequest | str) -> None:
        """An answer to ``request`` is about to be written: from the first moment the write
        could wait (now, if the transport is paused already), it has ``write_timeout_s``."""
        self._answering = request
        self.write_timed_out = False
        if self._write_paused:
            self._arm_write_deadline()

    def end_answer(self) -> None:
        """The answer was written (or failed): disarm, and time the next request's head."""
        self._answering = None
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self.expect_head()

    def _arm_write_deadline(self) -> None:
        if self._write_timer is None:
            loop = asyncio.get_running_loop()
            self._write_timer = loop.call_later(self._limits.write_timeout_s, self._write_deadline)

    def _write_deadline(self) -> None:
        self._write_timer = None
        request = self._answering
        if request is None:
            return
        self.write_timed_out = True
        self._stats.write_timeouts += 1
        _warn_write_timeout(request, self._limits)
        if self._transport is not None:
            self._transport.abort()

    def _header_deadline(self) -> None:
        self._timer = None
        self._stats.header_timeouts += 1
        _LOG.warning(
            "header",
            "closed a connection from %s: no request head within %g s",
            self._transport.get_extra_info("peername") if self._transport else None,
            self._limits.header_timeout_s,
        )
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._inner is None:
            self._buf += data
            if not self._busy:
                self._pump()
            if (
                (self._busy or self._answering is not None)
                and not self._read_paused
                and len(self._buf) > self._held_max
                and self._transport is not None
            ):
                # a client pipelining faster than it is answered: bounded, like aiohttp's
                # buffer (reading resumes once the requests held are served)
                self._read_paused = True
                self._transport.pause_reading()
            return
        if self._in_head:
            if self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._limits.header_timeout_s, self._header_deadline)
            seen = self._tail + data
            if _HEAD_END in seen:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
                self._in_head = False
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        if self._inner is None:
            if self._busy:  # answer the request in flight, then close
                self._eof = True
                return True
            return None  # nothing in flight: the transport closes
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_lane_timers()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._counted:
            self._counted = False
            self._stats.connections -= 1
            if self._transport is not None:
                self._stats.protocols.pop(id(self._transport), None)
            if self._inner is not None:
                self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._answering is not None:
            self._arm_write_deadline()
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        # the write deadline stays armed: it bounds the whole answer, not one pause
        self._write_paused = False
        if self._inner is not None:
            self._inner.resume_writing()
        elif not self._refused and self._answering is not None and not self._busy:
            # the lane wrote its whole answer at once: under the low-water mark, it is out
            self.end_answer()
            self._after_answer()

    # -- the append lane -------------------------------------------------------------------

    def _pump(self) -> None:
        """Serve the next request in the buffer if it is complete (one at a time)."""
        if self._busy or self._inner is not None or self._answering is not None:
            return
        buf = self._buf
        head = self._head
        if head is None:
            end = buf.find(_HEAD_END)
            head_max = self._head_max
            if end < 0 or end > head_max:
                if len(buf) > head_max:
                    self._hand_over()
                elif buf and self._timer is None:  # a head has begun: it has the deadline
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(
                        self._limits.header_timeout_s, self._header_deadline
                    )
                return
            head = parse_head(bytes(buf[:end]))
            if head is None or head.body_len > self._limits.body_bytes_max:
                self._hand_over()
                return
            lane = self._lane
            assert lane is not None
            if lane.authorize is not None and not lane.authorize(
                head.authorization, self._transport
            ):
                self._hand_over()  # the general path answers 401 or 403
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._head = head
            self._head_len = end + 4
        total = self._head_len + head.body_len
        if len(buf) < total:
            if self._body_timer is None:
                loop = asyncio.get_running_loop()
                self._body_timer = loop.call_later(self._limits.body_timeout_s, self._body_slow)
            return
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        request = bytes(buf[:total])
        del buf[:total]
        self._head = None
        self._busy = True
        self._task = asyncio.get_running_loop().create_task(
            self._serve(head, request, self._head_len)
        )

    async def _serve(self, head: LaneHead, request: bytes, head_len: int) -> None:
        lane = self._lane
        assert lane is not None
        try:
            answer = await lane.handle(head.stream, request[head_len:])
        except Exception as exc:  # a bug: answer 500 and keep serving
            log.exception("the append lane failed on %s", head.stream)
            answer = (500, encode_answer(internal_error(exc).to_body(), False), {})
        self._busy = False
        self._task = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # the client left: the append itself stands (as on the general path)
        if answer is None:  # the general path, with the request as it arrived
            self._buf[0:0] = request
            self._hand_over()
            return
        self._stats.lane_requests += 1
        status, body, headers = answer
        self.begin_answer(f"POST /v1/streams/{head.stream}/events")
        transport.write(answer_bytes(status, body, headers))
        if self._write_paused:
            return  # resume_writing finishes the answer (or the deadline drops the client)
        self.end_answer()
        self._after_answer()

    def _after_answer(self) -> None:
        self._last_active = asyncio.get_running_loop().time()
        self._pump()
        if self._read_paused and not self._busy and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()
        if self._eof and not self._busy and self._transport is not None:
            self._transport.close()

    def _body_slow(self) -> None:
        """The body of a lane request did not arrive within ``body_timeout_s``: 400, closed
        (as the general path answers it)."""
        self._body_timer = None
        self._stats.body_timeouts += 1
        transport = self._transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        _LOG.warning(
            "body",
            "dropped %s: the body of %s did not arrive within %g s",
            peer,
            "a POST to the append lane",
            self._limits.body_timeout_s,
        )
        if transport is not None and not transport.is_closing():
            body = encode_answer(_body_too_slow(self._limits).to_body(), False)
            transport.write(answer_bytes(400, body, {"Connection": "close"}))
            transport.close()

    def _idle_check(self) -> None:
        """aiohttp's keep-alive timeout for a connection the lane serves."""
        self._idle_timer = None
        if self._inner is not None or self._transport is None:
            return
        loop = asyncio.get_running_loop()
        close_at = self._last_active + self._limits.keepalive_timeout_s
        active = self._busy or self._buf or self._answering is not None
        if active or loop.time() < close_at:
            if active:
                close_at = loop.time() + self._limits.keepalive_timeout_s
            self._idle_timer = loop.call_at(close_at, self._idle_check)
            return
        self._transport.close()

    def close_idle(self) -> None:
        """Graceful shutdown: a lane connection with nothing in flight closes now."""
        if self.in_lane and not self._busy and self._transport is not None:
            self._transport.close()

    def _cancel_lane_timers(self) -> None:
        for timer in (self._body_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._body_timer = self._idle_timer = None

    def _hand_over(self) -> None:
        """From now on aiohttp serves the connection, from the first byte not yet served."""
        self._cancel_lane_timers()
        if self._timer is not None:  # aiohttp's path arms its own head deadline
            self._timer.cancel()
            self._timer = None
        self._head = None
        if self._lane is not None:
            self._stats.lane_handovers += 1
        inner = self._inner_factory()
        self._inner = inner
        assert self._transport is not None
        inner.connection_made(self._transport)
        if self._write_paused:
            inner.pause_writing()
        data = bytes(self._buf)
        self._buf = bytearray()
        if self._read_paused:  # aiohttp's own flow control takes over
            self._read_paused = False
            self._transport.resume_reading()
        self._in_head = True
        self._tail = b""
        if data:
            self.data_received(data)
        else:  # the first head has the deadline from now on, as on a new connection
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._limits.header_timeout_s, self._header_deadline)
        if self._eof:
            inner.eof_received()


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections pass through :class:`_GuardedProtocol`."""

    __slots__ = ("_guard_lane", "_guard_limits", "_guard_stats")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        limits: LimitsSettings,
        stats: GuardStats,
        ssl_context: Any = None,
        lane: AppendLane | None = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        self._guard_limits = limits
        self._guard_stats = stats
        self._guard_lane = lane

    async def start(self) -> None:
        # BaseSite.start registers the site; TCPSite.start's create_server is replaced
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        limits, stats, lane = self._guard_limits, self._guard_stats, self._guard_lane

        def factory() -> asyncio.Protocol:
            return _GuardedProtocol(server, stats, limits, lane)

        extra: dict[str, Any] = {}
        if self._ssl_context is not None:
            extra["ssl_handshake_timeout"] = limits.header_timeout_s
        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
            **extra,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


def server_options(limits: LimitsSettings) -> dict[str, Any]:
    """aiohttp request-handler options (``web.AppRunner(**...)``) from the limits."""
    return {
        "max_line_size": limits.header_bytes_max,
        "max_field_size": limits.header_bytes_max,
        "max_headers": limits.headers_max,
        "keepalive_timeout": limits.keepalive_timeout_s,
    }


def _warn_write_timeout(request: web.BaseRequest | str, limits: LimitsSettings) -> None:
    """The log line of a client dropped because it did not take its answer in time."""
    if isinstance(request, str):  # the append lane's request
        what, remote = request, "a client"
    else:
        what, remote = f"{request.method} {request.path}", str(request.remote)
    _LOG.warning(
        "write",
        "dropped %s: the answer to %s was not taken within %g s",
        remote,
        what,
        limits.write_timeout_s,
    )


def _close(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _write_within(
    request: web.Request, response: web.StreamResponse, limits: LimitsSettings, stats: GuardStats
) -> None:
    """Write a handler's (not yet prepared) answer within ``write_timeout_s``, or drop the
    client."""
    transport = request.transport
    guarded = stats.protocols.get(id(transport)) if transport is not None else None
    if guarded is None:  # not served through GuardedSite (tests): a timer per answer
        try:
            async with asyncio.timeout(limits.write_timeout_s):
                await response.prepare(request)
                await response.write_eof()
        except ConnectionError:
            _undelivered(request, stats)
        except TimeoutError:
            stats.write_timeouts += 1
            _warn_write_timeout(request, limits)
            _close(request)
        return
    # the protocol arms the deadline if and when the write could wait (see the module)
    guarded.begin_answer(request)
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        if not guarded.write_timed_out:
            _undelivered(request, stats)
        # else aborted by the deadline: counted and logged there
    finally:
        guarded.end_answer()


def _undelivered(request: web.Request, stats: GuardStats) -> None:
    """The client left before its answer was out: count it, say so now and then, close."""
    stats.answers_undelivered += 1
    _LOG.warning(
        "gone",
        "an answer to %s %s was not delivered: %s closed the connection first (it gave up "
        "waiting; see its timeout)",
        request.method,
        request.path,
        request.remote,
    )
    _close(request)


async def _read_within(
    request: web.Request, limits: LimitsSettings, stats: GuardStats
) -> web.StreamResponse | None:
    """Read (and cache) a request's body within ``body_timeout_s``; None when it was read,
    else the refusal to answer with (already written when the body was too slow)."""
    if request.content.is_eof():  # all of it arrived: reading it cannot wait
        try:
            await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large(request, limits)
        return None
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            await request.read()
    except TimeoutError:
        stats.body_timeouts += 1
        _LOG.warning(
            "body",
            "dropped %s: the body of %s %s did not arrive within %g s",
            request.remote,
            request.method,
            request.path,
            limits.body_timeout_s,
        )
        response = error_response(request, _body_too_slow(limits))
        # answer at once and close: aiohttp would otherwise linger, reading the rest
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(limits.write_timeout_s):
                await response.prepare(request)
                await response.write_eof()
        if request.transport is not None:
            request.transport.close()  # flushes what is buffered, then closes
        return response
    except web.HTTPRequestEntityTooLarge:
        return _too_large(request, limits)
    return None


def write_deadline_middleware(limits: LimitsSettings, stats: GuardStats) -> Middleware:
    """Outermost: write the handler's answer within ``write_timeout_s`` or drop the client."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not response.prepared:  # streamed (tail, WebSocket): bounded where it is written
            await _write_within(request, response, limits, stats)
        return response

    return middleware


def body_deadline_middleware(limits: LimitsSettings, stats: GuardStats) -> Middleware:
    """Read a request body within ``body_timeout_s`` before the handler runs (cached)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in _BODY_METHODS and request.can_read_body:
            refused = await _read_within(request, limits, stats)
            if refused is not None:
                return refused
        return await handler(request)

    return middleware


def deadlines_middleware(limits: LimitsSettings, stats: GuardStats) -> Middleware:
    """:func:`write_deadline_middleware` around :func:`body_deadline_middleware` as one layer
    (one middleware less on every request), for a chain with nothing between the two."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response: web.StreamResponse | None = None
        if request.method in _BODY_METHODS and request.can_read_body:
            response = await _read_within(request, limits, stats)
        if response is None:
            response = await handler(request)
        if not response.prepared:
            await _write_within(request, response, limits, stats)
        return response

    return middleware


def _body_too_slow(limits: LimitsSettings) -> ApiError:
    """The refusal of a body that did not arrive in time (both paths answer it, then close)."""
    return ApiError(
        ErrorCode.MALFORMED,
        f"the request body did not arrive within {limits.body_timeout_s:g} s",
    )


def _too_large(request: web.Request, limits: LimitsSettings) -> web.Response:
    return error_response(
        request,
        ApiError(
            ErrorCode.TOO_LARGE,
            f"request body over {limits.body_bytes_max} bytes",
            limit=limits.body_bytes_max,
        ),
    )


async def bounded_write(response: web.StreamResponse, data: bytes, timeout_s: float) -> None:
    """One streamed write within ``timeout_s``; TimeoutError when the client does not read."""
    async with asyncio.timeout(timeout_s):
        await response.write(data)


__all__ = [
    "GuardStats",
    "GuardedSite",
    "LogEvery",
    "body_deadline_middleware",
    "bounded_write",
    "deadlines_middleware",
    "server_options",
    "write_deadline_middleware",
]
