"""Ports of the node wiring that are not storage or transport: the state machine and hooks.

Theory of operation: the host (:mod:`geostore.node.raft_host`) turns a Raft core's Ready
into port calls. Storage ports live in :mod:`geostore.storage.ports`, the transport port in
:mod:`geostore.transport.port`; this module adds the replicated state machine the host
applies committed entries to, and an observer through which the simulator's checkers watch
every persist, apply and acknowledgement without the host knowing about them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from geostore.ids import LogIndex, NodeId, Term
from geostore.raft.types import Entry, HardState, SnapshotMeta

if TYPE_CHECKING:
    from geostore.node.raft_host import RaftHost


class StateMachine(Protocol):
    """The replicated state machine. Owned by one host; called only from its loop.

    ``apply`` is called exactly once per committed entry, in index order (NOOP and CONFIG
    entries included, so the machine's applied index follows the log). ``snapshot`` returns
    the whole state as bytes, ``restore`` replaces the state by a snapshot's.
    """

    def apply(self, entry: Entry) -> object: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes, meta: SnapshotMeta) -> None: ...


class MessageSender(Protocol):
    """What the host needs of the transport: best-effort, non-blocking send to one peer."""

    def send(self, peer: NodeId, msg: object) -> bool: ...


class SyncRunner(Protocol):
    """Runs the log's fsync off the host's loop (the asyncio runtime: a storage thread).

    ``start`` begins syncing everything appended so far and returns at once; ``done`` is
    called later, on the host's loop, once it is durable. A failed fsync is the runner's to
    report (the host stops taking Readies until ``done``). Without a runner the host syncs
    inline, as the simulator does.
    """

    def start(self, done: Callable[[], None]) -> None: ...


class HostObserver:
    """No-op hooks a simulator overrides to watch a host; production passes None."""

    def on_log_write(self, host: RaftHost, entries: Sequence[Entry], prior_last: LogIndex) -> None:
        """Entries were handed to storage (before any sync)."""

    def on_hard_state(self, host: RaftHost, hs: HardState) -> None:
        """A hard state was saved (or, with ``unsafe_forget_vote``, would have been)."""

    def on_apply(self, host: RaftHost, entry: Entry) -> None:
        """The state machine applied ``entry``."""

    def on_ack(self, host: RaftHost, index: LogIndex, term: Term) -> None:
        """A client proposal at (index, term) is about to be acknowledged as committed."""

    def on_snapshot_taken(self, host: RaftHost, meta: SnapshotMeta) -> None:
        """The host wrote a snapshot of its own state machine and compacted its log."""

    def on_snapshot_installed(self, host: RaftHost, meta: SnapshotMeta) -> None:
        """The host restored a snapshot received from the leader."""

    def on_read_served(self, host: RaftHost, index: LogIndex) -> None:
        """A linearizable read confirmed at ``index`` is being answered."""

    def on_ready_done(self, host: RaftHost) -> None:
        """A Ready was fully handled and advanced (the core's status is current)."""
