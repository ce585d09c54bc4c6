"""One Raft group hosted by a node process: its storage, state machine, host and inboxes.

Theory of operation:

- The group owns a data dir (``raft/`` for the file log, hard state and snapshots, ``blocks/``
  for the store's sealed blocks), an :class:`~geostore.store.EventStore` and a
  :class:`~geostore.runtime.machine.RuntimeHost` that drives the Raft core. A group may
  run another state machine instead (``machine=``: the metadata group's); its event store
  then stays empty and unused.
- Everything happens on the event loop, never concurrently: inbound peer messages and client
  proposals are queued, and one *flush* (scheduled with ``call_soon`` when the first item
  arrives) steps every queued message, proposes every queued entry in one batch and drains
  the host once. So all appends that arrive while the previous fsync ran share the next
  one: group commit without a linger timer, batches grow with the load.
- A client's future resolves only when the host applies its entry with the proposal's term
  (committed by a quorum and applied: the host's ``Committed``); ``Lost`` and ``Unknown``
  become typed errors. Linearizable reads go through the host's ReadIndex.
- Waiters for "applied at least this far" (token reads, live tails) are woken after every
  flush or tick that moved the applied index.
- The log's fsync runs on a storage thread (:class:`ThreadSync`): the host hands the Ready's
  fsync over and the loop keeps accepting requests and peer messages, which queue in the
  core and form the next Ready when the fsync completes. Nothing that depends on the synced
  state (an append ack, a vote, the leader counting itself, applying) happens before then.
- A storage failure (fsync failed, disk full) marks the group failed: it stops taking input,
  fails every waiter, and ``/v1/health`` says why. The node must be restarted to recover.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from geostore.config import Config, Topology, raft_timing
from geostore.errors import ApiError, ErrorCode, GeostoreError
from geostore.ids import GroupId, LogIndex, NodeId, RegionId, Term
from geostore.node.ports import MessageSender, StateMachine
from geostore.node.raft_host import (
    Committed,
    HostConfig,
    Lost,
    ProposalOutcome,
    ReadFailed,
    ReadOutcome,
    bootstrap_storage,
)
from geostore.raft.core import RaftConfig
from geostore.raft.messages import Message
from geostore.raft.records import ConfChange, Rejected, RejectReason, Role, Status
from geostore.raft.types import Entry, HardState, LogReader, SnapshotMeta
from geostore.runtime.blocks import FileBlockStore
from geostore.runtime.machine import RuntimeHost, StoreMachine
from geostore.runtime.metrics import NodeMetrics
from geostore.storage import FileLogStore, HardStateStore, open_storage
from geostore.store import EventStore, StoreLimits, StoreTuning

log = logging.getLogger("geostore.runtime")


#: Bounds of the recent entries :class:`TimedLog` keeps in memory (count, data bytes).
RECENT_ENTRIES_MAX = 4096
RECENT_BYTES_MAX = 16 << 20


class TimedLog:
    """The file log with its fsyncs timed for ``geostore_fsync_seconds``, and the last
    entries it wrote kept in memory (bounded by :data:`RECENT_ENTRIES_MAX` and
    :data:`RECENT_BYTES_MAX`).

    Why the copy: a leader sends a follower the entries it has not acknowledged yet, and
    under load those are mostly entries the leader made durable a moment ago (the Raft
    core's unstable tail no longer holds them), so each would be read back from the segment
    file, checksummed and decoded again, once per follower. The copy answers such reads when
    it holds the whole range; any other read goes to the file. It mirrors the file exactly:
    it holds consecutive entries ending at the file's last index, a suffix truncation or an
    overwriting append cuts it, and a compaction drops what it removed (all of it, unless
    the file still ends where the copy ends, with the same term).
    """

    def __init__(self, inner: FileLogStore, metrics: NodeMetrics, group: str) -> None:
        self.inner = inner
        self._metrics = metrics
        self._group = group
        self._recent: list[Entry] = []  # consecutive indexes; the last is the file's last
        self._recent_bytes = 0

    def first_index(self) -> LogIndex:
        return self.inner.first_index()

    def last_index(self) -> LogIndex:
        return self.inner.last_index()

    def term_at(self, index: LogIndex) -> Term | None:
        return self.inner.term_at(index)

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[Entry]:
        recent = self._recent
        if (
            not recent
            or lo >= hi
            or lo < recent[0].index
            or hi > recent[-1].index + 1
            or recent[-1].index != self.inner.last_index()  # written past this wrapper
        ):
            return self.inner.entries(lo, hi, max_bytes)
        first = recent[0].index
        out = recent[lo - first : hi - first]
        if max_bytes is not None:  # as the file answers: at least one, then within max_bytes
            total = 0
            for i, entry in enumerate(out):
                total += len(entry.data)
                if i and total > max_bytes:
                    del out[i:]
                    break
        return out

    def snapshot_meta(self) -> SnapshotMeta:
        return self.inner.snapshot_meta()

    def append(self, entries: Sequence[Entry]) -> None:
        self.inner.append(entries)
        if not entries:
            return
        recent = self._recent
        start = entries[0].index
        if recent:
            if start <= recent[-1].index:  # overwrote a suffix
                self._cut_from(start)
            elif start != recent[-1].index + 1:
                self._clear()
        recent.extend(entries)
        self._recent_bytes += sum(len(e.data) for e in entries)
        over = len(recent) - RECENT_ENTRIES_MAX
        if over > RECENT_ENTRIES_MAX >> 3 or self._recent_bytes > RECENT_BYTES_MAX:
            # trim in steps (amortised O(1) per entry): to 7/8 of either bound
            drop = max(0, over + (RECENT_ENTRIES_MAX >> 3))
            dropped_bytes = sum(len(e.data) for e in recent[:drop])
            while drop < len(recent) and (
                self._recent_bytes - dropped_bytes > RECENT_BYTES_MAX - (RECENT_BYTES_MAX >> 3)
            ):
                dropped_bytes += len(recent[drop].data)
                drop += 1
            del recent[:drop]
            self._recent_bytes -= dropped_bytes

    def truncate_suffix(self, from_index: LogIndex) -> None:
        self.inner.truncate_suffix(from_index)
        self._cut_from(from_index)

    def compact_prefix(self, snapshot: SnapshotMeta) -> None:
        self.inner.compact_prefix(snapshot)
        recent = self._recent
        if not recent:
            return
        last = recent[-1]
        if self.inner.last_index() != last.index or self.inner.term_at(last.index) != last.term:
            self._clear()  # the compaction replaced the log (an installed snapshot)
            return
        drop = 0
        while drop < len(recent) and recent[drop].index <= snapshot.index:
            self._recent_bytes -= len(recent[drop].data)
            drop += 1
        del recent[:drop]

    def _cut_from(self, index: int) -> None:
        """Forget the kept entries from ``index`` on."""
        recent = self._recent
        if not recent or index > recent[-1].index:
            return
        keep = max(0, index - recent[0].index)
        self._recent_bytes -= sum(len(e.data) for e in recent[keep:])
        del recent[keep:]

    def _clear(self) -> None:
        self._recent.clear()
        self._recent_bytes = 0

    def sync(self) -> None:
        t0 = time.perf_counter()
        self.inner.sync()
        self._metrics.fsync_latency.observe(time.perf_counter() - t0, group=self._group)

    def durable_index(self) -> LogIndex:
        return self.inner.durable_index()

    def close(self) -> None:
        self.inner.close()


_: type[LogReader] = TimedLog  # TimedLog reads like the log it wraps


class ThreadSync:
    """The host's :class:`~geostore.node.ports.SyncRunner`: the log's fsync on one thread.

    The whole ``sync`` runs there; the host starts no other write while it runs, so the
    segment is neither written, truncated nor deleted meanwhile, and the loop only reads the
    durable index (one attribute) in the meantime. Completion comes back on the loop.
    """

    def __init__(
        self,
        log: FileLogStore,
        metrics: NodeMetrics,
        group: str,
        on_done: Callable[[Callable[[], None]], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._log = log
        self._metrics = metrics
        self._group = group
        self._on_done = on_done
        self._on_error = on_error
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fsync")

    def _sync(self) -> float:
        t0 = time.perf_counter()
        self._log.sync()
        return time.perf_counter() - t0

    def start(self, done: Callable[[], None]) -> None:
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self._sync)

        def finished(f: asyncio.Future[float]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self._on_error(exc)
                return
            self._metrics.fsync_latency.observe(f.result(), group=self._group)
            self._on_done(done)

        fut.add_done_callback(finished)

    def close(self) -> None:
        """Wait for a running fsync (its segment is about to be closed)."""
        self._pool.shutdown(wait=True)


class LazyCommitHardState:
    """The hard-state file, written durably only when the term or the vote changes.

    The commit index is recoverable (a restarted node learns it again from the leader, and
    never applies past what it holds), so a Ready that only moves ``commit`` need not cost
    an atomic write with two fsyncs: the newest value is kept here and written with the next
    term/vote change, or by :meth:`flush` at shutdown. Term and vote are never deferred, so a
    node still never votes twice in a term.
    """

    def __init__(self, inner: HardStateStore) -> None:
        self.inner = inner
        self._durable = inner.load()
        self._latest = self._durable
        self.deferred = 0

    def load(self) -> HardState:
        return self._latest

    def save(self, hs: HardState) -> None:
        self._latest = hs
        if hs.term == self._durable.term and hs.vote == self._durable.vote:
            self.deferred += 1
            return
        self.inner.save(hs)
        self._durable = hs

    def flush(self) -> None:
        if self._latest != self._durable:
            self.inner.save(self._latest)
            self._durable = self._latest


class WipedNodeError(GeostoreError):
    """A node's storage is empty where it should not be (wiped disk, wrong data dir)."""

    code = ErrorCode.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """Which group, who votes in it, and where it keeps its files."""

    group_id: GroupId
    region: RegionId
    voters: tuple[NodeId, ...]
    data_dir: str
    #: empty storage is a new founding member: write the initial configuration
    bootstrap: bool = False
    #: empty storage is a new identity joining later (``geostore node add``): start empty
    #: and learn the configuration from the leader
    join: bool = False
    #: the regions the voters sit in, when more than ``region`` (single-leader's global
    #: group): its election timeout is sized by the widest RTT between them
    spans: tuple[RegionId, ...] = ()
    #: founding learners (the metadata group's non-voting copies), written at bootstrap
    learners: tuple[NodeId, ...] = ()


def _bind_size(store: EventStore, k: int) -> Callable[[], float]:
    """A gauge source: item ``k`` of the store's quarantine size (runs, events, bytes)."""
    return lambda: float(store.quarantine_size()[k])


def store_limits(config: Config) -> StoreLimits:
    return StoreLimits.from_settings(config.limits)


def store_tuning(config: Config) -> StoreTuning:
    """The replicated store's tuning (the dedup bounds are configured; the rest fixed)."""
    return StoreTuning.from_settings(config.limits)


class GroupRuntime:
    """One hosted Raft group (see the module docstring)."""

    def __init__(
        self,
        spec: GroupSpec,
        node_id: NodeId,
        topology: Topology,
        config: Config,
        sender: MessageSender,
        metrics: NodeMetrics,
        *,
        unsafe_no_fsync: bool = False,
        rng: random.Random | None = None,
        machine: StateMachine | None = None,
    ) -> None:
        self.spec = spec
        self.group_id = spec.group_id
        self.node_id = node_id
        self.metrics = metrics
        self.unsafe_no_fsync = unsafe_no_fsync or not config.storage.fsync
        timing = raft_timing(config, topology, list(spec.spans or (spec.region,)))
        self.tick_ms = timing.tick_ms
        self.election_ms = timing.election_ms
        r = config.raft
        raft_config = RaftConfig(
            node_id=node_id,
            group=spec.group_id,
            election_ticks=timing.election_ticks,
            heartbeat_ticks=timing.heartbeat_ticks,
            max_entries_per_msg=r.max_entries_per_msg,
            max_bytes_per_msg=r.max_bytes_per_msg,
            max_inflight_msgs=r.max_inflight_msgs,
            lazy_commit=r.lazy_commit,
            snapshot_chunk_bytes=r.snapshot_chunk_bytes,
        )
        host_config = HostConfig(
            snapshot_every_entries=r.snapshot_threshold_entries,
            snapshot_chunk_bytes=r.snapshot_chunk_bytes,
            unsafe_ack_before_fsync=self.unsafe_no_fsync,
        )
        os.makedirs(spec.data_dir, exist_ok=True)
        self.storage = open_storage(
            os.path.join(spec.data_dir, "raft"),
            segment_bytes_max=config.storage.segment_bytes_max,
        )
        recovery = self.storage.log.recovery
        if recovery.cut:
            log.warning("group %s: log recovery cut a torn tail: %s", spec.group_id, recovery)
        self.log = TimedLog(self.storage.log, metrics, spec.group_id)
        self.hard_state = LazyCommitHardState(self.storage.hard_state)
        self.blocks = FileBlockStore(
            os.path.join(spec.data_dir, "blocks"), fsync=not self.unsafe_no_fsync
        )
        self.store = EventStore(
            self.blocks, limits=store_limits(config), tuning=store_tuning(config)
        )
        self.machine = StoreMachine(
            self.store, spec.group_id, quarantine_bytes_warn=config.limits.quarantine_bytes_warn
        )
        empty = (
            self.storage.log.last_index() == 0
            and self.storage.hard_state.load() == HardState()
            and self.storage.snapshots.latest() is None
        )
        if empty and not (spec.bootstrap or spec.join):
            self.storage.close()
            raise WipedNodeError(
                f"group {spec.group_id}: the storage of {node_id} in {spec.data_dir} is empty, "
                "but this node is neither founding a new cluster (--bootstrap) nor joining as "
                "a new identity (--join). If its disk was wiped it must not come back under "
                "its old id (it may have voted or acknowledged entries it no longer has): "
                "use 'geostore node replace'.",
                node=node_id,
                group=spec.group_id,
            )
        if spec.bootstrap and bootstrap_storage(
            self.log, self.hard_state, spec.voters, spec.learners
        ):
            log.info("group %s: bootstrapped with voters %s", spec.group_id, list(spec.voters))
        self.host = RuntimeHost(
            raft_config,
            host_config,
            self.log,
            self.hard_state,
            self.storage.snapshots,
            sender,
            # another state machine (the metadata group's): the event store stays empty
            machine if machine is not None else self.machine,
            rng or random.Random(),
        )
        self._closed = False
        self.syncer: ThreadSync | None = None
        if not self.unsafe_no_fsync:
            self.syncer = ThreadSync(
                self.storage.log, metrics, spec.group_id, self._sync_finished, self._sync_failed
            )
            self.host.sync_runner = self.syncer
        self.rr_counter = 0
        self.failed: GeostoreError | None = None
        #: called once when the group stops for good (the node then shuts down, exit 1)
        self.on_fatal: Callable[[GroupRuntime, GeostoreError], None] | None = None
        #: called after a flush or tick that moved the applied index (the geo host ships)
        self.on_applied: Callable[[], None] | None = None
        self._inbox: list[Message] = []
        self._proposals: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._leader: NodeId | None = None
        self._last_applied = self.host.applied
        self._leader_event = asyncio.Event()
        g = spec.group_id
        metrics.commit_index.set_source(lambda: float(self.host.core.status().commit), group=g)
        metrics.applied_index.set_source(lambda: float(self.host.applied), group=g)
        metrics.term.set_source(lambda: float(self.host.core.term), group=g)
        metrics.is_leader.set_source(lambda: 1.0 if self.is_leader else 0.0, group=g)
        metrics.bytes_stored.set_source(lambda: float(self.storage.log.written_bytes), group=g)
        metrics.durable_index.set_source(lambda: float(self.storage.log.durable_index()), group=g)
        if machine is None:  # a data group: its store has the region's quarantine
            for gauge, k in (
                (metrics.quarantine_runs, 0),
                (metrics.quarantine_events, 1),
                (metrics.quarantine_bytes, 2),
            ):
                gauge.set_source(_bind_size(self.store, k), group=g)
        self._after_input()

    # -- state ---------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.host.core.role is Role.LEADER

    @property
    def leader(self) -> NodeId | None:
        return self.host.core.leader

    def status(self) -> Status:
        return self.host.status()

    def status_json(self) -> dict[str, Any]:
        st = self.host.status()
        out: dict[str, Any] = {
            "group": self.group_id,
            "region": self.spec.region,
            "role": st.role.value,
            "leader": st.leader,
            "term": st.term,
            "commit": st.commit,
            "applied": self.host.applied,
            "first_index": st.first_index,
            "last_index": st.last_index,
            "durable_index": self.storage.log.durable_index(),
            # segment file -> bytes covered by an fsync: a crash may cut each file back to
            # this, and nothing acknowledged lies beyond it (the fault tests truncate to it)
            "durable_watermarks": self.storage.log.durable_watermarks(),
            "log_dir": self.storage.log.segment_dir,
            "voters": sorted(st.conf.voters),
            "learners": sorted(st.conf.learners),
            "fsync": not self.unsafe_no_fsync,
            "failed": None if self.failed is None else self.failed.message,
        }
        if self.spec.spans:
            out["spans"] = list(self.spec.spans)
            out["election_ms"] = self.election_ms
        if st.progress:
            out["followers"] = {
                str(nid): {"match": p.match, "next": p.next, "state": p.state.value}
                for nid, p in st.progress.items()
                if nid != self.node_id
            }
        return out

    # -- inputs --------------------------------------------------------------------------

    def receive(self, msg: Message) -> None:
        """An inbound peer message (called by the transport on the loop)."""
        if self.failed is not None:
            return
        self._inbox.append(msg)
        self._schedule()

    def tick(self) -> None:
        if self.failed is not None:
            return
        try:
            self.host.tick()
        except Exception as exc:  # any failure of the host is fatal, see _fail
            self._fail(_as_error(exc))
            return
        self._after_input()

    def propose(self, datas: Sequence[bytes]) -> list[asyncio.Future[Any]]:
        """Queue entries for the next flush; each future gets the machine's answer."""
        self._check_usable()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for data in datas:
            fut: asyncio.Future[Any] = loop.create_future()
            self._proposals.append((data, fut))
            futures.append(fut)
        self._schedule()
        return futures

    def propose_conf_change(self, change: ConfChange) -> asyncio.Future[Any]:
        """Propose one membership change; the future resolves when it is applied."""
        self._check_usable()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            result = self.host.propose_conf_change(change, _resolver(fut))
        except Exception as exc:  # any failure of the host is fatal, see _fail
            err = _as_error(exc)
            self._fail(err)
            raise err from exc
        if isinstance(result, Rejected):
            raise _rejected_error(result)
        self._after_input()
        return fut

    def read_barrier(self) -> asyncio.Future[LogIndex]:
        """A future that resolves once a linearizable read may be served (ReadIndex)."""
        self._check_usable()
        fut: asyncio.Future[LogIndex] = asyncio.get_running_loop().create_future()

        def done(outcome: ReadOutcome) -> None:
            if fut.done():
                return
            if isinstance(outcome, ReadFailed):
                fut.set_exception(_not_leader(f"read not confirmed: {outcome.reason}", None))
            else:
                fut.set_result(outcome.index)

        try:
            rejected = self.host.read(done)
        except Exception as exc:
            err = _as_error(exc)
            self._fail(err)
            raise err from exc
        if rejected is not None:
            raise _rejected_error(rejected)
        self._after_input()
        return fut

    def wait_applied(self, index: int) -> asyncio.Future[None]:
        """A future that resolves once this node applied ``index``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.host.applied >= index:
            fut.set_result(None)
        else:
            self._applied_waiters.append((index, fut))
        return fut

    def wait_applied_change(self) -> asyncio.Future[None]:
        return self.wait_applied(self.host.applied + 1)

    async def wait_leader(self, timeout_s: float) -> NodeId | None:
        """The leader once one is known, or None after ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.leader is None:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return None
            self._leader_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_event.wait(), timeout=min(left, 0.1))
        return self.leader

    def transfer_leadership(self, to: NodeId) -> bool:
        if self.failed is not None:
            return False
        result = self.host.transfer_leadership(to)
        self._after_input()
        return result is None

    def flush_to_disk(self) -> None:
        """Make everything written durable (shutdown)."""
        if self.failed is None and not self.unsafe_no_fsync:
            self.storage.log.sync()
            self.blocks.flush()
            self.hard_state.flush()

    def close(self) -> None:
        for _, fut in self._proposals:
            if not fut.done():
                fut.set_exception(ApiError(ErrorCode.UNAVAILABLE, "the node is shutting down"))
        self._proposals.clear()
        self._closed = True
        if self.syncer is not None:
            self.syncer.close()
        self.storage.close()

    # -- the flush -----------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self.failed is not None:
            raise ApiError(
                ErrorCode.UNAVAILABLE,
                f"group {self.group_id} stopped after a storage failure: {self.failed.message}",
            )

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self.failed is not None:
            return
        msgs, self._inbox = self._inbox, []
        proposals, self._proposals = self._proposals, []
        try:
            if msgs:
                self.host.step_many(msgs)
            if proposals:
                self._propose(proposals)
        except Exception as exc:
            err = _as_error(exc)
            for _, fut in proposals:
                if not fut.done():
                    fut.set_exception(err)
            self._fail(err)
            return
        self._after_input()

    def _propose(self, proposals: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        live = [(d, f) for d, f in proposals if not f.done()]
        if not live:
            return
        callbacks = [_resolver(f) for _, f in live]
        result = self.host.propose_many([d for d, _ in live], callbacks)
        self.metrics.proposal_flushes.inc(group=self.group_id)
        if isinstance(result, Rejected):
            err = _rejected_error(result)
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(err)
        else:
            self.metrics.proposal_batch.inc(len(live), group=self.group_id)

    def _sync_finished(self, done: Callable[[], None]) -> None:
        """The storage thread's fsync completed: let the host finish its Ready (on the loop)."""
        if self.failed is not None or self._closed:
            return
        try:
            done()
        except Exception as exc:  # any failure of the host is fatal, see _fail
            self._fail(_as_error(exc))
            return
        self._after_input()

    def _sync_failed(self, exc: BaseException) -> None:
        self._fail(_as_error(exc))

    def _after_input(self) -> None:
        leader = self.host.core.leader
        if leader != self._leader:
            self._leader = leader
            if leader is not None:
                self.metrics.leader_changes.inc(group=self.group_id)
                log.info(
                    "group %s: leader is now %s (term %d)",
                    self.group_id,
                    leader,
                    self.host.core.term,
                )
                self._leader_event.set()
        applied = self.host.applied
        if applied != self._last_applied:
            self._last_applied = applied
            if self.on_applied is not None:
                self.on_applied()
            if self._applied_waiters:
                waiting = []
                for index, fut in self._applied_waiters:
                    if fut.done():
                        continue
                    if index <= applied:
                        fut.set_result(None)
                    else:
                        waiting.append((index, fut))
                self._applied_waiters = waiting

    def _fail(self, exc: GeostoreError) -> None:
        """Stop the group for good: after a failed fsync (or a bug) the host's state and
        the disk may disagree, so only a restart, which recovers from disk, is safe."""
        # proposals waiting for an fsync that failed (or any later step) get the error
        for on_done in self.host.take_pending():
            if isinstance(on_done, _Resolver) and not on_done.fut.done():
                on_done.fut.set_exception(exc)
        if self.failed is None:
            self.failed = exc
            log.critical("group %s stopped: %s", self.group_id, exc.message, exc_info=exc)
            if self.on_fatal is not None:
                self.on_fatal(self, exc)
        for _, fut in self._applied_waiters:
            if not fut.done():
                fut.set_exception(exc)
        self._applied_waiters.clear()


def _as_error(exc: BaseException) -> GeostoreError:
    if isinstance(exc, GeostoreError):
        return exc
    return ApiError(ErrorCode.INTERNAL, f"the Raft host failed: {exc!r}")


class _Resolver:
    """A proposal's callback that answers its client's future."""

    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.fut = fut

    def __call__(self, outcome: ProposalOutcome) -> None:
        fut = self.fut
        if fut.done():
            return
        if isinstance(outcome, Committed):
            fut.set_result(outcome.result)
        elif isinstance(outcome, Lost):
            fut.set_exception(
                _not_leader(
                    "leadership changed before the entry committed; it was not stored", None
                )
            )
        else:
            fut.set_exception(
                ApiError(
                    ErrorCode.UNAVAILABLE,
                    f"outcome unknown ({outcome.reason}); retry with the same producer id/seq",
                )
            )


def _resolver(fut: asyncio.Future[Any]) -> _Resolver:
    return _Resolver(fut)


def _not_leader(message: str, leader: NodeId | None) -> ApiError:
    return ApiError(ErrorCode.NOT_LEADER, message, leader=leader, retry_after_s=1)


def _rejected_error(rejected: Rejected) -> ApiError:
    reason = rejected.reason
    if reason is RejectReason.NOT_LEADER:
        return _not_leader("this node does not lead the group", rejected.leader_hint)
    if reason is RejectReason.OVERLOADED:
        return ApiError(ErrorCode.UNAVAILABLE, "too many uncommitted entries", retry_after_s=1)
    return ApiError(ErrorCode.UNAVAILABLE, f"refused by Raft: {reason.value}", retry_after_s=1)
