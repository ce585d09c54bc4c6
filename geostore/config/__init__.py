"""Topologies (regions, nodes, WAN links, streams) and node configuration, validated.

Pure: reads files given to it, imports only ids and errors. See docs/configuration.md.
"""

from geostore.config.settings import (
    Config,
    GeoSettings,
    LimitsSettings,
    NetemSettings,
    ProcessSettings,
    RaftSettings,
    RaftTiming,
    StorageSettings,
    config_from_dict,
    load_config,
    parse_config,
    raft_timing,
)
from geostore.config.topology import (
    LinkSpec,
    NodeSpec,
    RegionSpec,
    StreamSpec,
    Topology,
    load_topology,
    make_topology,
    parse_topology,
    topology_from_dict,
)

__all__ = [
    "Config",
    "GeoSettings",
    "LimitsSettings",
    "LinkSpec",
    "NetemSettings",
    "NodeSpec",
    "ProcessSettings",
    "RaftSettings",
    "RaftTiming",
    "RegionSpec",
    "StorageSettings",
    "StreamSpec",
    "Topology",
    "config_from_dict",
    "load_config",
    "load_topology",
    "make_topology",
    "parse_config",
    "parse_topology",
    "raft_timing",
    "topology_from_dict",
]
