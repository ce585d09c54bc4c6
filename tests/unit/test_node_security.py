"""Proves the sender checks of a node (NodeSecurity.admit) over generated senders and messages:
a geo envelope is admitted only from a node of its source region, a Raft message only when its
src is the link's peer and (multi-leader) the peer is of this region, except in the metadata
group, whose members span the regions; a node added after the topology was written counts
in the region it was added to (another region's node added since sends geo envelopes for its
region, and no Raft message of this region's group); every refusal is counted
by reason in the metrics; and a token file without certificates is refused at construction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geostore.config import make_topology
from geostore.config.settings import LimitsSettings
from geostore.config.tokens import TokenTable
from geostore.errors import ConfigError
from geostore.geo import GeoEnvelope
from geostore.ids import GroupId, NodeId, RegionId
from geostore.raft.messages import RequestVote
from geostore.runtime.metrics import NodeMetrics
from geostore.runtime.security import NodeSecurity

TOPOLOGY = make_topology({"a": ["a1", "a2"], "b": ["b1"], "c": ["c1"]}, 0.0, name="t")
REGION = {"a1": "a", "a2": "a", "b1": "b", "c1": "c"}
ADDED = "a9"  # joined region a after the topology was written (known by the peer book)
ADDED_B = "b9"  # joined region b since: node add told this node its address and region
OLD_BOOK = "a8"  # known from a peer book that predates regions: this node's region
PEERS = [*REGION, ADDED, ADDED_B, OLD_BOOK, "zz"]
BOOKED = {ADDED: "a", ADDED_B: "b"}


def security(single: bool = False) -> NodeSecurity:
    return NodeSecurity(TOPOLOGY, NodeId("a1"), RegionId("a"), LimitsSettings(), NodeMetrics(),
                        tls=None, tokens=None, single_leader=single,
                        known=lambda n: n in BOOKED or n == OLD_BOOK,
                        added_region=lambda n: RegionId(BOOKED[n]) if n in BOOKED else None)  # fmt: skip


def region_of(peer: str) -> str | None:
    return REGION.get(peer) or BOOKED.get(peer) or ("a" if peer == OLD_BOOK else None)


@given(peer=st.sampled_from(PEERS), src_region=st.sampled_from(["a", "b", "c", "x"]))
def test_geo_envelopes_only_from_their_source_region(peer: str, src_region: str) -> None:
    sec = security()
    env = GeoEnvelope(RegionId(src_region), RegionId("a"), ())
    admitted = sec.admit(NodeId(peer), env)
    assert admitted == (region_of(peer) == src_region)
    assert sec.refused.get("geo_wrong_region", 0) == (0 if admitted else 1)


@given(peer=st.sampled_from(PEERS), src=st.sampled_from(PEERS), single=st.booleans())
def test_raft_messages_only_from_their_sender_and_region(peer: str, src: str, single: bool) -> None:
    sec = security(single)
    vote = RequestVote(GroupId("data-a"), NodeId(src), NodeId("a1"), 5, 0, 0, False, False)
    admitted = sec.admit(NodeId(peer), vote)
    expected = src == peer and (single or region_of(peer) == "a")
    assert admitted == expected
    assert sum(sec.refused.values()) == (0 if admitted else 1)


@given(peer=st.sampled_from(PEERS), src=st.sampled_from(PEERS))
def test_metadata_group_messages_from_any_member(peer: str, src: str) -> None:
    sec = security()
    vote = RequestVote(GroupId("meta"), NodeId(src), NodeId("a1"), 5, 0, 0, False, False)
    admitted = sec.admit(NodeId(peer), vote)
    assert admitted == (src == peer and region_of(peer) is not None)


def test_refusals_reach_the_metrics() -> None:
    metrics = NodeMetrics()
    sec = NodeSecurity(TOPOLOGY, NodeId("a1"), RegionId("a"), LimitsSettings(), metrics,
                       tls=None, tokens=None, single_leader=False, known=lambda n: False)  # fmt: skip
    sec.admit(NodeId("b1"), GeoEnvelope(RegionId("c"), RegionId("a"), ()))
    text = metrics.registry.render()
    assert 'geostore_peer_messages_refused_total{reason="geo_wrong_region"} 1' in text
    assert not sec.is_member(NodeId("stranger")) and sec.is_member(NodeId("c1"))


def test_tokens_need_certificates() -> None:
    with pytest.raises(ConfigError):
        NodeSecurity(TOPOLOGY, NodeId("a1"), RegionId("a"), LimitsSettings(), NodeMetrics(),
                     tls=None, tokens=TokenTable(()), single_leader=False,
                     known=lambda n: False)  # fmt: skip
