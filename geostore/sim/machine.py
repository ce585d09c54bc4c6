"""The simulator's replicated state machine: an append-only log of client values by offset.

Theory of operation: each applied NORMAL entry carries one client value (UTF-8); the machine
records it at the entry's Raft index, which is the value's offset. NOOP and CONFIG entries
advance the applied index but hold no value, so offsets are increasing but not dense. The
machine's snapshot is a deterministic JSON document of every value, so restoring one on a
follower that was far behind reproduces exactly what the leader had applied.
"""

from __future__ import annotations

import json

from geostore.ids import INDEX_ZERO, LogIndex
from geostore.raft.types import Entry, EntryKind, SnapshotMeta


class LogMachine:
    """Implements the node layer's StateMachine port for the simulator."""

    __slots__ = ("applied_index", "values")

    def __init__(self) -> None:
        self.values: dict[int, str] = {}
        self.applied_index: LogIndex = INDEX_ZERO

    def apply(self, entry: Entry) -> object:
        assert entry.index == self.applied_index + 1, (entry.index, self.applied_index)
        self.applied_index = entry.index
        if entry.kind is EntryKind.NORMAL:
            self.values[entry.index] = entry.data.decode()
        return entry.index

    def snapshot(self) -> bytes:
        doc = {"applied": self.applied_index, "values": sorted(self.values.items())}
        return json.dumps(doc, separators=(",", ":")).encode()

    def restore(self, data: bytes, meta: SnapshotMeta) -> None:
        doc = json.loads(data.decode())
        assert doc["applied"] == meta.index, (doc["applied"], meta.index)
        self.values = {int(k): str(v) for k, v in doc["values"]}
        self.applied_index = meta.index

    def read(self, start: int) -> tuple[tuple[int, str], ...]:
        """Every (offset, value) at ``start`` or later, in offset order."""
        # Insertion order is offset order: apply goes up by one, restore builds in order.
        return tuple((i, v) for i, v in self.values.items() if i >= start)
