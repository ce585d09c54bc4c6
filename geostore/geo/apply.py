"""The pure apply rule of a committed geo batch: data and watermark move together.

Theory of operation: a receiving region proposes each validated batch as one
:class:`~geostore.geo.messages.GeoApply` command into its own Raft log. When the command is
applied, :func:`apply_geo_batch` decides from the partition's current watermark alone whether
it continues the copy; the caller (the store's state machine) then writes the entries and the
returned watermark as part of the same applied entry, so they become durable together (G4).
The check happens here, at apply time, and not only when the receiver proposed the batch:
proposals can be lost or reordered by a leader change in the receiving region, and a stale
proposal that commits late must be a no-op, not a hole or a duplicate (G3).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from geostore.ids import Seq

from .messages import GeoApply, Watermark


class ApplyVerdict(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already covered by the watermark: nothing changes
    GAP = "gap"  # does not start at watermark + 1: nothing changes
    FENCED = "fenced"  # an older epoch than the watermark's: nothing changes


@dataclass(frozen=True, slots=True)
class GeoApplyResult:
    """The partition's watermark after the command, and what happened."""

    watermark: Watermark
    verdict: ApplyVerdict

    @property
    def applied(self) -> bool:
        return self.verdict is ApplyVerdict.APPLIED


def apply_geo_batch(
    watermark: Watermark, cmd: GeoApply, *, unsafe_accept_noncontiguous: bool = False
) -> GeoApplyResult:
    """Decide a committed batch against the partition's watermark (pure, deterministic).

    Applied only when the batch starts at ``watermark.seq + 1`` in the watermark's epoch or a
    newer one; the new watermark is ``(cmd.epoch, cmd.src_end)``. ``unsafe_accept_noncontiguous``
    is the negative control of the simulator: it applies any batch of a current epoch.
    """
    assert cmd.src_end >= cmd.src_start, "a GeoApply holds at least one record"
    if cmd.epoch < watermark.epoch:
        return GeoApplyResult(watermark, ApplyVerdict.FENCED)
    if cmd.src_start != watermark.seq + 1 and not unsafe_accept_noncontiguous:
        if cmd.src_end <= watermark.seq:
            return GeoApplyResult(watermark, ApplyVerdict.DUPLICATE)
        return GeoApplyResult(watermark, ApplyVerdict.GAP)
    return GeoApplyResult(Watermark(cmd.epoch, Seq(cmd.src_end)), ApplyVerdict.APPLIED)
