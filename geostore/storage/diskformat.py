"""On-disk formats of the file storage: log records, segment headers, checked small files.

Theory of operation:

- A **log record** is ``crc32 u32 | data_len u32 | term u64 | index u64 | kind u8 | data``,
  little-endian. The checksum covers everything after itself, so a flipped bit anywhere in a
  record, including its length, is detected on read and on recovery. The format is local to
  storage on purpose: the write path is one ``struct.pack`` and one ``zlib.crc32`` per record
  and one ``os.write`` per batch, with no per-record allocation beyond that.
- A **segment** starts with a 24-byte header: magic, format version, first index, checksum.
  Its file name is the first index too (``00000000000000000001.seg``), so the order of
  segments is the order of names and a stray file cannot be mistaken for a segment.
- **Small files** (manifest, hard state, log meta, snapshot meta) are JSON followed by a
  4-byte crc32, written with :func:`atomic_write`: temp file, fsync, rename, fsync the dir.
  After a crash a reader sees the old or the new content, whole; a checksum failure is
  corruption (CorruptLogError), never silently replaced by defaults.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

from geostore.errors import CorruptLogError, FormatVersionError, FsyncFailedError
from geostore.storage.syscalls import FileSystem, write_all

#: Version of every on-disk format below; a data dir of another version is refused.
FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST"
_MANIFEST_KIND = "geostore-data-dir"

RECORD_HEADER = struct.Struct("<IIQQB")
RECORD_HEADER_BYTES = RECORD_HEADER.size  # 25
#: the header without its leading checksum (what the checksum covers, before the data)
RECORD_BODY_HEADER = struct.Struct("<IQQB")
CRC = struct.Struct("<I")
#: a record longer than this is corruption, not data (bounds recovery's allocation)
RECORD_DATA_MAX_BYTES = 64 * 1024 * 1024

SEGMENT_MAGIC = b"GSTORLOG"
SEGMENT_HEADER = struct.Struct("<8sIQI")
SEGMENT_HEADER_BYTES = SEGMENT_HEADER.size  # 24
SEGMENT_SUFFIX = ".seg"


def segment_name(first_index: int) -> str:
    return f"{first_index:020d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    stem, dot, ext = name.partition(".")
    if "." + ext != SEGMENT_SUFFIX or not dot or len(stem) != 20 or not stem.isdigit():
        return None
    return int(stem)


def encode_segment_header(first_index: int) -> bytes:
    body = struct.pack("<8sIQ", SEGMENT_MAGIC, FORMAT_VERSION, first_index)
    return body + CRC.pack(zlib.crc32(body))


def check_segment_header(raw: bytes, name: str, first_index: int) -> None:
    """Raise CorruptLogError or FormatVersionError unless ``raw`` is this segment's header."""
    magic, version, first, crc = SEGMENT_HEADER.unpack(raw)
    if magic != SEGMENT_MAGIC or crc != zlib.crc32(raw[:20]):
        raise CorruptLogError(f"segment {name}: bad header", segment=name)
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"segment {name} has format version {version}, this build reads {FORMAT_VERSION}",
            segment=name,
        )
    if first != first_index:
        raise CorruptLogError(
            f"segment {name}: header says first index {first}", segment=name, first=first
        )


def encode_record(term: int, index: int, kind: int, data: bytes) -> bytes:
    body = RECORD_BODY_HEADER.pack(len(data), term, index, kind)
    return CRC.pack(zlib.crc32(data, zlib.crc32(body))) + body + data


def record_crc_ok(buf: bytes | memoryview, pos: int, data_len: int, crc: int) -> bool:
    start = pos + 4
    end = pos + RECORD_HEADER_BYTES + data_len
    return zlib.crc32(buf[start:end]) == crc


# -- small checked files ----------------------------------------------------------------------


def encode_checked(obj: dict[str, Any]) -> bytes:
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return payload + CRC.pack(zlib.crc32(payload))


def decode_checked(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) < 4 or CRC.unpack(raw[-4:])[0] != zlib.crc32(raw[:-4]):
        raise CorruptLogError(f"{what}: checksum mismatch", file=what)
    try:
        obj = json.loads(raw[:-4])
    except ValueError as exc:
        raise CorruptLogError(f"{what}: not JSON ({exc})", file=what) from None
    if not isinstance(obj, dict):
        raise CorruptLogError(f"{what}: not an object", file=what)
    return obj


def read_file(fs: FileSystem, path: str) -> bytes:
    fd = fs.open_read(path)
    try:
        chunks: list[bytes] = []
        off = 0
        while True:
            chunk = fs.pread(fd, 1 << 20, off)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            off += len(chunk)
    finally:
        fs.close(fd)


def fsync_or_fail(fs: FileSystem, fd: int, what: str, *, data_only: bool = False) -> None:
    """fsync, turning any error into FsyncFailedError (callers make it sticky)."""
    try:
        if data_only:
            fs.fdatasync(fd)
        else:
            fs.fsync(fd)
    except OSError as exc:
        raise FsyncFailedError(
            f"fsync of {what} failed ({exc}); refusing further writes: the node must stop "
            "and recover from disk",
            file=what,
        ) from exc


def fsync_dir_or_fail(fs: FileSystem, path: str) -> None:
    try:
        fs.fsync_dir(path)
    except OSError as exc:
        raise FsyncFailedError(
            f"fsync of directory {path} failed ({exc}); refusing further writes: the node "
            "must stop",
            file=path,
        ) from exc


def atomic_write(fs: FileSystem, directory: str, name: str, data: bytes) -> None:
    """Replace ``directory/name`` atomically and durably (temp, fsync, rename, fsync dir).

    ENOSPC surfaces as OSError for the caller to type; fsync failures as FsyncFailedError.
    """
    tmp = os.path.join(directory, name + ".tmp")
    fd = fs.open_write(tmp)
    try:
        write_all(fs, fd, data)
        fsync_or_fail(fs, fd, tmp)
    finally:
        fs.close(fd)
    fs.rename(tmp, os.path.join(directory, name))
    fsync_dir_or_fail(fs, directory)


def make_dir_durable(fs: FileSystem, path: str) -> None:
    """Create ``path`` (and parents) if missing, fsyncing the parent so the new directory's
    entry survives a power loss (a directory entry is durable only once its parent is)."""
    if fs.exists(path):
        return
    fs.makedirs(path)
    fsync_dir_or_fail(fs, os.path.dirname(os.path.abspath(path)))


def ensure_manifest(fs: FileSystem, directory: str) -> None:
    """Create the data dir's manifest, or refuse a dir of another format version."""
    make_dir_durable(fs, directory)
    path = os.path.join(directory, MANIFEST_NAME)
    if not fs.exists(path):
        atomic_write(
            fs,
            directory,
            MANIFEST_NAME,
            encode_checked({"kind": _MANIFEST_KIND, "format_version": FORMAT_VERSION}),
        )
        return
    obj = decode_checked(read_file(fs, path), path)
    if obj.get("kind") != _MANIFEST_KIND:
        raise FormatVersionError(f"{path}: not a geostore data dir manifest", path=path)
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"{directory} holds data in format version {version}; this build reads version "
            f"{FORMAT_VERSION} only (migrate the data dir or use a matching build)",
            path=path,
            found=version,
            expected=FORMAT_VERSION,
        )
