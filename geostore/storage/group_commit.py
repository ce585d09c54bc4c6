"""Group commit: many appenders, one write and one fsync per flush.

Theory of operation: producers hand records to :meth:`GroupCommitLog.submit` (or block in
:meth:`GroupCommitLog.append_durable`). Each submission gets its log indices at once, under the
queue lock, so submission order is log order. One flusher thread repeatedly takes *everything*
queued, encodes it into one buffer, writes it with one ``write`` (more only at a segment roll)
and covers it with one fsync; only after that fsync has returned does it resolve the futures
of the records it covered. While it is writing and syncing, new submissions queue up, so the
batch size adapts to the fsync latency by itself: no linger timer is needed.

Invariants:
- no future is resolved with an index before an fsync covering that index returned;
- the queue is bounded (``pending_bytes_max``, ``pending_records_max``): producers block
  until the flusher has taken the queue (a single submission larger than the bound is
  accepted alone, so nothing deadlocks);
- an fsync failure (or any failure other than a full disk) fails every waiter and every later
  call: the log is not retried behind anybody's back;
- a full disk fails the batch being written and everything queued behind it (their indices
  assumed the batch would land); the log is cut back to what it held before the batch so a
  refused record never turns durable later; later submissions may succeed.
- :meth:`close` drains the queue (every accepted submission is resolved) before it returns.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from geostore.errors import DiskFullError, FsyncFailedError, StorageError
from geostore.ids import LogIndex, Term
from geostore.raft.types import Entry, EntryKind, SnapshotMeta
from geostore.storage.diskformat import RECORD_HEADER_BYTES
from geostore.storage.filelog import FileLogStore

PENDING_BYTES_MAX_DEFAULT = 16 * 1024 * 1024
PENDING_RECORDS_MAX_DEFAULT = 128 * 1024


@dataclass(slots=True)
class _Op:
    first: int
    last: int
    nbytes: int
    future: Future[LogIndex]
    term: int = 0
    kind: int = 0
    payloads: Sequence[bytes] = ()
    entries: Sequence[Entry] | None = None


class GroupCommitLog:
    """Wraps a :class:`FileLogStore` with one flusher thread; it owns the log until closed."""

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
        #: serializes every access to the log between the flusher and readers
        self._io_lock = threading.Lock()
        self._pending: list[_Op] = []
        self._pending_bytes = 0
        self._pending_records = 0
        self._next_index = int(log.last_index()) + 1
        self._failed: StorageError | None = None
        self._closing = False
        self._closed = False
        self.flushes = 0
        self.records_flushed = 0
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

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
            self._enqueue(_Op(first, first + n - 1, nbytes, fut, entries=entries))
        return fut

    def append_durable(
        self, records: Sequence[bytes], term: Term, kind: EntryKind = EntryKind.NORMAL
    ) -> LogIndex:
        """Append and block until durable; the last index of ``records``."""
        return self.submit(records, term, kind).result()

    def _wait_for_space(self, n: int, nbytes: int) -> None:
        while True:
            self._raise_if_unusable()
            if not self._pending or (
                self._pending_bytes + nbytes <= self._pending_bytes_max
                and self._pending_records + n <= self._pending_records_max
            ):
                return
            self._space.wait()

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
        self._pending_bytes += op.nbytes
        self._pending_records += op.last - op.first + 1
        if len(self._pending) == 1:
            self._work.notify()

    # -- readers (serialized with the flusher) ---------------------------------------------
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
        with self._io_lock:
            self._log.compact_prefix(snapshot)

    def durable_watermarks(self) -> dict[str, int]:
        with self._io_lock:
            return self._log.durable_watermarks()

    @property
    def failed(self) -> StorageError | None:
        return self._failed

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Flush everything accepted, stop the flusher, close the log (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closing = True
            self._work.notify_all()
            self._space.notify_all()
        self._thread.join()
        with self._lock:
            self._closed = True
        if self._close_log:
            with self._io_lock:
                self._log.close()

    def __enter__(self) -> GroupCommitLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the flusher -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._work.wait()
                if not self._pending:
                    return
                batch = self._pending
                self._pending = []
                self._pending_bytes = 0
                self._pending_records = 0
                self._space.notify_all()
            self._flush(batch)

    def _flush(self, batch: list[_Op]) -> None:
        log = self._log
        try:
            with self._io_lock:
                if self._failed is not None:
                    raise self._failed
                before_last = int(log.last_index())
                try:
                    self._write_batch(batch)
                    log.sync()
                except DiskFullError:
                    if log.last_index() > before_last:
                        log.truncate_suffix(LogIndex(before_last + 1))
                    raise
        except DiskFullError as exc:
            with self._lock:
                queued = self._take_queue()
                self._next_index = int(log.last_index()) + 1
            self._fail_ops(batch + queued, exc)
            return
        except BaseException as exc:
            err = exc if isinstance(exc, StorageError) else StorageError(f"flusher failed: {exc}")
            with self._lock:
                self._failed = err
                queued = self._take_queue()
            self._fail_ops(batch + queued, err)
            return
        self.flushes += 1
        for op in batch:
            self.records_flushed += op.last - op.first + 1
            op.future.set_result(LogIndex(op.last))

    def _write_batch(self, batch: list[_Op]) -> None:
        log = self._log
        recs: list[tuple[int, int, int, bytes]] = []
        next_index = int(log.last_index()) + 1
        for op in batch:
            if op.entries is not None:
                start = int(op.entries[0].index)
                if start < next_index:
                    # a Raft conflict: write what is gathered, then replace the suffix
                    if recs:
                        log.append_raw(recs)
                        recs = []
                    log.truncate_suffix(LogIndex(start))
                recs.extend((e.term, e.index, e.kind, e.data) for e in op.entries)
            else:
                assert op.first == next_index, (op.first, next_index)
                term, kind, first = op.term, op.kind, op.first
                recs.extend([(term, first + i, kind, data) for i, data in enumerate(op.payloads)])
            next_index = op.last + 1
        log.append_raw(recs)

    def _take_queue(self) -> list[_Op]:
        queued = self._pending
        self._pending = []
        self._pending_bytes = 0
        self._pending_records = 0
        self._space.notify_all()
        return queued

    @staticmethod
    def _fail_ops(ops: list[_Op], exc: BaseException) -> None:
        for op in ops:
            op.future.set_exception(exc)
