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
        """The state with its sealed blocks by reference (flushed first, so a restart over
        this node's block files finds them): its size follows the block index, not the
        data, so the snapshots the host keeps in memory stay small as the store grows."""
        self.store.blocks.flush()
        return b"".join(self.store.snapshot_chunks(SNAPSHOT_CHUNK_BYTES, include_blocks=False))

    def transfer_snapshot(self, data: bytes) -> bytes:
        """``data`` (one of this node's snapshots) as a follower needs it: self-contained."""
        return b"".join(self.store.self_contained_chunks([data], SNAPSHOT_CHUNK_BYTES))

    def restore(self, data: bytes, meta: SnapshotMeta) -> None:
        self.store.restore_from_chunks([data])


class RuntimeHost(RaftHost):
    """A RaftHost that takes inputs in batches and drains once (group commit).

    Snapshot transfers: with a machine that keeps its snapshots by reference (it has
    ``transfer_snapshot``), the chunks a follower gets come from the self-contained form,
    made when a transfer starts and dropped once its last chunk was read (at most one at a
    time; the same snapshot always expands to the same bytes, so a restart of it is safe).
    """

    _transfer: tuple[SnapshotMeta, bytes] | None = None

    def _snapshot_source(self, meta: SnapshotMeta, offset: int, max_bytes: int) -> bytes | None:
        expand: Callable[[bytes], bytes] | None = getattr(self.machine, "transfer_snapshot", None)
        if expand is None:
            return super()._snapshot_source(meta, offset, max_bytes)
        held = self._transfer
        if held is None or held[0] != meta:
            local = next((d for m, d in self._snapshot_cache if m == meta), None)
            if local is None:
                return None
            held = self._transfer = (meta, expand(local))
        data = held[1]
        if offset + max_bytes >= len(data):
            self._transfer = None  # the last chunk: a later transfer expands it again
        return data[offset : offset + max_bytes]

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
