"""Proves a node's peer book (``peers.json``, real files) keeps the region of each node added
after the topology was written: a node learnt through ``add_peer`` with another region counts
in that region for the sender checks and is a geo destination there, after a restart too;
an entry of the older format (an address alone) still loads, as a node of this region."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geostore.config import config_from_dict, topology_from_dict
from geostore.errors import ApiError, ErrorCode
from geostore.ids import NodeId, RegionId
from geostore.runtime.node import PEER_BOOK, NodeRuntime

TOPOLOGY = topology_from_dict(
    {
        "name": "book",
        "regions": [
            {"name": "a", "nodes": [{"id": "a1", "host": "127.0.0.1", "port": 1}]},
            {"name": "b", "nodes": [{"id": "b1", "host": "127.0.0.1", "port": 2}]},
            {"name": "c", "nodes": [{"id": "c1", "host": "127.0.0.1", "port": 3}]},
        ],
        "links": [
            {"a": "a", "b": "b", "rtt_ms_p50": 10.0},
            {"a": "a", "b": "c", "rtt_ms_p50": 10.0},
            {"a": "b", "b": "c", "rtt_ms_p50": 10.0},
        ],
    }
)


def open_node(folder: Path) -> NodeRuntime:
    return NodeRuntime(TOPOLOGY, NodeId("a1"), config_from_dict({}), str(folder), bootstrap=True)


def close(node: NodeRuntime) -> None:
    for group in node.groups.values():
        group.close()


async def test_the_peer_book_keeps_regions_across_restarts(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / PEER_BOOK).write_text(json.dumps({"a9": "http://127.0.0.1:9"}))
    node = open_node(tmp_path)
    try:
        assert node.security.peer_region(NodeId("a9")) == "a"  # the older format
        node.add_peer(NodeId("b9"), "http://127.0.0.1:19", RegionId("b"))
        assert node.security.peer_region(NodeId("b9")) == "b"
        assert "b9" in node.geo.remote_nodes[RegionId("b")]
    finally:
        close(node)
    node = open_node(tmp_path)
    try:
        sec = node.security
        assert sec.peer_region(NodeId("b9")) == "b" and sec.peer_region(NodeId("a9")) == "a"
        assert sec.peer_region(NodeId("zz")) is None
        assert node.geo.remote_nodes[RegionId("b")] == ("b1", "b9")
        assert node.geo.remote_urls[NodeId("b9")] == "http://127.0.0.1:19"
        assert node.peer_urls[NodeId("b9")] == "http://127.0.0.1:19"
    finally:
        close(node)


async def test_a_known_node_keeps_its_region(tmp_path: Path) -> None:
    """``add_peer`` (POST /v1/admin/peers, which a node certificate may call too) must not move
    a node to another region: that would let it pass the sender checks of that region's data
    group and become one of its geo destinations. The same region again is idempotent."""
    (tmp_path / PEER_BOOK).write_text(json.dumps({"a9": "http://127.0.0.1:9"}))
    node = open_node(tmp_path)
    try:
        node.add_peer(NodeId("b9"), "http://127.0.0.1:19", RegionId("b"))
        for nid, region in (("b9", "a"), ("b9", "c"), ("b1", "a"), ("c1", "b"), ("a9", "b")):
            with pytest.raises(ApiError) as err:
                node.add_peer(NodeId(nid), "http://127.0.0.1:29", RegionId(region))
            assert err.value.code is ErrorCode.CONFLICT, (nid, region)
        sec = node.security
        assert sec.peer_region(NodeId("b9")) == "b" and sec.peer_region(NodeId("a9")) == "a"
        assert "b1" not in node.geo.remote_nodes.get(RegionId("a"), ())
        assert "c1" not in node.geo.remote_nodes[RegionId("b")]
        assert node.peer_urls[NodeId("b9")] == "http://127.0.0.1:19"
        node.add_peer(NodeId("b9"), "http://127.0.0.1:39", RegionId("b"))  # a new address
        assert node.peer_urls[NodeId("b9")] == "http://127.0.0.1:39"
        assert node.geo.remote_nodes[RegionId("b")] == ("b1", "b9")
    finally:
        close(node)
    node = open_node(tmp_path)
    try:
        assert node.security.peer_region(NodeId("b9")) == "b"
    finally:
        close(node)
