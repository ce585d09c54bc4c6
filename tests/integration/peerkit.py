"""What the peer-transport tests over real sockets share: fast transport settings, node ids,
a reserved local port, and a node that runs one :class:`PeerTransport` on its own aiohttp
server (plain or TLS) and records what it receives.

Every node started is listed in :data:`STARTED` so that a test's teardown
(:func:`stop_started`) stops it even when the test failed midway.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable
from typing import Any

import cbor2
from aiohttp import web

from geostore.ids import NodeId
from geostore.transport.certs import NodeTls
from geostore.transport.peer import Members, PeerTransport
from geostore.transport.settings import TransportSettings

#: Short deadlines and backoffs, so that failures and reconnects show within a test's seconds.
FAST = TransportSettings(
    batch_messages_max=64,
    batch_bytes_max=16 * 1024,
    frame_bytes_max=64 * 1024,
    connect_timeout_s=1.0,
    handshake_timeout_s=1.0,
    send_timeout_s=2.0,
    heartbeat_s=1.0,
    close_timeout_s=0.5,
    backoff_base_ms=10,
    backoff_max_ms=100,
    stop_timeout_s=2.0,
)

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")


def reserve() -> socket.socket:
    """A bound, not yet listening socket: connecting to it is refused until a site serves it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


async def eventually(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Until ``pred`` holds, checked every 10 ms; fails the test after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.01)


class PeerNode:
    """One transport on its own aiohttp server on ``sock`` (HTTPS with ``tls``), recording what
    it receives (CBOR messages) in ``inbox``."""

    def __init__(
        self,
        node_id: NodeId,
        sock: socket.socket,
        peers: dict[NodeId, str],
        *,
        cluster_id: str = "c1",
        settings: TransportSettings = FAST,
        tls: NodeTls | None = None,
        members: Members | None = None,
    ) -> None:
        self.node_id = node_id
        self.sock = sock
        self.tls = tls
        self.port: int = sock.getsockname()[1]
        self.inbox: list[tuple[NodeId, Any]] = []
        self.transport = PeerTransport(
            node_id,
            cluster_id,
            peers,
            encode=cbor2.dumps,
            decode=cbor2.loads,
            on_message=lambda peer, msg: self.inbox.append((peer, msg)),
            settings=settings,
            rng=random.Random(node_id),
            tls=tls,
            members=members,
        )
        self.runner: web.AppRunner | None = None
        self.stopped = False

    async def start(self) -> None:
        STARTED.append(self)
        app = web.Application()
        self.transport.attach(app)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        await self.transport.start()
        ssl_context = None if self.tls is None else self.tls.server_ctx
        await web.SockSite(self.runner, self.sock, ssl_context=ssl_context).start()

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.transport.stop()
        assert self.runner is not None
        await self.runner.cleanup()

    def stats(self) -> dict[str, Any]:
        return self.transport.stats()

    def from_peer(self, peer: NodeId) -> list[Any]:
        return [m for p, m in self.inbox if p == peer]

    def peer_stats(self, peer: NodeId) -> dict[str, Any]:
        stats: dict[str, Any] = self.transport.stats()["peers"][peer]
        return stats


#: Nodes started by the running test, stopped at teardown even when the test failed.
STARTED: list[PeerNode] = []


async def stop_started() -> None:
    """Stop every node the running test started and has not stopped (a test's teardown)."""
    while STARTED:
        await STARTED.pop().stop()
