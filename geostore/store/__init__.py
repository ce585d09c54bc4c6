"""geostore.store: the event-store state machine (pure: no clock, no sockets, no threads).

The runtime feeds :meth:`EventStore.apply` with committed Raft entries and calls its
queries; files are reached only through the :class:`BlockStore` port.
"""

from .blocks import BlockStore, MemoryBlockStore, encode_batch
from .commands import AppendBatch, Command, CreateStream, SetHome, decode_command, encode_command
from .model import (
    Aggregate,
    AggregateResult,
    AppendResult,
    Attribute,
    AttrType,
    HomeResult,
    PartitionHome,
    PartitionInfo,
    ProducerRef,
    ReadResult,
    ReadStats,
    Rejected,
    Schema,
    StoredEvent,
    StoreLimits,
    StoreTuning,
    StreamDef,
    StreamInfo,
    WindowAggregate,
)
from .state import ApplyResult, EventStore, PreparedAppend, TailCallback, route

__all__ = [
    "Aggregate",
    "AggregateResult",
    "AppendBatch",
    "AppendResult",
    "ApplyResult",
    "AttrType",
    "Attribute",
    "BlockStore",
    "Command",
    "CreateStream",
    "EventStore",
    "HomeResult",
    "MemoryBlockStore",
    "PartitionHome",
    "PartitionInfo",
    "PreparedAppend",
    "ProducerRef",
    "ReadResult",
    "ReadStats",
    "Rejected",
    "Schema",
    "SetHome",
    "StoreLimits",
    "StoreTuning",
    "StoredEvent",
    "StreamDef",
    "StreamInfo",
    "TailCallback",
    "WindowAggregate",
    "decode_command",
    "encode_batch",
    "encode_command",
    "route",
]
