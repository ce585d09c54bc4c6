"""The link matrix plans one proxy per directed inter-region link and destination node, with
RTT/2 of latency per stream (each stream taking its own direction's jitter and bandwidth),
and refuses nodes it cannot address."""

from __future__ import annotations

import itertools

import pytest

from geostore.config.topology import make_topology
from geostore.ids import NodeId
from netem.links import AppliedLink, NetemError, format_table, link_name, plan_links


def _topology():  # type: ignore[no-untyped-def]
    return make_topology(
        {"us": ["u1", "u2"], "eu": ["e1"], "ap": ["a1", "a2", "a3"]},
        {("us", "eu"): 69.6, ("us", "ap"): 218.9, ("eu", "ap"): 181.0},
        jitter_ms=2.2,
        bandwidth_kbps=4000,
    ).with_loopback_ports(9000)


def test_one_proxy_per_directed_link_and_destination_node() -> None:
    topology = _topology()
    plan = plan_links(topology)
    sizes = {"us": 2, "eu": 1, "ap": 3}
    expected = sum(sizes[dst] for src, dst in itertools.permutations(sizes, 2))
    assert len(plan) == expected == 12
    names = [p.name for p in plan]
    assert len(set(names)) == len(names)
    assert "us->e1" in names and "eu->u2" in names and "ap->a1" not in names
    for p in plan:
        assert p.dst_region != p.src_region
        assert p.name == link_name(p.src_region, p.dst_node)
        assert p.listen == "127.0.0.1:0"
        node = topology.node(p.dst_node)
        assert p.upstream == f"127.0.0.1:{node.port}"


def test_latency_is_half_the_rtt_per_stream() -> None:
    plan = {p.name: p for p in plan_links(_topology())}
    us_ap = plan["us->a2"]
    assert us_ap.latency_up_ms + us_ap.latency_down_ms == 219  # 218.9 rounded once
    assert abs(us_ap.latency_up_ms - us_ap.latency_down_ms) <= 1
    assert plan["us->e1"].latency_up_ms + plan["us->e1"].latency_down_ms == 70
    assert us_ap.jitter_up_ms == us_ap.jitter_down_ms == 2
    assert us_ap.bandwidth_up_kbps == us_ap.bandwidth_down_kbps == 4000
    toxics = us_ap.toxics()
    assert [(t["type"], t["stream"]) for t in toxics] == [
        ("latency", "upstream"),
        ("bandwidth", "upstream"),
        ("latency", "downstream"),
        ("bandwidth", "downstream"),
    ]
    assert toxics[0]["attributes"] == {"latency": us_ap.latency_up_ms, "jitter": 2}


def test_addresses_and_ports_come_from_the_caller() -> None:
    topology = make_topology({"x": ["x1"], "y": ["y1"]}, 10.0)
    ports = iter([31001, 31002])
    plan = plan_links(
        topology,
        {NodeId("x1"): ("10.0.0.1", 7001), NodeId("y1"): ("::1", 7002)},
        lambda: next(ports),
    )
    assert [(p.name, p.listen, p.upstream) for p in plan] == [
        ("x->y1", "127.0.0.1:31001", "[::1]:7002"),
        ("y->x1", "127.0.0.1:31002", "10.0.0.1:7001"),
    ]
    assert plan[0].bandwidth_up_kbps is None
    assert [t["type"] for t in plan[0].toxics()] == ["latency", "latency"]
    table = format_table([AppliedLink(p, p.listen) for p in plan]).splitlines()
    assert table[0].split()[:3] == ["proxy", "from", "to"] and len(table) == 4


def test_a_node_without_an_address_is_refused() -> None:
    with pytest.raises(NetemError, match="no address"):
        plan_links(make_topology({"x": ["x1"], "y": ["y1"]}, 10.0))
