"""Topologies: regions, their nodes, the WAN links between them, and optional streams.

Theory of operation
-------------------
A topology file (TOML, see docs/configuration.md) is parsed once into an immutable
:class:`Topology`. Everything downstream (the netem link matrix, the simulator, `cluster up`,
the benchmarks, Raft timing) reads the same value, so one file drives them all.

Rules the loader enforces, each failure a :class:`~geostore.errors.ConfigError` naming the
file, the field path (``links[2].rtt_ms_p50``, indices from 0) and the reason:

- every key is known (a typo is an error, never silently ignored);
- region names and node ids are unique (node ids across the whole topology), every region
  has at least one node, and two nodes never share a ``host:port``;
- every ordered pair of distinct regions has exactly one link. ``a``/``b`` entries cover both
  directions; ``src``/``dst`` entries cover one direction and must come with their reverse.
  A round trip crosses both directions, so the RTT of a pair is one number: two directed
  entries whose ``rtt_ms_p50`` differ are refused (jitter and bandwidth are per direction
  and may differ);
- numbers are finite and non-negative (bandwidth and ports positive integers); a link's
  ``jitter_ms`` is the amplitude of the uniform jitter Toxiproxy adds to each one-way delay,
  so it may not exceed the one-way delay ``rtt_ms_p50 / 2``;
- streams have ``partitions >= 1``; ``homes`` maps partition numbers in range to known
  regions; partitions without an explicit home get ``regions[p % len(regions)]``; an
  optional ``rpo_ms`` (1 ms .. 1 day) bounds the stream's replication lag: its home
  regions slow and then refuse appends while a partition's lag to another region is over
  it (lag-bounded backpressure, see docs/operations.md).

The parsed value keeps both directions of every link in :attr:`Topology.links`, so callers
never need to know how the file spelled them.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from geostore.errors import ConfigError
from geostore.ids import NodeId, RegionId

__all__ = [
    "LinkSpec",
    "NodeSpec",
    "RegionSpec",
    "StreamSpec",
    "Topology",
    "load_topology",
    "make_topology",
    "parse_topology",
    "topology_from_dict",
]

#: Region names, node ids and stream names end up in file paths, URLs and metric labels.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_NAME_RULE = "must be 1-128 characters of letters, digits, '_', '.', '-', starting alphanumeric"

#: Body field names (a stream's key_field), as the store's schema names attributes.
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
#: Most partitions a declared stream may have (the store's default partitions_max).
PARTITIONS_MAX = 1024
#: Largest replication lag bound a stream may name (a day): above that it bounds nothing.
RPO_MS_MAX = 86_400_000

#: Intra-region RTT when a region does not say (a LAN round trip in one data centre).
DEFAULT_INTRA_RTT_MS = 0.5


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node: its id, its region, and where to reach it when deployed across machines."""

    id: NodeId
    region: RegionId
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class RegionSpec:
    """A region and its nodes, in file order."""

    name: RegionId
    nodes: tuple[NodeSpec, ...]
    intra_rtt_ms: float = DEFAULT_INTRA_RTT_MS

    def node_ids(self) -> tuple[NodeId, ...]:
        return tuple(n.id for n in self.nodes)


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction of an inter-region link.

    ``rtt_ms_p50`` is the median round trip of the pair (the same in both directions); a proxy
    on this direction adds half of it. ``jitter_ms`` is the per-direction amplitude (uniform
    +-jitter on the one-way delay, as Toxiproxy's latency toxic applies it).
    ``bandwidth_kbps`` is in KB/s, the unit of Toxiproxy's bandwidth toxic ``rate``;
    ``None`` means unlimited.
    """

    src: RegionId
    dst: RegionId
    rtt_ms_p50: float
    jitter_ms: float = 0.0
    bandwidth_kbps: int | None = None

    @property
    def one_way_ms(self) -> float:
        return self.rtt_ms_p50 / 2.0


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A stream declared by the topology, with the home region of every partition."""

    name: str
    partitions: int = 1
    key_field: str | None = None
    homes: Mapping[int, RegionId] = field(default_factory=lambda: MappingProxyType({}))
    #: replication lag bound (ms) over which the home refuses appends; None: unbounded
    rpo_ms: int | None = None

    def home_of(self, partition: int) -> RegionId:
        return self.homes[partition]

    def __hash__(self) -> int:
        homes = tuple(sorted(self.homes.items()))
        return hash((self.name, self.partitions, self.key_field, homes, self.rpo_ms))


@dataclass(frozen=True, slots=True)
class Topology:
    """An immutable, validated topology. ``links`` holds both directions of every pair."""

    name: str
    path: str | None
    regions: tuple[RegionSpec, ...]
    links: Mapping[tuple[RegionId, RegionId], LinkSpec]
    streams: tuple[StreamSpec, ...] = ()

    def __hash__(self) -> int:
        return hash((self.name, self.path, self.regions, tuple(sorted(self.links.items()))))

    # -- regions and nodes -------------------------------------------------------------

    def region(self, name: str) -> RegionSpec:
        """The region called ``name``; KeyError when there is none."""
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(f"unknown region {name!r} in topology {self.name!r}")

    def region_names(self) -> tuple[RegionId, ...]:
        """Region names in file order."""
        return tuple(r.name for r in self.regions)

    def nodes(self) -> tuple[NodeSpec, ...]:
        """Every node, region by region, in file order."""
        return tuple(n for r in self.regions for n in r.nodes)

    def node_ids(self) -> tuple[NodeId, ...]:
        return tuple(n.id for n in self.nodes())

    def node(self, node_id: str) -> NodeSpec:
        """The node with id ``node_id``; KeyError when there is none."""
        for r in self.regions:  # no tuple of every node: peers look nodes up per message
            for n in r.nodes:
                if n.id == node_id:
                    return n
        raise KeyError(f"unknown node {node_id!r} in topology {self.name!r}")

    def region_of(self, node_id: str) -> RegionId:
        return self.node(node_id).region

    # -- links ---------------------------------------------------------------------------

    def link(self, src: str, dst: str) -> LinkSpec:
        """The directed link ``src -> dst`` (two distinct regions)."""
        assert src != dst, f"no link from a region to itself ({src!r}); use rtt_ms"
        try:
            return self.links[(RegionId(src), RegionId(dst))]
        except KeyError:
            raise KeyError(f"no link {src!r} -> {dst!r} in topology {self.name!r}") from None

    def rtt_ms(self, a: str, b: str) -> float:
        """Median round trip between regions ``a`` and ``b`` (intra-region RTT when equal)."""
        if a == b:
            return self.region(a).intra_rtt_ms
        return self.link(a, b).rtt_ms_p50

    def one_way_ms(self, a: str, b: str) -> float:
        return self.rtt_ms(a, b) / 2.0

    def max_rtt_ms(self, regions: Iterable[str] | None = None) -> float:
        """The largest inter-region RTT among ``regions`` (all regions when None); 0 for one."""
        names = list(self.region_names() if regions is None else regions)
        best = 0.0
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if a != b:
                    best = max(best, self.rtt_ms(a, b))
        return best

    def widest_rtt_ms(self, regions: Iterable[str]) -> float:
        """The largest RTT a group with voters in ``regions`` spans, intra-region RTTs included."""
        names = list(regions)
        intra = max((self.region(n).intra_rtt_ms for n in names), default=0.0)
        return max(intra, self.max_rtt_ms(names))

    # -- streams -------------------------------------------------------------------------

    def stream(self, name: str) -> StreamSpec:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(f"unknown stream {name!r} in topology {self.name!r}")

    # -- derived topologies --------------------------------------------------------------

    def scaled(self, factor: float) -> Topology:
        """The same topology with every inter-region RTT and jitter multiplied by ``factor``.

        For RTT sweeps. Intra-region RTTs and bandwidths stay as they are: a sweep varies the
        WAN, not the LAN inside a data centre.
        """
        if not (math.isfinite(factor) and factor >= 0):
            raise ConfigError(self.path or self.name, "scale", f"factor {factor!r} must be >= 0")
        links = {
            k: LinkSpec(
                src=v.src,
                dst=v.dst,
                rtt_ms_p50=v.rtt_ms_p50 * factor,
                jitter_ms=v.jitter_ms * factor,
                bandwidth_kbps=v.bandwidth_kbps,
            )
            for k, v in self.links.items()
        }
        return Topology(
            name=f"{self.name}-x{factor:g}",
            path=self.path,
            regions=self.regions,
            links=MappingProxyType(links),
            streams=self.streams,
        )

    def subset(self, regions: Sequence[str]) -> Topology:
        """The topology restricted to ``regions`` (kept in file order).

        Streams are kept; a partition whose home was dropped is re-homed by the default rule
        (``kept_regions[p % len(kept_regions)]``), so workloads still find every stream.
        """
        where = self.path or self.name
        wanted = list(regions)
        if not wanted:
            raise ConfigError(where, "subset", "needs at least one region")
        known = set(self.region_names())
        for name in wanted:
            if name not in known:
                raise ConfigError(where, "subset", f"unknown region {name!r}")
        if len(set(wanted)) != len(wanted):
            raise ConfigError(where, "subset", f"duplicate region in {wanted!r}")
        keep = set(wanted)
        kept = tuple(r for r in self.regions if r.name in keep)
        kept_names = tuple(r.name for r in kept)
        links = {k: v for k, v in self.links.items() if k[0] in keep and k[1] in keep}
        streams = []
        for s in self.streams:
            homes = {
                p: (h if h in keep else kept_names[p % len(kept_names)])
                for p, h in sorted(s.homes.items())
            }
            streams.append(
                StreamSpec(
                    name=s.name,
                    partitions=s.partitions,
                    key_field=s.key_field,
                    homes=MappingProxyType(homes),
                    rpo_ms=s.rpo_ms,
                )
            )
        return Topology(
            name="-".join([self.name, *kept_names])[:128],
            path=self.path,
            regions=kept,
            links=MappingProxyType(links),
            streams=tuple(streams),
        )

    def with_loopback_ports(self, base_port: int, host: str = "127.0.0.1") -> Topology:
        """Every node without a host or port gets ``host`` and the next free port from
        ``base_port`` on (ports the file already uses are skipped). For local clusters."""
        assert 0 < base_port <= 65535
        used = {n.port for n in self.nodes() if n.port is not None}
        port = base_port
        regions = []
        for r in self.regions:
            nodes = []
            for n in r.nodes:
                node_port = n.port
                if node_port is None:
                    while port in used:
                        port += 1
                    if port > 65535:
                        raise ConfigError(self.path or self.name, "ports", "ran out of ports")
                    node_port, port = port, port + 1
                nodes.append(NodeSpec(n.id, n.region, n.host or host, node_port))
            regions.append(RegionSpec(r.name, tuple(nodes), r.intra_rtt_ms))
        return Topology(self.name, self.path, tuple(regions), self.links, self.streams)

    def to_toml(self) -> str:
        """The topology in the file format; ``parse_topology`` reads it back equal (except
        ``path``). Pairs with identical figures both ways are written once as ``a``/``b``.
        For tools that hand a derived topology (``scaled``, ``subset``) to other processes."""
        out = [f"name = {_toml_str(self.name)}", ""]
        for r in self.regions:
            out += ["[[regions]]", f"name = {_toml_str(r.name)}"]
            out.append(f"intra_rtt_ms = {r.intra_rtt_ms!r}")
            nodes = []
            for n in r.nodes:
                if n.host is None and n.port is None:
                    nodes.append(_toml_str(n.id))
                    continue
                parts = [f"id = {_toml_str(n.id)}"]
                if n.host is not None:
                    parts.append(f"host = {_toml_str(n.host)}")
                if n.port is not None:
                    parts.append(f"port = {n.port}")
                nodes.append("{ " + ", ".join(parts) + " }")
            out += [f"nodes = [{', '.join(nodes)}]", ""]
        names = self.region_names()
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                there, back = self.link(a, b), self.link(b, a)
                same = (there.rtt_ms_p50, there.jitter_ms, there.bandwidth_kbps) == (
                    back.rtt_ms_p50,
                    back.jitter_ms,
                    back.bandwidth_kbps,
                )
                entries = (
                    [("a", "b", there)] if same else [("src", "dst", there), ("src", "dst", back)]
                )
                for ka, kb, link in entries:
                    out += [
                        "[[links]]",
                        f"{ka} = {_toml_str(link.src)}",
                        f"{kb} = {_toml_str(link.dst)}",
                        f"rtt_ms_p50 = {link.rtt_ms_p50!r}",
                        f"jitter_ms = {link.jitter_ms!r}",
                    ]
                    if link.bandwidth_kbps is not None:
                        out.append(f"bandwidth_kbps = {link.bandwidth_kbps}")
                    out.append("")
        for st in self.streams:
            out += ["[[streams]]", f"name = {_toml_str(st.name)}", f"partitions = {st.partitions}"]
            if st.key_field is not None:
                out.append(f"key_field = {_toml_str(st.key_field)}")
            if st.rpo_ms is not None:
                out.append(f"rpo_ms = {st.rpo_ms}")
            homes = ", ".join(f"{p} = {_toml_str(h)}" for p, h in sorted(st.homes.items()))
            out += [f"homes = {{ {homes} }}", ""]
        return "\n".join(out)

    # -- echo ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (echoed by status endpoints and `geostore topology show`)."""
        return {
            "name": self.name,
            "path": self.path,
            "regions": [
                {
                    "name": r.name,
                    "intra_rtt_ms": r.intra_rtt_ms,
                    "nodes": [{"id": n.id, "host": n.host, "port": n.port} for n in r.nodes],
                }
                for r in self.regions
            ],
            "links": [
                {
                    "src": v.src,
                    "dst": v.dst,
                    "rtt_ms_p50": v.rtt_ms_p50,
                    "jitter_ms": v.jitter_ms,
                    "bandwidth_kbps": v.bandwidth_kbps,
                }
                for v in self.links.values()
            ],
            "streams": [
                {
                    "name": s.name,
                    "partitions": s.partitions,
                    "key_field": s.key_field,
                    "homes": {str(p): h for p, h in sorted(s.homes.items())},
                    "rpo_ms": s.rpo_ms,
                }
                for s in self.streams
            ],
        }


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------

_TOP_KEYS = frozenset({"name", "description", "regions", "links", "streams"})
_REGION_KEYS = frozenset({"name", "intra_rtt_ms", "nodes"})
_NODE_KEYS = frozenset({"id", "host", "port"})
_LINK_KEYS = frozenset({"a", "b", "src", "dst", "rtt_ms_p50", "jitter_ms", "bandwidth_kbps"})
_STREAM_KEYS = frozenset({"name", "partitions", "key_field", "homes", "rpo_ms"})

_LINE_RE = re.compile(r"line (\d+)")


class _Parser:
    """Walks the decoded TOML with the current file name, raising precise ConfigErrors."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, field: str, reason: str) -> ConfigError:
        return ConfigError(self.file, field, reason)

    def check_keys(self, table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                field = f"{where}.{key}" if where else key
                hint = ", ".join(sorted(allowed))
                raise self.fail(field, f"unknown key (allowed: {hint})")

    def table(self, value: Any, field: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be a table, got {_kind(value)}")
        return value

    def array(self, value: Any, field: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(field, f"must be an array, got {_kind(value)}")
        return value

    def name(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {_kind(value)}")
        if not _NAME_RE.fullmatch(value):
            raise self.fail(field, f"{value!r} {_NAME_RULE}")
        return value

    def number(self, value: Any, field: str, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(field, f"must be a number, got {_kind(value)}")
        number = float(value)
        if not math.isfinite(number):
            raise self.fail(field, f"must be finite, got {value!r}")
        if number < 0 or (positive and number == 0):
            raise self.fail(field, f"must be {'> 0' if positive else '>= 0'}, got {value!r}")
        return number

    def integer(self, value: Any, field: str, *, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be an integer, got {_kind(value)}")
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            raise self.fail(field, f"must be {bound}, got {value}")
        return value

    def required(self, table: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in table:
            raise self.fail(f"{where}.{key}", "missing required key")
        return table[key]

    # -- sections ------------------------------------------------------------------------

    def regions(self, raw: Any) -> tuple[RegionSpec, ...]:
        items = self.array(raw, "regions")
        if not items:
            raise self.fail("regions", "at least one region is required")
        regions: list[RegionSpec] = []
        seen_regions: dict[str, int] = {}
        seen_nodes: dict[str, str] = {}
        seen_endpoints: dict[tuple[str, int], str] = {}
        for i, item in enumerate(items):
            where = f"regions[{i}]"
            t = self.table(item, where)
            self.check_keys(t, _REGION_KEYS, where)
            name = self.name(self.required(t, "name", where), f"{where}.name")
            if name in seen_regions:
                raise self.fail(
                    f"{where}.name",
                    f"duplicate region {name!r} (also regions[{seen_regions[name]}])",
                )
            seen_regions[name] = i
            intra = DEFAULT_INTRA_RTT_MS
            if "intra_rtt_ms" in t:
                intra = self.number(t["intra_rtt_ms"], f"{where}.intra_rtt_ms")
            raw_nodes = self.array(self.required(t, "nodes", where), f"{where}.nodes")
            if not raw_nodes:
                raise self.fail(f"{where}.nodes", f"region {name!r} has no nodes")
            nodes: list[NodeSpec] = []
            for j, raw_node in enumerate(raw_nodes):
                nwhere = f"{where}.nodes[{j}]"
                node = self.node(raw_node, nwhere, RegionId(name))
                if node.id in seen_nodes:
                    raise self.fail(
                        nwhere, f"duplicate node id {node.id!r} (also {seen_nodes[node.id]})"
                    )
                seen_nodes[node.id] = nwhere
                if node.port is not None:
                    # A node without a host runs on loopback, so ports collide there too.
                    endpoint = (node.host or "loopback", node.port)
                    if endpoint in seen_endpoints:
                        raise self.fail(
                            f"{nwhere}.port",
                            f"{endpoint[0]}:{node.port} already used by {seen_endpoints[endpoint]}",
                        )
                    seen_endpoints[endpoint] = nwhere
                nodes.append(node)
            regions.append(RegionSpec(name=RegionId(name), nodes=tuple(nodes), intra_rtt_ms=intra))
        return tuple(regions)

    def node(self, raw: Any, where: str, region: RegionId) -> NodeSpec:
        if isinstance(raw, str):
            return NodeSpec(id=NodeId(self.name(raw, where)), region=region)
        if not isinstance(raw, dict):
            raise self.fail(where, f"must be a node id string or a table, got {_kind(raw)}")
        self.check_keys(raw, _NODE_KEYS, where)
        node_id = self.name(self.required(raw, "id", where), f"{where}.id")
        host: str | None = None
        port: int | None = None
        if "host" in raw:
            host_value = raw["host"]
            if not isinstance(host_value, str) or not host_value.strip():
                raise self.fail(f"{where}.host", "must be a non-empty string")
            host = host_value
        if "port" in raw:
            port = self.integer(raw["port"], f"{where}.port", low=1, high=65535)
        return NodeSpec(id=NodeId(node_id), region=region, host=host, port=port)

    def links(
        self, raw: Any, regions: tuple[RegionSpec, ...]
    ) -> Mapping[tuple[RegionId, RegionId], LinkSpec]:
        names = [r.name for r in regions]
        known = set(names)
        items = self.array(raw, "links")
        links: dict[tuple[RegionId, RegionId], LinkSpec] = {}
        origin: dict[tuple[RegionId, RegionId], str] = {}
        for i, item in enumerate(items):
            where = f"links[{i}]"
            t = self.table(item, where)
            self.check_keys(t, _LINK_KEYS, where)
            symmetric = "a" in t or "b" in t
            one_way = "src" in t or "dst" in t
            if symmetric and one_way:
                raise self.fail(where, "give either a/b (both directions) or src/dst, not both")
            if not symmetric and not one_way:
                raise self.fail(where, "missing a/b (both directions) or src/dst (one direction)")
            ka, kb = ("a", "b") if symmetric else ("src", "dst")
            a = self.name(self.required(t, ka, where), f"{where}.{ka}")
            b = self.name(self.required(t, kb, where), f"{where}.{kb}")
            for key, region in ((ka, a), (kb, b)):
                if region not in known:
                    raise self.fail(f"{where}.{key}", f"unknown region {region!r}")
            if a == b:
                raise self.fail(
                    f"{where}.{kb}", f"link from {a!r} to itself; set regions' intra_rtt_ms instead"
                )
            rtt = self.number(self.required(t, "rtt_ms_p50", where), f"{where}.rtt_ms_p50")
            jitter = 0.0
            if "jitter_ms" in t:
                jitter = self.number(t["jitter_ms"], f"{where}.jitter_ms")
                if jitter > rtt / 2.0:
                    raise self.fail(
                        f"{where}.jitter_ms",
                        f"{jitter:g} exceeds the one-way delay rtt_ms_p50/2 = {rtt / 2.0:g}",
                    )
            bandwidth: int | None = None
            if "bandwidth_kbps" in t:
                bandwidth = self.integer(t["bandwidth_kbps"], f"{where}.bandwidth_kbps", low=1)
            ra, rb = RegionId(a), RegionId(b)
            pairs = [(ra, rb), (rb, ra)] if symmetric else [(ra, rb)]
            for pair in pairs:
                if pair in links:
                    raise self.fail(
                        where, f"link {pair[0]} -> {pair[1]} already given by {origin[pair]}"
                    )
                links[pair] = LinkSpec(
                    src=pair[0],
                    dst=pair[1],
                    rtt_ms_p50=rtt,
                    jitter_ms=jitter,
                    bandwidth_kbps=bandwidth,
                )
                origin[pair] = where
            if not symmetric and (rb, ra) in links:
                other = links[(rb, ra)]
                if other.rtt_ms_p50 != rtt:
                    raise self.fail(
                        f"{where}.rtt_ms_p50",
                        f"{rtt:g} differs from {other.rtt_ms_p50:g} for {b} -> {a} "
                        f"({origin[(rb, ra)]}); a round trip crosses both directions, so a "
                        "pair has one RTT (jitter and bandwidth may differ per direction)",
                    )
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                there, back = (a, b) in links, (b, a) in links
                if there and back:
                    continue
                if there or back:
                    given = (a, b) if there else (b, a)
                    raise self.fail(
                        origin[given],
                        f"directed link {given[0]} -> {given[1]} has no reverse entry "
                        f"{given[1]} -> {given[0]} (use a/b for a symmetric link)",
                    )
                raise self.fail("links", f"missing link between regions {a!r} and {b!r}")
        return MappingProxyType(links)

    def streams(self, raw: Any, regions: tuple[RegionSpec, ...]) -> tuple[StreamSpec, ...]:
        names = [r.name for r in regions]
        known = set(names)
        items = self.array(raw, "streams")
        out: list[StreamSpec] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            where = f"streams[{i}]"
            t = self.table(item, where)
            self.check_keys(t, _STREAM_KEYS, where)
            name = self.name(self.required(t, "name", where), f"{where}.name")
            if name in seen:
                raise self.fail(
                    f"{where}.name", f"duplicate stream {name!r} (also streams[{seen[name]}])"
                )
            seen[name] = i
            partitions = 1
            if "partitions" in t:
                partitions = self.integer(
                    t["partitions"], f"{where}.partitions", low=1, high=PARTITIONS_MAX
                )
            key_field: str | None = None
            if "key_field" in t:
                kf = t["key_field"]
                if not isinstance(kf, str) or not _FIELD_RE.fullmatch(kf):
                    raise self.fail(
                        f"{where}.key_field",
                        "must be a body field name (letters, digits, '_', not starting with a "
                        f"digit), got {kf!r}",
                    )
                key_field = kf
            rpo_ms: int | None = None
            if "rpo_ms" in t:
                rpo_ms = self.integer(t["rpo_ms"], f"{where}.rpo_ms", low=1, high=RPO_MS_MAX)
            homes: dict[int, RegionId] = {
                p: RegionId(names[p % len(names)]) for p in range(partitions)
            }
            if "homes" in t:
                raw_homes = self.table(t["homes"], f"{where}.homes")
                for key, region in raw_homes.items():
                    hwhere = f"{where}.homes.{key}"
                    if not re.fullmatch(r"0|[1-9][0-9]*", key):
                        raise self.fail(hwhere, "partition numbers are non-negative integers")
                    p = int(key)
                    if p >= partitions:
                        raise self.fail(
                            hwhere, f"partition {p} out of range (partitions = {partitions})"
                        )
                    if not isinstance(region, str):
                        raise self.fail(hwhere, f"must be a region name, got {_kind(region)}")
                    if region not in known:
                        raise self.fail(hwhere, f"unknown region {region!r}")
                    homes[p] = RegionId(region)
            out.append(
                StreamSpec(
                    name=name,
                    partitions=partitions,
                    key_field=key_field,
                    homes=MappingProxyType(homes),
                    rpo_ms=rpo_ms,
                )
            )
        return tuple(out)


def _toml_str(value: str) -> str:
    """A TOML basic string. JSON's escapes are TOML's, except that TOML also escapes DEL."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _kind(value: Any) -> str:
    """A TOML-flavoured type name for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def decode_toml(text: str, file: str) -> dict[str, Any]:
    """Decode TOML text; a syntax error becomes a ConfigError naming the line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _LINE_RE.search(message)
        field = f"line {m.group(1)}" if m else "<toml>"
        raise ConfigError(file, field, f"invalid TOML: {message}") from None


def read_text(path: str | Path) -> str:
    """Read a config file; a missing or unreadable file is a ConfigError, not an OSError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "<file>", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "<file>", f"not UTF-8 text: {exc.reason}") from None


def parse_topology(text: str, file: str = "<string>", *, path: str | None = None) -> Topology:
    """Parse and validate a topology from TOML text. ``file`` names it in errors."""
    return topology_from_dict(decode_toml(text, file), file, path=path)


def topology_from_dict(
    data: Mapping[str, Any], file: str = "<dict>", *, path: str | None = None
) -> Topology:
    """Validate decoded TOML-shaped data (the file format as Python values) into a Topology."""
    p = _Parser(file)
    p.check_keys(data, _TOP_KEYS, "")
    if "name" in data:
        name = p.name(data["name"], "name")
    else:
        stem = Path(file).stem if not file.startswith("<") else "topology"
        name = stem if _NAME_RE.fullmatch(stem) else "topology"
    if "description" in data and not isinstance(data["description"], str):
        raise p.fail("description", f"must be a string, got {_kind(data['description'])}")
    if "regions" not in data:
        raise p.fail("regions", "missing required key (at least one [[regions]] table)")
    regions = p.regions(data["regions"])
    links = p.links(data.get("links", []), regions)
    streams = p.streams(data.get("streams", []), regions)
    return Topology(name=name, path=path, regions=regions, links=links, streams=streams)


def load_topology(path: str | Path) -> Topology:
    """Read, parse and validate the topology file at ``path``."""
    text = read_text(path)
    return parse_topology(text, str(path), path=str(path))


def make_topology(
    regions: Mapping[str, Sequence[str]],
    rtt_ms: Mapping[tuple[str, str], float] | float,
    *,
    name: str = "custom",
    intra_rtt_ms: float = DEFAULT_INTRA_RTT_MS,
    jitter_ms: float = 0.0,
    bandwidth_kbps: int | None = None,
) -> Topology:
    """A validated topology built in code (tests, the simulator, sweeps).

    ``regions`` maps region name to node ids, in order. ``rtt_ms`` gives each unordered pair
    once (either order) or one number for every pair. Same rules as a file.
    """
    names = list(regions)
    links: list[dict[str, Any]] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if isinstance(rtt_ms, int | float):
                rtt: float = rtt_ms
            elif (a, b) in rtt_ms:
                rtt = rtt_ms[(a, b)]
            elif (b, a) in rtt_ms:
                rtt = rtt_ms[(b, a)]
            else:
                raise ConfigError(f"<{name}>", "links", f"no RTT given for {a!r} and {b!r}")
            link: dict[str, Any] = {"a": a, "b": b, "rtt_ms_p50": rtt, "jitter_ms": jitter_ms}
            if bandwidth_kbps is not None:
                link["bandwidth_kbps"] = bandwidth_kbps
            links.append(link)
    data = {
        "name": name,
        "regions": [
            {"name": r, "intra_rtt_ms": intra_rtt_ms, "nodes": list(nodes)}
            for r, nodes in regions.items()
        ],
        "links": links,
    }
    return topology_from_dict(data, f"<{name}>")
