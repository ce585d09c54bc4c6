"""Geo wire messages: batches of committed events between regions, and their answers.

Theory of operation: the home region's shipper sends, per destination region, one
:class:`GeoEnvelope` that carries the batches of several partitions plus heartbeats and
dictionaries; the receiving region answers in envelopes of acks, nacks and heartbeat replies.
A :class:`GeoBatch` names the exact range of sequence numbers it holds (``src_start`` to
``src_end``, both inclusive) under one epoch, with a CRC-32 over its header and payload, so a
receiver can decide from the header alone whether the batch continues its copy (apply), is
one it already has (re-ack), leaves a hole or overlaps (NACK ``GAP``) or comes from an older
home (NACK ``FENCED``), and can refuse a damaged one (NACK ``CORRUPT``) before decoding it.

Watermarks are a sequence number with -1 meaning "nothing applied yet" (seqs start at 0); a
:class:`Watermark` pairs it with its epoch, and the two always change as one value (the
Pulsar #25860 lesson).

Wire tags 200-219 are reserved for the geo layer (200-207 used; the rest are for additions).
Tags are never reused or renumbered: a changed tag breaks mixed-version clusters.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from geostore.codec import wire_message
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName

#: First and last wire tag reserved for the geo layer.
GEO_TAG_FIRST = 200
GEO_TAG_LAST = 219

#: ``GeoBatch.codec``: the payload is the CBOR entry list as is.
CODEC_NONE = 0
#: ``GeoBatch.codec``: the payload is :func:`geostore.codec.compress` of the CBOR entry list.
CODEC_ZSTD = 1
#: ``GeoBatch.codec``: the payload is :func:`geostore.codec.compress` of the batch's events
#: laid out by column (:mod:`geostore.geo.columns`); decodes to the very same entries.
CODEC_ZSTD_COLUMNS = 2

#: The watermark seq of a partition of which nothing was applied (seqs start at 0).
SEQ_NONE = Seq(-1)


class NackReason(enum.IntEnum):
    """Why a receiver refused a batch."""

    GAP = 1  # the batch does not start at watermark + 1 (a hole, or an overlap)
    FENCED = 2  # the batch's epoch is older than one the receiver knows
    UNKNOWN_DICTIONARY = 3  # the payload names a dictionary the receiver lacks
    CORRUPT = 4  # checksum, count, size or decoding failed


@dataclass(frozen=True, slots=True, order=True)
class Watermark:
    """The last seq a region applied durably for a partition, and the epoch it was written in."""

    epoch: Epoch
    seq: Seq


WATERMARK_ZERO = Watermark(Epoch(0), SEQ_NONE)


@dataclass(frozen=True, slots=True)
class GeoEntry:
    """One source append as the home region committed it: its events stay one opaque block.

    ``seq`` is the seq of its first event; ``events`` the encoded batch exactly as the home
    store holds it; the producer id and seq travel with it so the receiving store dedups
    retries exactly as the home did. ``epoch`` is the epoch the events were written under
    (None: the batch's epoch). After a change of home the new home ships events it holds
    from the old epoch (before the fork) under its new batch epoch; the entry keeps their
    own epoch so every copy stores, and hashes, the same per-event epochs.
    """

    seq: Seq
    record_count: int
    events: bytes
    producer_id: str | None = None
    producer_seq: int | None = None
    epoch: Epoch | None = None

    @property
    def last_seq(self) -> Seq:
        return Seq(self.seq + self.record_count - 1)


#: Most commit marks one batch carries (later marks are kept; see ``GeoBatch.commit_marks``).
COMMIT_MARKS_MAX = 16


@wire_message(200, 2)
@dataclass(frozen=True, slots=True)
class GeoBatch:
    """Committed events ``src_start..src_end`` of one partition, in one epoch.

    ``commit_marks`` (version 2) says when the home committed the events, for the per-event
    replication lag: ``(last_seq, wall_ms)`` pairs in seq order, each covering the events
    after the previous mark's ``last_seq`` (the first from ``src_start``) through its own,
    committed at the home leader's wall clock ``wall_ms``. At most :data:`COMMIT_MARKS_MAX`;
    empty from an older shipper. Informational only: outside the CRC, never used to decide
    an apply (a damaged mark skews a lag figure, never the copy).
    """

    stream: StreamName
    partition: PartitionId
    epoch: Epoch
    src_start: Seq
    src_end: Seq
    record_count: int
    crc: int
    codec: int
    dict_id: int
    payload: bytes
    commit_marks: tuple[tuple[Seq, int], ...] = ()


@wire_message(201)
@dataclass(frozen=True, slots=True)
class GeoAck:
    """The receiver applied (or had applied) the batch; ``watermark`` is what it holds durably.

    The shipper advances by ``watermark`` only, never by the batch's range: an ack of a
    duplicate whose range the watermark does not cover proves nothing (Pulsar #26113).
    """

    stream: StreamName
    partition: PartitionId
    epoch: Epoch
    src_start: Seq
    src_end: Seq
    watermark: Watermark


@wire_message(202)
@dataclass(frozen=True, slots=True)
class GeoNack:
    """The receiver refused the batch; the shipper resends from ``watermark.seq + 1``."""

    stream: StreamName
    partition: PartitionId
    epoch: Epoch
    src_start: Seq
    src_end: Seq
    reason: NackReason
    watermark: Watermark
    known_epoch: Epoch
    dict_id: int = 0


@dataclass(frozen=True, slots=True)
class GeoPosition:
    """One partition's position: a home's commit point, or a receiver's durable watermark."""

    stream: StreamName
    partition: PartitionId
    epoch: Epoch
    seq: Seq


@wire_message(203)
@dataclass(frozen=True, slots=True)
class GeoHeartbeat:
    """Positions on an idle link, so lag is known (to be zero) without traffic.

    From a shipper (``reply`` false): the home's commit positions; a receiver answers every
    one with its durable watermarks (``reply`` true), which is also how a new shipper learns
    where to resume.
    """

    positions: tuple[GeoPosition, ...]
    reply: bool = False


@wire_message(204)
@dataclass(frozen=True, slots=True)
class GeoDictionary:
    """A compression dictionary a receiver asked for (NACK ``UNKNOWN_DICTIONARY``)."""

    dict_id: int
    data: bytes


GeoItem = GeoBatch | GeoAck | GeoNack | GeoHeartbeat | GeoDictionary


@wire_message(205)
@dataclass(frozen=True, slots=True)
class GeoEnvelope:
    """Everything one region sends another in one message: several partitions share it."""

    src_region: RegionId
    dst_region: RegionId
    items: tuple[GeoItem, ...]


@wire_message(206)
@dataclass(frozen=True, slots=True)
class GeoApply:
    """The receiving region's Raft command: a validated, decoded batch.

    The region's state machine applies it with :func:`geostore.geo.apply.apply_geo_batch`,
    which writes the entries and the watermark in the same applied entry.
    """

    stream: StreamName
    partition: PartitionId
    epoch: Epoch
    src_start: Seq
    src_end: Seq
    crc: int
    entries: tuple[GeoEntry, ...]
