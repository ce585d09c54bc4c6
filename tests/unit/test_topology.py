"""Proves the shipped topologies load, the Topology accessors and derived topologies answer
correctly, and every invalid topology is refused with a ConfigError naming file, field and
reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geostore.config import (
    LinkSpec,
    Topology,
    load_topology,
    make_topology,
    parse_topology,
    topology_from_dict,
)
from geostore.errors import ConfigError
from geostore.ids import RegionId

REGIONS_DIR = Path(__file__).resolve().parents[2] / "regions"
SHIPPED = ["local.toml", "three-continents.toml", "two-near.toml", "five-regions.toml"]


@pytest.fixture(scope="module")
def three() -> Topology:
    return load_topology(REGIONS_DIR / "three-continents.toml")


# -- shipped files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_topology_loads_complete(name: str) -> None:
    topo = load_topology(REGIONS_DIR / name)
    names = topo.region_names()
    assert len(names) >= 2
    assert topo.path == str(REGIONS_DIR / name)
    assert topo.name == name.removesuffix(".toml")
    assert len(topo.links) == len(names) * (len(names) - 1)
    for a in names:
        assert len(topo.region(a).nodes) == 3
        for b in names:
            if a != b:
                assert topo.link(a, b).rtt_ms_p50 == topo.link(b, a).rtt_ms_p50
                assert topo.link(a, b).jitter_ms <= topo.link(a, b).one_way_ms
    for s in topo.streams:
        assert sorted(s.homes) == list(range(s.partitions))


@pytest.mark.parametrize("name", SHIPPED[1:])
def test_wan_topologies_cite_their_public_sources(name: str) -> None:
    text = (REGIONS_DIR / name).read_text()
    assert "CloudPing p50 over one year" in text and "2025-05-29" in text
    assert "Azure network round-trip latency statistics" in text and "2026-07-30" in text
    assert "doitintl intercloud-throughput study, Feb 2022" in text
    topo = load_topology(REGIONS_DIR / name)
    for link in topo.links.values():
        assert link.jitter_ms > 0 and link.bandwidth_kbps is not None


def test_local_adds_no_delay() -> None:
    topo = load_topology(REGIONS_DIR / "local.toml")
    assert topo.region_names() == ("r1", "r2", "r3")
    assert all(v.rtt_ms_p50 == 0 and v.jitter_ms == 0 for v in topo.links.values())
    assert topo.widest_rtt_ms(topo.region_names()) == 0


def test_three_continents_figures(three: Topology) -> None:
    assert three.region_names() == ("us-east-1", "eu-west-1", "ap-southeast-1")
    assert three.rtt_ms("us-east-1", "eu-west-1") == pytest.approx(70, abs=0.5)
    assert three.rtt_ms("us-east-1", "ap-southeast-1") == pytest.approx(219, abs=0.5)
    assert three.rtt_ms("eu-west-1", "ap-southeast-1") == pytest.approx(182, abs=0.5)
    assert three.one_way_ms("eu-west-1", "us-east-1") == pytest.approx(69.6 / 2)
    assert three.rtt_ms("us-east-1", "us-east-1") == 0.5
    assert three.one_way_ms("us-east-1", "us-east-1") == 0.25


def test_two_near_figures() -> None:
    topo = load_topology(REGIONS_DIR / "two-near.toml")
    assert topo.region_names() == ("eu-west-1", "eu-central-1")
    assert topo.rtt_ms("eu-west-1", "eu-central-1") == pytest.approx(27, abs=0.5)


# -- accessors ----------------------------------------------------------------------------


def test_nodes_and_regions(three: Topology) -> None:
    nodes = three.nodes()
    assert len(nodes) == 9
    assert nodes[0].id == "use1-n1" and nodes[-1].id == "apse1-n3"
    assert three.node("euw1-n2").region == "eu-west-1"
    assert three.region_of("apse1-n1") == "ap-southeast-1"
    assert three.region("eu-west-1").node_ids() == ("euw1-n1", "euw1-n2", "euw1-n3")
    assert three.node_ids() == tuple(n.id for n in nodes)
    with pytest.raises(KeyError):
        three.node("nope")
    with pytest.raises(KeyError):
        three.region("mars-1")
    assert three.stream("flights").home_of(1) == "eu-west-1"


def test_link_is_directed_and_complete(three: Topology) -> None:
    link = three.link("us-east-1", "ap-southeast-1")
    assert (link.src, link.dst) == ("us-east-1", "ap-southeast-1")
    assert three.link("ap-southeast-1", "us-east-1").src == "ap-southeast-1"
    assert three.max_rtt_ms() == pytest.approx(218.9)
    assert three.max_rtt_ms(["us-east-1", "eu-west-1"]) == pytest.approx(69.6)
    assert three.max_rtt_ms(["us-east-1"]) == 0
    assert three.widest_rtt_ms(["us-east-1"]) == 0.5


def test_to_dict_round_trips_the_figures(three: Topology) -> None:
    d = three.to_dict()
    assert [r["name"] for r in d["regions"]] == list(three.region_names())
    assert len(d["links"]) == 6
    assert d["streams"][0]["homes"] == {"0": "us-east-1", "1": "eu-west-1", "2": "ap-southeast-1"}


def test_topologies_are_hashable_values(three: Topology) -> None:
    again = load_topology(REGIONS_DIR / "three-continents.toml")
    assert again == three and hash(again) == hash(three)
    assert len({three, again}) == 1


# -- scaled and subset --------------------------------------------------------------------


def test_scaled_multiplies_wan_rtt_and_jitter_only(three: Topology) -> None:
    half = three.scaled(0.5)
    for key, link in three.links.items():
        assert half.links[key].rtt_ms_p50 == pytest.approx(link.rtt_ms_p50 * 0.5)
        assert half.links[key].jitter_ms == pytest.approx(link.jitter_ms * 0.5)
        assert half.links[key].bandwidth_kbps == link.bandwidth_kbps
    assert half.rtt_ms("us-east-1", "us-east-1") == three.rtt_ms("us-east-1", "us-east-1")
    assert half.name != three.name and half.region_names() == three.region_names()
    assert three.scaled(0).max_rtt_ms() == 0
    assert three.scaled(1.0).links == three.links
    with pytest.raises(ConfigError) as err:
        three.scaled(-1)
    assert err.value.field == "scale"


def test_subset_keeps_file_order_links_and_rehomes_streams(three: Topology) -> None:
    sub = three.subset(["ap-southeast-1", "us-east-1"])
    assert sub.region_names() == ("us-east-1", "ap-southeast-1")
    assert set(sub.links) == {
        ("us-east-1", "ap-southeast-1"),
        ("ap-southeast-1", "us-east-1"),
    }
    assert len(sub.nodes()) == 6
    flights = sub.stream("flights")
    assert flights.homes[0] == "us-east-1" and flights.homes[2] == "ap-southeast-1"
    # partition 1 was homed in the dropped eu-west-1: default rule p % n over kept regions
    assert flights.homes[1] == sub.region_names()[1 % 2]
    for bad, reason in ((["mars-1"], "unknown"), ([], "at least"), (["us-east-1"] * 2, "dup")):
        with pytest.raises(ConfigError) as err:
            three.subset(bad)
        assert err.value.field == "subset" and reason in err.value.reason


# -- node tables, defaults, link forms ----------------------------------------------------

BASE = """
name = "t"
[[regions]]
name = "a"
nodes = ["a1", "a2"]
[[regions]]
name = "b"
intra_rtt_ms = 1.5
nodes = [{ id = "b1", host = "10.0.0.2", port = 7001 }, { id = "b2", port = 7002 }]
[[links]]
a = "a"
b = "b"
rtt_ms_p50 = 40
jitter_ms = 3
bandwidth_kbps = 1000
"""


def test_node_tables_defaults_and_symmetric_link() -> None:
    topo = parse_topology(BASE, "t.toml")
    assert topo.path is None and topo.name == "t"
    assert topo.region("a").intra_rtt_ms == 0.5
    assert topo.rtt_ms("b", "b") == 1.5
    b1, b2 = topo.region("b").nodes
    assert (b1.host, b1.port, b2.host, b2.port) == ("10.0.0.2", 7001, None, 7002)
    assert topo.node("a1").host is None and topo.node("a1").port is None
    a, b = RegionId("a"), RegionId("b")
    assert topo.link(a, b) == LinkSpec(a, b, 40.0, 3.0, 1000)
    assert topo.link(b, a) == LinkSpec(b, a, 40.0, 3.0, 1000)
    assert topo.streams == ()


def test_directed_pair_may_differ_in_jitter_and_bandwidth() -> None:
    text = BASE.split("[[links]]")[0] + (
        '[[links]]\nsrc = "a"\ndst = "b"\nrtt_ms_p50 = 40\njitter_ms = 1\nbandwidth_kbps = 10\n'
        '[[links]]\nsrc = "b"\ndst = "a"\nrtt_ms_p50 = 40\njitter_ms = 2\n'
    )
    topo = parse_topology(text, "t.toml")
    assert topo.link("a", "b").jitter_ms == 1 and topo.link("a", "b").bandwidth_kbps == 10
    assert topo.link("b", "a").jitter_ms == 2 and topo.link("b", "a").bandwidth_kbps is None


def test_stream_homes_default_round_robin() -> None:
    text = BASE + '[[streams]]\nname = "s"\npartitions = 5\nhomes = { 3 = "a" }\n'
    s = parse_topology(text, "t.toml").stream("s")
    assert dict(s.homes) == {0: "a", 1: "b", 2: "a", 3: "a", 4: "a"}
    assert s.key_field is None


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-topo.toml"
    path.write_text(BASE.replace('name = "t"\n', "", 1))
    assert load_topology(path).name == "my-topo"


# -- validation errors ---------------------------------------------------------------------

THREE = """
[[regions]]
name = "a"
nodes = ["a1"]
[[regions]]
name = "b"
nodes = ["b1"]
[[regions]]
name = "c"
nodes = ["c1"]
[[links]]
a = "a"
b = "b"
rtt_ms_p50 = 10
[[links]]
a = "a"
b = "c"
rtt_ms_p50 = 20
[[links]]
a = "b"
b = "c"
rtt_ms_p50 = 30
"""

_DIRECTED = '[[links]]\nsrc = "{s}"\ndst = "{d}"\nrtt_ms_p50 = {r}\n'

#: (case id, TOML text, expected field, a fragment of the reason)
INVALID: list[tuple[str, str, str, str]] = [
    (
        "missing link",
        THREE.rsplit("[[links]]", 1)[0],
        "links",
        "missing link between regions 'b' and 'c'",
    ),
    (
        "directed link without reverse",
        THREE.rsplit("[[links]]", 1)[0] + _DIRECTED.format(s="b", d="c", r=30),
        "links[2]",
        "no reverse entry c -> b",
    ),
    (
        "asymmetric rtt",
        THREE.rsplit("[[links]]", 1)[0]
        + _DIRECTED.format(s="b", d="c", r=30)
        + _DIRECTED.format(s="c", d="b", r=31),
        "links[3].rtt_ms_p50",
        "differs from 30",
    ),
    (
        "pair given twice",
        THREE + _DIRECTED.format(s="c", d="b", r=30),
        "links[3]",
        "link c -> b already given by links[2]",
    ),
    (
        "symmetric pair repeated reversed",
        THREE + '[[links]]\na = "b"\nb = "a"\nrtt_ms_p50 = 10\n',
        "links[3]",
        "already given by links[0]",
    ),
    (
        "negative rtt",
        THREE.replace("rtt_ms_p50 = 20", "rtt_ms_p50 = -1"),
        "links[1].rtt_ms_p50",
        ">= 0",
    ),
    (
        "non-numeric rtt",
        THREE.replace("rtt_ms_p50 = 20", 'rtt_ms_p50 = "20"'),
        "links[1].rtt_ms_p50",
        "must be a number, got a string",
    ),
    (
        "boolean rtt",
        THREE.replace("rtt_ms_p50 = 20", "rtt_ms_p50 = true"),
        "links[1].rtt_ms_p50",
        "a boolean",
    ),
    (
        "infinite rtt",
        THREE.replace("rtt_ms_p50 = 20", "rtt_ms_p50 = inf"),
        "links[1].rtt_ms_p50",
        "finite",
    ),
    (
        "negative jitter",
        THREE.replace("rtt_ms_p50 = 20", "rtt_ms_p50 = 20\njitter_ms = -2"),
        "links[1].jitter_ms",
        ">= 0",
    ),
    (
        "jitter above one-way delay",
        THREE.replace("rtt_ms_p50 = 20", "rtt_ms_p50 = 20\njitter_ms = 10.5"),
        "links[1].jitter_ms",
        "exceeds the one-way delay",
    ),
    (
        "zero bandwidth",
        THREE.replace("rtt_ms_p50 = 20", "rtt_ms_p50 = 20\nbandwidth_kbps = 0"),
        "links[1].bandwidth_kbps",
        ">= 1",
    ),
    (
        "fractional bandwidth",
        THREE.replace("rtt_ms_p50 = 20", "rtt_ms_p50 = 20\nbandwidth_kbps = 1.5"),
        "links[1].bandwidth_kbps",
        "integer",
    ),
    (
        "unknown region in link",
        THREE.replace('b = "c"', 'b = "z"', 1),
        "links[1].b",
        "unknown region 'z'",
    ),
    ("self link", THREE.replace('b = "c"', 'b = "a"', 1), "links[1].b", "to itself"),
    (
        "both link forms",
        THREE.replace('a = "a"\nb = "b"', 'a = "a"\nb = "b"\nsrc = "a"', 1),
        "links[0]",
        "not both",
    ),
    ("no link ends", THREE.replace('a = "a"\nb = "b"\n', "", 1), "links[0]", "missing a/b"),
    ("missing rtt", THREE.replace("rtt_ms_p50 = 10\n", "", 1), "links[0].rtt_ms_p50", "missing"),
    (
        "typo in link",
        THREE.replace("rtt_ms_p50 = 10", "rtt_ms_p05 = 10"),
        "links[0].rtt_ms_p05",
        "unknown key",
    ),
    (
        "duplicate region",
        THREE.replace('name = "c"', 'name = "a"'),
        "regions[2].name",
        "duplicate region 'a'",
    ),
    (
        "duplicate node id across regions",
        THREE.replace('nodes = ["c1"]', 'nodes = ["a1"]'),
        "regions[2].nodes[0]",
        "duplicate node id 'a1' (also regions[0].nodes[0])",
    ),
    (
        "duplicate endpoint",
        THREE.replace('nodes = ["b1"]', 'nodes = [{id="b1", port=9000}, {id="b2", port=9000}]'),
        "regions[1].nodes[1].port",
        "already used",
    ),
    (
        "port out of range",
        THREE.replace('nodes = ["b1"]', 'nodes = [{id="b1", port=70000}]'),
        "regions[1].nodes[0].port",
        "1..65535",
    ),
    (
        "empty host",
        THREE.replace('nodes = ["b1"]', 'nodes = [{id="b1", host=""}]'),
        "regions[1].nodes[0].host",
        "non-empty",
    ),
    (
        "typo in node",
        THREE.replace('nodes = ["b1"]', 'nodes = [{id="b1", prot=1}]'),
        "regions[1].nodes[0].prot",
        "unknown key",
    ),
    (
        "node without id",
        THREE.replace('nodes = ["b1"]', 'nodes = [{host="h"}]'),
        "regions[1].nodes[0].id",
        "missing",
    ),
    (
        "node of wrong type",
        THREE.replace('nodes = ["b1"]', "nodes = [7]"),
        "regions[1].nodes[0]",
        "an integer",
    ),
    (
        "bad node id",
        THREE.replace('nodes = ["b1"]', 'nodes = ["b 1"]'),
        "regions[1].nodes[0]",
        "letters, digits",
    ),
    (
        "empty region",
        THREE.replace('nodes = ["b1"]', "nodes = []"),
        "regions[1].nodes",
        "has no nodes",
    ),
    ("region without nodes", THREE.replace('nodes = ["b1"]\n', ""), "regions[1].nodes", "missing"),
    (
        "negative intra rtt",
        THREE.replace('name = "b"', 'name = "b"\nintra_rtt_ms = -0.1'),
        "regions[1].intra_rtt_ms",
        ">= 0",
    ),
    (
        "typo in region",
        THREE.replace('name = "b"', 'name = "b"\nnode = ["x"]'),
        "regions[1].node",
        "unknown key",
    ),
    ("no regions", 'name = "x"\n', "regions", "missing"),
    ("unknown top-level key", 'regoins = "x"\n' + THREE, "regoins", "unknown key"),
    (
        "stream zero partitions",
        THREE + '[[streams]]\nname = "s"\npartitions = 0\n',
        "streams[0].partitions",
        "in 1..1024, got 0",
    ),
    (
        "home partition out of range",
        THREE + '[[streams]]\nname = "s"\npartitions = 2\nhomes = { 2 = "a" }\n',
        "streams[0].homes.2",
        "out of range (partitions = 2)",
    ),
    (
        "home partition not a number",
        THREE + '[[streams]]\nname = "s"\nhomes = { x = "a" }\n',
        "streams[0].homes.x",
        "non-negative integers",
    ),
    (
        "unknown home region",
        THREE + '[[streams]]\nname = "s"\nhomes = { 0 = "z" }\n',
        "streams[0].homes.0",
        "unknown region 'z'",
    ),
    (
        "duplicate stream",
        THREE + '[[streams]]\nname = "s"\n[[streams]]\nname = "s"\n',
        "streams[1].name",
        "duplicate stream",
    ),
    (
        "too many partitions",
        THREE + '[[streams]]\nname = "s"\npartitions = 1025\n',
        "streams[0].partitions",
        "in 1..1024",
    ),
    (
        "bad key field",
        THREE + '[[streams]]\nname = "s"\nkey_field = "1x"\n',
        "streams[0].key_field",
        "body field name",
    ),
    ("bad stream name", THREE + '[[streams]]\nname = "-s"\n', "streams[0].name", "letters"),
    (
        "region name with newline",
        THREE.replace('name = "c"', 'name = "c\\n"'),
        "regions[2].name",
        "letters",
    ),
    (
        "typo in stream",
        THREE + '[[streams]]\nname = "s"\nkey = "k"\n',
        "streams[0].key",
        "unknown key",
    ),
    ("malformed toml", THREE + "[[links]\n", "line 23", "invalid TOML"),
]


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [pytest.param(t, f, r, id=i) for i, t, f, r in INVALID],
)
def test_invalid_topology_names_file_field_and_reason(text: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_topology(text, "bad.toml")
    e = err.value
    assert (e.file, e.field) == ("bad.toml", field), e.message
    assert reason in e.reason, e.message
    assert e.message == f"bad.toml: {field}: {e.reason}"


def test_the_valid_base_of_the_error_cases_is_valid() -> None:
    topo = parse_topology(THREE, "ok.toml")
    assert topo.rtt_ms("c", "b") == 30


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as err:
        load_topology(missing)
    assert err.value.file == str(missing) and "cannot read" in err.value.reason


# -- built in code ---------------------------------------------------------------------------


def test_make_topology_validates_like_a_file() -> None:
    topo = make_topology(
        {"x": ["x1", "x2", "x3"], "y": ["y1"], "z": ["z1"]},
        {("x", "y"): 10, ("z", "x"): 20, ("y", "z"): 30},
        name="sim",
        jitter_ms=1.0,
        bandwidth_kbps=500,
    )
    assert topo.name == "sim" and topo.path is None
    assert topo.rtt_ms("x", "z") == 20 and topo.rtt_ms("z", "y") == 30
    assert topo.link("y", "x").bandwidth_kbps == 500 and topo.link("y", "x").jitter_ms == 1
    uniform = make_topology({"x": ["x1"], "y": ["y1"]}, 50)
    assert uniform.rtt_ms("y", "x") == 50
    with pytest.raises(ConfigError) as err:
        make_topology({"x": ["x1"], "y": ["y1"], "z": ["z1"]}, {("x", "y"): 10})
    assert "no RTT given for 'x' and 'z'" in err.value.reason
    with pytest.raises(ConfigError) as err:
        make_topology({"x": ["n1"], "y": ["n1"]}, 5)
    assert err.value.field == "regions[1].nodes[0]"


def test_topology_from_dict_matches_the_file_format() -> None:
    import tomllib

    data = tomllib.loads(THREE)
    assert topology_from_dict(data) == parse_topology(THREE)
    assert topology_from_dict(data).name == "topology"


def test_with_loopback_ports_fills_only_what_is_missing() -> None:
    topo = parse_topology(BASE, "t.toml").with_loopback_ports(7001)
    ports: dict[str, tuple[str | None, int | None]] = {n.id: (n.host, n.port) for n in topo.nodes()}
    assert ports["b1"] == ("10.0.0.2", 7001)  # given: kept
    assert ports["b2"] == ("127.0.0.1", 7002)  # port given, host filled
    # 7001 and 7002 are taken by the file, so the free ones start at 7003
    assert ports["a1"] == ("127.0.0.1", 7003) and ports["a2"] == ("127.0.0.1", 7004)
    assert topo.links == parse_topology(BASE, "t.toml").links


# -- writing back ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_to_toml_reads_back_equal(name: str) -> None:
    topo = load_topology(REGIONS_DIR / name)
    for derived in (topo, topo.scaled(0.25), topo.subset(topo.region_names()[:2])):
        again = parse_topology(derived.to_toml(), "written.toml")
        assert again == dataclasses.replace(derived, path=None)


_names = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    region_names = draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    node_ids = draw(
        st.lists(_names, min_size=len(region_names), max_size=3 * len(region_names), unique=True)
    )
    ports = iter(draw(st.permutations(range(7000, 7000 + len(node_ids)))))
    regions: dict[str, list[object]] = {r: [] for r in region_names}
    for i, node_id in enumerate(node_ids):
        node: object = node_id
        if draw(st.booleans()):
            host = draw(st.text(min_size=1, max_size=8).filter(lambda h: h.strip() != ""))
            node = {"id": node_id, "host": host, "port": next(ports)}
        regions[region_names[i % len(region_names)]].append(node)
    links: list[dict[str, object]] = []
    for i, a in enumerate(region_names):
        for b in region_names[i + 1 :]:
            rtt = draw(st.floats(0, 500, allow_nan=False))
            figures: dict[str, object] = {"rtt_ms_p50": rtt}
            if draw(st.booleans()):
                # two directed entries, same RTT, their own jitter and bandwidth
                for src, dst in ((a, b), (b, a)):
                    links.append(
                        {
                            "src": src,
                            "dst": dst,
                            **figures,
                            "jitter_ms": draw(st.floats(0, rtt / 2)),
                            "bandwidth_kbps": draw(st.integers(1, 10**7)),
                        }
                    )
            else:
                links.append({"a": a, "b": b, **figures, "jitter_ms": draw(st.floats(0, rtt / 2))})
    streams = [
        {
            "name": stream,
            "partitions": draw(st.integers(1, 6)),
            "homes": {},
        }
        for stream in draw(st.lists(_names, max_size=2, unique=True))
    ]
    data = {
        "name": draw(_names),
        "regions": [
            {"name": r, "intra_rtt_ms": draw(st.floats(0, 5)), "nodes": nodes}
            for r, nodes in regions.items()
        ],
        "links": links,
        "streams": streams,
    }
    return topology_from_dict(data)


@settings(max_examples=50)
@given(topologies())
def test_any_valid_topology_round_trips_through_toml(topo: Topology) -> None:
    assert parse_topology(topo.to_toml(), "written.toml") == topo
