"""Proves mutual TLS on peer links over real sockets: a pair of nodes with cluster
certificates exchanges messages; a dialer without a certificate, with a certificate of
another cluster CA, claiming another node's id in its hello, or not a member of the topology
is refused and counted on the server with nothing delivered; a dialer refuses a server whose
certificate names another node; and TLS passes unchanged through the netem TCP proxy, whose
address matches no name in the certificates."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest
from aiohttp import WSMsgType

from geostore.config.topology import make_topology
from geostore.ids import NodeId
from geostore.transport.certs import (
    CA_CERT,
    NodeTls,
    client_ssl_context,
    init_certs,
    load_node_tls,
    node_files,
)
from geostore.transport.peer import Members
from geostore.transport.wire import PEER_PATH, encode_batch, hello_text
from netem.proxy import Proxy
from tests.integration.peerkit import A, B, C, PeerNode, eventually, reserve, stop_started, url

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Our cluster's certificates, and a foreign CA's for the same cluster and node names."""
    topo = make_topology({"r1": ["a", "b", "c"]}, 0.0, name="c1")
    ours = tmp_path_factory.mktemp("ours") / "certs"
    theirs = tmp_path_factory.mktemp("theirs") / "certs"
    init_certs(topo, ours)
    init_certs(topo, theirs)
    return ours, theirs


class Node(PeerNode):
    """A transport with TLS on its own aiohttp server, recording what it receives."""

    def __init__(
        self,
        node_id: NodeId,
        tls: NodeTls,
        peers: dict[NodeId, str],
        *,
        members: Members | None = None,
    ) -> None:
        super().__init__(node_id, reserve(), peers, tls=tls, members=members)


@pytest.fixture(autouse=True)
async def _stop_leftovers() -> AsyncIterator[None]:
    yield
    await stop_started()


async def _server(certs: Path, node_id: NodeId, **kw: Any) -> Node:
    """A node that dials nobody (so only inbound links are in play)."""
    node = Node(node_id, load_node_tls(certs, node_id, **kw), {})
    await node.start()
    return node


async def test_mtls_pair_delivers_in_order(certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    ta, tb = load_node_tls(ours, A), load_node_tls(ours, B)
    a = Node(A, ta, {})
    b = Node(B, tb, {})
    a.transport.update_peers({B: url(b.port)})
    b.transport.update_peers({A: url(a.port)})
    await a.start()
    await b.start()
    for i in range(200):
        assert a.transport.send(B, ["a", i])
        assert b.transport.send(A, ["b", i])
    await eventually(lambda: len(a.inbox) == 200 and len(b.inbox) == 200)
    assert [m for _, m in b.inbox] == [["a", i] for i in range(200)]
    assert [m for _, m in a.inbox] == [["b", i] for i in range(200)]
    stats = b.stats()
    assert stats["tls"] is True and stats["refused_in"] == {} and stats["tls_refused"] == {}
    assert stats["peers"][A]["accepted"] == 1


async def _raw_dial(port: int, ctx: Any, hello: str | None) -> str:
    """Dial ``/v1/peer`` by hand: 'tls-failed', 'closed', or the server's answer text."""
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(f"https://127.0.0.1:{port}{PEER_PATH}", ssl=ctx)
        except (aiohttp.ClientError, OSError):
            return "tls-failed"
        async with ws:
            if hello is None:
                return "connected"
            await ws.send_str(hello)
            answer = await ws.receive(timeout=2.0)
            # Whatever is pushed after a refusal must not be delivered (it may not even go out).
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await ws.send_bytes(encode_batch([cbor2.dumps("injected")]))
                await asyncio.sleep(0.1)
            if answer.type is WSMsgType.TEXT:
                return str(answer.data)
            return "closed"


async def test_dialer_without_certificate_is_refused(certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    ca_only = client_ssl_context(ours / CA_CERT)
    # Client certificates required: the TLS handshake itself fails, counted by the context.
    strict = await _server(ours, B)
    assert await _raw_dial(strict.port, ca_only, None) == "tls-failed"
    await eventually(lambda: sum(strict.stats()["tls_refused"].values()) >= 1)
    # Counted per connection (aiohttp's client retries a dropped fresh connection once).
    assert list(strict.stats()["tls_refused"]) == ["peer_did_not_return_a_certificate"]
    # Optional (a port shared with HTTPS API clients): the handler refuses the hello.
    lenient = await _server(ours, C, require_client_cert=False)
    answer = await _raw_dial(lenient.port, ca_only, hello_text("c1", A, C))
    assert '"reason": "unauthenticated"' in answer
    assert lenient.stats()["refused_in"] == {"unauthenticated": 1}
    assert strict.inbox == [] and lenient.inbox == []


async def test_certificate_of_another_ca_is_refused(certs: tuple[Path, Path]) -> None:
    ours, theirs = certs
    b = await _server(ours, B)
    # Trusts our CA, presents a certificate for node a signed by the foreign CA.
    cert, key = node_files(theirs, A)
    forged = client_ssl_context(ours / CA_CERT, cert, key)
    assert await _raw_dial(b.port, forged, hello_text("c1", A, B)) == "tls-failed"
    await eventually(lambda: sum(b.stats()["tls_refused"].values()) >= 1)
    assert list(b.stats()["tls_refused"]) == ["certificate_verify_failed"]
    # A whole node of the other CA never gets a link up: it already fails to verify b (and
    # aborts before b could judge its certificate), so the refusal is counted on its side.
    stranger = Node(A, load_node_tls(theirs, A), {B: url(b.port)})
    await stranger.start()
    assert stranger.transport.send(B, "hello from elsewhere")
    await eventually(lambda: stranger.stats()["peers"][B]["connect_failures"] >= 2)
    assert "certificate verify failed" in (stranger.stats()["peers"][B]["last_error"] or "")
    assert not stranger.transport.connected(B)
    assert b.inbox == [] and b.stats()["peers"] == {}


async def test_hello_claiming_another_node_is_refused(certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    b = await _server(ours, B)
    cert, key = node_files(ours, C)
    as_c = client_ssl_context(ours / CA_CERT, cert, key)
    answer = await _raw_dial(b.port, as_c, hello_text("c1", A, B))  # c's cert, claims a
    assert '"reason": "identity_mismatch"' in answer
    assert b.stats()["refused_in"] == {"identity_mismatch": 1}
    assert b.inbox == []
    # The same certificate with its own id is welcome (the check above can pass).
    answer = await _raw_dial(b.port, as_c, hello_text("c1", C, B))
    assert '"type": "welcome"' in answer


async def test_authenticated_non_member_is_refused(certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    b = Node(B, load_node_tls(ours, B), {}, members={A, B})
    await b.start()
    c = Node(C, load_node_tls(ours, C), {B: url(b.port)})
    await c.start()
    assert c.transport.send(B, "let me in")
    await eventually(lambda: b.stats()["refused_in"].get("not_member", 0) >= 1)
    await eventually(lambda: c.stats()["peers"][B]["refused_out"] >= 1)
    assert b.inbox == [] and not c.transport.connected(B)


async def test_dialer_refuses_a_server_with_another_identity(certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    c = await _server(ours, C)
    # a believes node b listens at c's address: c's certificate says otherwise.
    a = Node(A, load_node_tls(ours, A), {B: url(c.port)})
    await a.start()
    assert a.transport.send(B, "for b only")
    await eventually(lambda: a.stats()["peers"][B]["refused_out"] >= 1)
    assert "identity_mismatch" in (a.stats()["peers"][B]["last_error"] or "")
    # c saw a dialer leave before its hello (counted as malformed), never a welcome.
    assert c.inbox == [] and c.stats()["peers"] == {}


async def test_tls_passes_through_the_netem_proxy(certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    b = await _server(ours, B)
    proxy = Proxy("a-to-b", "127.0.0.1:0", f"127.0.0.1:{b.port}", random.Random(1))
    await proxy.start()
    try:
        # Dialed as "localhost" through the proxy's port: no host name of b's is involved.
        proxy_port = int(proxy.listen.rsplit(":", 1)[1])
        a = Node(A, load_node_tls(ours, A), {B: f"http://localhost:{proxy_port}"})
        await a.start()
        for i in range(50):
            assert a.transport.send(B, i)
        await eventually(lambda: len(b.inbox) == 50)
        assert [m for _, m in b.inbox] == list(range(50))
        assert proxy.connections_total >= 1
        assert proxy.counters["upstream"].sent > 0
    finally:
        await stop_started()
        await proxy.stop()
