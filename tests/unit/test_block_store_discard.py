"""Both block stores drop the blocks a failback rewound (from a block number on, one partition only), so their numbers can be put again with other bytes, on disk durably with the next flush; the quarantined bodies at negative numbers survive that and are removed one at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from geostore.errors import StorageError
from geostore.ids import PartitionId, StreamName
from geostore.runtime.blocks import FileBlockStore
from geostore.store import MemoryBlockStore

S = StreamName("s")
P0, P1 = PartitionId(0), PartitionId(1)


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_discard_drops_blocks_from_a_number_on_in_one_partition(kind: str, tmp_path: Path) -> None:
    store = MemoryBlockStore() if kind == "memory" else FileBlockStore(str(tmp_path))
    for n in range(4):
        store.put(S, P0, n, f"p0-{n}".encode())
        store.put(S, P1, n, f"p1-{n}".encode())
    store.flush()
    store.discard(S, P0, 2)
    store.flush()
    assert [store.has(S, P0, n) for n in range(4)] == [True, True, False, False]
    assert all(store.has(S, P1, n) for n in range(4))
    with pytest.raises(StorageError):
        store.get(S, P0, 2)
    store.put(S, P0, 2, b"other bytes")  # the number is free again
    assert store.get(S, P0, 2) == b"other bytes"
    store.discard(StreamName("nothing-here"), P0, 0)  # nothing to drop is fine


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_quarantined_bodies_at_negative_numbers_survive_discard_and_remove_one_by_one(
    kind: str, tmp_path: Path
) -> None:
    store = MemoryBlockStore() if kind == "memory" else FileBlockStore(str(tmp_path))
    for n in (-3, -2, -1, 0, 1):
        store.put(S, P0, n, f"b{n}".encode())
    store.discard(S, P0, 0)  # a failback rewinding to the start keeps the quarantine
    assert [store.has(S, P0, n) for n in (-3, -2, -1, 0, 1)] == [True] * 3 + [False] * 2
    store.remove(S, P0, -2)
    store.remove(S, P0, -2)  # idempotent
    store.remove(S, P1, -1)  # another partition's: nothing there
    store.flush()
    assert [store.has(S, P0, n) for n in (-3, -2, -1)] == [True, False, True]
    assert store.get(S, P0, -3) == b"b-3"


def test_a_body_put_twice_before_a_flush_then_removed_does_not_fail_the_flush(
    tmp_path: Path,
) -> None:
    # a follower that applied a failback, then installed two snapshots carrying the same
    # body (no flush in between) and a third that says it was cleared
    store = FileBlockStore(str(tmp_path))
    store.put(S, P0, -1, b"body")
    store.put(S, P0, -1, b"body")
    store.put(S, P0, 3, b"block")
    store.put(S, P0, 3, b"block")
    store.remove(S, P0, -1)
    store.discard(S, P0, 0)
    store.flush()
    assert not store.has(S, P0, -1) and not store.has(S, P0, 3)
