"""The store's rule for batches shipped from another region: data and watermark move together.

Theory of operation: a partition's home region ships its committed append batches to every
other region (the geo layer); the receiving region proposes each batch as one
:class:`~geostore.store.commands.ApplyRemote` command into its own Raft log. When that entry
applies, :func:`decide_remote` decides from the partition's watermark alone whether the batch
continues the local copy; only then does the store write the entries at exactly their seqs,
their producers' dedup state and the new watermark, all in that one applied entry, so they
become durable together (G4) and a stale or repeated proposal is a no-op (G3).

The rule is the store-side twin of ``geostore.geo.apply_geo_batch`` (the store may not import
the geo layer, its sibling; a unit test checks that the two agree on random inputs):

- *fenced* when the batch's epoch is older than the watermark's (or than the partition's own
  epoch, which the region learns when a home moves: ``known_epoch``);
- else *applied* when it starts at ``watermark.seq + 1``: the new watermark is
  ``(batch epoch, src_end)`` (a newer epoch that starts at the right place is a new home
  continuing the log);
- else *duplicate* when the watermark covers it entirely (re-acknowledged, nothing changes);
- else *gap* (a hole, or an overlap): nothing changes, the sender resends from the watermark.

Like geo's rule, it does not compare checksums: the receiver compares the batch CRC against
the batches it applied recently before re-acknowledging, and a covered range is what the
watermark proves durable, whatever the bytes of a later copy.
"""

from __future__ import annotations

from geostore.ids import Epoch, Seq

from .model import RemoteVerdict, StoreWatermark

_NO_EPOCH = Epoch(0)


def decide_remote(
    watermark: StoreWatermark,
    epoch: Epoch,
    src_start: Seq,
    src_end: Seq,
    known_epoch: Epoch = _NO_EPOCH,
) -> tuple[StoreWatermark, RemoteVerdict]:
    """The watermark after a shipped batch ``src_start..src_end`` of ``epoch``, and the verdict.

    Pure and deterministic. ``known_epoch`` is the partition's epoch as the region knows it;
    at or below ``watermark.epoch`` it changes nothing (the geo rule exactly).
    """
    assert src_end >= src_start, "a shipped batch holds at least one event"
    if epoch < max(watermark.epoch, known_epoch):
        return watermark, RemoteVerdict.FENCED
    if src_start != watermark.seq + 1:
        if src_end <= watermark.seq:
            return watermark, RemoteVerdict.DUPLICATE
        return watermark, RemoteVerdict.GAP
    return StoreWatermark(epoch, src_end), RemoteVerdict.APPLIED
