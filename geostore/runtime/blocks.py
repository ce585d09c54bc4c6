"""Sealed event blocks on disk: the file implementation of the store's BlockStore port.

Theory of operation. Each partition has one append-only *pack* file,
``<dir>/<stream hex>/<partition>/blocks.pack``, holding its sealed blocks (numbers >= 0) as
records ``[magic "GSB1", block_no int64, length uint32, crc32 uint32][bytes]`` in the order
they were put. A partition seals a block every ``block_events_max`` events, so under load
puts are frequent: an append to an open file costs a write, where a file per block cost a
create and a rename, which contend with every other fsync on the file system for its
journal (measured: ~1 ms of CPU per block on a node of a loaded 3-node region, 18% of a
follower's CPU at 1,000-event appends; an append ~80 us).

- The index (block number -> offset, length, crc) of a pack is built on first use by
  reading the record headers only (one 20-byte read per block), never the bodies; later
  records of a number replace earlier ones. A header that is not a whole, well-formed
  record ends the pack: the file is cut there (a torn append from a crash; the blocks it
  held had not been flushed, so the replayed log puts them again) and a warning logged.
- ``get`` reads one record and checks its crc (a damaged record is a
  :class:`~geostore.errors.StorageError`, never wrong bytes).
- ``put`` of a number the pack holds with the same bytes (read back and compared) does
  nothing (the replay after a restart repeats puts); other bytes, or a record damaged by a
  crash, are appended and win.
- ``discard(n)`` (a failback rewound the partition) cuts the file at the first record of a
  number >= n and appends again the records of smaller numbers that stood after it (puts
  come in number order, so there are none in practice).
- ``flush`` fsyncs the packs appended to or cut since the last flush, the other files
  written, and the folders where files were created or removed.
- Numbers below 0, the bodies of quarantined runs (rare, large, removed one by one), are
  one file each, ``<block_no>.blk``, written to a temporary file and renamed into place.
  Blocks a former version of this store wrote as ``<block_no>.blk`` files are read (and
  discarded) as before; new blocks of those partitions go to the pack.

Blocks are re-derivable from the Raft log and from snapshots (which carry them), so a block
lost in a crash before its flush is put again when the log is replayed. Memory: one index
entry per sealed block (~100 bytes; a block holds up to ``block_events_max`` events), as
the store keeps a summary per block anyway.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field

from geostore.errors import StorageError
from geostore.ids import PartitionId, StreamName

log = logging.getLogger(__name__)

PACK_NAME = "blocks.pack"
_MAGIC = b"GSB1"
_HEADER = struct.Struct("<4sqII")  # magic, block_no, length, crc32 of the bytes
#: A record longer than this is not a record (a block is at most block_bytes_max plus one
#: event, far below): a damaged header is never taken for a huge block.
RECORD_BYTES_MAX = 1 << 30


@dataclass(slots=True)
class _Pack:
    """The index of one partition's pack file."""

    path: str
    #: block number -> (offset of its bytes, length, crc32)
    index: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    end: int = 0  # where the next record goes


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


class FileBlockStore:
    """A :class:`geostore.store.BlockStore` over pack files (see the module docstring)."""

    def __init__(self, root: str, *, fsync: bool = True) -> None:
        self._root = root
        self._fsync = fsync
        self._packs: dict[str, _Pack] = {}  # folder -> its pack (loaded on first use)
        self._dirty_files: set[str] = set()
        self._dirty_dirs: set[str] = set()
        self.gets = 0
        self.puts = 0
        os.makedirs(root, exist_ok=True)

    # --- paths and packs ---------------------------------------------------------------

    def _folder(self, stream: StreamName, partition: PartitionId) -> str:
        # stream names are checked by the store (no path separators); hex keeps them safe anyway
        return os.path.join(self._root, stream.encode().hex(), str(int(partition)))

    def _file(self, stream: StreamName, partition: PartitionId, block_no: int) -> str:
        return os.path.join(self._folder(stream, partition), f"{block_no}.blk")

    def _pack(self, stream: StreamName, partition: PartitionId) -> _Pack:
        folder = self._folder(stream, partition)
        pack = self._packs.get(folder)
        if pack is None:
            pack = self._load(os.path.join(folder, PACK_NAME))
            self._packs[folder] = pack
        return pack

    def _load(self, path: str) -> _Pack:
        """Index a pack from its record headers; cut a torn or damaged tail."""
        pack = _Pack(path)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return pack
        except OSError as exc:
            raise StorageError(f"opening {path} failed: {exc}") from exc
        try:
            size = os.fstat(fd).st_size
            pos = 0
            while pos < size:
                head = os.pread(fd, _HEADER.size, pos)
                if len(head) < _HEADER.size:
                    break
                magic, block_no, length, crc = _HEADER.unpack(head)
                start = pos + _HEADER.size
                if magic != _MAGIC or block_no < 0 or length > RECORD_BYTES_MAX:
                    break
                if start + length > size:
                    break
                pack.index[block_no] = (start, length, crc)
                pos = start + length
            if pos < size:
                log.warning(
                    "block pack %s: %d bytes after offset %d are not whole records "
                    "(a torn append); cut there, the log replay puts those blocks again",
                    path,
                    size - pos,
                    pos,
                )
                os.ftruncate(fd, pos)
                self._dirty_files.add(path)
            pack.end = pos
        except OSError as exc:
            raise StorageError(f"reading {path} failed: {exc}") from exc
        finally:
            os.close(fd)
        return pack

    def _append(self, pack: _Pack, records: list[tuple[int, bytes]]) -> None:
        """Append ``(block_no, bytes)`` records to ``pack`` and index them."""
        folder = os.path.dirname(pack.path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            try:
                fd = os.open(pack.path, flags, 0o644)
            except FileNotFoundError:  # the partition's first block: make its folder first
                os.makedirs(folder, exist_ok=True)  # (not before every put: a syscall each)
                fd = os.open(pack.path, flags, 0o644)
            try:
                if pack.end == 0:
                    self._dirty_dirs.add(folder)  # the pack's name may be new
                for block_no, data in records:
                    crc = zlib.crc32(data)
                    head = _HEADER.pack(_MAGIC, block_no, len(data), crc)
                    written = os.writev(fd, [head, data])
                    if written != len(head) + len(data):
                        raise OSError(f"short write ({written} of {len(head) + len(data)})")
                    pack.index[block_no] = (pack.end + len(head), len(data), crc)
                    pack.end += written
            finally:
                os.close(fd)
        except OSError as exc:
            # the pack may now end with part of a record: index it again from the file
            self._packs.pop(folder, None)
            raise StorageError(f"writing blocks to {pack.path} failed: {exc}") from exc
        self._dirty_files.add(pack.path)

    def _read(self, path: str, offset: int, length: int) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def _cut(self, pack: _Pack, drop: set[int]) -> None:
        """Remove the records of the numbers in ``drop`` from ``pack``."""
        if not drop:
            return
        cut = min(pack.index[n][0] for n in drop) - _HEADER.size
        keep = sorted(
            (off, n) for n, (off, _, _) in pack.index.items() if n not in drop and off > cut
        )
        try:
            again = [(n, self._get_packed(pack, n)) for _, n in keep]
            with open(pack.path, "r+b") as f:
                f.truncate(cut)
        except OSError as exc:
            raise StorageError(f"cutting {pack.path} failed: {exc}") from exc
        for n in drop:
            del pack.index[n]
        for _, n in keep:
            del pack.index[n]
        pack.end = cut
        self._dirty_files.add(pack.path)
        if again:
            self._append(pack, again)

    def _get_packed(self, pack: _Pack, block_no: int) -> bytes:
        offset, length, crc = pack.index[block_no]
        data = self._read(pack.path, offset, length)
        if len(data) != length or zlib.crc32(data) != crc:
            raise StorageError(
                f"block {block_no} in {pack.path} is damaged (short read or crc mismatch)"
            )
        return data

    # --- the port ----------------------------------------------------------------------

    def put(self, stream: StreamName, partition: PartitionId, block_no: int, data: bytes) -> None:
        if block_no < 0:
            self._put_file(stream, partition, block_no, data)
            return
        pack = self._pack(stream, partition)
        known = pack.index.get(block_no)
        self.puts += 1
        if known is not None and known[1] == len(data) and known[2] == zlib.crc32(data):
            # A replay repeats a put. Skip it only when the record holds those bytes: after a
            # crash a record can be whole in length but not in content (pages never written)
            # and the load checks lengths only; appending again heals it (the last one wins).
            with contextlib.suppress(StorageError, OSError):
                if self._get_packed(pack, block_no) == data:
                    return
        self._append(pack, [(block_no, bytes(data))])

    def _put_file(
        self, stream: StreamName, partition: PartitionId, block_no: int, data: bytes
    ) -> None:
        path = self._file(stream, partition, block_no)
        folder = os.path.dirname(path)
        tmp = path + ".tmp"
        try:
            try:
                _write_file(tmp, data)
            except FileNotFoundError:  # the partition's first file: make its folder first
                os.makedirs(folder, exist_ok=True)
                _write_file(tmp, data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"writing block {path} failed: {exc}") from exc
        self.puts += 1
        self._dirty_files.add(path)
        self._dirty_dirs.add(folder)

    def get(self, stream: StreamName, partition: PartitionId, block_no: int) -> bytes:
        self.gets += 1
        if block_no >= 0:
            pack = self._pack(stream, partition)
            if block_no in pack.index:
                try:
                    return self._get_packed(pack, block_no)
                except OSError as exc:
                    raise StorageError(f"reading {pack.path} failed: {exc}") from exc
        path = self._file(stream, partition, block_no)  # a quarantined body, or older layout
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"block {stream}/{partition}/{block_no} is missing") from None
        except OSError as exc:
            raise StorageError(f"reading block {path} failed: {exc}") from exc

    def has(self, stream: StreamName, partition: PartitionId, block_no: int) -> bool:
        if block_no >= 0 and block_no in self._pack(stream, partition).index:
            return True
        return os.path.exists(self._file(stream, partition, block_no))

    def discard(self, stream: StreamName, partition: PartitionId, block_no: int) -> None:
        """Remove blocks ``block_no`` and after (a failback rewound the partition; their
        numbers are used again with other bytes). Durable with the next ``flush``."""
        assert block_no >= 0, "discard drops sealed blocks, never quarantined bodies"
        pack = self._pack(stream, partition)
        self._cut(pack, {n for n in pack.index if n >= block_no})
        folder = self._folder(stream, partition)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"listing blocks in {folder} failed: {exc}") from exc
        for name in names:  # blocks of the former one-file-per-block layout
            stem, dot, ext = name.partition(".")
            if dot and ext == "blk" and stem.isdigit() and int(stem) >= block_no:
                path = os.path.join(folder, name)
                try:
                    os.unlink(path)
                except OSError as exc:
                    raise StorageError(f"removing block {path} failed: {exc}") from exc
                self._dirty_files.discard(path)
                self._dirty_dirs.add(folder)

    def remove(self, stream: StreamName, partition: PartitionId, block_no: int) -> None:
        """Delete one block if present (a cleared quarantined run's body, at a negative
        number: ``discard`` never touches those). Durable with the next ``flush``; a crash
        before it can only leave the file behind (disk, never a wrong answer)."""
        if block_no >= 0:
            pack = self._pack(stream, partition)
            if block_no in pack.index:
                self._cut(pack, {block_no})
        path = self._file(stream, partition, block_no)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"removing block {path} failed: {exc}") from exc
        self._dirty_files.discard(path)
        self._dirty_dirs.add(os.path.dirname(path))

    def flush(self) -> None:
        files, dirs = self._dirty_files, self._dirty_dirs
        self._dirty_files, self._dirty_dirs = set(), set()
        if not self._fsync:
            return
        try:
            for path in sorted(files):
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    # removed since it was written: nothing to make durable but the unlink,
                    # which its folder's fsync covers
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for folder in sorted(dirs):
                try:
                    fd = os.open(folder, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise StorageError(f"flushing blocks failed: {exc}") from exc
