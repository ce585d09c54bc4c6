"""Proves the peer transport over real sockets: messages arrive intact and in order per
sender, sends are batched, queues are bounded, links reconnect and deliver what is queued,
mismatched handshakes are refused on both sides, oversized and garbage input never takes a
node down, a half-open link is detected by the heartbeat, and stop() flushes and leaves no
task behind."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import cbor2
import pytest
from aiohttp import WSMsgType, web

from geostore.codec import decode_message, encode_message, wire_message
from geostore.ids import GroupId, NodeId
from geostore.transport.peer import PeerTransport
from geostore.transport.wire import PEER_PATH, encode_batch, hello_text, welcome_text
from tests.integration.peerkit import FAST, A, B, C, eventually, reserve, stop_started, url
from tests.integration.peerkit import PeerNode as Node

pytestmark = pytest.mark.timeout(60)


def rebind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


@pytest.fixture(autouse=True)
async def _stop_leftovers() -> AsyncIterator[None]:
    yield
    await stop_started()


async def cluster(*ids: NodeId, **kw: Any) -> list[Node]:
    socks = {i: reserve() for i in ids}
    urls = {i: url(s.getsockname()[1]) for i, s in socks.items()}
    nodes = [Node(i, socks[i], dict(urls), **kw) for i in ids]
    for n in nodes:
        await n.start()
    return nodes


async def test_messages_arrive_in_order_and_intact_between_three_nodes() -> None:
    nodes = await cluster(A, B, C)
    rng = random.Random(3)
    sent: dict[tuple[NodeId, NodeId], list[Any]] = {}
    for round_ in range(300):
        for src in nodes:
            for dst in nodes:
                if src is dst:
                    continue
                msg = [src.node_id, round_, rng.randbytes(rng.randrange(0, 600))]
                sent.setdefault((src.node_id, dst.node_id), []).append(msg)
                assert src.transport.send(dst.node_id, msg)
        if round_ % 50 == 0:
            await asyncio.sleep(0)  # let links start pumping while more is sent
    await eventually(lambda: all(len(n.inbox) == 600 for n in nodes))
    for dst in nodes:
        for src in nodes:
            if src is not dst:
                assert dst.from_peer(src.node_id) == sent[(src.node_id, dst.node_id)]
    for src in nodes:
        for peer, st in src.transport.stats()["peers"].items():
            assert st["sent"] == 300 and st["received"] == 300, (src.node_id, peer, st)
            assert st["dropped"] == st["lost"] == st["decode_errors"] == 0
            assert st["connected"] and st["inbound_connected"]
    for n in nodes:
        await n.stop()


@wire_message(0xFFFD_0001)  # a tag far above the real ones (codec tests use 0xFFFF....)
@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    group: GroupId
    index: int
    payload: bytes


async def test_codec_messages_of_several_groups_share_one_link() -> None:
    sock_a, sock_b = reserve(), reserve()
    peers = {A: url(sock_a.getsockname()[1]), B: url(sock_b.getsockname()[1])}
    inbox: list[tuple[NodeId, object]] = []
    transports = [
        PeerTransport(
            node,
            "c1",
            peers,
            encode=encode_message,
            decode=decode_message,
            on_message=lambda peer, msg: inbox.append((peer, msg)),
            settings=FAST,
            rng=random.Random(1),
        )
        for node in (A, B)
    ]
    runners = []
    for transport, sock in zip(transports, (sock_a, sock_b), strict=True):
        app = web.Application()
        app.router.add_routes(transport.routes())
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await transport.start()
        await web.SockSite(runner, sock).start()
        runners.append(runner)
    a = transports[0]
    sent = [
        Probe(GroupId(g), i, bytes([i % 256]) * i) for i in range(200) for g in ("data", "meta")
    ]
    for msg in sent:
        assert a.send(B, msg)
    async with asyncio.timeout(10):
        while len(inbox) < len(sent):
            await asyncio.sleep(0.01)
    assert inbox == [(A, m) for m in sent]
    assert a.stats()["peers"][B]["sent_frames"] < len(sent)
    for transport in transports:
        await transport.stop()
    for runner in runners:
        await runner.cleanup()


async def test_batching_coalesces_sends_into_few_frames_within_both_bounds() -> None:
    a, b = await cluster(A, B)
    await a.transport.wait_connected(timeout_s=5)
    for i in range(2000):
        assert a.transport.send(B, i)
    await eventually(lambda: len(b.inbox) == 2000)
    assert b.from_peer(A) == list(range(2000))
    st = a.peer_stats(B)
    # 2000 messages queued before the pump ran: full batches of batch_messages_max.
    assert st["sent"] == 2000
    assert st["sent_frames"] <= 2000 // FAST.batch_messages_max + 2
    assert b.peer_stats(A)["received_frames"] == st["sent_frames"]

    # Messages of 10 KiB: two exceed batch_bytes_max (16 KiB), so each goes in its own frame.
    frames_before = st["sent_frames"]
    big = b"x" * 10_000
    for i in range(20):
        assert a.transport.send(B, [i, big])
    await eventually(lambda: len(b.inbox) == 2020)
    assert a.peer_stats(B)["sent_frames"] - frames_before == 20
    await a.stop()
    await b.stop()


async def test_down_peer_bounds_the_queue_then_gets_what_is_queued() -> None:
    settings = dataclasses.replace(FAST, queue_messages_max=10)
    sock_a, sock_b = reserve(), reserve()
    peers = {A: url(sock_a.getsockname()[1]), B: url(sock_b.getsockname()[1])}
    a = Node(A, sock_a, peers, settings=settings)
    await a.start()
    results = [a.transport.send(B, i) for i in range(15)]
    assert results == [True] * 10 + [False] * 5
    await eventually(lambda: a.peer_stats(B)["connect_failures"] >= 3)
    st = a.peer_stats(B)
    assert (st["queued"], st["dropped"], st["connected"], st["sent"]) == (10, 5, False, 0)
    assert st["last_error"]

    b = Node(B, sock_b, peers)
    await b.start()
    await eventually(lambda: len(b.inbox) == 10)
    assert b.from_peer(A) == list(range(10))
    st = a.peer_stats(B)
    assert (st["queued"], st["sent"], st["connects"], st["lost"]) == (0, 10, 1, 0)
    await a.stop()
    await b.stop()


async def test_server_restart_mid_stream_reconnects_and_continues() -> None:
    a, b1 = await cluster(A, B)
    port_b = b1.port
    peers_b = {A: url(a.port), B: url(port_b)}
    next_seq = 0
    sending = True

    async def producer() -> None:
        nonlocal next_seq
        while sending:
            for _ in range(20):
                a.transport.send(B, next_seq)
                next_seq += 1
            await asyncio.sleep(0.002)

    task = asyncio.create_task(producer())
    await eventually(lambda: len(b1.inbox) > 500)
    await b1.stop()
    b2 = Node(B, rebind(port_b), peers_b)
    await b2.start()
    await eventually(lambda: len(b2.inbox) > 500)
    sending = False
    await task
    last = next_seq - 1
    await eventually(lambda: bool(b2.inbox) and b2.inbox[-1][1] == last)
    for node in (b1, b2):
        got = node.from_peer(A)
        assert got == sorted(set(got)), "in order and without duplicates"
    assert b1.from_peer(A)[-1] < b2.from_peer(A)[0]
    st = a.peer_stats(B)
    assert st["reconnects"] >= 1 and st["connected"]
    # The sender accounts for every message offered; a frame written into a socket that the
    # restarting peer then closed is "sent" yet never delivered (no acks: Raft retransmits).
    assert st["sent"] + st["lost"] + st["dropped"] + st["queued"] == next_seq
    assert len(b1.inbox) + len(b2.inbox) <= st["sent"]
    await a.stop()
    await b2.stop()


@pytest.mark.parametrize("mismatch", ["cluster", "destination"])
async def test_mismatched_handshake_is_refused_on_both_sides(
    mismatch: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="geostore.transport")
    sock_a, sock_b = reserve(), reserve()
    port_b = sock_b.getsockname()[1]
    a = Node(A, sock_a, {B: url(port_b)})
    if mismatch == "cluster":
        b = Node(B, sock_b, {A: url(a.port)}, cluster_id="c2")
        reason = "wrong_cluster"
    else:
        b = Node(C, sock_b, {A: url(a.port)})  # a believes node b lives at c's address
        reason = "wrong_destination"
    await b.start()
    await a.start()
    for i in range(5):
        assert a.transport.send(B, i)
    await eventually(lambda: a.peer_stats(B)["refused_out"] >= 2)
    stats_b = b.transport.stats()
    assert stats_b["refused_in"][reason] >= 2
    assert stats_b["peers"][A]["refused_in"] >= 2
    assert stats_b["peers"][A]["accepted"] == 0
    st = a.peer_stats(B)
    assert reason in st["last_error"]
    assert (st["connected"], st["sent"], st["queued"]) == (False, 0, 5)
    assert b.inbox == []
    lines = [r.getMessage() for r in caplog.records if r.name == "geostore.transport"]
    assert any("link a -> b refused" in line and reason in line for line in lines), lines
    assert any(f"node {b.node_id} refused a peer link" in line for line in lines), lines
    # Repeats are throttled: one line per side and direction for the whole run.
    assert sum(line.startswith("link a -> b refused") for line in lines) == 1, lines
    assert sum(line.startswith(f"node {b.node_id} refused") for line in lines) == 1, lines
    await a.stop()
    await b.stop()


async def _raw_link(session: aiohttp.ClientSession, node: Node, claim: NodeId) -> Any:
    ws = await session.ws_connect(url(node.port) + PEER_PATH, max_msg_size=0)
    await ws.send_str(hello_text("c1", claim, node.node_id))
    answer = await ws.receive(timeout=2)
    assert answer.type is WSMsgType.TEXT and answer.data == welcome_text("c1", node.node_id)
    return ws


async def test_oversized_frame_resets_the_link_but_not_the_node() -> None:
    a, b = await cluster(A, B)
    intruder = NodeId("x")
    async with aiohttp.ClientSession() as session:
        ws = await _raw_link(session, b, intruder)
        await ws.send_bytes(b"\x00" * (FAST.frame_bytes_max + 1))
        closing = await ws.receive(timeout=2)
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await eventually(lambda: not b.peer_stats(intruder)["inbound_connected"])
    assert b.peer_stats(intruder)["frames_too_large"] == 1
    assert b.peer_stats(intruder)["received"] == 0
    # The sender never builds such a frame: a message that cannot fit is refused at send().
    assert not a.transport.send(B, b"y" * FAST.frame_bytes_max)
    assert a.peer_stats(B)["dropped_oversize"] == 1
    # The node still serves its real peers.
    assert a.transport.send(B, "still here")
    await eventually(lambda: b.inbox == [(A, "still here")])
    await a.stop()
    await b.stop()


async def test_garbage_on_a_link_is_counted_and_ignored() -> None:
    (b,) = await cluster(B)
    x = NodeId("x")
    async with aiohttp.ClientSession() as session:
        ws = await _raw_link(session, b, x)
        await ws.send_bytes(b"\xde\xad\xbe\xef")  # not a batch
        await ws.send_str("hello again?")  # text after the handshake
        await ws.send_bytes(encode_batch([b"\xff", cbor2.dumps(["ok", 1]), b"\x1c"]))
        await ws.send_bytes(encode_batch([cbor2.dumps("fine")]))
        await eventually(lambda: len(b.inbox) == 2)
        assert b.from_peer(x) == [["ok", 1], "fine"]
        st = b.peer_stats(x)
        assert (st["bad_frames"], st["decode_errors"], st["received"]) == (2, 2, 2)
        assert st["inbound_connected"] and not ws.closed

        # Garbage instead of a hello is refused before any frame is read.
        ws2 = await session.ws_connect(url(b.port) + PEER_PATH)
        await ws2.send_bytes(encode_batch([cbor2.dumps("sneaky")]))
        answer = await ws2.receive(timeout=2)
        assert answer.type is WSMsgType.TEXT and '"malformed"' in answer.data
        await ws2.receive(timeout=2)
        assert ws2.closed
        assert b.transport.stats()["refused_in"] == {"malformed": 1}
        assert b.from_peer(x) == [["ok", 1], "fine"] and len(b.inbox) == 2
        await ws.close()
    await b.stop()


async def test_half_open_link_is_detected_by_the_heartbeat() -> None:
    """The fake peer handshakes and then never reads again, so it never answers a ping."""
    accepted = 0

    async def mute_peer(request: web.Request) -> web.WebSocketResponse:
        nonlocal accepted
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.receive()
        await ws.send_str(welcome_text("c1", B))
        accepted += 1
        await asyncio.sleep(3600)
        return ws

    app = web.Application()
    app.router.add_get(PEER_PATH, mute_peer)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    sock_b = reserve()
    await web.SockSite(runner, sock_b).start()
    settings = dataclasses.replace(FAST, heartbeat_s=0.2)
    a = Node(A, reserve(), {B: url(sock_b.getsockname()[1])}, settings=settings)
    await a.start()
    await eventually(lambda: accepted >= 3, timeout_s=10)
    st = a.peer_stats(B)
    assert st["connects"] >= 2 and st["reconnects"] >= 1
    await a.stop()
    await runner.cleanup()


async def test_black_hole_peer_hits_the_connect_deadline_and_does_not_delay_stop() -> None:
    """The peer's kernel accepts the TCP connection but nothing ever answers the upgrade."""
    hole = reserve()
    hole.listen(8)
    peers = {B: url(hole.getsockname()[1])}
    short = Node(A, reserve(), peers, settings=dataclasses.replace(FAST, connect_timeout_s=0.2))
    await short.start()
    assert short.transport.send(B, 1)
    await eventually(lambda: short.peer_stats(B)["connect_failures"] >= 2)
    assert "TimeoutError" in short.peer_stats(B)["last_error"]
    await short.stop()
    assert short.peer_stats(B)["lost"] == 1  # queued, never deliverable, counted at stop

    # With a long connect deadline, stop() ends the pending attempt instead of waiting it out.
    patient = Node(C, reserve(), peers, settings=dataclasses.replace(FAST, connect_timeout_s=60))
    await patient.start()
    await asyncio.sleep(0.1)
    async with asyncio.timeout(FAST.stop_timeout_s + 3):
        await patient.stop()
    hole.close()


async def test_update_peers_adds_moves_and_removes_links() -> None:
    sock_a, sock_b, sock_c = reserve(), reserve(), reserve()
    a = Node(A, sock_a, {})
    b = Node(B, sock_b, {})
    b2 = Node(B, sock_c, {})  # node b "moved" to another address
    for n in (a, b, b2):
        await n.start()
    assert not a.transport.send(B, 0)
    assert a.transport.stats()["unroutable"] == 1
    a.transport.update_peers({A: url(a.port), B: url(b.port)})  # own id is skipped
    assert a.transport.send(B, 1)
    await eventually(lambda: b.inbox == [(A, 1)])
    a.transport.update_peers({B: url(b2.port)})
    assert a.transport.send(B, 2)
    await eventually(lambda: b2.inbox == [(A, 2)])
    assert b.inbox == [(A, 1)]
    assert a.peer_stats(B)["url"] == url(b2.port)
    a.transport.update_peers({})
    assert not a.transport.send(B, 3)
    assert a.transport.stats()["unroutable"] == 2
    for n in (a, b, b2):
        await n.stop()


async def test_stop_flushes_queued_messages_and_leaves_no_tasks() -> None:
    tasks_before = asyncio.all_tasks()
    a, b = await cluster(A, B)
    await a.transport.wait_connected(timeout_s=5)
    for i in range(1000):
        assert a.transport.send(B, i)
    await a.transport.stop()  # at once: the queue is flushed before the link closes
    assert a.peer_stats(B)["sent"] == 1000
    await eventually(lambda: len(b.inbox) == 1000)
    assert b.from_peer(A) == list(range(1000))
    assert not a.transport.send(B, 1000), "a stopped transport refuses sends"
    assert a.transport.stats()["running"] is False
    await a.transport.stop()  # idempotent
    assert a.runner is not None
    await a.runner.cleanup()
    await b.stop()
    await asyncio.sleep(0)
    left = asyncio.all_tasks() - tasks_before
    assert not left, left


def test_runs_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> list[Any]:
        a, b = await cluster(A, B)
        for i in range(100):
            a.transport.send(B, i)
        await eventually(lambda: len(b.inbox) == 100)
        await a.stop()
        await b.stop()
        return b.from_peer(A)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == list(range(100))
