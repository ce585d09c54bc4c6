"""Proxies: a listener, the upstream it dials for each client, and the live connections.

Theory of operation
-------------------
A :class:`Proxy` has Toxiproxy's fields (``name``, ``listen``, ``upstream``, ``enabled``) and
two ordered toxic lists, one per stream. When enabled it listens; every accepted client is
held (reading paused) while the upstream address, stored as given, is dialled afresh; once
both sockets are up a :class:`Connection` joins them with two :class:`~netem.chain.Pipe`
objects built from the proxy's current toxics. If the dial fails the client is closed, as
Toxiproxy does.

Disabling (or deleting, or re-addressing) a proxy closes its listener first, so new connects
are refused, then aborts every connection and every client still waiting for its dial.
Changing a toxic list re-applies it to each live connection's pipe in that direction.

A connection ends when both directions have half-closed (each EOF is passed on as a
half-close), when either socket is lost, or when a toxic ends it (``CLOSE``: graceful close of
both sockets after what was already written; ``RESET``: both sockets closed with SO_LINGER 0,
so each peer gets an RST).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
from typing import Any, cast

from netem.chain import PAUSE_BACKLOG, Counters, Kind, Pipe
from netem.toxics import STREAMS, ApiProblem, ToxicSpec

__all__ = ["Connection", "Proxy", "format_hostport", "split_hostport"]

log = logging.getLogger("netem")

#: How long a client waits for its upstream to answer before it is closed.
DIAL_TIMEOUT_S = 10.0
_PAUSE_DIAL = 4


def split_hostport(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` as (host, port); ValueError if it is neither."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"address {address}: missing port in address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"address {address}: too many colons in address")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"address {address}: invalid port")
    return host, int(port_text)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Side(asyncio.Protocol):
    """One socket of a connection: source of one pipe, destination of the other."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pipe_in: Pipe | None = None  # bytes read here feed this pipe
        self.conn: Connection | None = None
        self.on_made: Any = None
        self.on_lost: Any = None
        self._early: list[bytes | None] = []  # read before the pipes existed (None: EOF)
        self._pause_mask = 0
        self._write_paused = False
        self._writable: asyncio.Future[None] | None = None
        self.sink_of: Pipe | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        if self.pipe_in is None:
            self._early.append(data)
            # uvloop starts reading after connection_made even if it paused there: pause
            # again, so a client waiting for its upstream buffers one read, not everything.
            if self._pause_mask and self.transport is not None and not self.transport.is_closing():
                self.transport.pause_reading()
        else:
            self.pipe_in.feed(data)

    def eof_received(self) -> bool:
        if self.pipe_in is None:
            self._early.append(None)
        else:
            self.pipe_in.feed_eof()
        return True  # keep the socket open: the other direction may still be writing

    def connection_lost(self, exc: Exception | None) -> None:
        _wake(self._writable)
        if self.conn is not None:
            self.conn.close(abort=True)
        elif self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.sink_of is not None:
            self.sink_of.source.pause(2)

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._writable)
        if self.sink_of is not None:
            self.sink_of.source.resume(2)

    # -- as a source -----------------------------------------------------------------

    def attach(self, pipe: Pipe) -> None:
        self.pipe_in = pipe
        early, self._early = self._early, []
        for data in early:
            if data is None:
                pipe.feed_eof()
            else:
                pipe.feed(data)

    def pause(self, reason: int) -> None:
        transport = self.transport
        if self._pause_mask == 0 and transport is not None and not transport.is_closing():
            transport.pause_reading()
        self._pause_mask |= reason

    def resume(self, reason: int) -> None:
        if not self._pause_mask & reason:
            return
        self._pause_mask &= ~reason
        transport = self.transport
        if self._pause_mask == 0 and transport is not None and not transport.is_closing():
            transport.resume_reading()

    # -- as a sink -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def write_eof(self) -> None:
        assert self.transport is not None
        if self.transport.can_write_eof() and not self.transport.is_closing():
            self.transport.write_eof()

    def writable(self) -> bool:
        return not self._write_paused

    async def wait_writable(self) -> None:
        while self._write_paused and self.transport is not None:
            if self.transport.is_closing():
                await asyncio.Future()  # never: the connection is being torn down
            fut = asyncio.get_running_loop().create_future()
            self._writable = fut
            await fut

    def close(self, *, abort: bool, reset: bool) -> None:
        if self.transport is None:
            return
        if reset:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if abort or reset:
            self.transport.abort()
        else:
            self.transport.close()


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class Connection:
    """A client and its upstream socket, joined by an upstream and a downstream pipe."""

    def __init__(self, proxy: Proxy, client: Side, upstream: Side) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = False
        rng = proxy.rng
        self.pipes = {
            "upstream": Pipe(
                "upstream", client, upstream, rng, self._on_end, proxy.counters["upstream"]
            ),
            "downstream": Pipe(
                "downstream", upstream, client, rng, self._on_end, proxy.counters["downstream"]
            ),
        }
        client.conn = self
        upstream.conn = self
        upstream.sink_of = self.pipes["upstream"]
        client.sink_of = self.pipes["downstream"]
        for stream in STREAMS:
            self.pipes[stream].apply(proxy.toxics[stream])
        client.attach(self.pipes["upstream"])
        upstream.attach(self.pipes["downstream"])
        client.resume(_PAUSE_DIAL)

    def _on_end(self, kind: Kind) -> None:
        if kind is Kind.EOF:
            if all(p.eof_delivered for p in self.pipes.values()):
                self.close(abort=False)
        elif kind is Kind.RESET:
            self.close(abort=True, reset=True)
        else:
            self.close(abort=False)

    def close(self, *, abort: bool, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for pipe in self.pipes.values():
            pipe.close()
        self.client.close(abort=abort, reset=reset)
        self.upstream.close(abort=abort, reset=reset)
        self.proxy.connections.discard(self)


class Proxy:
    """One Toxiproxy proxy: fields, toxics, listener and live connections."""

    def __init__(self, name: str, listen: str, upstream: str, rng: random.Random) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.rng = rng
        self.toxics: dict[str, list[ToxicSpec]] = {s: [] for s in STREAMS}
        self.connections: set[Connection] = set()
        self._waiting: set[Side] = set()  # accepted clients whose upstream is being dialled
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = {s: Counters() for s in STREAMS}  # bytes, kept across connections
        self.connections_total = 0

    # -- JSON --------------------------------------------------------------------------

    def toxic_list(self) -> list[ToxicSpec]:
        return self.toxics["upstream"] + self.toxics["downstream"]

    def to_json(self, *, with_toxics: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
        }
        if with_toxics:
            body["toxics"] = [t.to_json() for t in self.toxic_list()]
        return body

    # -- listener ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``self.listen``; ApiProblem(500) when it cannot be bound."""
        if self.enabled:
            return
        loop = asyncio.get_running_loop()
        try:
            # An empty listen address is Go's ":0"; this server keeps it on loopback.
            host, port = split_hostport(self.listen or "127.0.0.1:0")
            bind_host = host or "0.0.0.0"
            try:
                ipaddress.ip_address(bind_host)
            except ValueError:
                infos = await loop.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM)
                infos.sort(key=lambda i: i[0] != socket.AF_INET)  # prefer IPv4, as Go does
                bind_host = str(infos[0][4][0])
            server = await loop.create_server(self._accepted, bind_host, port)
        except (OSError, ValueError) as exc:
            raise ApiProblem(f"listen tcp {self.listen}: {exc}", 500) from None
        self._server = server
        bound = server.sockets[0].getsockname()
        self.listen = format_hostport(str(bound[0]), int(bound[1]))
        self.enabled = True

    async def stop(self) -> None:
        """Close the listener (new connects are refused), then every connection."""
        if not self.enabled:
            return
        self.enabled = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for side in list(self._waiting):
            side.close(abort=True, reset=False)
        self._waiting.clear()
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.close(abort=True)

    def _accepted(self) -> Side:
        side = Side()
        side.on_made = self._client_made
        side.on_lost = self._waiting.discard
        return side

    def _client_made(self, client: Side) -> None:
        client.pause(_PAUSE_DIAL)
        self._waiting.add(client)
        task = asyncio.get_running_loop().create_task(self._dial(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dial(self, client: Side) -> None:
        loop = asyncio.get_running_loop()
        upstream: Side | None = None
        try:
            host, port = split_hostport(self.upstream)
            _, proto = await asyncio.wait_for(
                loop.create_connection(Side, host or "127.0.0.1", port), DIAL_TIMEOUT_S
            )
            upstream = proto
        except (OSError, ValueError, TimeoutError) as exc:
            log.info("netem: proxy %s: cannot reach upstream %s: %s", self.name, self.upstream, exc)
        if client not in self._waiting or client.transport is None or not self.enabled:
            if upstream is not None:
                upstream.close(abort=True, reset=False)
            return
        self._waiting.discard(client)
        if upstream is None:
            client.close(abort=False, reset=False)
            return
        if client.transport.is_closing() or upstream.transport is None:
            upstream.close(abort=True, reset=False)
            return
        if upstream.transport.is_closing():  # the upstream hung up before we got here
            client.close(abort=False, reset=False)
            return
        self.connections_total += 1
        conn = Connection(self, client, upstream)
        if not conn.closed:
            self.connections.add(conn)

    # -- toxics ------------------------------------------------------------------------

    def set_toxics(self, stream: str, specs: list[ToxicSpec]) -> None:
        """Replace one stream's toxic list and re-apply it to every live connection."""
        self.toxics[stream] = list(specs)
        for conn in list(self.connections):
            conn.pipes[stream].apply(self.toxics[stream])


# Referenced so the pause reasons of netem.chain and this module stay distinct.
assert _PAUSE_DIAL not in (PAUSE_BACKLOG, 2)
