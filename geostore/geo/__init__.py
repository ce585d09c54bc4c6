"""geostore.geo: the sans-IO geo-replication core (shipper, receiver, batch format, apply rule).

A home region's leader hosts a :class:`Shipper` that sends committed batches of its home
partitions to every other region; each other region's leader hosts a :class:`Receiver` that
validates them and proposes them into its own Raft log, and the region's state machine applies
them with :func:`apply_geo_batch`, which moves the data and the watermark together. Wire tags
200-219 are reserved for the messages of :mod:`geostore.geo.messages`.

Host contract (what the runtime does around the pure cores):

- Home leader: build a ``Shipper`` on becoming leader (it keeps no durable state), call
  ``on_committed(stream, partition, epoch, last_seq, now_ms, commit_wall_ms)`` for every
  home partition at start and after each apply (the wall clock travels in the batches for
  the receiver's per-event lag), hand each stream's trained dictionary to
  ``set_dictionary`` (:mod:`geostore.geo.dictionary`: when to train, from what), serve ``CommittedLog.read_committed`` from the store, call
  ``tick(now_ms)`` every few ms and after each input, send each returned ``GeoEnvelope`` to
  its ``dst_region``, and pass every envelope from another region to ``on_envelope``.
- Receiving leader: build a ``Receiver`` from the durable watermarks of the state machine,
  pass envelopes to ``on_envelope``; store each ``LearnDictionary`` (and drop its
  ``evicted`` ids); for ``ProposeBatch`` propose ``encode_message(cmd)`` (a
  :class:`GeoApply`) into the region's Raft log; for ``SendEnvelope`` send it; call
  ``tick(now_ms)`` periodically and ``on_propose_failed`` when a proposal is refused.
- Every replica, when a ``GeoApply`` entry applies: ``result = apply_geo_batch(wm, cmd)``;
  if ``result.applied``, store ``cmd.entries`` (with their producer ids and seqs) and
  ``result.watermark`` in the same applied step; then, on the leader, hand
  ``on_applied(cmd, result, now_ms)`` to the receiver and send the envelopes it returns.
"""

from .apply import ApplyVerdict, GeoApplyResult, apply_geo_batch
from .batch import (
    BatchError,
    batch_crc,
    check_crc,
    crc_of,
    encode_entries,
    make_batch,
    open_batch,
    resealed,
)
from .messages import (
    CODEC_NONE,
    CODEC_ZSTD,
    CODEC_ZSTD_COLUMNS,
    GEO_TAG_FIRST,
    GEO_TAG_LAST,
    SEQ_NONE,
    WATERMARK_ZERO,
    GeoAck,
    GeoApply,
    GeoBatch,
    GeoDictionary,
    GeoEntry,
    GeoEnvelope,
    GeoHeartbeat,
    GeoItem,
    GeoNack,
    GeoPosition,
    NackReason,
    Watermark,
)
from .receiver import (
    LearnDictionary,
    ProposeBatch,
    Receiver,
    ReceiverEffect,
    ReceiverStats,
    SendEnvelope,
)
from .shipper import (
    CommittedLog,
    CursorState,
    DestinationStats,
    GeoLogError,
    Lag,
    Shipper,
    ShipperStats,
    retransmit_timeout_ms,
    window_for_link,
)

__all__ = [
    "CODEC_NONE",
    "CODEC_ZSTD",
    "CODEC_ZSTD_COLUMNS",
    "GEO_TAG_FIRST",
    "GEO_TAG_LAST",
    "SEQ_NONE",
    "WATERMARK_ZERO",
    "ApplyVerdict",
    "BatchError",
    "CommittedLog",
    "CursorState",
    "DestinationStats",
    "GeoAck",
    "GeoApply",
    "GeoApplyResult",
    "GeoBatch",
    "GeoDictionary",
    "GeoEntry",
    "GeoEnvelope",
    "GeoHeartbeat",
    "GeoItem",
    "GeoLogError",
    "GeoNack",
    "GeoPosition",
    "Lag",
    "LearnDictionary",
    "NackReason",
    "ProposeBatch",
    "Receiver",
    "ReceiverEffect",
    "ReceiverStats",
    "SendEnvelope",
    "Shipper",
    "ShipperStats",
    "Watermark",
    "apply_geo_batch",
    "batch_crc",
    "check_crc",
    "crc_of",
    "encode_entries",
    "make_batch",
    "open_batch",
    "resealed",
    "retransmit_timeout_ms",
    "window_for_link",
]
