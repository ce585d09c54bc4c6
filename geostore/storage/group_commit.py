"""Group commit: many appenders, one write and one fsync per flush, pipelined.

Theory of operation: producers hand records to :meth:`GroupCommitLog.submit` (or block in
:meth:`GroupCommitLog.append_durable`). Each submission gets its log indices at once, under the
queue lock, so submission order is log order. Two threads do the IO:

- the **writer** repeatedly takes *everything* queued, encodes it into one buffer and writes it
  with one ``write`` (more only at a segment roll), then hands the batch to the syncer;
- the **syncer** takes every batch written so far and covers them all with one ``fdatasync``;
  only after it has returned does it resolve the waiters of those batches.

So the encoding of the next batch overlaps the fsync of the previous ones, and while both are
busy new submissions queue up: batch sizes adapt to the fsync latency by themselves, with no
linger timer. Structural changes (a Raft conflict truncating the suffix, compaction) take the
sync lock, so a segment is never cut or deleted under an fsync in flight.

Invariants:
- no waiter is resolved before an fsync covering all of its records returned;
- everything accepted and not yet durable is bounded (``pending_bytes_max``,
  ``pending_records_max``): producers block until there is room (one submission larger than
  the bound is accepted when nothing else is in flight, so nothing deadlocks);
- an fsync failure (or any failure but a full disk) fails every waiter and every later call:
  the log is not retried behind anybody's back;
- a full disk fails the batch being written and everything queued behind it (their indices
  assumed the batch would land); the batch is rolled back, so a refused record never turns
  durable later; batches written before it are still synced; later submissions may succeed;
- :meth:`close` resolves every accepted submission before it returns.
"""

from __future__ import annotations

import threading
from _thread import LockType, allocate_lock
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass

from geostore.errors import DiskFullError, FsyncFailedError, StorageError
from geostore.ids import LogIndex, Term
from geostore.raft.types import Entry, EntryKind, SnapshotMeta
from geostore.storage.diskformat import RECORD_HEADER_BYTES
from geostore.storage.filelog import FileLogStore, Run, runs_of

PENDING_BYTES_MAX_DEFAULT = 16 * 1024 * 1024
PENDING_RECORDS_MAX_DEFAULT = 128 * 1024


@dataclass(slots=True)
class _Op:
    first: int
    last: int
    nbytes: int
    #: resolved for :meth:`GroupCommitLog.submit`; None for blocking appends, which wait on
    #: ``waiter`` instead (a bare lock released by the flusher: far cheaper than a Future)
    future: Future[LogIndex] | None
    term: int = 0
    kind: int = 0
    payloads: Sequence[bytes] = ()
    entries: Sequence[Entry] | None = None
    waiter: LockType | None = None
    error: BaseException | None = None

    def resolve(self) -> None:
        if self.future is not None:
            self.future.set_result(LogIndex(self.last))
        else:
            assert self.waiter is not None
            self.waiter.release()

    def fail(self, exc: BaseException) -> None:
        if self.future is not None:
            self.future.set_exception(exc)
        else:
            assert self.waiter is not None
            self.error = exc
            self.waiter.release()


class GroupCommitLog:
    """Wraps a :class:`FileLogStore` with a writer and a syncer thread; it owns the log until
    closed (all access goes through it)."""

    def __init__(
        self,
        log: FileLogStore,
        *,
        pending_bytes_max: int = PENDING_BYTES_MAX_DEFAULT,
        pending_records_max: int = PENDING_RECORDS_MAX_DEFAULT,
        close_log: bool = True,
    ) -> None:
        assert pending_bytes_max > 0 and pending_records_max > 0
        self._log = log
        self._pending_bytes_max = pending_bytes_max
        self._pending_records_max = pending_records_max
        self._close_log = close_log
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._space = threading.Condition(self._lock)
        self._to_sync = threading.Condition(self._lock)
        #: serializes every access to the log's state (writer, syncer, readers)
        self._io_lock = threading.Lock()
        #: held across a whole sync; truncation and compaction take it before ``_io_lock``
        self._sync_lock = threading.Lock()
        self._pending: list[_Op] = []
        self._written: list[list[_Op]] = []
        #: accepted and not yet resolved (queued, being written, or waiting for the fsync)
        self._inflight_bytes = 0
        self._inflight_records = 0
        self._next_index = int(log.last_index()) + 1
        last_term = log.term_at(log.last_index())
        #: term of the last record queued (terms never go down along the log)
        self._tail_term = int(last_term) if last_term is not None else 0
        self._failed: StorageError | None = None
        self._closing = False
        self._writer_done = False
        self._closed = False
        self.flushes = 0
        self.records_flushed = 0
        self._writer = threading.Thread(target=self._write_loop, name="gc-writer", daemon=True)
        self._syncer = threading.Thread(target=self._sync_loop, name="gc-syncer", daemon=True)
        self._writer.start()
        self._syncer.start()

    # -- producers -------------------------------------------------------------------------
    def submit(
        self, records: Sequence[bytes], term: Term, kind: EntryKind = EntryKind.NORMAL
    ) -> Future[LogIndex]:
        """Queue ``records`` as entries of ``term``; the future gives the last index, durable."""
        assert records, "empty submission"
        n = len(records)
        nbytes = sum(map(len, records)) + RECORD_HEADER_BYTES * n
        fut: Future[LogIndex] = Future()
        with self._lock:
            self._wait_for_space(n, nbytes)
            self._check_term(int(term))
            first = self._next_index
            self._next_index = first + n
            self._enqueue(_Op(first, first + n - 1, nbytes, fut, int(term), int(kind), records))
        return fut

    def submit_entries(self, entries: Sequence[Entry]) -> Future[LogIndex]:
        """Queue entries with their own indices (Raft's Ready); an index at or below the
        queued tail replaces the suffix from there, in queue order."""
        assert entries, "empty submission"
        n = len(entries)
        nbytes = sum(len(e.data) for e in entries) + RECORD_HEADER_BYTES * n
        fut: Future[LogIndex] = Future()
        with self._lock:
            self._wait_for_space(n, nbytes)
            first = int(entries[0].index)
            assert first <= self._next_index, (first, self._next_index)
            self._next_index = first + n
            self._tail_term = int(entries[-1].term)
            self._enqueue(_Op(first, first + n - 1, nbytes, fut, entries=entries))
        return fut

    def append_durable(
        self, records: Sequence[bytes], term: Term, kind: EntryKind = EntryKind.NORMAL
    ) -> LogIndex:
        """Append and block until durable; the last index of ``records``."""
        assert records, "empty submission"
        n = len(records)
        nbytes = sum(map(len, records)) + RECORD_HEADER_BYTES * n
        waiter = allocate_lock()
        waiter.acquire()
        with self._lock:
            self._wait_for_space(n, nbytes)
            self._check_term(int(term))
            first = self._next_index
            self._next_index = first + n
            op = _Op(first, first + n - 1, nbytes, None, int(term), int(kind), records)
            op.waiter = waiter
            self._enqueue(op)
        waiter.acquire()  # released by the syncer once an fsync covers the records
        if op.error is not None:
            raise op.error
        return LogIndex(op.last)

    def _wait_for_space(self, n: int, nbytes: int) -> None:
        while True:
            self._raise_if_unusable()
            if not self._inflight_records or (
                self._inflight_bytes + nbytes <= self._pending_bytes_max
                and self._inflight_records + n <= self._pending_records_max
            ):
                return
            self._space.wait()

    def _check_term(self, term: int) -> None:
        """Refuse a term below the log's tail here, before it could fail the whole log."""
        if term < self._tail_term:
            raise StorageError(
                f"append with term {term} below the log's last term {self._tail_term}"
            )
        self._tail_term = term

    def _raise_if_unusable(self) -> None:
        if self._failed is not None:
            if isinstance(self._failed, FsyncFailedError):
                raise FsyncFailedError(
                    f"log refuses writes after an fsync failure: {self._failed.message}"
                )
            raise StorageError(f"log refuses writes after a failure: {self._failed.message}")
        if self._closing:
            raise StorageError("group commit log is closed")

    def _enqueue(self, op: _Op) -> None:
        self._pending.append(op)
        self._inflight_bytes += op.nbytes
        self._inflight_records += op.last - op.first + 1
        if len(self._pending) == 1:
            self._work.notify()

    # -- readers ---------------------------------------------------------------------------
    def first_index(self) -> LogIndex:
        with self._io_lock:
            return self._log.first_index()

    def last_index(self) -> LogIndex:
        """The last index written (not necessarily durable yet)."""
        with self._io_lock:
            return self._log.last_index()

    def durable_index(self) -> LogIndex:
        with self._io_lock:
            return self._log.durable_index()

    def term_at(self, index: LogIndex) -> Term | None:
        with self._io_lock:
            return self._log.term_at(index)

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[Entry]:
        with self._io_lock:
            return self._log.entries(lo, hi, max_bytes)

    def snapshot_meta(self) -> SnapshotMeta:
        with self._io_lock:
            return self._log.snapshot_meta()

    def compact_prefix(self, snapshot: SnapshotMeta) -> None:
        """Compact under the sync lock. A snapshot the log does not continue drops the whole
        log: do not race that with appends (their indices would be void)."""
        with self._sync_lock, self._io_lock:
            self._log.compact_prefix(snapshot)

    def durable_watermarks(self) -> dict[str, int]:
        with self._io_lock:
            return self._log.durable_watermarks()

    @property
    def failed(self) -> StorageError | None:
        return self._failed

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Resolve everything accepted, stop both threads, close the log (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closing = True
            self._work.notify_all()
            self._space.notify_all()
        self._writer.join()
        self._syncer.join()
        with self._lock:
            self._closed = True
        if self._close_log:
            with self._io_lock:
                self._log.close()

    def __enter__(self) -> GroupCommitLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer ------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._work.wait()
                if not self._pending:
                    self._writer_done = True
                    self._to_sync.notify()
                    return
                batch = self._pending
                self._pending = []
            if self._write(batch):
                with self._lock:
                    self._written.append(batch)
                    self._to_sync.notify()

    def _write(self, batch: list[_Op]) -> bool:
        log = self._log
        structural = False
        try:
            while True:
                with ExitStack() as stack:
                    if structural:
                        stack.enter_context(self._sync_lock)
                    stack.enter_context(self._io_lock)
                    if self._failed is not None:
                        raise self._failed
                    if not structural and self._has_conflict(batch):
                        structural = True
                        continue  # retake the locks in order: sync lock first
                    before_last = int(log.last_index())
                    try:
                        self._write_batch(batch)
                    except DiskFullError:
                        if structural and log.last_index() > before_last:
                            log.truncate_suffix(LogIndex(before_last + 1))
                        assert log.last_index() <= before_last
                        raise
                    return True
        except DiskFullError as exc:
            with self._lock:
                queued = self._take_queue()
                with self._io_lock:
                    self._next_index = int(log.last_index()) + 1
            self._fail_ops(batch + queued, exc)
            return False
        except BaseException as exc:
            self._fail_all(batch, exc)
            return False

    def _has_conflict(self, batch: list[_Op]) -> bool:
        next_index = int(self._log.last_index()) + 1
        for op in batch:
            if op.first < next_index:
                return True
            next_index = op.last + 1
        return False

    def _write_batch(self, batch: list[_Op]) -> None:
        log = self._log
        runs: list[Run] = []
        next_index = int(log.last_index()) + 1
        for op in batch:
            if op.entries is not None:
                start = int(op.entries[0].index)
                if start < next_index:
                    # a Raft conflict: write what is gathered, then replace the suffix
                    if runs:
                        log.append_runs(runs)
                        runs = []
                    log.truncate_suffix(LogIndex(start))
                runs.extend(runs_of(op.entries))
            else:
                assert op.first == next_index, (op.first, next_index)
                runs.append((op.term, op.kind, op.first, op.payloads))
            next_index = op.last + 1
        log.append_runs(runs)

    # -- the syncer ------------------------------------------------------------------------
    def _sync_loop(self) -> None:
        log = self._log
        while True:
            with self._lock:
                while not self._written and not self._writer_done:
                    self._to_sync.wait()
                if not self._written:
                    return
                batches = self._written
                self._written = []
            ops = [op for batch in batches for op in batch]
            try:
                with self._sync_lock:
                    with self._io_lock:
                        if self._failed is not None:
                            raise self._failed
                        ticket = log.sync_begin()
                    if ticket is not None:
                        log.sync_wait(ticket)  # no lock held: the writer keeps writing
                        with self._io_lock:
                            log.sync_end(ticket)
            except BaseException as exc:
                self._fail_all(ops, exc)
                continue
            self.flushes += 1
            self.records_flushed += sum(op.last - op.first + 1 for op in ops)
            self._release(ops)
            for op in ops:
                op.resolve()

    # -- failures and accounting -----------------------------------------------------------
    def _release(self, ops: list[_Op]) -> None:
        with self._lock:
            for op in ops:
                self._inflight_bytes -= op.nbytes
                self._inflight_records -= op.last - op.first + 1
            self._space.notify_all()

    def _take_queue(self) -> list[_Op]:
        queued = self._pending
        self._pending = []
        self._space.notify_all()
        return queued

    def _fail_all(self, ops: list[_Op], exc: BaseException) -> None:
        """A sticky failure: fail ``ops``, everything queued, and every later call."""
        err = exc if isinstance(exc, StorageError) else StorageError(f"group commit: {exc!r}")
        with self._lock:
            if self._failed is None:
                self._failed = err
            queued = self._take_queue()
        self._fail_ops(ops + queued, err)

    def _fail_ops(self, ops: list[_Op], exc: BaseException) -> None:
        self._release(ops)
        for op in ops:
            op.fail(exc)
