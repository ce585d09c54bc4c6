"""The segmented, checksummed, append-only file log (a LogStore on real files).

Theory of operation:

- **Layout.** ``<data dir>/MANIFEST`` (format version), ``<data dir>/log/`` holding segment
  files named by their first index, and ``log.meta`` (the snapshot meta the log was compacted
  to). Records are framed by :mod:`geostore.storage.diskformat` (length + crc32).
- **Writes.** ``append`` encodes a whole batch into one buffer and issues one ``write`` per
  segment it touches (usually one). A segment rolls when the next record would pass
  ``segment_bytes_max``; the old segment is fsynced before the first byte goes to the new one,
  so only the last segment can ever hold unsynced bytes. ``sync`` is one ``fdatasync`` of the
  last segment. Truncation (Raft conflicts) and compaction are fsynced before they return, so
  stale records can never reappear behind new ones after a power loss.
- **Failures.** ENOSPC rolls the batch back (the file is cut to the last complete record) and
  raises DiskFullError; reads keep working and a later append may succeed. Any fsync error is
  sticky: every later write raises FsyncFailedError and the node must stop. Other write
  errors are sticky too (the file state is unknown).
- **Recovery.** Every segment is scanned and every checksum verified. In the last segment, a
  bad record (cut short, running past the end, or failing its checksum) that lies within
  ``TORN_TAIL_WINDOW_BYTES`` of the end with no intact record after it is a torn write: it
  is cut and reported in a :class:`RecoveryReport`. A bad record anywhere else, an intact
  record after a bad one, a record out of index order, or a gap between segments is
  CorruptLogError: never dropped silently. (Conservative on purpose: unsynced pages that
  reached the disk out of order can look like corruption, and the node then refuses to start
  rather than guess.) The directory state left by an interrupted truncation or compaction is
  finished, using ``log.meta``.
- **Memory.** Only a sparse index (one (index, offset) point per ``SPARSE_SPACING_BYTES``) per
  segment and the list of term changes are held, so ``term_at`` never reads the disk and
  ``entries`` reads at most one spacing of records it does not return.
- **Watermarks.** ``durable_watermarks()`` maps each segment file to the bytes known durable
  (fsync returned), so a harness can cut files to them to model a power loss.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from zlib import crc32

from geostore.errors import CorruptLogError, DiskFullError, FsyncFailedError, StorageError
from geostore.ids import LogIndex, NodeId, Term
from geostore.raft.types import ConfState, Entry, EntryKind, SnapshotMeta
from geostore.storage.diskformat import (
    CRC,
    RECORD_BODY_HEADER,
    RECORD_DATA_MAX_BYTES,
    RECORD_HEADER,
    RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    atomic_write,
    check_segment_header,
    decode_checked,
    encode_checked,
    encode_segment_header,
    ensure_manifest,
    fsync_dir_or_fail,
    fsync_or_fail,
    make_dir_durable,
    parse_segment_name,
    read_file,
    segment_name,
)
from geostore.storage.syscalls import FileSystem, write_all

SEGMENT_BYTES_MAX_DEFAULT = 32 * 1024 * 1024
SPARSE_SPACING_BYTES = 16 * 1024
#: a bad record in the last segment followed by at most this many bytes with no intact record
#: in them is a torn write; more than that is corruption (a torn write is bounded by one flush)
TORN_TAIL_WINDOW_BYTES = 8 * 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
#: recovery tries every offset after a bad record this close to the end of the file
INTACT_SCAN_ALL_BYTES = 256 * 1024
#: farther from the end, it looks for a record holding one of this many following indices
INTACT_SCAN_INDICES = 128
_INDEX = struct.Struct("<Q")
_INDEX_OFFSET = 16  # of the index field inside a record header
LOG_DIR = "log"
LOG_META = "log.meta"

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

#: ``(term, kind, first_index, payloads)``: consecutive entries of one term and kind
Run = tuple[int, int, int, Sequence[bytes]]


def runs_of(entries: Sequence[Entry]) -> list[Run]:
    """Group contiguous entries into runs of the same term and kind."""
    runs: list[Run] = []
    cur: list[bytes] = []
    term = kind = first = -1
    for e in entries:
        if e.term != term or e.kind != kind:
            if cur:
                runs.append((term, kind, first, cur))
            cur = []
            term, kind, first = e.term, int(e.kind), e.index
        assert e.index == first + len(cur), "entries must be contiguous"
        cur.append(e.data)
    if cur:
        runs.append((term, kind, first, cur))
    return runs


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What opening the log found and what it cut (a torn tail), for the operator's log."""

    segments: int
    first_index: LogIndex
    last_index: LogIndex
    #: segment whose torn tail was cut (None: nothing cut)
    truncated_segment: str | None = None
    truncated_at_offset: int = 0
    truncated_bytes: int = 0
    reason: str = ""
    #: segment files removed because a compaction had covered them (finishing its work)
    removed_segments: tuple[str, ...] = ()

    @property
    def cut(self) -> bool:
        return self.truncated_segment is not None

    def summary(self) -> str:
        """One line for the operator's log."""
        line = (
            f"log recovered: {self.segments} segment(s), entries {self.first_index}.."
            f"{self.last_index}"
        )
        if self.cut:
            line += (
                f"; cut a torn tail of {self.truncated_bytes} bytes from {self.truncated_segment}"
                f" at offset {self.truncated_at_offset} ({self.reason})"
            )
        if self.removed_segments:
            line += f"; removed {len(self.removed_segments)} segment(s) a compaction had covered"
        return line


@dataclass(frozen=True, slots=True)
class SyncTicket:
    """One fsync in flight: it covers ``size`` bytes of segment ``name``, so every record
    through ``last_index`` (earlier segments were fsynced when they rolled)."""

    fd: int
    path: str
    name: str
    size: int
    last_index: int


@dataclass(slots=True)
class _Segment:
    first_index: int
    name: str
    path: str
    fd: int
    size: int
    last_index: int
    sparse_idx: array[int] = field(default_factory=lambda: array("Q"))
    sparse_off: array[int] = field(default_factory=lambda: array("Q"))

    def add_point(self, index: int, offset: int) -> None:
        if not self.sparse_off or offset - self.sparse_off[-1] >= SPARSE_SPACING_BYTES:
            self.sparse_idx.append(index)
            self.sparse_off.append(offset)

    def cut_points(self, from_index: int) -> None:
        keep = bisect.bisect_left(self.sparse_idx, from_index)
        del self.sparse_idx[keep:]
        del self.sparse_off[keep:]


def _conf_to_json(conf: ConfState) -> dict[str, list[str]]:
    return {"voters": sorted(conf.voters), "learners": sorted(conf.learners)}


def _conf_from_json(obj: object, what: str) -> ConfState:
    if not isinstance(obj, dict):
        raise CorruptLogError(f"{what}: bad conf", file=what)
    return ConfState(
        voters=frozenset(NodeId(str(v)) for v in obj.get("voters", [])),
        learners=frozenset(NodeId(str(v)) for v in obj.get("learners", [])),
    )


def snapshot_meta_to_json(meta: SnapshotMeta) -> dict[str, object]:
    return {"index": meta.index, "term": meta.term, "conf": _conf_to_json(meta.conf)}


def snapshot_meta_from_json(obj: dict[str, object], what: str) -> SnapshotMeta:
    index, term = obj.get("index"), obj.get("term")
    if not isinstance(index, int) or not isinstance(term, int):
        raise CorruptLogError(f"{what}: bad snapshot meta", file=what)
    return SnapshotMeta(LogIndex(index), Term(term), _conf_from_json(obj.get("conf"), what))


class FileLogStore:
    """A :class:`~geostore.storage.ports.LogStore` on segment files. Not thread-safe: one
    writer (the node wiring, or :class:`~geostore.storage.group_commit.GroupCommitLog`)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        fs: FileSystem | None = None,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
    ) -> None:
        assert segment_bytes_max >= SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES
        # a record over the data limit then always takes the rare "segment full" branch
        assert segment_bytes_max <= RECORD_DATA_MAX_BYTES
        self._fs = fs if fs is not None else FileSystem()
        self._data_dir = os.fspath(data_dir)
        self._dir = os.path.join(self._data_dir, LOG_DIR)
        self._segment_bytes_max = segment_bytes_max
        self._segments: list[_Segment] = []
        self._firsts: list[int] = []
        self._run_starts: list[int] = []
        self._run_terms: list[int] = []
        self._snap = SnapshotMeta()
        self._last = 0
        self._durable = 0
        self._failed: StorageError | None = None
        self._closed = False
        self._watermarks: dict[str, int] = {}
        self.syncs = 0
        self.appended = 0
        self.written_bytes = 0
        self.recovery: RecoveryReport = self._open()

    # -- LogReader -------------------------------------------------------------------------
    def first_index(self) -> LogIndex:
        return LogIndex(self._snap.index + 1)

    def last_index(self) -> LogIndex:
        return LogIndex(self._last)

    def term_at(self, index: LogIndex) -> Term | None:
        if index == self._snap.index:
            return self._snap.term
        if index <= self._snap.index or index > self._last:
            return None
        pos = bisect.bisect_right(self._run_starts, index) - 1
        assert pos >= 0, (index, self._run_starts)
        return Term(self._run_terms[pos])

    def snapshot_meta(self) -> SnapshotMeta:
        return self._snap

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[Entry]:
        assert self._snap.index < lo <= hi <= self._last + 1, (lo, hi, self._snap, self._last)
        out: list[Entry] = []
        total = 0
        idx = int(lo)
        while idx < hi:
            seg = self._segments[bisect.bisect_right(self._firsts, idx) - 1]
            for entry in self._iter_segment(seg, idx, min(int(hi), seg.last_index + 1)):
                total += len(entry.data)
                if out and max_bytes is not None and total > max_bytes:
                    return out
                out.append(entry)
                idx += 1
            assert idx > seg.last_index or idx >= hi, "segment scan ended early"
        return out

    # -- LogStore --------------------------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        self._check_writable()
        start = entries[0].index
        assert self._snap.index < start <= self._last + 1, (start, self._snap.index, self._last)
        if start <= self._last:
            self.truncate_suffix(start)
        self._write_runs(runs_of(entries))

    def append_payloads(
        self, term: Term, payloads: Sequence[bytes], kind: EntryKind = EntryKind.NORMAL
    ) -> LogIndex:
        """Append ``payloads`` as entries of ``term`` from ``last_index + 1``; the last index."""
        self.append_runs([(int(term), int(kind), self._last + 1, payloads)])
        return LogIndex(self._last)

    def append_runs(self, runs: Sequence[Run]) -> None:
        """Append runs of ``(term, kind, first_index, payloads)`` from ``last_index + 1``.

        The fast path of group commit: no Entry objects, one write for the whole batch.
        """
        self._check_writable()
        self._write_runs(runs)

    def truncate_suffix(self, from_index: LogIndex) -> None:
        self._check_writable()
        assert from_index > self._snap.index, (from_index, self._snap.index)
        if from_index > self._last:
            return
        try:
            self._cut_from(int(from_index))
        except FsyncFailedError as exc:
            self._failed = exc
            raise
        except OSError as exc:
            raise self._fail(f"truncating the log failed: {exc}") from exc

    def compact_prefix(self, snapshot: SnapshotMeta) -> None:
        self._check_writable()
        if snapshot.index <= self._snap.index:
            return
        held = self.term_at(snapshot.index)
        try:
            # the meta goes first: a crash after it makes open() finish the compaction
            atomic_write(
                self._fs, self._dir, LOG_META, encode_checked(snapshot_meta_to_json(snapshot))
            )
            removed = self._apply_snapshot(snapshot, held)
            if removed:
                fsync_dir_or_fail(self._fs, self._dir)
        except FsyncFailedError as exc:
            self._failed = exc
            raise
        except OSError as exc:
            # segments may be half deleted: stop writing; reopening finishes the compaction
            if exc.errno in _DISK_FULL_ERRNOS:
                self._failed = DiskFullError(f"disk full while compacting the log: {exc}")
                raise self._failed from exc
            raise self._fail(f"compacting the log failed: {exc}") from exc

    def sync(self) -> None:
        ticket = self.sync_begin()
        if ticket is not None:
            self.sync_wait(ticket)
            self.sync_end(ticket)

    # sync in three steps, so that a group-commit flusher can keep writing while another
    # thread waits for the fsync: begin and end need the log's lock, wait does not (the
    # caller guarantees the segment is neither truncated nor deleted meanwhile)
    def sync_begin(self) -> SyncTicket | None:
        """What the next fsync will cover: None when everything written is durable already."""
        self._check_writable()
        seg = self._segments[-1]
        if self._durable == self._last and self._watermarks.get(seg.name) == seg.size:
            return None
        return SyncTicket(seg.fd, seg.path, seg.name, seg.size, self._last)

    def sync_wait(self, ticket: SyncTicket) -> None:
        try:
            fsync_or_fail(self._fs, ticket.fd, ticket.path, data_only=True)
        except FsyncFailedError as exc:
            self._failed = exc
            raise

    def sync_end(self, ticket: SyncTicket) -> None:
        self.syncs += 1
        if ticket.name in self._watermarks:
            self._watermarks[ticket.name] = max(self._watermarks[ticket.name], ticket.size)
        self._durable = max(self._durable, min(ticket.last_index, self._last))

    def durable_index(self) -> LogIndex:
        return LogIndex(max(self._durable, self._snap.index))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for seg in self._segments:
            self._fs.close(seg.fd)

    # -- extras ----------------------------------------------------------------------------
    @property
    def segment_dir(self) -> str:
        return self._dir

    def durable_watermarks(self) -> dict[str, int]:
        """Segment file name -> bytes known durable (an fsync covering them returned)."""
        return dict(self._watermarks)

    def segment_names(self) -> list[str]:
        return [s.name for s in self._segments]

    @property
    def failed(self) -> StorageError | None:
        """The sticky failure that stopped writes (None while healthy)."""
        return self._failed

    # -- write path ------------------------------------------------------------------------
    def _check_writable(self) -> None:
        failed = self._failed
        if failed is not None:
            message = f"log refuses writes after an earlier failure: {failed.message}"
            if isinstance(failed, FsyncFailedError):
                raise FsyncFailedError(message + "; the node must stop")
            raise StorageError(message)
        assert not self._closed, "log is closed"

    def _fail(self, message: str) -> StorageError:
        self._failed = StorageError(message + "; refusing further writes, the node must stop")
        return self._failed

    def _write_runs(self, runs: Sequence[Run]) -> None:
        """Encode and write contiguous records at ``last_index + 1`` (one write per segment)."""
        if not runs:
            return
        start = self._last + 1
        start_size = self._segments[-1].size
        start_segments = len(self._segments)
        try:
            self._encode_and_write(runs)
        except FsyncFailedError as exc:
            self._failed = exc
            raise
        except OSError as exc:
            self._rollback(start, start_segments, start_size)
            if exc.errno in _DISK_FULL_ERRNOS:
                raise DiskFullError(
                    "disk full: append refused (reads keep working)", first_index=start
                ) from exc
            raise self._fail(f"write to the log failed: {exc}") from exc
        except BaseException:
            # a refused entry (too large) or a programmer error: leave no half batch behind
            self._rollback(start, start_segments, start_size)
            raise

    def _encode_and_write(self, runs: Sequence[Run]) -> None:
        # The hot path: per record one struct.pack, one concatenation, one crc32 and one
        # extend; every other check is hoisted to the run or behind the rare "segment full"
        # branch.
        pack_body = RECORD_BODY_HEADER.pack
        pack_crc = CRC.pack
        seg = self._segments[-1]
        seg_max = self._segment_bytes_max
        size = seg.size
        next_point = seg.sparse_off[-1] + SPARSE_SPACING_BYTES if seg.sparse_off else 0
        last_term = self._run_terms[-1] if self._run_terms else -1
        expect = self._last + 1
        parts: list[bytes] = []
        extend = parts.extend
        count = 0
        for term, kind, first, payloads in runs:
            assert first == expect, (first, expect)
            assert term >= last_term, (term, last_term)
            if not payloads:
                continue
            if term != last_term:
                self._run_starts.append(first)
                self._run_terms.append(term)
                last_term = term
            index = first
            for data in payloads:
                n = len(data)
                rec_bytes = RECORD_HEADER_BYTES + n
                if size + rec_bytes > seg_max:
                    # rare: the segment is full (or the record is huge)
                    if n > RECORD_DATA_MAX_BYTES:
                        raise StorageError(f"entry {index} is larger than {RECORD_DATA_MAX_BYTES}")
                    if size > SEGMENT_HEADER_BYTES:
                        self._commit_parts(seg, parts, size, index - 1)
                        parts = []
                        extend = parts.extend
                        seg = self._roll(index)
                        size = seg.size
                        next_point = 0
                rec = pack_body(n, term, index, kind) + data  # one copy, then one crc
                extend((pack_crc(crc32(rec)), rec))
                if size >= next_point:
                    seg.sparse_idx.append(index)
                    seg.sparse_off.append(size)
                    next_point = size + SPARSE_SPACING_BYTES
                size += rec_bytes
                index += 1
            count += index - first
            expect = index
        self._commit_parts(seg, parts, size, expect - 1)
        self.appended += count

    def _commit_parts(self, seg: _Segment, parts: list[bytes], new_size: int, last: int) -> None:
        if not parts:
            return
        buf = b"".join(parts)
        assert seg.size + len(buf) == new_size
        write_all(self._fs, seg.fd, buf)
        seg.size = new_size
        seg.last_index = last
        self._last = last
        self.written_bytes += len(buf)

    def _roll(self, first_index: int) -> _Segment:
        old = self._segments[-1]
        fsync_or_fail(self._fs, old.fd, old.path, data_only=True)
        self.syncs += 1
        self._watermarks[old.name] = old.size
        self._durable = max(self._durable, old.last_index)
        return self._create_segment(first_index)

    def _create_segment(self, first_index: int) -> _Segment:
        name = segment_name(first_index)
        path = os.path.join(self._dir, name)
        fd = self._fs.open_append(path)
        try:
            self._fs.ftruncate(fd, 0)
            write_all(self._fs, fd, encode_segment_header(first_index))
            fsync_or_fail(self._fs, fd, path)
            fsync_dir_or_fail(self._fs, self._dir)
        except BaseException:
            self._fs.close(fd)
            self._fs.unlink(path)
            raise
        seg = _Segment(first_index, name, path, fd, SEGMENT_HEADER_BYTES, first_index - 1)
        self._segments.append(seg)
        self._firsts.append(first_index)
        self._watermarks[name] = SEGMENT_HEADER_BYTES
        return seg

    def _rollback(self, start: int, start_segments: int, start_size: int) -> None:
        """Undo a failed batch: files back to the last complete record, memory to match.

        Durably where it matters: a roll inside the batch fsynced part of it, and a segment
        created by it must not reappear after a power loss (it would leave a gap).
        """
        try:
            removed = False
            while len(self._segments) > start_segments:
                self._drop_newest_segment()
                removed = True
            if removed:
                fsync_dir_or_fail(self._fs, self._dir)
            seg = self._segments[-1]
            self._fs.ftruncate(seg.fd, start_size)
            if self._watermarks.get(seg.name, 0) > start_size:
                fsync_or_fail(self._fs, seg.fd, seg.path)
                self._watermarks[seg.name] = start_size
        except FsyncFailedError as exc:
            self._failed = exc
            raise
        except OSError as exc:
            raise self._fail(f"could not roll back a failed append: {exc}") from exc
        seg.size = start_size
        seg.last_index = min(seg.last_index, start - 1)
        seg.cut_points(start)
        self._cut_runs(start)
        self._last = start - 1
        self._durable = min(self._durable, self._last)

    def _drop_newest_segment(self) -> None:
        """Close and delete the newest segment file and forget it; the caller fsyncs the
        directory once after the last one, before it cuts the segment left."""
        seg = self._segments.pop()
        self._firsts.pop()
        self._fs.close(seg.fd)
        self._fs.unlink(seg.path)
        self._watermarks.pop(seg.name, None)

    def _cut_runs(self, from_index: int) -> None:
        keep = bisect.bisect_left(self._run_starts, from_index)
        del self._run_starts[keep:]
        del self._run_terms[keep:]

    def _cut_from(self, from_index: int) -> None:
        """Drop records ``>= from_index`` from files and memory, durably.

        Whole segments go first, newest first, and the directory is fsynced before the
        remaining segment is cut: whatever part of this survives a crash is a prefix of the
        old log without a gap, never stale records behind new ones.
        """
        removed = False
        while len(self._segments) > 1 and self._segments[-1].first_index >= from_index:
            self._drop_newest_segment()
            removed = True
        if removed:
            fsync_dir_or_fail(self._fs, self._dir)
        seg = self._segments[-1]
        offset = self._offset_of(seg, from_index) if from_index <= seg.last_index else seg.size
        self._fs.ftruncate(seg.fd, offset)
        fsync_or_fail(self._fs, seg.fd, seg.path)
        seg.size = offset
        seg.last_index = min(seg.last_index, from_index - 1)
        seg.cut_points(from_index)
        self._cut_runs(from_index)
        self._last = min(self._last, from_index - 1)
        self._durable = min(self._durable, self._last)
        self._watermarks[seg.name] = offset

    def _apply_snapshot(self, snapshot: SnapshotMeta, held: Term | None) -> list[str]:
        """Drop what ``snapshot`` covers (all of the log if it does not continue it)."""
        removed: list[str] = []
        if held is None or held != snapshot.term:
            # newest first, and durably before the new segment exists: a crash leaves a
            # prefix of the old log, which reopening drops again (it still does not match)
            new_first = snapshot.index + 1
            for seg in reversed(self._segments):
                self._fs.close(seg.fd)
                self._fs.unlink(seg.path)
                self._watermarks.pop(seg.name, None)
                removed.append(seg.name)
            self._segments.clear()
            self._firsts.clear()
            self._run_starts.clear()
            self._run_terms.clear()
            if removed:
                fsync_dir_or_fail(self._fs, self._dir)
            self._create_segment(new_first)
            self._last = snapshot.index
            self._durable = snapshot.index
        else:
            while len(self._segments) > 1 and self._segments[1].first_index <= snapshot.index + 1:
                seg = self._segments.pop(0)
                self._firsts.pop(0)
                self._fs.close(seg.fd)
                self._fs.unlink(seg.path)
                self._watermarks.pop(seg.name, None)
                removed.append(seg.name)
            # keep only the term run covering the first held index onward
            pos = bisect.bisect_right(self._run_starts, snapshot.index + 1) - 1
            if pos > 0:
                del self._run_starts[:pos]
                del self._run_terms[:pos]
        self._snap = snapshot
        return removed

    # -- read path -------------------------------------------------------------------------
    def _iter_records(
        self, seg: _Segment, offset: int, end: int
    ) -> Iterator[tuple[int, int, int, int, memoryview, int]]:
        """(offset, index, term, kind, data, crc_ok) for each record in [offset, end)."""
        fs = self._fs
        unpack = RECORD_HEADER.unpack_from
        while offset < end:
            chunk = fs.pread(seg.fd, min(READ_CHUNK_BYTES, end - offset), offset)
            view = memoryview(chunk)
            pos = 0
            n = len(chunk)
            while pos + RECORD_HEADER_BYTES <= n:
                crc, data_len, term, index, kind = unpack(chunk, pos)
                rec_end = pos + RECORD_HEADER_BYTES + data_len
                if rec_end > n:
                    if pos == 0:
                        # one record larger than the chunk: read exactly it
                        chunk = fs.pread(seg.fd, RECORD_HEADER_BYTES + data_len, offset)
                        view = memoryview(chunk)
                        n = len(chunk)
                        if n < RECORD_HEADER_BYTES + data_len:
                            raise CorruptLogError(
                                f"segment {seg.name}: record at {offset} is cut short",
                                segment=seg.name,
                                offset=offset,
                            )
                        continue
                    break
                ok = crc32(view[pos + 4 : rec_end]) == crc
                yield (
                    offset + pos,
                    index,
                    term,
                    kind,
                    view[pos + RECORD_HEADER_BYTES : rec_end],
                    int(ok),
                )
                pos = rec_end
            if pos == 0:
                raise CorruptLogError(
                    f"segment {seg.name}: record at {offset} is cut short",
                    segment=seg.name,
                    offset=offset,
                )
            offset += pos

    def _start_point(self, seg: _Segment, index: int) -> tuple[int, int]:
        pos = bisect.bisect_right(seg.sparse_idx, index) - 1
        assert pos >= 0, (index, seg.name)
        return seg.sparse_idx[pos], seg.sparse_off[pos]

    def _iter_segment(self, seg: _Segment, lo: int, hi: int) -> Iterator[Entry]:
        _, off = self._start_point(seg, lo)
        for rec_off, index, term, kind, data, ok in self._iter_records(seg, off, seg.size):
            if index < lo:
                continue
            if index >= hi:
                return
            if not ok:
                raise CorruptLogError(
                    f"segment {seg.name}: checksum mismatch at offset {rec_off} (index {index})",
                    segment=seg.name,
                    offset=rec_off,
                    index=index,
                )
            yield Entry(Term(term), LogIndex(index), EntryKind(kind), bytes(data))

    def _offset_of(self, seg: _Segment, index: int) -> int:
        _, off = self._start_point(seg, index)
        for rec_off, rec_index, *_ in self._iter_records(seg, off, seg.size):
            if rec_index == index:
                return rec_off
        raise CorruptLogError(f"segment {seg.name}: index {index} not found", segment=seg.name)

    # -- open and recovery -----------------------------------------------------------------
    def _open(self) -> RecoveryReport:
        fs = self._fs
        ensure_manifest(fs, self._data_dir)
        make_dir_durable(fs, self._dir)
        names = fs.listdir(self._dir)
        for name in names:
            if name.endswith(".tmp"):
                fs.unlink(os.path.join(self._dir, name))
        meta_path = os.path.join(self._dir, LOG_META)
        if fs.exists(meta_path):
            self._snap = snapshot_meta_from_json(
                decode_checked(read_file(fs, meta_path), meta_path), meta_path
            )
        found = sorted(
            (first, name) for name in names if (first := parse_segment_name(name)) is not None
        )
        cut: tuple[str, int, int, str] | None = None
        try:
            for i, (first, name) in enumerate(found):
                is_last = i == len(found) - 1
                result = self._recover_segment(first, name, is_last)
                if result is not None:
                    cut = result
            self._check_contiguous()
            removed = self._finish_compaction()
            if not self._segments:
                self._create_segment(self._snap.index + 1)
            last = self._segments[-1]
            # what we read back counts as durable only once an fsync covers it
            fsync_or_fail(fs, last.fd, last.path)
            fsync_dir_or_fail(fs, self._dir)
        except OSError as exc:
            self.close()
            if exc.errno in _DISK_FULL_ERRNOS:
                raise DiskFullError(f"disk full while opening the log: {exc}") from exc
            raise StorageError(f"opening the log in {self._dir} failed: {exc}") from exc
        except BaseException:
            self.close()
            raise
        last_seg = self._segments[-1]
        self._last = max(last_seg.last_index, self._snap.index)
        self._durable = self._last
        for seg in self._segments:
            self._watermarks[seg.name] = seg.size
        return RecoveryReport(
            segments=len(self._segments),
            first_index=self.first_index(),
            last_index=self.last_index(),
            truncated_segment=cut[0] if cut else None,
            truncated_at_offset=cut[1] if cut else 0,
            truncated_bytes=cut[2] if cut else 0,
            reason=cut[3] if cut else "",
            removed_segments=tuple(removed),
        )

    def _recover_segment(
        self, first: int, name: str, is_last: bool
    ) -> tuple[str, int, int, str] | None:
        fs = self._fs
        path = os.path.join(self._dir, name)
        fd = fs.open_append(path)
        seg = _Segment(first, name, path, fd, SEGMENT_HEADER_BYTES, first - 1)
        self._segments.append(seg)
        self._firsts.append(first)
        raw = read_file(fs, path)
        if len(raw) < SEGMENT_HEADER_BYTES:
            if not is_last:
                raise CorruptLogError(f"segment {name}: header cut short", segment=name)
            # created but never written past a torn header: nothing in it was acknowledged
            fs.ftruncate(fd, 0)
            write_all(fs, fd, encode_segment_header(first))
            return (name, 0, len(raw), "torn segment header")
        check_segment_header(raw[:SEGMENT_HEADER_BYTES], name, first)
        bad = self._scan(seg, raw)
        if bad is None:
            return None
        pos, reason = bad
        if not is_last:
            raise CorruptLogError(
                f"segment {name}: {reason} at offset {pos} before the last segment",
                segment=name,
                offset=pos,
            )
        if len(raw) - pos > TORN_TAIL_WINDOW_BYTES:
            raise CorruptLogError(
                f"segment {name}: {reason} at offset {pos}, {len(raw) - pos} bytes before the "
                "end (too far from the tail to be a torn write)",
                segment=name,
                offset=pos,
            )
        if self._intact_record_after(raw, pos, seg.last_index):
            raise CorruptLogError(
                f"segment {name}: {reason} at offset {pos} with intact records after it "
                "(corruption, not a torn write)",
                segment=name,
                offset=pos,
            )
        fs.ftruncate(fd, pos)
        return (name, pos, len(raw) - pos, reason)

    def _scan(self, seg: _Segment, raw: bytes) -> tuple[int, str] | None:
        """Index every record of ``raw``; (offset, reason) of the first bad one, if any."""
        unpack = RECORD_HEADER.unpack_from
        size = len(raw)
        pos = SEGMENT_HEADER_BYTES
        expect = seg.first_index
        last_term = self._run_terms[-1] if self._run_terms else -1
        view = memoryview(raw)
        while pos < size:
            if size - pos < RECORD_HEADER_BYTES:
                return pos, "record header cut short"
            crc, data_len, term, index, _kind = unpack(raw, pos)
            end = pos + RECORD_HEADER_BYTES + data_len
            if data_len > RECORD_DATA_MAX_BYTES or end > size:
                return pos, "record runs past the end of the file"
            if crc32(view[pos + 4 : end]) != crc:
                return pos, "checksum mismatch"
            if index != expect or term < last_term:
                # a checksummed record out of order is stale or misplaced data, never torn
                raise CorruptLogError(
                    f"segment {seg.name}: record at offset {pos} has index {index} term {term}, "
                    f"expected index {expect} and term >= {last_term}",
                    segment=seg.name,
                    offset=pos,
                )
            seg.add_point(index, pos)
            if term != last_term:
                self._run_starts.append(index)
                self._run_terms.append(term)
                last_term = term
            seg.size = end
            seg.last_index = index
            expect += 1
            pos = end
        return None

    @staticmethod
    def _intact_record_after(raw: bytes, bad_pos: int, last_good_index: int) -> bool:
        """Whether a checksummed record with a later index starts after ``bad_pos``.

        Near the tail every offset is tried. Farther from it, only offsets where the index
        field holds one of the next ``INTACT_SCAN_INDICES`` indices (found with ``bytes.find``
        at C speed): a bit flip damages one record, so the next intact one is close in index.
        """
        size = len(raw)
        if raw.count(0, bad_pos + 1) == size - bad_pos - 1:
            return False  # only zeros follow: unwritten or zero-filled pages
        view = memoryview(raw)

        def intact(q: int) -> bool:
            if q <= bad_pos or q + RECORD_HEADER_BYTES > size:
                return False
            crc: int
            data_len: int
            index: int
            crc, data_len, _term, index, _kind = RECORD_HEADER.unpack_from(raw, q)
            if index <= last_good_index or index > last_good_index + (size - bad_pos):
                return False
            end = q + RECORD_HEADER_BYTES + data_len
            return end <= size and crc32(view[q + 4 : end]) == crc

        if size - bad_pos <= INTACT_SCAN_ALL_BYTES:
            return any(intact(q) for q in range(bad_pos + 1, size - RECORD_HEADER_BYTES + 1))
        for k in range(1, INTACT_SCAN_INDICES + 1):
            needle = _INDEX.pack(last_good_index + k)
            hit = raw.find(needle, bad_pos + 1 + _INDEX_OFFSET)
            while hit >= 0:
                if intact(hit - _INDEX_OFFSET):
                    return True
                hit = raw.find(needle, hit + 1)
        return False

    def _check_contiguous(self) -> None:
        for prev, cur in itertools.pairwise(self._segments):
            if cur.first_index != prev.last_index + 1:
                raise CorruptLogError(
                    f"segments {prev.name} (last index {prev.last_index}) and {cur.name} are "
                    "not contiguous",
                    segment=cur.name,
                )

    def _finish_compaction(self) -> list[str]:
        snap = self._snap
        if snap.index == 0:
            return []
        if not self._segments:
            return []
        if self._segments[0].first_index > snap.index + 1:
            raise CorruptLogError(
                f"log starts at {self._segments[0].first_index} but the snapshot ends at "
                f"{snap.index}: entries are missing",
                first_index=self._segments[0].first_index,
            )
        if snap.index < self._segments[0].first_index:
            return []  # the log starts right after the snapshot: nothing to drop
        last = self._segments[-1].last_index
        held: Term | None = None
        if snap.index <= last:
            pos = bisect.bisect_right(self._run_starts, snap.index) - 1
            held = Term(self._run_terms[pos]) if pos >= 0 else None
        # the log's own index arithmetic, as if the compaction were happening now
        self._last = last
        removed = self._apply_snapshot(snap, held)
        return removed
