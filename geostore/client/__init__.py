"""geostore.client: the async Python client of a geostore cluster.

Example::

    async with GeostoreClient.from_cluster("cluster-dir", region="r1", token=secret) as client:
        await client.create_stream("flights", partitions=3, key_field="origin")
        ack = await client.append("flights", [{"body": {"origin": "JFK", "dep_delay": 3}}])
        page = await client.read("flights", partition=0, read_your_writes=True)
"""

from geostore.client.client import GeostoreClient
from geostore.client.cluster import ClusterMap, NodeAddress, load_cluster, parse_cluster
from geostore.client.errors import (
    AuthFailed,
    CallTimeout,
    Forbidden,
    RequestFailed,
    TlsFailed,
    Unauthenticated,
    Unreachable,
)
from geostore.client.results import (
    AggregateResult,
    AppendResult,
    Event,
    Health,
    PartitionError,
    PartitionHome,
    PartitionResult,
    Producer,
    ReadResult,
    StreamInfo,
    Window,
)

__all__ = [
    "AggregateResult",
    "AppendResult",
    "AuthFailed",
    "CallTimeout",
    "ClusterMap",
    "Event",
    "Forbidden",
    "GeostoreClient",
    "Health",
    "NodeAddress",
    "PartitionError",
    "PartitionHome",
    "PartitionResult",
    "Producer",
    "ReadResult",
    "RequestFailed",
    "StreamInfo",
    "TlsFailed",
    "Unauthenticated",
    "Unreachable",
    "Window",
    "load_cluster",
    "parse_cluster",
]
