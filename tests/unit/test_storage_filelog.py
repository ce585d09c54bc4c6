"""Proves the file log keeps exactly the complete, checksummed prefix of what was written:
round trips across reopen, torn tails cut and reported at every byte, corruption refused,
segment rolls, truncation and compaction arithmetic, and fsync/ENOSPC discipline."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from geostore.errors import CorruptLogError, DiskFullError, FsyncFailedError
from geostore.ids import LogIndex, Term
from geostore.raft.types import Entry, EntryKind, SnapshotMeta
from geostore.storage import FaultyFileSystem, FileLogStore
from geostore.storage.diskformat import RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES
from geostore.storage.faults import flip_bit, lose_unsynced_writes


def mk(index: int, term: int = 1, size: int | None = None) -> Entry:
    n = (index * 7) % 23 if size is None else size
    return Entry(Term(term), LogIndex(index), EntryKind.NORMAL, bytes([index % 251]) * n)


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [mk(i, term) for i in range(lo, hi)]


def read_all(log: FileLogStore) -> list[Entry]:
    return log.entries(log.first_index(), LogIndex(log.last_index() + 1))


def test_empty_log_index_arithmetic(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path)
    assert (log.first_index(), log.last_index(), log.durable_index()) == (1, 0, 0)
    assert log.term_at(LogIndex(0)) == 0
    assert log.term_at(LogIndex(1)) is None
    assert log.entries(LogIndex(1), LogIndex(1)) == []
    assert not log.recovery.cut
    log.close()


def test_append_read_reopen_round_trip_across_segments(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path, segment_bytes_max=512)
    es = [mk(i, term=1 + i // 40) for i in range(1, 201)]
    log.append(es[:50])
    assert log.durable_index() < 50  # rolled segments were fsynced, the last one is not
    log.sync()
    assert log.durable_index() == 50
    log.append(es[50:])
    log.sync()
    assert len(log.segment_names()) > 5
    assert read_all(log) == es
    assert log.entries(LogIndex(17), LogIndex(133)) == es[16:132]
    assert log.term_at(LogIndex(39)) == 1 and log.term_at(LogIndex(40)) == 2
    assert log.term_at(LogIndex(200)) == 6 and log.term_at(LogIndex(201)) is None
    log.close()
    log = FileLogStore(tmp_path, segment_bytes_max=512)
    assert read_all(log) == es
    assert log.durable_index() == 200
    assert log.term_at(LogIndex(120)) == es[119].term
    log.close()


def test_entries_max_bytes_returns_at_least_one(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path)
    log.append([mk(i, size=100) for i in range(1, 11)])
    assert len(log.entries(LogIndex(1), LogIndex(11), max_bytes=1)) == 1
    assert len(log.entries(LogIndex(1), LogIndex(11), max_bytes=350)) == 3
    assert len(log.entries(LogIndex(3), LogIndex(11), max_bytes=10_000)) == 8
    log.close()


def test_large_record_spans_read_chunks(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path, segment_bytes_max=1 << 20)
    es = [mk(1, size=10), mk(2, size=200_000), mk(3, size=5)]
    log.append(es)
    log.sync()
    log.close()
    log = FileLogStore(tmp_path, segment_bytes_max=1 << 20)
    assert read_all(log) == es
    log.close()


def test_append_conflict_replaces_suffix_durably(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path, segment_bytes_max=400)
    log.append(entries(1, 60))
    log.sync()
    newer = [mk(i, term=3) for i in range(25, 31)]
    log.append(newer)
    assert log.last_index() == 30
    assert log.durable_index() == 24  # the truncation is durable, the new entries are not
    assert read_all(log) == entries(1, 25) + newer
    log.sync()
    log.close()
    log = FileLogStore(tmp_path, segment_bytes_max=400)
    assert read_all(log) == entries(1, 25) + newer
    assert log.term_at(LogIndex(24)) == 1 and log.term_at(LogIndex(25)) == 3
    log.close()


def test_truncate_to_segment_boundaries(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    log.append(entries(1, 80))
    log.sync()
    firsts = [int(n.split(".")[0]) for n in log.segment_names()]
    for cut in reversed(firsts[1:]):
        log.truncate_suffix(LogIndex(cut))
        assert log.last_index() == cut - 1
        assert read_all(log) == entries(1, cut)
    log.truncate_suffix(LogIndex(1))
    assert (log.first_index(), log.last_index()) == (1, 0)
    log.append(entries(1, 5, term=2))
    log.sync()
    log.close()
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    assert read_all(log) == entries(1, 5, term=2)
    log.close()


def test_compact_prefix_keeps_index_arithmetic(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    log.append(entries(1, 100))
    log.sync()
    before = len(log.segment_names())
    log.compact_prefix(SnapshotMeta(LogIndex(60), Term(1)))
    assert log.first_index() == 61 and log.last_index() == 99
    assert log.term_at(LogIndex(60)) == 1 and log.term_at(LogIndex(59)) is None
    assert len(log.segment_names()) < before
    assert read_all(log) == entries(61, 100)
    log.close()
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    assert log.first_index() == 61 and read_all(log) == entries(61, 100)
    assert log.snapshot_meta().index == 60
    log.append(entries(100, 110))
    log.sync()
    log.close()
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    assert read_all(log) == entries(61, 110)
    log.close()


def test_compact_beyond_or_against_the_log_drops_it_all(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path)
    log.append(entries(1, 10))
    log.compact_prefix(SnapshotMeta(LogIndex(50), Term(4)))
    assert (log.first_index(), log.last_index(), log.durable_index()) == (51, 50, 50)
    assert log.term_at(LogIndex(50)) == 4
    log.append(entries(51, 55, term=4))
    log.sync()
    log.compact_prefix(SnapshotMeta(LogIndex(53), Term(5)))  # term differs: log is stale
    assert (log.first_index(), log.last_index()) == (54, 53)
    log.close()
    log = FileLogStore(tmp_path)
    assert (log.first_index(), log.last_index()) == (54, 53)
    assert log.term_at(LogIndex(53)) == 5
    log.close()


def _write_sample(path: Path, n: int = 30) -> list[int]:
    """A log of ``n`` entries in one segment; the end offset of each record."""
    log = FileLogStore(path)
    log.append(entries(1, n + 1))
    log.sync()
    (seg,) = log.segment_names()
    log.close()
    ends = []
    off = SEGMENT_HEADER_BYTES
    for e in entries(1, n + 1):
        off += RECORD_HEADER_BYTES + len(e.data)
        ends.append(off)
    assert os.path.getsize(path / "log" / seg) == off
    return ends


def test_cut_at_every_byte_of_the_last_records(tmp_path: Path) -> None:
    src = tmp_path / "src"
    ends = _write_sample(src)
    seg_name = "00000000000000000001.seg"
    data = (src / "log" / seg_name).read_bytes()
    start = ends[-5]  # the last four records, every byte
    for cut in range(start, len(data) + 1):
        d = tmp_path / f"c{cut}"
        (d / "log").mkdir(parents=True)
        (d / "MANIFEST").write_bytes((src / "MANIFEST").read_bytes())
        (d / "log" / seg_name).write_bytes(data[:cut])
        log = FileLogStore(d)
        complete = sum(1 for e in ends if e <= cut)
        assert log.last_index() == complete
        assert read_all(log) == entries(1, complete + 1)
        assert log.recovery.cut == (cut not in ends)
        if log.recovery.cut:
            assert "cut a torn tail" in log.recovery.summary()
            assert log.recovery.truncated_at_offset == ends[complete - 1]
            assert log.recovery.truncated_bytes == cut - ends[complete - 1]
        # the cut tail is gone for good: appends continue right after the prefix
        log.append([mk(complete + 1, term=2)])
        log.sync()
        log.close()
        log = FileLogStore(d)
        assert read_all(log) == [*entries(1, complete + 1), mk(complete + 1, term=2)]
        assert not log.recovery.cut
        log.close()


def test_garbage_after_tail_is_cut(tmp_path: Path) -> None:
    ends = _write_sample(tmp_path)
    seg = tmp_path / "log" / "00000000000000000001.seg"
    with seg.open("ab") as f:
        f.write(b"\xff" * 100)
    log = FileLogStore(tmp_path)
    assert log.last_index() == 30 and log.recovery.truncated_at_offset == ends[-1]
    log.close()


def test_zeroed_tail_is_cut(tmp_path: Path) -> None:
    ends = _write_sample(tmp_path)
    seg = tmp_path / "log" / "00000000000000000001.seg"
    data = bytearray(seg.read_bytes())
    data[ends[-3] :] = bytes(len(data) - ends[-3])  # unsynced pages came back as zeros
    seg.write_bytes(bytes(data))
    log = FileLogStore(tmp_path)
    assert log.last_index() == 28 and log.recovery.cut
    log.close()


@pytest.mark.parametrize("which", [3, 10, 20])
def test_bit_flip_in_the_middle_is_corruption(tmp_path: Path, which: int) -> None:
    ends = _write_sample(tmp_path)
    seg = tmp_path / "log" / "00000000000000000001.seg"
    flip_bit(seg, (ends[which] + RECORD_HEADER_BYTES // 2) * 8 + 4)
    data = seg.read_bytes()
    with pytest.raises(CorruptLogError, match="intact records after it"):
        FileLogStore(tmp_path)
    # nothing was dropped: the file is untouched
    assert seg.read_bytes() == data


def test_bit_flip_in_an_earlier_segment_is_corruption(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    log.append(entries(1, 60))
    log.sync()
    first = log.segment_names()[0]
    log.close()
    seg = tmp_path / "log" / first
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0x01  # the last record of a segment that is not the last one
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="before the last segment"):
        FileLogStore(tmp_path, segment_bytes_max=300)


def test_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    log.append(entries(1, 60))
    log.sync()
    names = log.segment_names()
    log.close()
    os.unlink(tmp_path / "log" / names[1])
    with pytest.raises(CorruptLogError, match="not contiguous"):
        FileLogStore(tmp_path, segment_bytes_max=300)


def test_corruption_detected_on_read(tmp_path: Path) -> None:
    ends = _write_sample(tmp_path)
    log = FileLogStore(tmp_path)
    with open(tmp_path / "log" / "00000000000000000001.seg", "r+b") as f:
        f.seek(ends[5] - 1)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    with pytest.raises(CorruptLogError, match="checksum"):
        log.entries(LogIndex(1), LogIndex(31))
    log.close()


def test_fsync_failure_is_sticky(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    log = FileLogStore(tmp_path, fs=fs)
    log.append(entries(1, 5))
    log.sync()
    log.append(entries(5, 8))
    fs.fail_fsync = True
    with pytest.raises(FsyncFailedError, match="node must stop"):
        log.sync()
    fs.fail_fsync = False  # even once the disk "recovers", nothing is retried
    ops: list[Callable[[], None]] = [
        lambda: log.sync(),
        lambda: log.append(entries(8, 9)),
        lambda: log.truncate_suffix(LogIndex(3)),
        lambda: log.compact_prefix(SnapshotMeta(LogIndex(2), Term(1))),
    ]
    for op in ops:
        with pytest.raises(FsyncFailedError):
            op()
    assert log.durable_index() == 4
    assert read_all(log) == entries(1, 8)  # reads keep working
    log.close()


def test_enospc_refuses_writes_and_reads_keep_working(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    log = FileLogStore(tmp_path, fs=fs, segment_bytes_max=400)
    log.append(entries(1, 20))
    log.sync()
    fs.space_left_bytes = 50  # the next batch lands partly, then the disk is full
    with pytest.raises(DiskFullError):
        log.append(entries(20, 40))
    with pytest.raises(DiskFullError):
        log.append(entries(20, 21))
    assert log.last_index() == 19
    assert read_all(log) == entries(1, 20)
    log.sync()
    fs.space_left_bytes = None  # space freed: writes work again
    log.append(entries(20, 40))
    log.sync()
    log.close()
    log = FileLogStore(tmp_path, segment_bytes_max=400)
    assert read_all(log) == entries(1, 40) and not log.recovery.cut
    log.close()


def test_durable_watermarks_model_power_loss(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path, segment_bytes_max=400)
    log.append(entries(1, 30))
    log.sync()
    log.append(entries(30, 50))  # written, not synced
    marks = log.durable_watermarks()
    assert set(marks) == set(log.segment_names())
    log.close()
    assert lose_unsynced_writes(tmp_path / "log", marks) == marks
    log = FileLogStore(tmp_path, segment_bytes_max=400)
    assert log.last_index() >= 29 and read_all(log) == entries(1, log.last_index() + 1)
    log.close()


def test_manifest_version_mismatch_refused(tmp_path: Path) -> None:
    from geostore.errors import FormatVersionError
    from geostore.storage.diskformat import encode_checked

    FileLogStore(tmp_path).close()
    (tmp_path / "MANIFEST").write_bytes(
        encode_checked({"kind": "geostore-data-dir", "format_version": 99})
    )
    with pytest.raises(FormatVersionError, match="format version 99"):
        FileLogStore(tmp_path)


def test_enospc_across_a_segment_roll_leaves_nothing_behind(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    log = FileLogStore(tmp_path, fs=fs, segment_bytes_max=300)
    log.append(entries(1, 5))
    log.sync()
    segments = log.segment_names()
    fs.space_left_bytes = 400  # the batch rolls a segment, then the disk fills
    with pytest.raises(DiskFullError):
        log.append(entries(5, 60))
    assert log.segment_names() == segments and log.last_index() == 4
    marks = log.durable_watermarks()
    log.close()
    for name, size in marks.items():  # and a power loss right after
        os.truncate(tmp_path / "log" / name, size)
    assert sorted(p.name for p in (tmp_path / "log").glob("*.seg")) == sorted(segments)
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    assert read_all(log) == entries(1, 5) and not log.recovery.cut
    log.close()


def _segment_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (path / "log").glob("*.seg")}


def test_reopen_finishes_an_interrupted_compaction(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    log.append(entries(1, 60))
    log.sync()
    before = _segment_files(tmp_path)
    log.compact_prefix(SnapshotMeta(LogIndex(40), Term(1)))
    log.close()
    for name, data in before.items():  # the crash came before the segments were deleted
        (tmp_path / "log" / name).write_bytes(data)
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    assert log.recovery.removed_segments
    assert log.first_index() == 41 and read_all(log) == entries(41, 60)
    log.close()


def test_reopen_finishes_an_interrupted_drop_of_a_stale_log(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    log.append(entries(1, 60))
    log.sync()
    before = _segment_files(tmp_path)
    log.compact_prefix(SnapshotMeta(LogIndex(40), Term(9)))  # does not match: all dropped
    log.close()
    for p in (tmp_path / "log").glob("*.seg"):
        p.unlink()
    oldest = sorted(before)[:2]  # a crash left the oldest segments undeleted
    for name in oldest:
        (tmp_path / "log" / name).write_bytes(before[name])
    log = FileLogStore(tmp_path, segment_bytes_max=300)
    assert (log.first_index(), log.last_index()) == (41, 40)
    assert log.term_at(LogIndex(40)) == 9
    log.append(entries(41, 45, term=9))
    log.close()


def test_far_from_the_tail_damage_is_found_and_garbage_is_cut(tmp_path: Path) -> None:
    log = FileLogStore(tmp_path, segment_bytes_max=4 << 20)
    log.append([mk(i, size=100) for i in range(1, 4001)])
    log.sync()
    (name,) = log.segment_names()
    log.close()
    seg = tmp_path / "log" / name
    good = seg.read_bytes()
    with seg.open("ab") as f:  # a torn flush of 300 KiB: no record in it is intact
        f.write(os.urandom(300 * 1024))
    log = FileLogStore(tmp_path, segment_bytes_max=4 << 20)
    assert log.last_index() == 4000 and log.recovery.truncated_bytes == 300 * 1024
    log.close()
    assert seg.read_bytes() == good
    damaged = bytearray(good)
    length_field = SEGMENT_HEADER_BYTES + 99 * (RECORD_HEADER_BYTES + 100) + 4
    damaged[length_field + 2] ^= 0x40  # record 100 now claims to run past the end
    seg.write_bytes(bytes(damaged))
    with pytest.raises(CorruptLogError, match="intact records after it"):
        FileLogStore(tmp_path, segment_bytes_max=4 << 20)
