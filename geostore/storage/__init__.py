"""Durable storage of a node: the ports, an in-memory model for the simulator, and files.

- :mod:`.ports`: ``LogStore`` (a ``LogReader`` the node wiring writes), ``HardStateStore``,
  ``SnapshotStore`` and ``SnapshotWriter``: who owns what, ordering and durability.
- :mod:`.memory`: volatile vs durable state and crashes, for the deterministic simulator.
- :mod:`.filelog`, :mod:`.files`: the segmented, checksummed file log with recovery, the
  atomic hard-state file and snapshot files; :func:`open_storage` opens a whole data dir.
- :mod:`.group_commit`: many appenders, one write and one fsync per flush.
- :mod:`.syscalls`: every OS call behind an injectable object (fault tests).
- :mod:`.faults`: power loss (cut segments to their fsync watermarks) and bit flips applied
  to a stopped node's data dir.
"""

from typing import TYPE_CHECKING

from geostore.raft.types import LogReader
from geostore.storage.diskformat import FORMAT_VERSION
from geostore.storage.filelog import SEGMENT_BYTES_MAX_DEFAULT, FileLogStore, RecoveryReport
from geostore.storage.files import (
    FileHardStateStore,
    FileSnapshotStore,
    FileSnapshotWriter,
    FileStorage,
    open_storage,
)
from geostore.storage.group_commit import GroupCommitLog
from geostore.storage.memory import (
    MemoryHardStateStore,
    MemoryLogStore,
    MemorySnapshotStore,
    MemorySnapshotWriter,
)
from geostore.storage.ports import HardStateStore, LogStore, SnapshotStore, SnapshotWriter
from geostore.storage.syscalls import FaultyFileSystem, FileSystem

__all__ = [
    "FORMAT_VERSION",
    "SEGMENT_BYTES_MAX_DEFAULT",
    "FaultyFileSystem",
    "FileHardStateStore",
    "FileLogStore",
    "FileSnapshotStore",
    "FileSnapshotWriter",
    "FileStorage",
    "FileSystem",
    "GroupCommitLog",
    "HardStateStore",
    "LogStore",
    "MemoryHardStateStore",
    "MemoryLogStore",
    "MemorySnapshotStore",
    "MemorySnapshotWriter",
    "RecoveryReport",
    "SnapshotStore",
    "SnapshotWriter",
    "open_storage",
]

if TYPE_CHECKING:  # the implementations satisfy the ports (checked by mypy, never run)

    def _conforms(
        a: FileLogStore,
        b: MemoryLogStore,
        c: FileHardStateStore,
        d: MemoryHardStateStore,
        e: FileSnapshotStore,
        f: MemorySnapshotStore,
        g: FileSnapshotWriter,
        h: MemorySnapshotWriter,
        i: GroupCommitLog,
    ) -> tuple[
        LogStore,
        LogStore,
        HardStateStore,
        HardStateStore,
        SnapshotStore,
        SnapshotStore,
        SnapshotWriter,
        SnapshotWriter,
        LogReader,
    ]:
        return (a, b, c, d, e, f, g, h, i)
