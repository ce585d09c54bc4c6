"""Proves a 421 ``wrong_region`` answer names every node of the home region at the address a
client should use (its direct API, as ``cluster.json`` lists it), whether the topology lists
it or ``node add`` added it, never the WAN proxy through which the answering region reaches
it; that a node the metadata group's region list no longer names (``node remove``) is left
out; and that a peer book entry of the older format (no client address) still loads (real
peer book files, a node host that is built but not run)."""

from __future__ import annotations

import json
from pathlib import Path

from geostore.config import config_from_dict, topology_from_dict
from geostore.ids import LogIndex, NodeId, RegionId
from geostore.runtime.node import PEER_BOOK, NodeRuntime
from geostore.store.meta import MetaSetRegion

TOPOLOGY = topology_from_dict(
    {
        "name": "homes",
        "regions": [
            {"name": "a", "nodes": [{"id": "a1", "host": "127.0.0.1", "port": 1}]},
            {
                "name": "b",
                "nodes": [
                    {"id": "b1", "host": "127.0.0.1", "port": 2},
                    {"id": "b2", "host": "127.0.0.1", "port": 3},
                ],
            },
        ],
        "links": [{"a": "a", "b": "b", "rtt_ms_p50": 10.0}],
    }
)
#: How region a reaches b9 (a WAN proxy) and where a client reaches it (its own port).
PROXY, DIRECT = "http://127.0.0.1:4001", "http://127.0.0.1:4002"


def open_node(folder: Path) -> NodeRuntime:
    return NodeRuntime(TOPOLOGY, NodeId("a1"), config_from_dict({}), str(folder), bootstrap=True)


def close(node: NodeRuntime) -> None:
    for group in node.groups.values():
        group.close()


async def test_added_nodes_are_listed_at_their_client_address(tmp_path: Path) -> None:
    node = open_node(tmp_path)
    try:
        node.add_peer(NodeId("b9"), PROXY, RegionId("b"), DIRECT)
        assert node.peer_urls[NodeId("b9")] == PROXY  # peer traffic keeps the proxy
        urls = node.api._home_urls("b")
        assert urls == ["http://127.0.0.1:2", "http://127.0.0.1:3", DIRECT], urls
        # a later call without the client address (an older caller) keeps it
        node.add_peer(NodeId("b9"), PROXY, RegionId("b"))
        assert node.api._home_urls("b")[-1] == DIRECT
    finally:
        close(node)
    node = open_node(tmp_path)  # durable in the peer book
    try:
        assert node.api._home_urls("b")[-1] == DIRECT
        assert node.peer_urls[NodeId("b9")] == PROXY
    finally:
        close(node)


async def test_removed_nodes_are_not_listed(tmp_path: Path) -> None:
    node = open_node(tmp_path)
    try:
        node.add_peer(NodeId("b9"), PROXY, RegionId("b"), DIRECT)
        assert node.meta is not None
        state = node.meta.state
        # b2 (a topology node) and then b9 (an added one) removed: the replicated lists
        state.apply(
            LogIndex(state.applied_index + 1),
            MetaSetRegion(RegionId("b"), (NodeId("b1"), NodeId("b9"))),
        )
        assert node.api._home_urls("b") == ["http://127.0.0.1:2", DIRECT]
        state.apply(
            LogIndex(state.applied_index + 1), MetaSetRegion(RegionId("b"), (NodeId("b1"),))
        )
        assert node.api._home_urls("b") == ["http://127.0.0.1:2"]
    finally:
        close(node)


async def test_an_older_book_without_client_addresses_loads(tmp_path: Path) -> None:
    book = {
        "a9": "http://127.0.0.1:9",  # the oldest format: a node of this region
        "a8": {"url": "http://127.0.0.1:8", "region": "a"},
        "b9": {"url": PROXY, "region": "b"},  # no client address known: not listed
    }
    (tmp_path / PEER_BOOK).write_text(json.dumps(book))
    node = open_node(tmp_path)
    try:
        assert node.client_url(NodeId("a9")) == "http://127.0.0.1:9"
        assert node.client_url(NodeId("a8")) == "http://127.0.0.1:8"
        assert node.client_url(NodeId("b9")) is None
        assert node.api._home_urls("b") == ["http://127.0.0.1:2", "http://127.0.0.1:3"]
        node.add_peer(NodeId("b9"), PROXY, RegionId("b"), DIRECT)  # a rerun 'node add'
        assert node.api._home_urls("b")[-1] == DIRECT
    finally:
        close(node)
