"""Sealed event blocks on disk: the file implementation of the store's BlockStore port.

One file per sealed block, ``<dir>/<stream>/<partition>/<block_no>.blk`` (negative numbers:
the bodies of the partition's quarantined runs, which ``discard`` never touches). A block is
immutable, so a put writes a temporary file and renames it into place (a reader never sees
half a block); ``flush`` fsyncs the files and directories written since the last flush.
Blocks are re-derivable from the Raft log and from snapshots (which carry them), so a block
lost in a crash before its flush is put again when the log is replayed.
"""

from __future__ import annotations

import os

from geostore.errors import StorageError
from geostore.ids import PartitionId, StreamName


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


class FileBlockStore:
    """A :class:`geostore.store.BlockStore` over plain files (see the module docstring)."""

    def __init__(self, root: str, *, fsync: bool = True) -> None:
        self._root = root
        self._fsync = fsync
        self._dirty_files: list[str] = []
        self._dirty_dirs: set[str] = set()
        self.gets = 0
        self.puts = 0
        os.makedirs(root, exist_ok=True)

    def _path(self, stream: StreamName, partition: PartitionId, block_no: int) -> str:
        # stream names are checked by the store (no path separators); hex keeps them safe anyway
        return os.path.join(
            self._root, stream.encode().hex(), str(int(partition)), f"{block_no}.blk"
        )

    def put(self, stream: StreamName, partition: PartitionId, block_no: int, data: bytes) -> None:
        path = self._path(stream, partition, block_no)
        folder = os.path.dirname(path)
        tmp = path + ".tmp"
        try:
            try:
                _write_file(tmp, data)
            except FileNotFoundError:  # the partition's first block: make its folder first
                os.makedirs(folder, exist_ok=True)  # (not before every put: a syscall each)
                _write_file(tmp, data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"writing block {path} failed: {exc}") from exc
        self.puts += 1
        self._dirty_files.append(path)
        self._dirty_dirs.add(folder)

    def get(self, stream: StreamName, partition: PartitionId, block_no: int) -> bytes:
        self.gets += 1
        path = self._path(stream, partition, block_no)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"block {stream}/{partition}/{block_no} is missing") from None
        except OSError as exc:
            raise StorageError(f"reading block {path} failed: {exc}") from exc

    def has(self, stream: StreamName, partition: PartitionId, block_no: int) -> bool:
        return os.path.exists(self._path(stream, partition, block_no))

    def discard(self, stream: StreamName, partition: PartitionId, block_no: int) -> None:
        """Remove the files of blocks ``block_no`` and after (a failback rewound the partition;
        their numbers are used again with other bytes). Durable with the next ``flush``."""
        folder = os.path.dirname(self._path(stream, partition, block_no))
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"listing blocks in {folder} failed: {exc}") from exc
        for name in names:
            stem, dot, ext = name.partition(".")
            if dot and ext == "blk" and stem.isdigit() and int(stem) >= block_no:
                path = os.path.join(folder, name)
                try:
                    os.unlink(path)
                except OSError as exc:
                    raise StorageError(f"removing block {path} failed: {exc}") from exc
                if path in self._dirty_files:
                    self._dirty_files.remove(path)
        self._dirty_dirs.add(folder)

    def remove(self, stream: StreamName, partition: PartitionId, block_no: int) -> None:
        """Delete one block file if present (a cleared quarantined run's body, at a negative
        number: ``discard`` never lists those). Durable with the next ``flush``; a crash
        before it can only leave the file behind (disk, never a wrong answer)."""
        path = self._path(stream, partition, block_no)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"removing block {path} failed: {exc}") from exc
        # no scan of _dirty_files here (a restore may remove many after putting many):
        # flush skips the files that are gone
        self._dirty_dirs.add(os.path.dirname(path))

    def flush(self) -> None:
        files, dirs = self._dirty_files, self._dirty_dirs
        self._dirty_files, self._dirty_dirs = [], set()
        if not self._fsync:
            return
        try:
            for path in files:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    # removed or discarded since its put (maybe put twice, so still listed):
                    # nothing to make durable but the unlink, which its folder's fsync covers
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for folder in sorted(dirs):
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise StorageError(f"flushing blocks failed: {exc}") from exc
