"""Persistent WebSocket links between nodes, carrying batches of opaque messages.

Theory of operation
-------------------
Each node runs one :class:`PeerTransport`. It owns:

* one **outbound link per peer** that it dials itself (``GET <peer url>/v1/peer``, WebSocket
  upgrade) and uses only to *send*; and
* the **inbound handler** on the node's own aiohttp app, which accepts the links its peers
  dial and only *receives* on them.

So a pair of nodes A, B has two sockets, A→B and B→A. This is deliberate:

* no tie-breaking: with one shared socket both sides may dial at once after a restart and
  must agree which socket survives; with one socket per direction there is nothing to
  agree on, and each side alone decides when its outbound link is up;
* it matches the WAN emulation, where each directed link to a destination node goes through
  its own proxy: a fault injected on A→B affects exactly the socket that carries A→B;
* a link's sender and receiver are never the same side, so a slow receiver back-pressures
  only the one direction it slows.

Outbound path: ``send()`` encodes the message at once (so queue bounds are in bytes as well
as in messages), appends it to the peer's bounded queue and wakes that peer's *dial loop*.
Full queue, too large a message, unknown peer or a stopping transport: ``send()`` returns
False and counts a drop (Raft and the geo layer tolerate loss and retry on their own). The
dial loop connects (deadline ``connect_timeout_s``), sends the hello and waits for the
welcome (``handshake_timeout_s``), then pumps: it drains up to ``batch_messages_max`` /
``batch_bytes_max`` from the queue into one binary frame (see :mod:`.wire`) and writes it
(``send_timeout_s``). A small *watch* task keeps reading the link so that a close, or a
heartbeat ping left without pong (aiohttp ``heartbeat``), is noticed even while idle. Any
failure closes the link, counts the messages of the frame in flight as lost, and the loop
reconnects after an exponential backoff with jitter from the injected ``random.Random``.
Messages still queued survive a reconnect.

Inbound path: the handler upgrades, waits for the hello (``handshake_timeout_s``), checks it
(:func:`.wire.check_hello`) and answers welcome or refusal; then every binary frame is split
and each message decoded and handed to ``on_message`` in order. A malformed frame, a text
frame or a message that fails to decode is counted and logged, and the link goes on; a frame
over ``frame_bytes_max`` makes aiohttp close the link (code 1009) and is counted. A second
inbound link from the same peer supersedes (closes) the first: the peer only dials anew when
it considers its old link dead.

Ownership and shutdown: every task (dial loops and their watch tasks) belongs to one
``asyncio.TaskGroup`` run by a supervisor task that :meth:`start` creates and :meth:`stop`
awaits; inbound handlers belong to aiohttp and are closed by :meth:`stop`. ``stop()`` refuses
new sends, lets live links flush what is queued within ``stop_timeout_s``, then cancels the
rest, closes inbound links and the HTTP client session.

Deadlines: connect, handshake, each frame write, each close and ``stop()`` have their own;
the two waits without one are idle waits for work (the pump's wakeup, a link's next frame),
and those end when the heartbeat declares the link dead or ``stop()`` wakes them.

Authentication (optional, ``tls``): with a :class:`~geostore.transport.certs.NodeTls` the
dialer connects with ``https``/``wss`` using the node's client context (trusting only the
cluster CA, presenting the node certificate) and, before sending its hello, checks that the
server certificate's identity SAN names the node it meant to reach; host names are never
checked, so links work through TCP proxies. The acceptor runs on a port served with the
node's server context and, after the hello's own checks, requires the dialer's verified
certificate to name the node the hello claims (refusals ``unauthenticated``,
``identity_mismatch``). With ``members`` the claimed node must also belong to the topology
(``not_member``). Connections that fail the TLS handshake itself (no certificate where one is
required, another CA) never reach the handler; the server context counts them
(``stats()["tls_refused"]``).

Stats (:meth:`stats`) count everything above per peer; refusals of unidentified dialers are
counted per reason. Repeated warnings are throttled per kind to one line every
``log_repeat_s`` (logger ``geostore.transport``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from geostore.ids import NodeId
from geostore.transport.certs import NodeTls, peer_identity
from geostore.transport.port import Decode, Encode, OnMessage
from geostore.transport.settings import TransportSettings
from geostore.transport.wire import (
    MESSAGE_PREFIX_BYTES,
    PEER_PATH,
    FrameError,
    HandshakeRefused,
    RefusalReason,
    backoff_delay_s,
    check_answer,
    check_hello,
    decode_batch,
    encode_batch,
    hello_text,
    parse_hello,
    refusal_text,
    welcome_text,
)

log = logging.getLogger("geostore.transport")

#: Failures of one link attempt that mean "back off and try again", never a crash.
_LINK_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)


class LinkLost(Exception):
    """The outbound link closed under us (peer closed it, heartbeat failed, reset)."""


#: Failures that end a link that was up; the dial loop reconnects after them.
_LINK_LOST_ERRORS: tuple[type[BaseException], ...] = (LinkLost, *_LINK_ERRORS)


@dataclass(slots=True)
class PeerCounters:
    """Counters of one peer, both directions. Mutable; :meth:`PeerTransport.stats` copies."""

    # outbound (this node → peer)
    sent: int = 0  # messages written to the socket
    sent_frames: int = 0
    bytes_out: int = 0  # frame bytes written
    dropped: int = 0  # send() refused: queue full
    dropped_oversize: int = 0  # send() refused: message larger than a frame
    lost: int = 0  # accepted by send() but discarded: frame failed in flight, removal or stop
    connects: int = 0  # handshakes completed
    reconnects: int = 0  # handshakes completed after the first
    connect_failures: int = 0  # connect, upgrade or handshake failed without a refusal
    refused_out: int = 0  # the peer refused our hello (or its welcome was wrong)
    # inbound (peer → this node)
    accepted: int = 0  # inbound links welcomed
    refused_in: int = 0  # inbound hellos claiming this node id that were refused
    received: int = 0  # messages decoded and delivered
    received_frames: int = 0
    bytes_in: int = 0
    decode_errors: int = 0  # messages whose bytes the decoder rejected
    bad_frames: int = 0  # malformed binary frames and stray text frames, ignored
    frames_too_large: int = 0  # frames over frame_bytes_max: link reset
    handler_errors: int = 0  # on_message raised (a bug above us), logged
    last_error: str | None = None


#: PeerCounters' fields, for a shallow copy (``dataclasses.asdict`` deep-copies recursively:
#: most of the cost of a status answer, which monitoring asks for every second)
_COUNTER_FIELDS = tuple(f.name for f in fields(PeerCounters))


class _Outbound:
    """State of the outbound link to one peer, owned by its dial loop."""

    __slots__ = (
        "counters",
        "peer",
        "queue",
        "queued_bytes",
        "removed",
        "task",
        "up",
        "url",
        "url_changed",
        "wakeup",
    )

    def __init__(self, peer: NodeId, url: str, counters: PeerCounters) -> None:
        self.peer = peer
        self.url = url
        self.counters = counters
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        # Set by send(), by the watch task when the socket closes, by stop and update_peers.
        self.wakeup = asyncio.Event()
        # Set while the link is handshaken and pumping.
        self.up = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.removed = False
        self.url_changed = False

    def discard_queue(self) -> int:
        n = len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return n


class _Throttle:
    """Logs a repeated warning at most once per interval per key, saying how many it hid."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, fmt: str, *args: object) -> None:
        now = time.monotonic()
        last, hidden = self._last.get(key, (-math.inf, 0))
        if now - last < self._interval_s:
            self._last[key] = (last, hidden + 1)
            return
        self._last[key] = (now, 0)
        if hidden:
            log.warning(fmt + " (%d similar since the last report)", *args, hidden)
        else:
            log.warning(fmt, *args)


def _peer_url(base: str, tls: bool) -> str:
    url = base.rstrip("/") + PEER_PATH
    if tls and url.startswith("http://"):
        url = "https://" + url[len("http://") :]
    elif tls and url.startswith("ws://"):
        url = "wss://" + url[len("ws://") :]
    return url


#: Who may dial this node: a fixed set of node ids or a predicate (for changing membership).
Members = Collection[NodeId] | Callable[[NodeId], bool]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PeerTransport:
    """Peer links of one node. See the module docstring for the protocol and lifecycle."""

    def __init__(
        self,
        node_id: NodeId,
        cluster_id: str,
        peers: Mapping[NodeId, str],
        encode: Encode,
        decode: Decode,
        on_message: OnMessage,
        settings: TransportSettings,
        rng: random.Random,
        *,
        tls: NodeTls | None = None,
        members: Members | None = None,
    ) -> None:
        assert node_id and cluster_id
        if tls is not None:
            assert tls.node_id == node_id and tls.cluster_id == cluster_id, (
                f"the certificate names node {tls.node_id!r} of cluster {tls.cluster_id!r}"
            )
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._tls = tls
        self._is_member: Callable[[NodeId], bool] | None
        if members is None or callable(members):
            self._is_member = members
        else:
            self._is_member = frozenset(members).__contains__
        self._encode = encode
        self._decode = decode
        self._on_message = on_message
        self._settings = settings
        self._queue_messages_max = settings.queue_messages_max
        self._queue_bytes_max = settings.queue_bytes_max
        self._message_bytes_max = settings.message_bytes_max
        self._rng = rng
        self._throttle = _Throttle(settings.log_repeat_s)

        self._counters: dict[NodeId, PeerCounters] = {}
        self._outbound: dict[NodeId, _Outbound] = {}
        self._unroutable = 0  # send() to a peer not in the map
        self._refused_in: dict[str, int] = {}  # inbound refusals by reason

        self._running = False
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None

        self._inbound_by_peer: dict[NodeId, web.WebSocketResponse] = {}
        self._inbound_all: set[web.WebSocketResponse] = set()
        self._inbound_idle = asyncio.Event()
        self._inbound_idle.set()

        self.update_peers(peers)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP client session and start one dial loop per peer."""
        assert self._supervisor is None, "start() is called once"
        s = self._settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout_s),
        )
        ready = asyncio.Event()
        self._supervisor = asyncio.create_task(
            self._supervise(ready), name=f"transport-{self._node_id}"
        )
        self._supervisor.add_done_callback(self._supervisor_done)
        # The supervisor sets `ready` once its TaskGroup exists; it cannot fail before that.
        await ready.wait()
        self._running = True
        log.info("transport of %s started with %d peers", self._node_id, len(self._outbound))

    async def _supervise(self, ready: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for link in self._outbound.values():
                self._spawn(link)
            ready.set()
            await self._stop_event.wait()
            # Leaving the block waits for every dial loop to flush and return.
        self._tg = None

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        # Dial loops handle every operating error; an exception here is a bug. Say so at
        # once (stop() re-raises it later) and refuse new links, rather than limp on.
        if not task.cancelled() and task.exception() is not None:
            self._running = False
            log.error(
                "transport of %s failed; its links are down",
                self._node_id,
                exc_info=task.exception(),
            )

    def _spawn(self, link: _Outbound) -> None:
        assert self._tg is not None
        link.task = self._tg.create_task(
            self._dial_loop(link), name=f"link-{self._node_id}-{link.peer}"
        )

    async def stop(self) -> None:
        """Flush live links within ``stop_timeout_s``, then close everything. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._running = False
        self._stop_event.set()
        for link in self._outbound.values():
            link.wakeup.set()
            # A link that is not up has nowhere to flush to: end its attempt now.
            if not link.up.is_set() and link.task is not None:
                link.task.cancel()
        failure: BaseException | None = None
        if self._supervisor is not None:
            try:
                async with asyncio.timeout(self._settings.stop_timeout_s):
                    await asyncio.shield(self._supervisor)
            except TimeoutError:
                log.warning("transport of %s: flush did not finish in time", self._node_id)
                self._supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._supervisor
            except asyncio.CancelledError:
                # Our caller gave up on a graceful stop: do not leave the links running.
                self._supervisor.cancel()
                raise
            except Exception as exc:  # a bug in a dial loop; surfaced below, after cleanup
                failure = exc
        for link in self._outbound.values():
            link.counters.lost += link.discard_queue()
        await self._close_inbound()
        if self._session is not None:
            await self._session.close()
        log.info("transport of %s stopped", self._node_id)
        if failure is not None:
            raise failure

    async def _close_inbound(self) -> None:
        s = self._settings
        # In parallel: each close may wait close_timeout_s for a slow peer's close frame.
        async with asyncio.TaskGroup() as tg:
            for ws in list(self._inbound_all):
                tg.create_task(self._close_quietly(ws, WSCloseCode.GOING_AWAY, b"node stopping"))
        # Handlers run in aiohttp's tasks; wait (bounded) until they have all returned.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(s.close_timeout_s):
                await self._inbound_idle.wait()

    # --- membership ------------------------------------------------------------------------

    def update_peers(self, peers: Mapping[NodeId, str]) -> None:
        """Make the outbound links match ``peers`` (id → base URL); this node's id is skipped.

        New peers get a link; removed peers lose theirs (their queue is counted as lost); a
        changed URL resets the link so the next connect uses it.
        """
        wanted = {p: url for p, url in peers.items() if p != self._node_id}
        for peer in [p for p in self._outbound if p not in wanted]:
            link = self._outbound.pop(peer)
            link.removed = True
            link.counters.lost += link.discard_queue()
            link.wakeup.set()
            if link.task is not None and not link.up.is_set():
                link.task.cancel()
        for peer, url in wanted.items():
            assert url, f"peer {peer} has an empty URL"
            link_or_none = self._outbound.get(peer)
            if link_or_none is None:
                counters = self._counters.setdefault(peer, PeerCounters())
                link = _Outbound(peer, url, counters)
                self._outbound[peer] = link
                if self._tg is not None and not self._stopping:
                    self._spawn(link)
            elif link_or_none.url != url:
                link_or_none.url = url
                link_or_none.url_changed = True
                link_or_none.wakeup.set()

    # --- sending ---------------------------------------------------------------------------

    def send(self, peer: NodeId, msg: object) -> bool:
        """Queue ``msg`` for ``peer``; False (and a counted drop) if it cannot be queued."""
        return self.send_sized(peer, msg) > 0

    def send_sized(self, peer: NodeId, msg: object) -> int:
        """:meth:`send`, answering the bytes queued (the encoded message and its length
        prefix in the frame), 0 when it was dropped."""
        link = self._outbound.get(peer)
        if link is None or self._stopping:
            self._unroutable += 1
            return 0
        # The hot path of the node: limits are read from plain attributes, not the settings.
        queue = link.queue
        if len(queue) >= self._queue_messages_max:
            link.counters.dropped += 1
            return 0
        data = self._encode(msg)
        size = len(data)
        if size > self._message_bytes_max:
            link.counters.dropped_oversize += 1
            self._throttle.warning(
                f"oversize:{peer}",
                "dropped a %d-byte message to %s: larger than a frame (%d bytes)",
                size,
                peer,
                self._message_bytes_max,
            )
            return 0
        if link.queued_bytes + size > self._queue_bytes_max:
            link.counters.dropped += 1
            return 0
        queue.append(data)
        link.queued_bytes += size
        wakeup = link.wakeup
        if not wakeup.is_set():
            wakeup.set()
        return size + MESSAGE_PREFIX_BYTES

    def connected(self, peer: NodeId) -> bool:
        """Whether the outbound link to ``peer`` is handshaken and pumping now."""
        link = self._outbound.get(peer)
        return link is not None and link.up.is_set()

    async def wait_connected(
        self, peers: Iterable[NodeId] | None = None, *, timeout_s: float
    ) -> None:
        """Wait until the outbound links to ``peers`` (default: all) are up.

        Raises ``TimeoutError`` after ``timeout_s``; a peer not in the map is an error.
        """
        targets = list(self._outbound) if peers is None else list(peers)
        async with asyncio.timeout(timeout_s):
            for peer in targets:
                await self._outbound[peer].up.wait()

    # --- the dial loop (one task per peer) -------------------------------------------------

    async def _dial_loop(self, link: _Outbound) -> None:
        s = self._settings
        c = link.counters
        attempt = 0
        while not (self._stopping or link.removed):
            link.url_changed = False
            try:
                ws = await self._connect(link)
            except HandshakeRefused as exc:
                c.refused_out += 1
                c.last_error = f"refused: {exc.reason}: {exc.message}"
                self._throttle.warning(
                    f"refused-out:{link.peer}:{exc.reason}",
                    "link %s -> %s refused (%s): %s",
                    self._node_id,
                    link.peer,
                    exc.reason,
                    exc.message,
                )
            except _LINK_LOST_ERRORS as exc:  # LinkLost: the acceptor closed mid-handshake
                c.connect_failures += 1
                c.last_error = _describe(exc)
                log.debug("link %s -> %s: connect failed: %s", self._node_id, link.peer, exc)
            else:
                attempt = 0
                try:
                    await self._run_link(link, ws)
                except _LINK_LOST_ERRORS as exc:
                    c.last_error = _describe(exc)
                    log.info("link %s -> %s lost: %s", self._node_id, link.peer, c.last_error)
                if self._stopping or link.removed or link.url_changed:
                    continue
            delay_s = backoff_delay_s(attempt, s.backoff_base_ms, s.backoff_max_ms, self._rng)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._stop_event.wait()

    async def _connect(self, link: _Outbound) -> aiohttp.ClientWebSocketResponse[bool]:
        """A handshaken WebSocket to ``link.peer``, or an exception saying why not."""
        s = self._settings
        assert self._session is not None
        async with asyncio.timeout(s.connect_timeout_s):
            ws = await self._session.ws_connect(
                _peer_url(link.url, self._tls is not None),
                heartbeat=s.heartbeat_s,
                max_msg_size=s.frame_bytes_max,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=s.close_timeout_s),
                ssl=self._tls.client_ctx if self._tls is not None else True,
            )
        try:
            if self._tls is not None:
                # The CA verified the chain; the identity says which node it is (the address
                # may be a proxy's, so the host name proves nothing).
                ident = peer_identity(ws.get_extra_info("peercert"))
                if ident is None or (ident.cluster_id, ident.kind, ident.name) != (
                    self._cluster_id,
                    "node",
                    link.peer,
                ):
                    raise HandshakeRefused(
                        RefusalReason.IDENTITY_MISMATCH,
                        f"the server certificate names {ident.uri if ident else 'no identity'}, "
                        f"expected node {link.peer!r} of cluster {self._cluster_id!r}",
                    )
            async with asyncio.timeout(s.handshake_timeout_s):
                await ws.send_str(hello_text(self._cluster_id, self._node_id, link.peer))
                answer = await ws.receive()
            if answer.type is not WSMsgType.TEXT:
                raise LinkLost(f"link closed during the handshake ({answer.type.name})")
            check_answer(answer.data, self._cluster_id, link.peer)
        except BaseException:
            await self._close_quietly(ws, WSCloseCode.POLICY_VIOLATION)
            raise
        return ws

    async def _close_quietly(
        self,
        ws: aiohttp.ClientWebSocketResponse[bool] | web.WebSocketResponse,
        code: int,
        message: bytes = b"",
    ) -> None:
        with contextlib.suppress(*_LINK_ERRORS):
            async with asyncio.timeout(self._settings.close_timeout_s):
                await ws.close(code=code, message=message)

    async def _run_link(self, link: _Outbound, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        """Pump ``link``'s queue into ``ws`` until stopping, removal, URL change or failure."""
        c = link.counters
        c.connects += 1
        if c.connects > 1:
            c.reconnects += 1
        log.info("link %s -> %s up (%s)", self._node_id, link.peer, link.url)
        assert self._tg is not None
        watch = self._tg.create_task(self._watch(link, ws), name=f"watch-{link.peer}")
        link.up.set()
        try:
            await self._pump(link, ws, watch)
        finally:
            link.up.clear()
            watch.cancel()
            code = WSCloseCode.GOING_AWAY if self._stopping else WSCloseCode.OK
            await self._close_quietly(ws, code)
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _pump(
        self,
        link: _Outbound,
        ws: aiohttp.ClientWebSocketResponse[bool],
        watch: asyncio.Task[None],
    ) -> None:
        s = self._settings
        c = link.counters
        queue = link.queue
        while True:
            if watch.done():
                raise LinkLost(c.last_error or "closed by the peer")
            if link.removed or link.url_changed:
                return
            if not queue:
                if self._stopping:
                    return  # flushed
                link.wakeup.clear()
                await link.wakeup.wait()
                continue
            batch: list[bytes] = []
            batch_bytes = 0
            while queue and len(batch) < s.batch_messages_max:
                size = len(queue[0])
                if batch and batch_bytes + size > s.batch_bytes_max:
                    break
                batch.append(queue.popleft())
                batch_bytes += size
            link.queued_bytes -= batch_bytes
            frame = encode_batch(batch)
            try:
                async with asyncio.timeout(s.send_timeout_s):
                    await ws.send_bytes(frame)
            except BaseException:
                # Whether any of it left is unknowable; Raft retransmits what matters.
                c.lost += len(batch)
                raise
            c.sent += len(batch)
            c.sent_frames += 1
            c.bytes_out += len(frame)

    async def _watch(self, link: _Outbound, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        """Read the outbound link so closes and missed pongs surface; wake the pump then."""
        c = link.counters
        try:
            while True:
                msg = await ws.receive()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    c.last_error = f"closed by the peer (code {ws.close_code})"
                    return
                if msg.type is WSMsgType.ERROR:
                    c.last_error = f"link error: {msg.data!r}"
                    return
                # The acceptor never sends data after the welcome.
                c.bad_frames += 1
        except _LINK_ERRORS as exc:
            c.last_error = _describe(exc)
        finally:
            link.wakeup.set()

    # --- the inbound side -------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """The inbound handler, to add to the node's aiohttp app before it starts."""
        return [web.get(PEER_PATH, self._handle_inbound, allow_head=False)]

    def attach(self, app: web.Application) -> None:
        """Install :meth:`routes` on ``app`` (which must not have started yet)."""
        app.router.add_routes(self.routes())

    async def _handle_inbound(self, request: web.Request) -> web.StreamResponse:
        if not self._running:
            return web.Response(status=503, text="peer transport is not running\n")
        s = self._settings
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        ws = web.WebSocketResponse(
            heartbeat=s.heartbeat_s,
            max_msg_size=s.frame_bytes_max,
            timeout=s.close_timeout_s,
        )
        await ws.prepare(request)
        self._inbound_all.add(ws)
        self._inbound_idle.clear()
        peer: NodeId | None = None
        try:
            peer = await self._accept(ws, request.remote, peercert)
            if peer is not None:
                await self._receive(peer, ws)
        except _LINK_ERRORS as exc:
            # The dialer went away mid-handshake or mid-read: its own loop reconnects.
            log.debug("inbound link from %s (%s) failed: %s", peer, request.remote, exc)
        finally:
            self._inbound_all.discard(ws)
            if peer is not None and self._inbound_by_peer.get(peer) is ws:
                del self._inbound_by_peer[peer]
            if not self._inbound_all:
                self._inbound_idle.set()
            await self._close_quietly(ws, WSCloseCode.OK)
        return ws

    async def _accept(
        self, ws: web.WebSocketResponse, remote: str | None, peercert: dict[str, Any] | None
    ) -> NodeId | None:
        """Run the acceptor's side of the handshake: the peer's id if welcomed, else None."""
        s = self._settings
        claimed: NodeId | None = None
        try:
            try:
                async with asyncio.timeout(s.handshake_timeout_s):
                    msg = await ws.receive()
            except TimeoutError:
                raise HandshakeRefused(RefusalReason.MALFORMED, "no hello in time") from None
            if msg.type is not WSMsgType.TEXT:
                raise HandshakeRefused(
                    RefusalReason.MALFORMED, f"expected a hello, got a {msg.type.name} frame"
                )
            hello = parse_hello(msg.data)
            claimed = hello.node_id
            check_hello(hello, self._cluster_id, self._node_id)
            self._check_dialer(hello.node_id, peercert)
        except HandshakeRefused as exc:
            self._refused_in[exc.reason] = self._refused_in.get(exc.reason, 0) + 1
            # Only known ids get a per-peer count: a stranger must not grow the stats map.
            if claimed is not None and claimed in self._counters:
                self._counters[claimed].refused_in += 1
            self._throttle.warning(
                f"refused-in:{exc.reason}",
                "node %s refused a peer link from %s (node %s): %s: %s",
                self._node_id,
                remote,
                claimed,
                exc.reason,
                exc.message,
            )
            if not ws.closed:
                with contextlib.suppress(*_LINK_ERRORS):
                    async with asyncio.timeout(s.close_timeout_s):
                        await ws.send_str(refusal_text(exc.reason, exc.message))
                await self._close_quietly(
                    ws, WSCloseCode.POLICY_VIOLATION, str(exc.reason).encode()
                )
            return None
        async with asyncio.timeout(s.handshake_timeout_s):
            await ws.send_str(welcome_text(self._cluster_id, self._node_id))
        peer = hello.node_id
        self._counters.setdefault(peer, PeerCounters()).accepted += 1
        old = self._inbound_by_peer.get(peer)
        self._inbound_by_peer[peer] = ws
        if old is not None:
            # The peer dialed anew, so it gave up on the old link; close it rather than wait
            # for its heartbeat to fail.
            await self._close_quietly(old, WSCloseCode.OK, b"superseded")
        log.info("link %s -> %s accepted from %s", peer, self._node_id, remote)
        return peer

    def _check_dialer(self, claimed: NodeId, peercert: dict[str, Any] | None) -> None:
        """Refuse a dialer whose certificate does not prove ``claimed``, or a non-member."""
        if self._tls is not None:
            ident = peer_identity(peercert)
            if ident is None:
                raise HandshakeRefused(
                    RefusalReason.UNAUTHENTICATED, "no client certificate with a node identity"
                )
            if (ident.cluster_id, ident.kind, ident.name) != (self._cluster_id, "node", claimed):
                raise HandshakeRefused(
                    RefusalReason.IDENTITY_MISMATCH,
                    f"the certificate names {ident.uri}, the hello claims node {claimed!r}",
                )
        if self._is_member is not None and not self._is_member(claimed):
            raise HandshakeRefused(
                RefusalReason.NOT_MEMBER, f"node {claimed!r} is not a member of the topology"
            )

    async def _receive(self, peer: NodeId, ws: web.WebSocketResponse) -> None:
        c = self._counters[peer]
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.BINARY:
                self._deliver(peer, c, msg.data)
            elif kind is WSMsgType.TEXT:
                c.bad_frames += 1
                self._throttle.warning(
                    f"text:{peer}", "ignored a text frame on the link %s -> %s", peer, self._node_id
                )
            elif kind is WSMsgType.ERROR:
                exc = msg.data
                if getattr(exc, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
                    c.frames_too_large += 1
                c.last_error = f"inbound: {_describe(exc)}"
                self._throttle.warning(
                    f"in-error:{peer}",
                    "link %s -> %s reset: %s",
                    peer,
                    self._node_id,
                    c.last_error,
                )
                return
            else:  # CLOSE, CLOSING, CLOSED
                return

    def _deliver(self, peer: NodeId, c: PeerCounters, frame: bytes) -> None:
        c.received_frames += 1
        c.bytes_in += len(frame)
        try:
            parts = decode_batch(frame)
        except FrameError as exc:
            c.bad_frames += 1
            self._throttle.warning(
                f"frame:{peer}", "ignored a bad frame from %s: %s", peer, exc.message
            )
            return
        for part in parts:
            try:
                msg = self._decode(part)
            except Exception as exc:  # the caller's decoder on peer bytes: any failure
                c.decode_errors += 1
                self._throttle.warning(
                    f"decode:{peer}", "ignored an undecodable message from %s: %s", peer, exc
                )
                continue
            c.received += 1
            try:
                self._on_message(peer, msg)
            except Exception:
                c.handler_errors += 1
                log.exception("on_message failed for a message from %s", peer)

    # --- observation -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot: ``{"node_id", "running", "unroutable", "refused_in", "tls",
        "tls_refused" (failed TLS handshakes by reason),
        "peers": {peer: {connected, inbound_connected, url, queued, queued_bytes, <counters>}}}``.
        """
        peers: dict[str, dict[str, Any]] = {}
        for peer in sorted(self._counters):
            link = self._outbound.get(peer)
            entry: dict[str, Any] = {
                "connected": link is not None and link.up.is_set(),
                "inbound_connected": peer in self._inbound_by_peer,
                "url": link.url if link is not None else None,
                "queued": len(link.queue) if link is not None else 0,
                "queued_bytes": link.queued_bytes if link is not None else 0,
            }
            counters = self._counters[peer]
            entry.update({name: getattr(counters, name) for name in _COUNTER_FIELDS})
            peers[peer] = entry
        return {
            "node_id": self._node_id,
            "running": self._running,
            "unroutable": self._unroutable,
            "refused_in": dict(sorted(self._refused_in.items())),
            "tls": self._tls is not None,
            "tls_refused": dict(sorted(self._tls.refusals.by_reason.items())) if self._tls else {},
            "peers": peers,
        }
