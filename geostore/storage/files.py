"""Hard state and snapshots on real files, and the one call that opens a whole data dir.

Theory of operation: the hard state is one small checked file replaced atomically (temp file,
fsync, rename, fsync the directory), so a crash at any point leaves the old or the new state,
whole. A snapshot is written in chunks to a temp data file; committing fsyncs it, renames it
into place and then atomically writes its meta file, which is the commit point: a snapshot
without a meta file was never committed and is removed on open. The meta carries the data's
length and crc32, checked as the chunks are read back. Only the last committed snapshot is
kept; an older one loses its meta file before its data, so a crash in between leaves data
without a meta (removed on open), never a meta whose data is gone. After an fsync failure either store refuses every later write (sticky).
"""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from geostore.errors import CorruptLogError, DiskFullError, FsyncFailedError, StorageError
from geostore.ids import LogIndex, NodeId, Term
from geostore.raft.types import HardState, SnapshotMeta
from geostore.storage.diskformat import (
    atomic_write,
    decode_checked,
    encode_checked,
    ensure_manifest,
    fsync_dir_or_fail,
    fsync_or_fail,
    make_dir_durable,
    read_file,
)
from geostore.storage.filelog import (
    SEGMENT_BYTES_MAX_DEFAULT,
    FileLogStore,
    snapshot_meta_from_json,
    snapshot_meta_to_json,
)
from geostore.storage.syscalls import FileSystem, write_all

HARD_STATE_FILE = "hardstate"
SNAPSHOT_DIR = "snapshots"
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno in _DISK_FULL_ERRNOS:
        return DiskFullError(f"disk full while writing {what}: {exc}")
    return StorageError(f"writing {what} failed: {exc}")


class FileHardStateStore:
    """A :class:`~geostore.storage.ports.HardStateStore` in ``<data dir>/hardstate``."""

    def __init__(self, data_dir: str | os.PathLike[str], *, fs: FileSystem | None = None) -> None:
        self._fs = fs if fs is not None else FileSystem()
        self._dir = os.fspath(data_dir)
        ensure_manifest(self._fs, self._dir)
        self._path = os.path.join(self._dir, HARD_STATE_FILE)
        self._failed: FsyncFailedError | None = None
        self.saves = 0

    def load(self) -> HardState:
        if not self._fs.exists(self._path):
            return HardState()
        obj = decode_checked(read_file(self._fs, self._path), self._path)
        term, vote, commit = obj.get("term"), obj.get("vote"), obj.get("commit")
        if not isinstance(term, int) or not isinstance(commit, int):
            raise CorruptLogError(f"{self._path}: bad hard state", file=self._path)
        if vote is not None and not isinstance(vote, str):
            raise CorruptLogError(f"{self._path}: bad vote", file=self._path)
        return HardState(Term(term), NodeId(vote) if vote is not None else None, LogIndex(commit))

    def save(self, hs: HardState) -> None:
        if self._failed is not None:
            raise FsyncFailedError(
                f"hard state refuses writes after an fsync failure ({self._failed.message})"
            )
        data = encode_checked({"term": hs.term, "vote": hs.vote, "commit": hs.commit})
        try:
            atomic_write(self._fs, self._dir, HARD_STATE_FILE, data)
        except FsyncFailedError as exc:
            self._failed = exc
            raise
        except OSError as exc:
            raise _storage_error(exc, "the hard state") from exc
        self.saves += 1


class FileSnapshotWriter:
    """Streams one snapshot to a temp file; :meth:`commit` makes it the latest, durably."""

    def __init__(self, store: FileSnapshotStore, meta: SnapshotMeta, seq: int) -> None:
        self._store = store
        self._meta = meta
        self._seq = seq
        self._tmp = os.path.join(store.dir, f"{seq:020d}.snap.tmp")
        self._fd: int | None = store.fs.open_write(self._tmp)
        self._crc = 0
        self._size = 0

    def write(self, chunk: bytes) -> None:
        fd = self._require_open()
        try:
            write_all(self._store.fs, fd, chunk)
        except OSError as exc:
            self.abort()
            raise _storage_error(exc, "a snapshot") from exc
        self._crc = zlib.crc32(chunk, self._crc)
        self._size += len(chunk)

    def commit(self) -> SnapshotMeta:
        fd = self._require_open()
        store = self._store
        fs = store.fs
        final = os.path.join(store.dir, f"{self._seq:020d}.snap")
        meta_obj = {
            "seq": self._seq,
            "size": self._size,
            "crc": self._crc,
            "meta": snapshot_meta_to_json(self._meta),
        }
        try:
            try:
                fsync_or_fail(fs, fd, self._tmp)
            finally:
                fs.close(fd)
                self._fd = None
            fs.rename(self._tmp, final)
            # the meta file is the commit point (atomic_write fsyncs the directory)
            atomic_write(fs, store.dir, f"{self._seq:020d}.snapmeta", encode_checked(meta_obj))
        except FsyncFailedError as exc:
            store.failed = exc
            raise
        except OSError as exc:
            raise _storage_error(exc, "a snapshot") from exc
        store._committed(self._seq, self._meta, self._size, self._crc)
        return self._meta

    def abort(self) -> None:
        if self._fd is None:
            return
        fs = self._store.fs
        fs.close(self._fd)
        self._fd = None
        if fs.exists(self._tmp):
            fs.unlink(self._tmp)

    def _require_open(self) -> int:
        if self._store.failed is not None:
            raise FsyncFailedError("snapshot store refuses writes after an fsync failure")
        if self._fd is None:
            raise StorageError("snapshot writer already committed or aborted")
        return self._fd


@dataclass(frozen=True, slots=True)
class _Committed:
    seq: int
    meta: SnapshotMeta
    size: int
    crc: int


class FileSnapshotStore:
    """A :class:`~geostore.storage.ports.SnapshotStore` in ``<data dir>/snapshots/``."""

    def __init__(self, data_dir: str | os.PathLike[str], *, fs: FileSystem | None = None) -> None:
        self.fs = fs if fs is not None else FileSystem()
        ensure_manifest(self.fs, os.fspath(data_dir))
        self.dir = os.path.join(os.fspath(data_dir), SNAPSHOT_DIR)
        make_dir_durable(self.fs, self.dir)
        self.failed: FsyncFailedError | None = None
        self._latest: _Committed | None = None
        self._next_seq = 1
        self._recover()

    def begin(self, meta: SnapshotMeta) -> FileSnapshotWriter:
        if self.failed is not None:
            raise FsyncFailedError("snapshot store refuses writes after an fsync failure")
        seq = self._next_seq
        self._next_seq += 1
        return FileSnapshotWriter(self, meta, seq)

    def latest(self) -> SnapshotMeta | None:
        return self._latest.meta if self._latest is not None else None

    def read_chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        assert chunk_bytes > 0
        snap = self._latest
        if snap is None:
            return
        path = os.path.join(self.dir, f"{snap.seq:020d}.snap")
        fd = self.fs.open_read(path)
        try:
            crc = 0
            off = 0
            while True:
                chunk = self.fs.pread(fd, chunk_bytes, off)
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
                off += len(chunk)
                if off == snap.size and crc != snap.crc:
                    break
                yield chunk
        finally:
            self.fs.close(fd)
        if off != snap.size or crc != snap.crc:
            raise CorruptLogError(
                f"snapshot {path}: size or checksum mismatch", file=path, size=off
            )

    def _committed(self, seq: int, meta: SnapshotMeta, size: int, crc: int) -> None:
        self._latest = _Committed(seq, meta, size, crc)
        self._remove_older_than(seq)

    def _remove_older_than(self, seq: int) -> None:
        removed = False
        # meta files first: a crash part-way must leave data without its meta (never
        # committed, removed at recovery), never a meta whose data is gone
        for name in sorted(self.fs.listdir(self.dir), key=lambda n: not n.endswith(".snapmeta")):
            stem = name.split(".", 1)[0]
            if stem.isdigit() and int(stem) < seq:
                self.fs.unlink(os.path.join(self.dir, name))
                removed = True
        if removed:
            try:
                fsync_dir_or_fail(self.fs, self.dir)
            except FsyncFailedError as exc:
                self.failed = exc
                raise

    def _recover(self) -> None:
        names = self.fs.listdir(self.dir)
        best: _Committed | None = None
        for name in names:
            path = os.path.join(self.dir, name)
            if name.endswith(".tmp"):
                self.fs.unlink(path)
                continue
            stem = name.split(".", 1)[0]
            if stem.isdigit():
                self._next_seq = max(self._next_seq, int(stem) + 1)
            if not name.endswith(".snapmeta"):
                continue
            obj = decode_checked(read_file(self.fs, path), path)
            seq, size, crc, meta = obj.get("seq"), obj.get("size"), obj.get("crc"), obj.get("meta")
            if not (isinstance(seq, int) and isinstance(size, int) and isinstance(crc, int)):
                raise CorruptLogError(f"{path}: bad snapshot meta", file=path)
            if not isinstance(meta, dict):
                raise CorruptLogError(f"{path}: bad snapshot meta", file=path)
            if not self.fs.exists(os.path.join(self.dir, f"{seq:020d}.snap")):
                raise CorruptLogError(f"{path}: committed snapshot data is missing", file=path)
            cand = _Committed(seq, snapshot_meta_from_json(meta, path), size, crc)
            if best is None or cand.seq > best.seq:
                best = cand
        self._latest = best
        if best is not None:
            # data without a meta file (never committed) and older snapshots go
            self._remove_older_than(best.seq)
        for name in self.fs.listdir(self.dir):
            stem = name.split(".", 1)[0]
            if name.endswith(".snap") and (best is None or int(stem) != best.seq):
                self.fs.unlink(os.path.join(self.dir, name))


@dataclass(slots=True)
class FileStorage:
    """The three stores of one data dir, opened together (the manifest checked once)."""

    log: FileLogStore
    hard_state: FileHardStateStore
    snapshots: FileSnapshotStore

    def close(self) -> None:
        self.log.close()


def open_storage(
    data_dir: str | os.PathLike[str],
    *,
    fs: FileSystem | None = None,
    segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
) -> FileStorage:
    """Open (creating when new) a node's data dir; ``storage.log.recovery`` says what was cut."""
    fs = fs if fs is not None else FileSystem()
    ensure_manifest(fs, os.fspath(data_dir))
    hard_state = FileHardStateStore(data_dir, fs=fs)
    snapshots = FileSnapshotStore(data_dir, fs=fs)
    log = FileLogStore(data_dir, fs=fs, segment_bytes_max=segment_bytes_max)
    return FileStorage(log, hard_state, snapshots)
