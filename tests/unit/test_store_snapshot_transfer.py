"""A snapshot kept by reference expands to the self-contained snapshot a catching-up node restores exactly, and stays small as the data grows."""

from __future__ import annotations

from geostore.ids import LogIndex
from geostore.store import EventStore, MemoryBlockStore, StoreTuning, encode_command


def _filled(events: int) -> EventStore:
    store = EventStore(MemoryBlockStore(), tuning=StoreTuning(block_events_max=16))
    store.apply(LogIndex(1), store.validate_create({"name": "s", "partitions": 2}))
    index = 2
    for start in range(0, events, 50):
        prep = store.validate_append(
            "s",
            [{"body": {"n": i, "pad": "x" * 40}} for i in range(start, start + 50)],
            now_us=start,
            producer={"id": "p", "seq": start},
        )
        for batch in prep.batches:
            store.apply_entry(LogIndex(index), encode_command(batch))
            index += 1
    return store


def test_expanded_snapshot_restores_the_same_state_on_an_empty_node() -> None:
    src = _filled(1_000)
    by_ref = b"".join(src.snapshot_chunks(4096, include_blocks=False))
    full = b"".join(src.snapshot_chunks(4096, include_blocks=True))
    expanded = b"".join(src.self_contained_chunks([by_ref], 4096))
    assert expanded == full  # the same bytes include_blocks=True gives
    assert len(by_ref) * 4 < len(full)
    fresh = EventStore(MemoryBlockStore(), tuning=StoreTuning(block_events_max=16))
    fresh.restore_from_chunks([expanded[i : i + 1000] for i in range(0, len(expanded), 1000)])
    assert fresh.partitions() == src.partitions()
    assert fresh.read("s", 0, 0, 10_000).events == src.read("s", 0, 0, 10_000).events


def test_a_self_contained_snapshot_expands_to_itself() -> None:
    src = _filled(200)
    full = b"".join(src.snapshot_chunks(4096, include_blocks=True))
    assert b"".join(src.self_contained_chunks([full], 4096)) == full


def test_by_reference_snapshots_grow_with_the_index_not_the_data() -> None:
    small = len(b"".join(_filled(500).snapshot_chunks(1 << 16, include_blocks=False)))
    large = len(b"".join(_filled(5_000).snapshot_chunks(1 << 16, include_blocks=False)))
    small_full = len(b"".join(_filled(500).snapshot_chunks(1 << 16, include_blocks=True)))
    large_full = len(b"".join(_filled(5_000).snapshot_chunks(1 << 16, include_blocks=True)))
    assert large - small < (large_full - small_full) / 4


def test_host_serves_transfer_chunks_in_order_with_resends_and_restarts() -> None:
    from types import SimpleNamespace

    from geostore.ids import Term
    from geostore.raft.types import ConfState, SnapshotMeta
    from geostore.runtime.machine import RuntimeHost, StoreMachine

    src = _filled(2_000)
    meta = SnapshotMeta(index=LogIndex(40), term=Term(1), conf=ConfState())
    machine = StoreMachine(src)
    local = b"".join(src.snapshot_chunks(1 << 16, include_blocks=False))
    host = SimpleNamespace(
        machine=machine, _snapshot_cache=[(meta, local)], _cursors=None, TRANSFER_CURSORS=4
    )
    full = b"".join(src.snapshot_chunks(1 << 16, include_blocks=True))
    size = 5000

    def source(offset: int) -> bytes | None:
        return RuntimeHost._snapshot_source(host, meta, offset, size)  # type: ignore[arg-type]

    got = b""
    offset = 0
    while True:
        chunk = source(offset)
        assert chunk is not None
        assert source(offset) == chunk  # a resend of the same chunk
        got += chunk
        offset += len(chunk)
        if len(chunk) < size:
            break
    assert got == full
    assert source(3 * size) == full[3 * size : 4 * size]  # a jump back: a fresh pass
    assert source(4 * size) == full[4 * size : 5 * size]
    assert len(host._cursors) <= 4
    unknown = SnapshotMeta(index=LogIndex(41), term=Term(1), conf=ConfState())
    assert RuntimeHost._snapshot_source(host, unknown, 0, size) is None  # type: ignore[arg-type]


def test_a_restored_snapshot_is_kept_by_reference() -> None:
    from geostore.runtime.machine import SNAPSHOT_CHUNK_BYTES, StoreMachine

    src = _filled(1_000)
    full = b"".join(src.snapshot_chunks(SNAPSHOT_CHUNK_BYTES, include_blocks=True))
    by_ref = b"".join(src.snapshot_chunks(SNAPSHOT_CHUNK_BYTES, include_blocks=False))
    fresh = EventStore(MemoryBlockStore(), tuning=StoreTuning(block_events_max=16))
    fresh.restore_from_chunks([full])
    machine = StoreMachine(fresh)
    kept = machine.kept_form(full)
    assert kept == by_ref and machine.kept_form(by_ref) is by_ref
    assert EventStore.snapshot_carries_blocks(full)
    assert not EventStore.snapshot_carries_blocks(kept)
    # and it expands back to the bytes a follower needs
    assert b"".join(machine.transfer_chunks(kept, 4096)) == b"".join(
        src.snapshot_chunks(4096, include_blocks=True)
    )
