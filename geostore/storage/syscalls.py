"""The operating-system calls of the file storage, behind one small injectable object.

Theory of operation: every byte the file log, the hard-state file and the snapshot files put on
disk goes through a :class:`FileSystem`. Production uses the real calls; tests and fault
harnesses pass a :class:`FaultyFileSystem` that can fail an fsync (EIO), report a full disk
(ENOSPC) after a byte budget, fail a rename (a crash between the temp write and the rename),
or call a hook around every fsync (a lazy or counting fsync that proves nothing is reported
durable before its fsync returned). Keeping the surface this small is what makes the fault
tests cheap and exhaustive.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable


class FileSystem:
    """Thin wrappers over ``os``: file descriptors, positional reads, fsync, rename."""

    def open_append(self, path: str) -> int:
        """Open (creating if absent) for writing at the end; reads use :meth:`pread`."""
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

    def open_write(self, path: str) -> int:
        """Create or truncate ``path`` for writing from offset 0."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

    def open_read(self, path: str) -> int:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        return os.pread(fd, length, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        # fdatasync skips the inode timestamps; the size change of an append is still covered.
        os.fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def fstat_size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def fsync_dir(self, path: str) -> None:
        """Make creates, renames and unlinks inside ``path`` durable (they are not until then)."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)


def write_all(fs: FileSystem, fd: int, data: bytes | memoryview) -> None:
    """Write every byte (a regular file may still return a short count, e.g. near ENOSPC)."""
    view = memoryview(data)
    while view:
        n = fs.write(fd, view)
        assert n > 0, "write returned 0 bytes"
        view = view[n:]


class FaultyFileSystem(FileSystem):
    """A real file system with knobs for fault tests (S1, S2, S6, S8 of the fault catalogue).

    - ``fail_fsync``: every later fsync/fdatasync raises EIO (after the hook ran).
    - ``space_left_bytes``: a byte budget for writes; past it, the write that crosses it writes
      what fits and the next call raises ENOSPC, like a filling disk.
    - ``fail_rename``: the next rename raises (a crash between temp write and rename).
    - ``crash_after_unlinks``: after that many more unlinks, the next one raises (a crash
      between two unlinks: the files removed so far stay removed); then it resets to None.
    - ``before_fsync``: called with the fd before each fsync (may block: a slow or lazy fsync).
    - ``fsyncs`` counts fsync calls; ``written_bytes`` counts bytes written.
    """

    def __init__(self) -> None:
        self.fail_fsync = False
        self.space_left_bytes: int | None = None
        self.fail_rename = False
        self.crash_after_unlinks: int | None = None
        self.before_fsync: Callable[[int], None] | None = None
        self.after_fsync: Callable[[int], None] | None = None
        self.fsyncs = 0
        self.written_bytes = 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.space_left_bytes is not None:
            if self.space_left_bytes <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if len(data) > self.space_left_bytes:
                data = memoryview(data)[: self.space_left_bytes]
            self.space_left_bytes -= len(data)
        n = super().write(fd, data)
        self.written_bytes += n
        return n

    def _fsync_common(self, fd: int) -> None:
        if self.before_fsync is not None:
            self.before_fsync(fd)
        if self.fail_fsync:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.fsyncs += 1

    def fsync(self, fd: int) -> None:
        self._fsync_common(fd)
        super().fsync(fd)
        if self.after_fsync is not None:
            self.after_fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._fsync_common(fd)
        super().fdatasync(fd)
        if self.after_fsync is not None:
            self.after_fsync(fd)

    def rename(self, src: str, dst: str) -> None:
        if self.fail_rename:
            self.fail_rename = False
            raise OSError(errno.EIO, "injected crash before rename")
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        if self.crash_after_unlinks is not None:
            if self.crash_after_unlinks <= 0:
                self.crash_after_unlinks = None
                raise OSError(errno.EIO, f"injected crash before unlinking {path}")
            self.crash_after_unlinks -= 1
        super().unlink(path)
