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

import logging
from collections.abc import Callable, Iterator, Sequence

from geostore.errors import StorageError
from geostore.node.raft_host import OnProposal, RaftHost, _Pending
from geostore.raft.messages import Message
from geostore.raft.records import Proposed, Rejected
from geostore.raft.types import Entry, EntryKind, SnapshotMeta
from geostore.store import EventStore, HomeResult, RemoteResult

SNAPSHOT_CHUNK_BYTES = 1 << 20
log = logging.getLogger("geostore.runtime")


class StoreMachine:
    """The replicated event store behind one Raft group."""

    def __init__(
        self, store: EventStore, group: str = "", *, quarantine_bytes_warn: int = 0
    ) -> None:
        self.store = store
        self.group = group
        #: a failback that leaves the quarantine over this many bytes logs a warning (0: never)
        self.quarantine_bytes_warn = quarantine_bytes_warn
        #: told about every applied shipped batch (the geo receiver acks from it)
        self.on_remote_applied: Callable[[RemoteResult, bytes], None] | None = None

    def apply(self, entry: Entry) -> object:
        if entry.kind is EntryKind.NORMAL:
            result = self.store.apply_entry(entry.index, entry.data)
            if type(result) is RemoteResult and self.on_remote_applied is not None:
                self.on_remote_applied(result, entry.data)
            elif type(result) is HomeResult and result.quarantined:
                self._quarantined(result)
            return result
        self.store.advance(entry.index)
        return None

    def _quarantined(self, result: HomeResult) -> None:
        """A failback moved events to the quarantine: say so, louder over the threshold."""
        runs, events, size = self.store.quarantine_size()
        text = (
            "group %s: failback of %s/%s (epoch %s, fork %s) quarantined %d events; the "
            "quarantine holds %d runs, %d events, %d bytes"
        )
        args = (self.group, result.stream, result.partition, result.epoch, result.fork_seq,
                result.quarantined, runs, events, size)  # fmt: skip
        if self.quarantine_bytes_warn and size > self.quarantine_bytes_warn:
            log.warning(
                text + ", over limits.quarantine_bytes_warn (%d): export it (geostore "
                "quarantine export), then clear it (geostore quarantine clear)",
                *args,
                self.quarantine_bytes_warn,
            )
        else:
            log.info(text, *args)

    def snapshot(self) -> bytes:
        """The state with its sealed blocks by reference (flushed first, so a restart over
        this node's block files finds them): its size follows the block index, not the
        data, so the snapshots the host keeps in memory stay small as the store grows."""
        self.store.blocks.flush()
        return b"".join(self.store.snapshot_chunks(SNAPSHOT_CHUNK_BYTES, include_blocks=False))

    def kept_form(self, data: bytes) -> bytes:
        """What the host keeps in memory of a snapshot it just restored or took: blocks by
        reference (a restored one carries them, and the restore put them into the block
        store), so the copy costs the index, not the data."""
        if not self.store.snapshot_carries_blocks(data):
            return data
        return b"".join(self.store.by_reference_chunks([data], SNAPSHOT_CHUNK_BYTES))

    def transfer_chunks(self, data: bytes, chunk_bytes: int) -> Iterator[bytes]:
        """``data`` (one of this node's snapshots) as a follower needs it, self-contained,
        in chunks of exactly ``chunk_bytes`` (the last shorter), made as they are read."""
        return self.store.self_contained_chunks([data], chunk_bytes)

    def restore(self, data: bytes, meta: SnapshotMeta) -> None:
        self.store.restore_from_chunks([data])


class RuntimeHost(RaftHost):
    """A RaftHost that takes inputs in batches and drains once (group commit).

    Snapshot transfers: with a machine that keeps its snapshots by reference (it has
    ``transfer_chunks``), a follower gets the self-contained form, made chunk by chunk as
    the core asks for them (a cursor per transfer remembers where it is and its last chunk,
    for a resend), so a transfer holds one chunk and one block in memory, never the data.
    An offset no cursor is at starts a fresh pass (the same snapshot always expands to the
    same bytes), and at most ``TRANSFER_CURSORS`` transfers keep a cursor.
    """

    TRANSFER_CURSORS = 4
    _cursors: list[_Cursor] | None = None

    def _remember(self, meta: SnapshotMeta, data: bytes) -> None:
        slim: Callable[[bytes], bytes] | None = getattr(self.machine, "kept_form", None)
        super()._remember(meta, data if slim is None else slim(data))

    def _snapshot_source(self, meta: SnapshotMeta, offset: int, max_bytes: int) -> bytes | None:
        chunker: Callable[[bytes, int], Iterator[bytes]] | None = getattr(
            self.machine, "transfer_chunks", None
        )
        if chunker is None:
            return super()._snapshot_source(meta, offset, max_bytes)
        try:
            cursors = self._cursors
            if cursors is None:
                cursors = self._cursors = []
            for cur in cursors:
                if cur.meta == meta and cur.size == max_bytes:
                    if offset == cur.last_offset:
                        return cur.last
                    if offset == cur.pos:
                        return cur.advance()
            local = next((d for m, d in self._snapshot_cache if m == meta), None)
            if local is None or offset % max_bytes:
                return None
            cur = _Cursor(meta, max_bytes, chunker(local, max_bytes))
            while cur.pos < offset:
                if not cur.advance():
                    break
            cursors.append(cur)
            if len(cursors) > self.TRANSFER_CURSORS:
                del cursors[0]
            return cur.advance() if cur.pos == offset else b""
        except StorageError as exc:
            # A cursor outlives the snapshot cache: a block its snapshot names may be gone
            # since (a cleared quarantined body is deleted after SNAPSHOTS_HELD newer
            # snapshots). None: the core starts the follower over on the newest snapshot.
            log.warning("snapshot at %s can no longer be sent (%s): the transfer starts over",
                        meta.index, exc)  # fmt: skip
            if self._cursors:
                self._cursors = [c for c in self._cursors if c.meta != meta]
            return None

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


class _Cursor:
    """Where one snapshot transfer is: the chunks still to come and the last one given."""

    __slots__ = ("chunks", "last", "last_offset", "meta", "pos", "size")

    def __init__(self, meta: SnapshotMeta, size: int, chunks: Iterator[bytes]) -> None:
        self.meta = meta
        self.size = size
        self.chunks = chunks
        self.pos = 0
        self.last_offset = -1
        self.last = b""

    def advance(self) -> bytes:
        """The chunk at ``pos`` (empty past the end), remembered for a resend."""
        chunk = next(self.chunks, b"")
        self.last_offset, self.last = self.pos, chunk
        self.pos += len(chunk)
        return chunk
