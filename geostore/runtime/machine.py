"""The event store as the Raft host's state machine, and the host the runtime drives.

:class:`StoreMachine` adapts :class:`geostore.store.EventStore` to the host's
:class:`~geostore.node.ports.StateMachine` port: NORMAL entries are store commands, every
other entry only advances the store's applied index. Snapshots are self-contained (they
carry the sealed blocks) because the same bytes serve a local restart and a follower that
catches up.

:class:`RuntimeHost` is the node layer's :class:`~geostore.node.raft_host.RaftHost` with two
batched inputs the asyncio runtime needs for group commit: many inbound messages, then many
client proposals, and only then one drain, so one Ready (one fsync) covers them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from geostore.node.raft_host import OnProposal, RaftHost, _Pending
from geostore.raft.messages import Message
from geostore.raft.records import Proposed, Rejected
from geostore.raft.types import Entry, EntryKind, SnapshotMeta
from geostore.store import EventStore, RemoteResult

SNAPSHOT_CHUNK_BYTES = 1 << 20


class StoreMachine:
    """The replicated event store behind one Raft group."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        #: told about every applied shipped batch (the geo receiver acks from it)
        self.on_remote_applied: Callable[[RemoteResult, bytes], None] | None = None

    def apply(self, entry: Entry) -> object:
        if entry.kind is EntryKind.NORMAL:
            result = self.store.apply_entry(entry.index, entry.data)
            if type(result) is RemoteResult and self.on_remote_applied is not None:
                self.on_remote_applied(result, entry.data)
            return result
        self.store.advance(entry.index)
        return None

    def snapshot(self) -> bytes:
        return b"".join(self.store.snapshot_chunks(SNAPSHOT_CHUNK_BYTES, include_blocks=True))

    def restore(self, data: bytes, meta: SnapshotMeta) -> None:
        self.store.restore_from_chunks([data])


class RuntimeHost(RaftHost):
    """A RaftHost that takes inputs in batches and drains once (group commit)."""

    def step_many(self, msgs: Sequence[Message]) -> None:
        for msg in msgs:
            self.core.step(msg)
        self._drain()

    def propose_many(
        self, datas: Sequence[bytes], callbacks: Sequence[OnProposal]
    ) -> Proposed | Rejected:
        """Propose several entries in one go; ``callbacks[i]`` hears about ``datas[i]``."""
        assert len(datas) == len(callbacks) and datas
        result = self.core.propose_batch(list(datas))
        if isinstance(result, Proposed):
            for offset, on_done in enumerate(callbacks):
                index = result.index + offset
                self._pending[index] = _Pending(
                    type(result.index)(index), type(result.index)(index), result.term, on_done
                )
        self._drain()
        return result
