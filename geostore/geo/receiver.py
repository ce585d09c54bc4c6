"""The receiver: turns batches from a home region into proposals of the local Raft log (sans-IO).

Theory of operation:

- Hosted by the receiving region's Raft leader. Its only trusted state is each partition's
  durable watermark, given at construction (from the replicated state machine) and updated
  by :meth:`Receiver.on_applied` as geo commands apply; everything else is volatile and is
  rebuilt from the watermark after a leader change.
- Decision for a batch of partition ``p`` (in this order): an epoch older than the known
  one is NACKed ``FENCED``; a checksum or range mismatch is NACKed ``CORRUPT``; a batch the
  watermark covers is re-acked with the current watermark when it is a batch this leader
  applied (same epoch and range, same CRC), else NACKed ``GAP`` (an overlap); a batch that
  continues the last proposed one (``proposed_end + 1``; the watermark when nothing is
  pending) is decoded in full (count, size bound, dictionary) and, only if all of it is valid,
  becomes one :class:`ProposeBatch` effect (never a partial apply: G10); a batch already
  proposed and pending is ignored (its ack follows the apply); anything else leaves a hole or
  overlaps and is NACKed ``GAP`` with the durable watermark.
- Acks go out only from :meth:`Receiver.on_applied`, after the host committed and applied the
  proposed :class:`GeoApply`, and they carry the durable watermark. The apply rule itself
  (:func:`geostore.geo.apply.apply_geo_batch`) checks contiguity once more, because a proposal
  can be lost, or commit late, across a leader change.
- Dictionaries: a ``GeoDictionary`` is kept only when its bytes hash to the id it claims and
  it is no larger than ``dictionary_bytes_max``; the receiver keeps a bounded
  :class:`~geostore.geo.dictionary.DictionarySet` (least recently used evicted) and reports
  each new one, with the ids it evicted, as :class:`LearnDictionary` so the host can store
  it durably. A batch naming an id it lacks is NACKed ``UNKNOWN_DICTIONARY`` (the shipper
  sends the dictionary ahead of the resent batch).
- Commit times: each :class:`ProposeBatch` carries the batch's ``commit_marks`` so the host
  can record, when the batch applies, every event's lag from its home commit.
- A proposal that never applies (the host reports :meth:`Receiver.on_propose_failed`, or
  ``propose_timeout_ms`` passes) rewinds ``proposed_end`` to the watermark; the shipper's
  retransmission then fills the hole.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from geostore.codec import (
    DEFAULT_LIMITS,
    CodecLimits,
    CompressionDictionary,
    UnknownDictionaryError,
    dictionary_id_of,
)
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName

from .apply import GeoApplyResult
from .batch import BatchError, check_crc, open_batch
from .dictionary import DictionarySet
from .messages import (
    SEQ_NONE,
    WATERMARK_ZERO,
    GeoAck,
    GeoApply,
    GeoBatch,
    GeoDictionary,
    GeoEnvelope,
    GeoHeartbeat,
    GeoItem,
    GeoNack,
    GeoPosition,
    NackReason,
    Watermark,
)

PartitionKey = tuple[StreamName, PartitionId]

#: Applied batches remembered per partition to recognise a duplicate (CRC checked re-acks).
RECENT_BATCHES_MAX = 64


@dataclass(frozen=True, slots=True)
class ProposeBatch:
    """Propose ``cmd`` into the region's Raft log; report its apply with ``on_applied``."""

    cmd: GeoApply
    src_region: RegionId
    #: the batch's ``(last_seq, home commit wall ms)`` marks (GeoBatch.commit_marks)
    commit_marks: tuple[tuple[Seq, int], ...] = ()


@dataclass(frozen=True, slots=True)
class SendEnvelope:
    envelope: GeoEnvelope


@dataclass(frozen=True, slots=True)
class LearnDictionary:
    """A dictionary arrived from a shipper; the host may store it durably (the receiver
    already keeps it), and drop the ``evicted`` ids it stored before."""

    dictionary: CompressionDictionary
    evicted: tuple[int, ...] = ()


ReceiverEffect = ProposeBatch | SendEnvelope | LearnDictionary


@dataclass(slots=True)
class ReceiverStats:
    batches: int = 0
    proposed: int = 0
    acks: int = 0
    duplicates_reacked: int = 0
    duplicates_pending: int = 0
    gaps_nacked: int = 0
    fenced_nacked: int = 0
    corrupt_rejected: int = 0
    unknown_dictionary: int = 0
    dictionaries_learned: int = 0
    dictionaries_refused: int = 0  # id mismatch or over dictionary_bytes_max
    dictionaries_evicted: int = 0
    propose_resets: int = 0
    heartbeats_answered: int = 0


@dataclass(slots=True)
class _Pending:
    epoch: Epoch
    start: Seq
    end: Seq
    crc: int
    src: RegionId
    proposed_ms: int


@dataclass(slots=True)
class _Part:
    durable: Watermark
    proposed_end: Seq
    known_epoch: Epoch
    pending: deque[_Pending] = field(default_factory=deque)
    recent: OrderedDict[tuple[int, int, int], int] = field(default_factory=OrderedDict)
    home_commit: Seq = SEQ_NONE  # the home's commit point, from its heartbeats


class Receiver:
    """Validates batches, proposes them, acks what applied (no IO, no clock)."""

    def __init__(
        self,
        region: RegionId,
        watermarks: Mapping[PartitionKey, Watermark] | None = None,
        *,
        limits: CodecLimits = DEFAULT_LIMITS,
        dictionaries: Iterable[CompressionDictionary] = (),
        known_epochs: Mapping[PartitionKey, Epoch] | None = None,
        propose_timeout_ms: int = 2000,
        unsafe_accept_noncontiguous: bool = False,
        dictionaries_max: int = 64,
        dictionaries_bytes_max: int = 8 * 1024 * 1024,
        dictionary_bytes_max: int = 1024 * 1024,
    ) -> None:
        """``dictionaries`` are those the host stored (oldest use first); beyond
        ``dictionaries_max``/``dictionaries_bytes_max`` the least recently used are dropped
        (see :meth:`dictionary_ids`). ``dictionary_bytes_max`` bounds one received dictionary."""
        self.region = region
        self._limits = limits
        self._dict_bytes_max = dictionary_bytes_max
        self._dicts = DictionarySet(dictionaries_max, dictionaries_bytes_max)
        for known in dictionaries:
            self._dicts.add(known)
        self._propose_timeout_ms = propose_timeout_ms
        self._unsafe = unsafe_accept_noncontiguous
        self._parts: dict[PartitionKey, _Part] = {}
        for key, wm in (watermarks or {}).items():
            self._part(key).durable = wm
            self._parts[key].proposed_end = wm.seq
        for key, epoch in (known_epochs or {}).items():
            self.set_known_epoch(key[0], key[1], epoch)
        self.stats = ReceiverStats()

    # --- inputs ---------------------------------------------------------------------------------

    def on_envelope(self, env: GeoEnvelope, now_ms: int) -> list[ReceiverEffect]:
        """Batches, dictionaries and heartbeats from a home region (other items ignored)."""
        effects: list[ReceiverEffect] = []
        replies: list[GeoItem] = []
        src = env.src_region
        for item in env.items:
            if type(item) is GeoBatch:
                self._on_batch(item, src, now_ms, effects, replies)
            elif type(item) is GeoDictionary:
                if (
                    len(item.data) > self._dict_bytes_max
                    or not 1 <= item.dict_id <= 0xFFFF_FFFF
                    or dictionary_id_of(item.data) != item.dict_id
                ):
                    # damaged in transit (resent on the next NACK), or beyond our bound
                    self.stats.dictionaries_refused += 1
                    continue
                d = CompressionDictionary(item.dict_id, item.data)
                if d.dict_id not in self._dicts:
                    evicted = self._dicts.add(d)
                    self.stats.dictionaries_learned += 1
                    self.stats.dictionaries_evicted += len(evicted)
                    effects.append(LearnDictionary(d, evicted))
            elif type(item) is GeoHeartbeat and not item.reply:
                self.stats.heartbeats_answered += 1
                positions = []
                for pos in item.positions:
                    p = self._part((pos.stream, pos.partition))
                    p.home_commit = max(p.home_commit, pos.seq)
                    positions.append(
                        GeoPosition(pos.stream, pos.partition, p.durable.epoch, p.durable.seq)
                    )
                replies.append(GeoHeartbeat(tuple(positions), reply=True))
        if replies:
            effects.append(SendEnvelope(GeoEnvelope(self.region, src, tuple(replies))))
        return effects

    def on_applied(
        self, cmd: GeoApply, result: GeoApplyResult, now_ms: int
    ) -> list[ReceiverEffect]:
        """A geo command was applied (whoever proposed it); acks what the watermark covers."""
        key = (cmd.stream, cmd.partition)
        p = self._part(key)
        assert result.watermark >= p.durable or self._unsafe, "a durable watermark never goes back"
        p.durable = result.watermark
        if result.applied:
            p.recent[(cmd.epoch, cmd.src_start, cmd.src_end)] = cmd.crc
            while len(p.recent) > RECENT_BATCHES_MAX:
                p.recent.popitem(last=False)
        replies: dict[RegionId, list[GeoItem]] = {}
        rejected = None
        while p.pending and (p.pending[0].end <= p.durable.seq or self._unsafe):
            done = p.pending.popleft()
            replies.setdefault(done.src, []).append(
                GeoAck(cmd.stream, cmd.partition, done.epoch, done.start, done.end, p.durable)
            )
            self.stats.acks += 1
            if self._unsafe:
                break
        if not result.applied:
            for pend in p.pending:
                if (pend.start, pend.end, pend.epoch) == (cmd.src_start, cmd.src_end, cmd.epoch):
                    rejected = pend
            if rejected is not None:
                # Our own proposal did not continue the copy (one before it was lost): every
                # later pending proposal is doomed too. Start again from the watermark.
                p.pending.clear()
                self.stats.propose_resets += 1
                replies.setdefault(rejected.src, []).append(
                    self._nack(cmd.stream, cmd.partition, rejected, NackReason.GAP, p)
                )
        if not p.pending or p.proposed_end < p.durable.seq:
            p.proposed_end = p.durable.seq
        return [
            SendEnvelope(GeoEnvelope(self.region, dst, tuple(items)))
            for dst, items in sorted(replies.items())
        ]

    def on_propose_failed(self, stream: StreamName, partition: PartitionId) -> None:
        """The host lost a proposal of this partition (leadership moved, log refused it)."""
        self._reset(self._part((stream, partition)))

    def tick(self, now_ms: int) -> list[ReceiverEffect]:
        """Forget proposals that did not apply in time (their batches will be resent)."""
        for p in self._parts.values():
            if p.pending and now_ms - p.pending[0].proposed_ms >= self._propose_timeout_ms:
                self._reset(p)
        return []

    def set_known_epoch(self, stream: StreamName, partition: PartitionId, epoch: Epoch) -> None:
        """The current epoch of a partition, from the metadata group: older batches are fenced."""
        p = self._part((stream, partition))
        p.known_epoch = max(p.known_epoch, epoch)

    def add_dictionary(self, dictionary: CompressionDictionary) -> tuple[int, ...]:
        """Keep a dictionary; returns the ids evicted to make room."""
        return self._dicts.add(dictionary)

    def dictionary_ids(self) -> tuple[int, ...]:
        """The ids kept, least recently used first."""
        return tuple(self._dicts)

    # --- queries --------------------------------------------------------------------------------

    def watermark(self, stream: StreamName, partition: PartitionId) -> Watermark:
        p = self._parts.get((stream, partition))
        return p.durable if p is not None else WATERMARK_ZERO

    def lag_events(self, stream: StreamName, partition: PartitionId) -> int:
        """Events the home reported committed (by heartbeat) that are not applied here."""
        p = self._parts.get((stream, partition))
        return 0 if p is None else max(0, p.home_commit - p.durable.seq)

    def pending(self, stream: StreamName, partition: PartitionId) -> int:
        p = self._parts.get((stream, partition))
        return 0 if p is None else len(p.pending)

    # --- internals ------------------------------------------------------------------------------

    def _part(self, key: PartitionKey) -> _Part:
        p = self._parts.get(key)
        if p is None:
            p = _Part(WATERMARK_ZERO, WATERMARK_ZERO.seq, WATERMARK_ZERO.epoch)
            self._parts[key] = p
        return p

    def _reset(self, p: _Part) -> None:
        if p.pending:
            self.stats.propose_resets += 1
        p.pending.clear()
        p.proposed_end = p.durable.seq

    def _nack(
        self,
        stream: StreamName,
        partition: PartitionId,
        about: _Pending | GeoBatch,
        reason: NackReason,
        p: _Part,
        dict_id: int = 0,
    ) -> GeoNack:
        if isinstance(about, GeoBatch):
            epoch, start, end = about.epoch, about.src_start, about.src_end
        else:
            epoch, start, end = about.epoch, about.start, about.end
        known = max(p.known_epoch, p.durable.epoch)
        return GeoNack(stream, partition, epoch, start, end, reason, p.durable, known, dict_id)

    def _on_batch(
        self,
        b: GeoBatch,
        src: RegionId,
        now_ms: int,
        effects: list[ReceiverEffect],
        replies: list[GeoItem],
    ) -> None:
        self.stats.batches += 1
        p = self._part((b.stream, b.partition))
        if b.epoch < max(p.known_epoch, p.durable.epoch):
            self.stats.fenced_nacked += 1
            replies.append(self._nack(b.stream, b.partition, b, NackReason.FENCED, p))
            return
        try:
            check_crc(b)
            if b.record_count < 1 or b.src_end - b.src_start + 1 != b.record_count:
                raise BatchError("range and record count disagree")
        except BatchError:
            self.stats.corrupt_rejected += 1
            replies.append(self._nack(b.stream, b.partition, b, NackReason.CORRUPT, p))
            return
        if b.src_end <= p.durable.seq:
            if p.recent.get((b.epoch, b.src_start, b.src_end)) == b.crc:
                # Already applied: same ack, same watermark, nothing changes (G3).
                self.stats.duplicates_reacked += 1
                replies.append(
                    GeoAck(b.stream, b.partition, b.epoch, b.src_start, b.src_end, p.durable)
                )
                return
            if not self._unsafe:
                self.stats.gaps_nacked += 1
                replies.append(self._nack(b.stream, b.partition, b, NackReason.GAP, p))
                return
        for pend in p.pending:
            if (pend.epoch, pend.start, pend.end, pend.crc) == (
                b.epoch,
                b.src_start,
                b.src_end,
                b.crc,
            ):
                self.stats.duplicates_pending += 1
                return
        if b.src_start != p.proposed_end + 1 and not self._unsafe:
            self.stats.gaps_nacked += 1
            replies.append(self._nack(b.stream, b.partition, b, NackReason.GAP, p))
            return
        try:
            entries = open_batch(b, self._limits, self._dicts)
        except UnknownDictionaryError as exc:
            self.stats.unknown_dictionary += 1
            replies.append(
                self._nack(b.stream, b.partition, b, NackReason.UNKNOWN_DICTIONARY, p, exc.dict_id)
            )
            return
        except BatchError:
            self.stats.corrupt_rejected += 1
            replies.append(self._nack(b.stream, b.partition, b, NackReason.CORRUPT, p))
            return
        cmd = GeoApply(b.stream, b.partition, b.epoch, b.src_start, b.src_end, b.crc, entries)
        p.pending.append(_Pending(b.epoch, b.src_start, b.src_end, b.crc, src, now_ms))
        p.proposed_end = max(p.proposed_end, b.src_end)
        self.stats.proposed += 1
        effects.append(ProposeBatch(cmd, src, b.commit_marks))
