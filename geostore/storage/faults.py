"""Disk faults applied to a stopped node's data dir, for process-level and unit tests.

Theory of operation: SIGKILL alone never loses data (the page cache survives a process kill),
so a harness models a power loss by cutting each segment file back to the bytes an fsync had
covered, as the node reported them through ``durable_watermarks()`` before it was killed
(fault S1), optionally keeping a random part of the unsynced tail (S2, a torn write). Bit flips
model media corruption (S3). Only call these on a data dir no process has open.
"""

from __future__ import annotations

import os
import random

from geostore.storage.diskformat import SEGMENT_SUFFIX


def lose_unsynced_writes(
    segment_dir: str | os.PathLike[str],
    watermarks: dict[str, int],
    rng: random.Random | None = None,
) -> dict[str, int]:
    """Cut every segment file to its fsync watermark (with ``rng``: to a random length between
    the watermark and its size, a torn write). Returns the new size of each file.

    A segment file the watermarks do not name (the log never knew it) is cut to 0 bytes.
    """
    sizes: dict[str, int] = {}
    for name in sorted(os.listdir(segment_dir)):
        if not name.endswith(SEGMENT_SUFFIX):
            continue
        path = os.path.join(segment_dir, name)
        size = os.path.getsize(path)
        mark = min(watermarks.get(name, 0), size)
        keep = rng.randint(mark, size) if rng is not None else mark
        os.truncate(path, keep)
        sizes[name] = keep
    return sizes


def flip_bit(path: str | os.PathLike[str], bit_offset: int) -> None:
    """Invert one bit of a file in place (``bit_offset`` counts bits from the start)."""
    with open(path, "r+b") as f:
        f.seek(bit_offset // 8)
        byte = f.read(1)
        assert byte, f"offset {bit_offset} is past the end of {path}"
        f.seek(bit_offset // 8)
        f.write(bytes([byte[0] ^ (1 << (bit_offset % 8))]))
