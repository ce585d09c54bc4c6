"""Proves the hard-state and snapshot files are atomic and durable: a crash between the temp
write and the rename leaves the old state readable, corruption is a typed error, fsync errors
are sticky, snapshots stream in chunks, keep only the newest, and uncommitted ones vanish; a
crash between the two unlinks of an older snapshot still reopens on the newest; and that a data
dir of another format version is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geostore.errors import CorruptLogError, FormatVersionError, FsyncFailedError, StorageError
from geostore.ids import LogIndex, NodeId, Term
from geostore.raft.types import ConfState, HardState, SnapshotMeta
from geostore.storage import (
    FaultyFileSystem,
    FileHardStateStore,
    FileSnapshotStore,
    open_storage,
)
from geostore.storage.diskformat import encode_checked


def test_hard_state_round_trip(tmp_path: Path) -> None:
    store = FileHardStateStore(tmp_path)
    assert store.load() == HardState()
    state = HardState(Term(5), NodeId("n3"), LogIndex(42))
    store.save(state)
    assert FileHardStateStore(tmp_path).load() == state
    store.save(HardState(Term(6), None, LogIndex(42)))
    assert FileHardStateStore(tmp_path).load() == HardState(Term(6), None, LogIndex(42))


def test_hard_state_crash_before_rename_keeps_old(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = FileHardStateStore(tmp_path, fs=fs)
    old = HardState(Term(2), NodeId("a"), LogIndex(1))
    store.save(old)
    fs.fail_rename = True
    with pytest.raises(StorageError):
        store.save(HardState(Term(3), NodeId("b"), LogIndex(2)))
    assert (tmp_path / "hardstate.tmp").exists()  # the new state was written, not renamed
    assert FileHardStateStore(tmp_path).load() == old


def test_hard_state_corruption_is_typed(tmp_path: Path) -> None:
    store = FileHardStateStore(tmp_path)
    store.save(HardState(Term(2), NodeId("a"), LogIndex(1)))
    path = tmp_path / "hardstate"
    data = bytearray(path.read_bytes())
    data[3] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError):
        FileHardStateStore(tmp_path).load()


def test_hard_state_fsync_failure_is_sticky(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    store = FileHardStateStore(tmp_path, fs=fs)
    fs.fail_fsync = True
    with pytest.raises(FsyncFailedError):
        store.save(HardState(Term(1)))
    fs.fail_fsync = False
    with pytest.raises(FsyncFailedError):
        store.save(HardState(Term(1)))


META = SnapshotMeta(LogIndex(100), Term(3), ConfState(frozenset({NodeId("a"), NodeId("b")})))


def test_snapshot_write_commit_read_in_chunks(tmp_path: Path) -> None:
    snaps = FileSnapshotStore(tmp_path)
    assert snaps.latest() is None and list(snaps.read_chunks(10)) == []
    w = snaps.begin(META)
    body = os.urandom(10_000)
    for off in range(0, len(body), 3000):
        w.write(body[off : off + 3000])
    assert snaps.latest() is None
    assert w.commit() == META
    assert snaps.latest() == META
    chunks = list(snaps.read_chunks(4096))
    assert [len(c) for c in chunks] == [4096, 4096, 1808] and b"".join(chunks) == body
    reopened = FileSnapshotStore(tmp_path)
    assert reopened.latest() == META
    assert b"".join(reopened.read_chunks(999)) == body


def test_snapshot_keeps_only_newest_and_drops_uncommitted(tmp_path: Path) -> None:
    snaps = FileSnapshotStore(tmp_path)
    for i in (1, 2, 3):
        w = snaps.begin(SnapshotMeta(LogIndex(i * 10), Term(1)))
        w.write(b"s%d" % i)
        w.commit()
    pending = snaps.begin(SnapshotMeta(LogIndex(40), Term(1)))
    pending.write(b"never committed")  # a crash now
    files = sorted(os.listdir(tmp_path / "snapshots"))
    assert len([f for f in files if f.endswith(".snapmeta")]) == 1
    reopened = FileSnapshotStore(tmp_path)
    assert reopened.latest() == SnapshotMeta(LogIndex(30), Term(1))
    assert b"".join(reopened.read_chunks(2)) == b"s3"
    assert not [f for f in os.listdir(tmp_path / "snapshots") if f.endswith(".tmp")]
    aborted = reopened.begin(SnapshotMeta(LogIndex(50), Term(1)))
    aborted.write(b"x")
    aborted.abort()
    assert reopened.latest() == SnapshotMeta(LogIndex(30), Term(1))


def test_snapshot_corruption_detected_on_read(tmp_path: Path) -> None:
    snaps = FileSnapshotStore(tmp_path)
    w = snaps.begin(META)
    w.write(b"a" * 1000)
    w.commit()
    (data_file,) = (tmp_path / "snapshots").glob("*.snap")
    raw = bytearray(data_file.read_bytes())
    raw[500] ^= 1
    data_file.write_bytes(bytes(raw))
    with pytest.raises(CorruptLogError):
        b"".join(FileSnapshotStore(tmp_path).read_chunks(100))


def test_open_storage_and_manifest_version(tmp_path: Path) -> None:
    storage = open_storage(tmp_path, segment_bytes_max=4096)
    storage.hard_state.save(HardState(Term(1)))
    assert storage.log.last_index() == 0 and storage.snapshots.latest() is None
    storage.close()
    (tmp_path / "MANIFEST").write_bytes(
        encode_checked({"kind": "geostore-data-dir", "format_version": 0})
    )
    for opener in (
        lambda: open_storage(tmp_path),
        lambda: FileHardStateStore(tmp_path),
        lambda: FileSnapshotStore(tmp_path),
    ):
        with pytest.raises(FormatVersionError, match="format version 0"):
            opener()
    (tmp_path / "MANIFEST").write_bytes(b"garbage")
    with pytest.raises(CorruptLogError):
        open_storage(tmp_path)


class _ListsDataFirst(FaultyFileSystem):
    """Lists a directory in name order, which puts a snapshot's data file (``N.snap``) before
    its meta (``N.snapmeta``): the worst order for a removal that follows the listing, and a
    legal one (the OS promises no order)."""

    def listdir(self, path: str) -> list[str]:
        return sorted(super().listdir(path))


@pytest.mark.parametrize("unlinks_done", [0, 1])
def test_crash_between_an_old_snapshots_unlinks_keeps_the_newest(
    tmp_path: Path, unlinks_done: int
) -> None:
    fs = _ListsDataFirst()
    snaps = FileSnapshotStore(tmp_path, fs=fs)
    folder = tmp_path / "snapshots"
    old, new = SnapshotMeta(LogIndex(10), Term(1)), SnapshotMeta(LogIndex(20), Term(1))
    w = snaps.begin(old)
    w.write(b"old")
    w.commit()
    (old_meta,) = folder.glob("*.snapmeta")
    old_meta_bytes = old_meta.read_bytes()
    w = snaps.begin(new)
    w.write(b"new")
    # committing the new snapshot removes the old one's two files: the power goes after
    # `unlinks_done` of them
    fs.crash_after_unlinks = unlinks_done
    with pytest.raises(OSError, match="injected crash"):
        w.commit()
    left = sorted(os.listdir(folder))
    old_files = [f"{1:020d}.snap", f"{1:020d}.snapmeta"]
    new_files = [f"{2:020d}.snap", f"{2:020d}.snapmeta"]
    # the meta file goes first: a crash never leaves the old meta without its data
    assert left == sorted(old_files[: 2 - unlinks_done] + new_files), left
    reopened = open_storage(tmp_path).snapshots  # what a restarted node opens
    assert reopened.latest() == new
    assert b"".join(reopened.read_chunks(2)) == b"new"
    assert sorted(os.listdir(folder)) == new_files  # the old data without meta is gone
    # Negative control: removing data first would have left the old meta without its data
    # after one unlink; the store then refuses to open, although the newest snapshot is whole.
    old_meta.write_bytes(old_meta_bytes)
    with pytest.raises(CorruptLogError, match="data is missing"):
        FileSnapshotStore(tmp_path)
