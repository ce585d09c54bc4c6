"""Proves group commit: concurrent producers get contiguous, durable indices; no record is
reported durable before an fsync covering its bytes returned (a lazy fsync model shows it);
fsync failures fail every waiter and later call; a full disk refuses without leaving refused
records behind; the queue is bounded; close resolves everything it accepted."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from geostore.errors import DiskFullError, FsyncFailedError, StorageError
from geostore.ids import LogIndex, Term
from geostore.raft.types import Entry, EntryKind, SnapshotMeta
from geostore.storage import FaultyFileSystem, FileLogStore, GroupCommitLog
from geostore.storage.diskformat import RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES

T1 = Term(1)


def payload(writer: int, seq: int) -> bytes:
    return f"w{writer}-s{seq}".encode()


def test_concurrent_producers_get_contiguous_durable_indices(tmp_path: Path) -> None:
    glog = GroupCommitLog(FileLogStore(tmp_path, segment_bytes_max=2048))
    got: dict[int, bytes] = {}
    lock = threading.Lock()

    def producer(w: int) -> None:
        for s in range(40):
            recs = [payload(w, s * 10 + k) for k in range(1 + (w + s) % 3)]
            if s % 2:
                last = glog.append_durable(recs, T1)
            else:
                last = glog.submit(recs, T1).result(timeout=30)
            assert glog.durable_index() >= last
            with lock:
                for k, r in enumerate(recs):
                    got[last - len(recs) + 1 + k] = r

    threads = [threading.Thread(target=producer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = len(got)
    assert sorted(got) == list(range(1, n + 1))
    assert glog.flushes >= 1 and glog.records_flushed == n
    glog.close()
    log = FileLogStore(tmp_path, segment_bytes_max=2048)
    assert [e.data for e in log.entries(LogIndex(1), LogIndex(n + 1))] == [
        got[i] for i in range(1, n + 1)
    ]
    log.close()


class LazyDisk(FaultyFileSystem):
    """Models a disk that keeps only fsynced bytes: durable size per file, set when an fsync
    returns to what the file held when that fsync was called."""

    def __init__(self) -> None:
        super().__init__()
        self.durable: dict[int, int] = {}
        self._calling: dict[int, list[int]] = {}
        self.before_fsync = self._before
        self.after_fsync = self._after
        self.gate: threading.Event | None = None
        self.in_fsync = threading.Event()

    def _before(self, fd: int) -> None:
        st = os.fstat(fd)
        self._calling.setdefault(st.st_ino, []).append(st.st_size)
        if self.gate is not None:
            self.in_fsync.set()
            self.gate.wait(timeout=30)

    def _after(self, fd: int) -> None:
        ino = os.fstat(fd).st_ino
        self.durable[ino] = max(self.durable.get(ino, 0), self._calling[ino].pop(0))


def record_ends(seg: Path) -> dict[int, int]:
    """Index -> end offset of each record in a segment written with known payloads."""
    from geostore.storage.diskformat import RECORD_HEADER

    data = seg.read_bytes()
    ends = {}
    pos = SEGMENT_HEADER_BYTES
    while pos < len(data):
        _crc, n, _term, index, _kind = RECORD_HEADER.unpack_from(data, pos)
        pos += RECORD_HEADER_BYTES + n
        ends[index] = pos
    return ends


def test_no_record_reported_durable_before_its_fsync_returned(tmp_path: Path) -> None:
    disk = LazyDisk()
    log = FileLogStore(tmp_path, fs=disk, segment_bytes_max=1 << 24)
    (seg_name,) = log.segment_names()
    seg = tmp_path / "log" / seg_name
    ino = os.stat(seg).st_ino
    glog = GroupCommitLog(log)
    seen: list[tuple[int, int]] = []  # (last index, durable bytes when reported)
    seen_lock = threading.Lock()

    def on_done(f: Future[LogIndex]) -> None:
        with seen_lock:
            seen.append((f.result(), disk.durable.get(ino, 0)))

    def producer(w: int) -> None:
        for s in range(60):
            if s % 3 == 0:
                last = glog.append_durable([payload(w, s)] * 2, T1)
                with seen_lock:
                    seen.append((last, disk.durable.get(ino, 0)))
            else:
                glog.submit([payload(w, s)], T1).add_done_callback(on_done)

    threads = [threading.Thread(target=producer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    glog.close()
    ends = record_ends(seg)
    assert len(seen) == 6 * 60
    for last, durable in seen:
        assert ends[last] <= durable, (last, ends[last], durable)


def test_waiters_stay_blocked_while_fsync_is_in_flight(tmp_path: Path) -> None:
    disk = LazyDisk()
    glog = GroupCommitLog(FileLogStore(tmp_path, fs=disk))
    disk.gate = threading.Event()
    fut = glog.submit([b"a", b"b"], T1)
    assert disk.in_fsync.wait(timeout=30)
    more = glog.submit([b"c"], T1)  # queued behind the fsync in flight
    assert not fut.done() and not more.done()
    assert glog.durable_index() == 0
    disk.gate.set()
    assert fut.result(timeout=30) == 2 and more.result(timeout=30) == 3
    glog.close()


def test_fsync_failure_fails_every_waiter_and_later_call(tmp_path: Path) -> None:
    disk = FaultyFileSystem()
    glog = GroupCommitLog(FileLogStore(tmp_path, fs=disk))
    assert glog.append_durable([b"ok"], T1) == 1
    gate = threading.Event()
    entered = threading.Event()

    def slow_failing(fd: int) -> None:
        entered.set()
        gate.wait(timeout=30)
        disk.fail_fsync = True

    disk.before_fsync = slow_failing
    first = glog.submit([b"x"], T1)
    assert entered.wait(timeout=30)
    queued = [glog.submit([b"y"], T1) for _ in range(5)]
    gate.set()
    for f in [first, *queued]:
        with pytest.raises(FsyncFailedError):
            f.result(timeout=30)
    disk.before_fsync = None
    disk.fail_fsync = False  # the disk "recovers": still no retry
    with pytest.raises(FsyncFailedError):
        glog.append_durable([b"z"], T1)
    with pytest.raises(FsyncFailedError):
        glog.submit([b"z"], T1)
    assert isinstance(glog.failed, FsyncFailedError)
    assert glog.durable_index() == 1
    assert [e.data for e in glog.entries(LogIndex(1), LogIndex(2))] == [b"ok"]  # reads work
    glog.close()


def test_disk_full_refuses_batch_and_leaves_no_refused_record(tmp_path: Path) -> None:
    disk = FaultyFileSystem()
    glog = GroupCommitLog(FileLogStore(tmp_path, fs=disk))
    assert glog.append_durable([b"a" * 10] * 3, T1) == 3
    disk.space_left_bytes = 40  # part of the next batch fits, then ENOSPC
    with pytest.raises(DiskFullError):
        glog.append_durable([b"b" * 30] * 4, T1)
    assert glog.last_index() == 3 and glog.durable_index() == 3
    assert len(glog.entries(LogIndex(1), LogIndex(4))) == 3  # reads keep working
    disk.space_left_bytes = None
    assert glog.append_durable([b"c"], T1) == 4  # indices continue after the durable prefix
    glog.close()
    log = FileLogStore(tmp_path)
    assert [e.data for e in log.entries(LogIndex(1), LogIndex(5))] == [b"a" * 10] * 3 + [b"c"]
    assert not log.recovery.cut
    log.close()


def test_queue_is_bounded_and_producers_block(tmp_path: Path) -> None:
    disk = LazyDisk()
    glog = GroupCommitLog(FileLogStore(tmp_path, fs=disk), pending_records_max=8)
    disk.gate = threading.Event()
    futures: list[Future[LogIndex]] = [glog.submit([b"first"], T1)]
    assert disk.in_fsync.wait(timeout=30)
    accepted = threading.Semaphore(0)

    def producer() -> None:
        for _ in range(20):
            futures.append(glog.submit([b"r"], T1))
            accepted.release()

    t = threading.Thread(target=producer)
    t.start()
    for _ in range(7):  # room for 7 more records beside the one being synced
        assert accepted.acquire(timeout=30)
    assert not accepted.acquire(timeout=0.3)  # the eighth submission blocks
    assert len(futures) == 8
    disk.gate.set()
    t.join(timeout=30)
    assert [f.result(timeout=30) for f in futures] == list(range(1, 22))
    glog.close()


def test_close_resolves_everything_accepted(tmp_path: Path) -> None:
    glog = GroupCommitLog(FileLogStore(tmp_path))
    futures = [glog.submit([b"r%d" % i], T1) for i in range(200)]
    glog.close()
    assert [f.result(timeout=0) for f in futures] == list(range(1, 201))
    with pytest.raises(StorageError, match="closed"):
        glog.submit([b"late"], T1)
    glog.close()  # idempotent


def test_submit_entries_replaces_conflicting_suffix(tmp_path: Path) -> None:
    glog = GroupCommitLog(FileLogStore(tmp_path))
    es = [Entry(T1, LogIndex(i), EntryKind.NORMAL, b"%d" % i) for i in range(1, 11)]
    assert glog.submit_entries(es).result(timeout=30) == 10
    newer = [Entry(Term(2), LogIndex(i), EntryKind.NORMAL, b"n%d" % i) for i in range(5, 8)]
    assert glog.submit_entries(newer).result(timeout=30) == 7
    assert glog.append_durable([b"after"], Term(2)) == 8
    got = glog.entries(LogIndex(1), LogIndex(9))
    assert got == es[:4] + newer + [Entry(Term(2), LogIndex(8), EntryKind.NORMAL, b"after")]
    assert glog.term_at(LogIndex(4)) == 1 and glog.term_at(LogIndex(5)) == 2
    glog.close()


def test_readers_and_compaction_run_beside_writers(tmp_path: Path) -> None:
    glog = GroupCommitLog(FileLogStore(tmp_path, segment_bytes_max=4096))
    stop = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()
    compacted = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                hi = glog.durable_index()
                if hi >= 101:  # compaction stops at 100: this range stays readable
                    got = glog.entries(LogIndex(101), LogIndex(hi + 1))
                    assert [e.index for e in got] == list(range(101, hi + 1))
                    assert all(e.data == b"%d" % e.index for e in got)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def writer() -> None:
        for _ in range(150):
            with lock:
                n = glog.last_index()  # indices are assigned in submission order
                last = glog.append_durable([b"%d" % (n + 1)], T1)
            assert last == n + 1
            if last >= 120 and not compacted.is_set():
                compacted.set()
                glog.compact_prefix(SnapshotMeta(LogIndex(100), T1))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer) for _ in range(2)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors
    assert glog.first_index() == 101 and glog.last_index() == 300
    glog.close()
    log = FileLogStore(tmp_path, segment_bytes_max=4096)
    assert [e.data for e in log.entries(LogIndex(101), LogIndex(301))] == [
        b"%d" % i for i in range(101, 301)
    ]
    log.close()


def test_a_term_going_backwards_is_refused_without_failing_the_log(tmp_path: Path) -> None:
    glog = GroupCommitLog(FileLogStore(tmp_path))
    assert glog.append_durable([b"a"], Term(3)) == 1
    with pytest.raises(StorageError, match="below the log's last term"):
        glog.submit([b"b"], Term(2))
    assert glog.failed is None
    assert glog.append_durable([b"c"], Term(3)) == 2
    glog.close()
