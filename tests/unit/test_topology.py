"""Proves the shipped topology files load and the Topology accessors answer from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from geostore.config import Topology, load_topology

REGIONS_DIR = Path(__file__).resolve().parents[2] / "regions"
SHIPPED = ["local.toml", "three-continents.toml", "two-near.toml", "five-regions.toml"]


@pytest.fixture(scope="module")
def three() -> Topology:
    return load_topology(REGIONS_DIR / "three-continents.toml")


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_topology_loads_complete(name: str) -> None:
    topo = load_topology(REGIONS_DIR / name)
    names = topo.region_names()
    assert len(names) >= 2
    assert topo.path == str(REGIONS_DIR / name)
    for a in names:
        assert len(topo.region(a).nodes) == 3
        for b in names:
            if a != b:
                assert topo.link(a, b).rtt_ms_p50 == topo.link(b, a).rtt_ms_p50


def test_three_continents_figures(three: Topology) -> None:
    assert three.region_names() == ("us-east-1", "eu-west-1", "ap-southeast-1")
    assert three.rtt_ms("us-east-1", "eu-west-1") == pytest.approx(70, abs=1)
    assert three.rtt_ms("us-east-1", "ap-southeast-1") == pytest.approx(219, abs=1)
    assert three.rtt_ms("eu-west-1", "ap-southeast-1") == pytest.approx(182, abs=1)
    assert three.one_way_ms("eu-west-1", "us-east-1") == pytest.approx(69.6 / 2)
    assert three.rtt_ms("us-east-1", "us-east-1") == three.region("us-east-1").intra_rtt_ms
