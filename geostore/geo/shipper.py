"""The shipper: sends a home region's committed events to every other region (sans-IO).

Theory of operation:

- Hosted by the home region's Raft leader; it holds no durable state. Per (partition,
  destination) a cursor remembers ``acked`` (the receiver's durable watermark, as the receiver
  last reported it), ``next_seq`` (the next seq to send) and the batches in flight.
- A new shipper (after a leader change on either side) does not know where a destination
  stands: its cursors start PROBING and send heartbeats until the receiver answers with its
  durable watermark (a heartbeat reply, an ack or a nack), then ship from ``watermark + 1``.
- Only committed data is shipped: the host reports the commit point with
  :meth:`Shipper.on_committed`, and batches are read through the :class:`CommittedLog` port
  never past it (G2).
- Batches hold whole source entries, bounded by ``batch_events_max``/``batch_bytes_max``, and
  wait up to ``linger_ms`` to fill. With a dictionary, a batch stops waiting (and, under
  light load, stops growing) at ``dictionary_batch_events_max`` events, the most the
  dictionary serves; a backlog of two such batches or more lifts that bound. Up to ``window`` batches are in flight per cursor; when the
  oldest is unanswered for a retransmission timeout, the window is sent again (go-back-N).
- Acks advance ``acked`` by the receiver's watermark only, never by the acked batch's range:
  an ack for a duplicate the watermark does not cover proves nothing (Pulsar #26113). A NACK
  GAP or CORRUPT for a batch in flight rewinds to ``watermark + 1``; nothing ever moves the
  cursor past what the receiver says it holds durably, so a gap is never skipped (Pulsar
  #20128/#23697). A rewind (or an ack cutting through a batch) resends the batches it took out
  of the window unchanged, a CORRUPT one excepted: the receiver may hold them as pending
  proposals and knows a copy only by range and CRC, so a batch cut differently would be
  refused as an overlap and rewind the shipper again, round trip after round trip. An answer
  sooner than ``reply_min_ms`` (half the RTT, or of the fastest ack) after a batch was last
  sent is about an earlier copy: it moves nothing, so a window refused as a whole is resent
  once, not once per batch. A watermark *below* ``acked`` is followed only when it cannot be a stale
  answer (a gap NACK about a batch in flight, a heartbeat reply with nothing in flight): a
  failback rewound that receiver to a fork, and it needs the new home's events from there. NACK UNKNOWN_DICTIONARY queues the dictionary, then resends. NACK FENCED
  with a newer epoch stops the cursor: another region is home now.
- Dictionaries: the host trains one per stream (see :mod:`geostore.geo.dictionary`) and
  hands it over with :meth:`Shipper.set_dictionary`; batches of at most
  ``dictionary_batch_events_max`` events are compressed with it and name its id (larger
  batches compress well enough alone). A new dictionary goes to every destination ahead of
  the first batch that names it. A receiver that lacks the id anyway (a new leader there, a
  lost envelope) NACKs ``UNKNOWN_DICTIONARY``; the dictionary then goes out ahead of the
  resent batches in the same envelope, at most once per retransmission timeout per link.
- Commit times: the host reports the home leader's wall clock with each commit point
  (``on_committed(..., commit_wall_ms=...)``); every batch carries the marks that cover its
  range (:attr:`~geostore.geo.messages.GeoBatch.commit_marks`), so the receiving leader can
  record the lag of every event at its apply.
- Output: :meth:`Shipper.tick` returns at most one :class:`GeoEnvelope` per destination, with
  the batches of every partition, dictionaries and a heartbeat when the link was idle for
  ``heartbeat_ms`` (so lag is known to be zero when there is nothing to send).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from geostore.codec import CompressionDictionary
from geostore.config import GeoSettings
from geostore.errors import GeostoreError
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName

from .batch import encode_entries, make_batch
from .messages import (
    CODEC_NONE,
    CODEC_ZSTD,
    CODEC_ZSTD_COLUMNS,
    COMMIT_MARKS_MAX,
    SEQ_NONE,
    GeoAck,
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

PartitionKey = tuple[StreamName, PartitionId]

#: Bound on the per-mark ack latency samples kept for the host to drain.
LATENCY_SAMPLES_MAX = 10_000


class GeoLogError(GeostoreError):
    """The committed log could not give the entries a cursor needs (compacted or misaligned)."""


class CommittedLog(Protocol):
    """The home region's committed entries, as the shipper reads them (a port)."""

    def read_committed(
        self,
        stream: StreamName,
        partition: PartitionId,
        from_seq: Seq,
        through_seq: Seq,
        events_max: int,
        bytes_max: int,
    ) -> Sequence[GeoEntry]:
        """Whole entries from the one starting exactly at ``from_seq``, none past
        ``through_seq``; at least one, then more while under ``events_max`` events and
        ``bytes_max`` bytes of events."""
        ...


_SEQ_FIRST = Seq(0)


class CursorState(enum.StrEnum):
    PROBING = "probing"  # waiting to learn the destination's durable watermark
    SHIPPING = "shipping"
    FENCED = "fenced"  # a newer epoch exists: this region is no longer home


def window_for_link(
    rtt_ms: float, bandwidth_kbps: int | None, batch_bytes: int, floor: int = 2, cap: int = 64
) -> int:
    """Batches in flight that fill a link: its bandwidth-delay product over the batch size.

    ``bandwidth_kbps`` is in KB/s (the topology's unit); None means unknown, giving ``floor``.
    One more than the product, so the pipe stays full while an ack is on its way.
    """
    assert batch_bytes > 0 and floor >= 1 and cap >= floor
    if bandwidth_kbps is None:
        return floor
    bdp_bytes = bandwidth_kbps * 1024.0 * rtt_ms / 1000.0
    return max(floor, min(cap, math.ceil(bdp_bytes / batch_bytes) + 1))


def retransmit_timeout_ms(rtt_ms: float) -> int:
    """The initial (and lowest) time a batch may stay unanswered before the window is sent
    again: two network round trips and a margin. The link's timeout then adapts to the ack
    latency it measures (:meth:`_Link.observe`), since an ack also waits for the receiving
    region's Raft commit, which a loaded region can make much longer than the RTT."""
    return max(50, int(2 * rtt_ms) + 50)


#: The adaptive retransmission timeout never grows past this (ms).
RTO_MAX_MS = 30_000


@dataclass(frozen=True, slots=True)
class Lag:
    """How far one destination is behind the home for one partition."""

    state: CursorState
    events: int  # committed at home, not yet durably applied there (as last reported)
    ms: int  # age of the oldest such event's commit; 0 when caught up
    inflight_batches: int
    acked: Seq
    commit: Seq


@dataclass(slots=True)
class DestinationStats:
    """What the shipper built for one destination region (every batch is built per
    destination, so these add up to the totals of :class:`ShipperStats`)."""

    batches_sent: int = 0
    events_sent: int = 0
    bytes_raw: int = 0  # the CBOR entry list (row layout) before compression
    bytes_payload: int = 0  # batch payloads after compression
    retransmits: int = 0  # batches sent again (go-back-N), not counted in the above
    #: counted by the host, which encodes: the bytes of every envelope queued for this
    #: destination (batches, resends, heartbeats, dictionaries), each with its frame's length
    #: prefix: the shipper's WAN bytes, framing included (TLS and the link's own frame
    #: headers, shared with other messages, not)
    envelope_bytes: int = 0
    #: envelopes sent to more than one node of the destination (its leader unknown or silent
    #: for a while: every node gets a copy), counted once per extra copy
    envelope_copies: int = 0


@dataclass(slots=True)
class ShipperStats:
    batches_sent: int = 0
    events_sent: int = 0
    bytes_raw: int = 0  # the CBOR entry list (row layout) before compression
    bytes_payload: int = 0  # batch payloads after compression
    retransmits: int = 0
    rewinds: int = 0
    #: batches a rewind resent unchanged (also counted in ``retransmits``)
    replayed: int = 0
    gaps_nacked: int = 0
    corrupt_nacked: int = 0
    dictionary_nacks: int = 0
    dictionaries_sent: int = 0
    batches_with_dictionary: int = 0
    fenced: int = 0
    heartbeats_sent: int = 0
    stale_answers: int = 0  # answers about batches no longer in flight, or beyond the commit
    receiver_rewinds: int = 0  # a receiver's watermark went back to a fork (failback)
    envelopes_sent: int = 0
    #: per destination region; one entry per destination the shipper was built with (bounded
    #: by the topology's regions)
    destinations: dict[RegionId, DestinationStats] = field(default_factory=dict)

    @classmethod
    def for_destinations(cls, destinations: Sequence[RegionId]) -> ShipperStats:
        return cls(destinations={d: DestinationStats() for d in destinations})

    def count_batch(self, dst: RegionId, batch: GeoBatch, bytes_raw: int) -> None:
        """A new batch built for ``dst``; ``bytes_raw``: its uncompressed row payload."""
        per = self.destinations[dst]
        self.batches_sent += 1
        per.batches_sent += 1
        self.events_sent += batch.record_count
        per.events_sent += batch.record_count
        self.bytes_raw += bytes_raw
        per.bytes_raw += bytes_raw
        self.bytes_payload += len(batch.payload)
        per.bytes_payload += len(batch.payload)

    def count_retransmits(self, dst: RegionId, batches: int) -> None:
        self.retransmits += batches
        self.destinations[dst].retransmits += batches


@dataclass(slots=True)
class _Inflight:
    batch: GeoBatch
    sent_ms: int
    resent: bool = False  # Karn's rule: an ack of a resent batch is no latency sample


@dataclass(slots=True)
class _Cursor:
    dst: RegionId
    state: CursorState = CursorState.PROBING
    acked: Seq = SEQ_NONE
    next_seq: Seq = _SEQ_FIRST
    inflight: deque[_Inflight] = field(default_factory=deque)
    #: batches a rewind took out of the window, by first seq: the resend from the watermark
    #: repeats them byte for byte while the range lines up (at most one window's worth)
    replay: dict[int, GeoBatch] = field(default_factory=dict)
    last_probe_ms: int | None = None
    last_ack_latency_ms: int = 0


@dataclass(slots=True)
class _Partition:
    stream: StreamName
    partition: PartitionId
    epoch: Epoch
    commit: Seq
    #: (last seq, commit time, commit wall clock ms) of each commit report, oldest first;
    #: pruned below every ack
    marks: deque[tuple[Seq, int, int]] = field(default_factory=deque)


@dataclass(slots=True)
class _Link:
    rto_ms: int
    window: int
    last_sent_ms: int | None = None
    dictionaries: list[CompressionDictionary] = field(default_factory=list)
    last_dictionary_ms: int | None = None
    #: the floor of the adaptive timeout (retransmit_timeout_ms of the link's RTT)
    rto_min_ms: int = 0
    #: less than any answer to a batch can take: half the link's RTT (jitter aside), or half
    #: the fastest ack measured when that is less (a topology RTT the link does not have)
    reply_min_ms: int = 0
    #: smoothed ack latency and its mean deviation (RFC 6298's SRTT and RTTVAR), ms
    srtt_ms: float | None = None
    rttvar_ms: float = 0.0

    def observe(self, sample_ms: int) -> None:
        """Fold one ack latency (send to durable apply acknowledged) into the timeout."""
        sample = float(max(0, sample_ms))
        if self.srtt_ms is None:
            self.srtt_ms = sample
            self.rttvar_ms = sample / 2
        else:
            self.rttvar_ms = 0.75 * self.rttvar_ms + 0.25 * abs(self.srtt_ms - sample)
            self.srtt_ms = 0.875 * self.srtt_ms + 0.125 * sample
        # an answer takes at least a round trip, and an ack at least as long as an answer
        self.reply_min_ms = min(self.reply_min_ms, int(sample / 2))
        rto = int(self.srtt_ms + max(1.0, 4 * self.rttvar_ms))
        self.rto_ms = min(RTO_MAX_MS, max(self.rto_min_ms, rto))

    def back_off(self) -> None:
        """A timeout fired: double the timeout until a fresh sample brings it back."""
        self.rto_ms = min(RTO_MAX_MS, max(self.rto_min_ms, 2 * self.rto_ms))


class Shipper:
    """Ships committed batches of the home partitions to the other regions (no IO, no clock)."""

    def __init__(
        self,
        region: RegionId,
        destinations: Mapping[RegionId, float],
        settings: GeoSettings,
        log: CommittedLog,
        *,
        windows: Mapping[RegionId, int] | None = None,
        dictionaries: Mapping[StreamName, CompressionDictionary] | None = None,
        compression: bool = True,
    ) -> None:
        """``destinations`` maps each destination region to its RTT in ms (for timeouts);
        ``windows`` overrides ``settings.inflight_batches_max`` per destination (see
        :func:`window_for_link`); ``dictionaries`` are used when ``settings.use_dictionary``."""
        assert region not in destinations, "a region does not ship to itself"
        self.region = region
        self.settings = settings
        self._log = log
        self._dsts = tuple(sorted(destinations))
        self._links = {
            d: _Link(
                retransmit_timeout_ms(destinations[d]),
                (windows or {}).get(d, settings.inflight_batches_max),
                rto_min_ms=retransmit_timeout_ms(destinations[d]),
                reply_min_ms=int(destinations[d] / 2),
            )
            for d in self._dsts
        }
        self._dictionaries = dict(dictionaries or {}) if settings.use_dictionary else {}
        self._codec = CODEC_NONE
        if compression:
            self._codec = CODEC_ZSTD_COLUMNS if settings.columnar_batches else CODEC_ZSTD
        self._parts: dict[PartitionKey, _Partition] = {}
        #: the last batch built (key: partition, epoch, range, dictionary), with its raw size
        self._last_built: tuple[tuple[object, ...], GeoBatch, int] | None = None
        self._cursors: dict[tuple[PartitionKey, RegionId], _Cursor] = {}
        self.stats = ShipperStats.for_destinations(self._dsts)
        self._latencies: deque[tuple[PartitionKey, RegionId, int, int]] = deque(
            maxlen=LATENCY_SAMPLES_MAX
        )

    # --- inputs ---------------------------------------------------------------------------------

    def on_committed(
        self,
        stream: StreamName,
        partition: PartitionId,
        epoch: Epoch,
        last_seq: Seq,
        now_ms: int,
        commit_wall_ms: int | None = None,
    ) -> None:
        """The home region committed (and applied) the partition through ``last_seq``;
        ``commit_wall_ms`` is the home leader's wall clock then (``now_ms`` when omitted),
        carried in the batches for the receiver's per-event lag."""
        key = (stream, partition)
        part = self._parts.get(key)
        if part is None:
            part = _Partition(stream, partition, epoch, SEQ_NONE)
            self._parts[key] = part
            for d in self._dsts:
                self._cursors[(key, d)] = _Cursor(d)
        assert epoch >= part.epoch, "a partition's epoch never goes back"
        assert last_seq >= part.commit, "the commit point never goes back"
        part.epoch = epoch
        if last_seq > part.commit:
            part.commit = last_seq
            wall = now_ms if commit_wall_ms is None else commit_wall_ms
            part.marks.append((last_seq, now_ms, wall))

    def on_envelope(self, env: GeoEnvelope, now_ms: int) -> None:
        """Acks, nacks and heartbeat replies from ``env.src_region`` (other items ignored)."""
        src = env.src_region
        for item in env.items:
            if type(item) is GeoAck:
                self.on_ack(item, src, now_ms)
            elif type(item) is GeoNack:
                self.on_nack(item, src, now_ms)
            elif type(item) is GeoHeartbeat and item.reply:
                for pos in item.positions:
                    cur = self._cursors.get(((pos.stream, pos.partition), src))
                    if cur is not None:
                        # with nothing in flight, a lower watermark is a receiver that went
                        # back to a fork (failback), not a reordered answer
                        self._learn(
                            cur,
                            (pos.stream, pos.partition),
                            Watermark(pos.epoch, pos.seq),
                            now_ms,
                            backward=not cur.inflight,
                        )

    def on_ack(self, ack: GeoAck, src: RegionId, now_ms: int) -> None:
        key = (ack.stream, ack.partition)
        cur = self._cursors.get((key, src))
        if cur is not None:
            self._learn(cur, key, ack.watermark, now_ms)

    def on_nack(self, nack: GeoNack, src: RegionId, now_ms: int) -> None:
        key = (nack.stream, nack.partition)
        cur = self._cursors.get((key, src))
        if cur is None:
            return
        part = self._parts[key]
        if nack.reason is NackReason.FENCED:
            if nack.known_epoch > part.epoch and cur.state is not CursorState.FENCED:
                self._fence(cur)
            else:
                self.stats.stale_answers += 1
            return
        sent_ms = next(
            (
                f.sent_ms
                for f in cur.inflight
                if f.batch.src_start == nack.src_start
                and f.batch.src_end == nack.src_end
                and f.batch.epoch == nack.epoch
            ),
            None,
        )
        # A batch sent again (resend, rewind) less than half a round trip ago cannot have
        # been answered yet: this answer is about an earlier copy, and acting on it would
        # resend the window once per batch the receiver refused then.
        in_flight = sent_ms is not None and now_ms - sent_ms >= self._links[src].reply_min_ms
        # A gap below what the receiver acknowledged before, about a batch in flight, means
        # its durable watermark moved back: a failback rewound it to a fork. Follow it.
        self._learn(cur, key, nack.watermark, now_ms, backward=in_flight)
        if cur.state is not CursorState.SHIPPING:
            return
        if nack.reason is NackReason.GAP:
            self.stats.gaps_nacked += 1
        elif nack.reason is NackReason.CORRUPT:
            self.stats.corrupt_nacked += 1
        elif nack.reason is NackReason.UNKNOWN_DICTIONARY:
            self.stats.dictionary_nacks += 1
            self._queue_dictionary(src, key[0], nack.dict_id, now_ms)
        if not in_flight:
            self.stats.stale_answers += 1  # about a batch already rewound over: nothing to do
            return
        # Resend from what the receiver holds durably; never skip ahead of it. The batches
        # are sent again as they were (a CORRUPT one is built anew): the receiver may hold
        # some of them as pending proposals, which it recognises only by range and CRC, and a
        # copy cut differently would be refused as an overlap and start the rewind again.
        self._rewind(cur, Seq(cur.acked + 1), replay=nack.reason is not NackReason.CORRUPT)
        self.stats.rewinds += 1

    def set_dictionary(self, stream: StreamName, dictionary: CompressionDictionary) -> None:
        """The stream's trained dictionary (ignored unless ``settings.use_dictionary``).

        Every destination gets it in its next envelope, ahead of the first batch that names
        it, so no receiver has to refuse that batch and wait a round trip for the dictionary
        (the NACK ``UNKNOWN_DICTIONARY`` path remains for a receiver that lost it)."""
        if self.settings.use_dictionary:
            self._dictionaries[stream] = dictionary
            for link in self._links.values():
                if dictionary not in link.dictionaries:
                    link.dictionaries.append(dictionary)

    def tick(self, now_ms: int) -> list[GeoEnvelope]:
        """Build what is due: new batches, retransmissions, dictionaries, heartbeats."""
        out: list[GeoEnvelope] = []
        s = self.settings
        for dst in self._dsts:
            link = self._links[dst]
            items: list[GeoItem] = [GeoDictionary(d.dict_id, d.data) for d in link.dictionaries]
            if link.dictionaries:
                self.stats.dictionaries_sent += len(link.dictionaries)
                link.dictionaries.clear()
            probe = False
            for key, part in self._parts.items():
                cur = self._cursors[(key, dst)]
                if cur.state is CursorState.PROBING:
                    if cur.last_probe_ms is None or now_ms - cur.last_probe_ms >= link.rto_ms:
                        cur.last_probe_ms = now_ms
                        probe = True
                    continue
                if cur.state is CursorState.FENCED:
                    continue
                if cur.inflight and now_ms - cur.inflight[0].sent_ms >= link.rto_ms:
                    for f in cur.inflight:  # go-back-N: the receiver keeps no out-of-order batch
                        f.sent_ms = now_ms
                        f.resent = True
                        items.append(f.batch)
                    self.stats.count_retransmits(dst, len(cur.inflight))
                    link.back_off()
                while len(cur.inflight) < link.window and cur.next_seq <= part.commit:
                    batch = self._replayed(cur, part) if cur.replay else None
                    if batch is None:
                        pending = part.commit - cur.next_seq + 1
                        if (
                            pending < self._fill_events(part)
                            and s.linger_ms > 0
                            and now_ms - self._commit_time(part, cur.next_seq) < s.linger_ms
                        ):
                            break
                        batch = self._build(part, cur.next_seq, dst)
                    cur.inflight.append(_Inflight(batch, now_ms))
                    cur.next_seq = Seq(batch.src_end + 1)
                    items.append(batch)
            idle = link.last_sent_ms is None or now_ms - link.last_sent_ms >= s.heartbeat_ms
            if probe or (idle and not items and self._parts):
                items.append(self.heartbeat())
                self.stats.heartbeats_sent += 1
            if items:
                link.last_sent_ms = now_ms
                self.stats.envelopes_sent += 1
                out.append(GeoEnvelope(self.region, dst, tuple(items)))
        return out

    # --- queries --------------------------------------------------------------------------------

    def linger_due_ms(self) -> int | None:
        """The earliest time a batch now waiting for its linger to fill becomes due (None when
        none waits): a host whose clock ticks coarser than ``linger_ms`` calls :meth:`tick`
        then, so a lingering batch leaves on time rather than at the next tick."""
        s = self.settings
        if s.linger_ms <= 0:
            return None
        due: int | None = None
        for key, part in self._parts.items():
            for dst in self._dsts:
                cur = self._cursors[(key, dst)]
                if (
                    cur.state is not CursorState.SHIPPING
                    or cur.next_seq > part.commit
                    or len(cur.inflight) >= self._links[dst].window
                ):
                    continue
                at = self._commit_time(part, cur.next_seq) + s.linger_ms
                if due is None or at < due:
                    due = at
        return due

    def lag(self, stream: StreamName, partition: PartitionId, dst: RegionId, now_ms: int) -> Lag:
        """Lag of ``dst`` for a partition: events and ms (home commit time to ack time)."""
        key = (stream, partition)
        part = self._parts[key]
        cur = self._cursors[(key, dst)]
        behind = part.commit - cur.acked
        ms = 0 if behind <= 0 else now_ms - self._commit_time(part, Seq(cur.acked + 1))
        return Lag(cur.state, max(0, behind), max(0, ms), len(cur.inflight), cur.acked, part.commit)

    def partitions(self) -> list[PartitionKey]:
        return list(self._parts)

    def destinations(self) -> tuple[RegionId, ...]:
        return self._dsts

    def dictionary_ids(self) -> dict[StreamName, int]:
        """The dictionary id each stream's small batches name."""
        return {stream: d.dict_id for stream, d in self._dictionaries.items()}

    def drain_latencies(self) -> list[tuple[PartitionKey, RegionId, int, int]]:
        """(partition, destination, events, ms from home commit to ack) since the last call."""
        out = list(self._latencies)
        self._latencies.clear()
        return out

    # --- internals ------------------------------------------------------------------------------

    def _learn(
        self,
        cur: _Cursor,
        key: PartitionKey,
        wm: Watermark,
        now_ms: int,
        *,
        backward: bool = False,
    ) -> None:
        """Take in a durable watermark the receiver reported (acks, nacks, heartbeat replies).

        ``backward``: the report may move the cursor back (a receiver rewound to a fork by a
        failback reports less than it acknowledged before); otherwise a lower report is a
        stale answer and ignored.
        """
        part = self._parts[key]
        if cur.state is CursorState.FENCED:
            return
        if wm.epoch > part.epoch:
            # The destination holds data of a newer epoch: some other region is home now.
            self._fence(cur)
            return
        if wm.seq > part.commit:
            self.stats.stale_answers += 1  # more than we know committed: not ours to trust
            return
        if cur.state is CursorState.PROBING:
            cur.state = CursorState.SHIPPING
            cur.acked = wm.seq
            cur.next_seq = Seq(wm.seq + 1)
            return
        if wm.seq < cur.acked and backward and cur.state is CursorState.SHIPPING:
            cur.acked = wm.seq
            self._rewind(cur, Seq(wm.seq + 1), replay=False)
            self.stats.receiver_rewinds += 1
            return
        if wm.seq <= cur.acked:
            return
        self._record_latency(part, key, cur, wm.seq, now_ms)
        cur.acked = wm.seq
        link = self._links[cur.dst]
        while cur.inflight and cur.inflight[0].batch.src_end <= wm.seq:
            done = cur.inflight.popleft()
            if not done.resent:
                link.observe(now_ms - done.sent_ms)
        # The window always covers acked+1 .. next_seq-1 without a hole; a batch the mark cuts
        # through (an earlier shipper cut the range differently) is sent again from the mark.
        if not cur.inflight or cur.inflight[0].batch.src_start != wm.seq + 1:
            self._rewind(cur, Seq(wm.seq + 1), replay=True)
        if cur.replay:
            for start in [k for k, b in cur.replay.items() if b.src_end <= wm.seq]:
                del cur.replay[start]
        self._prune(part, key)

    def _fence(self, cur: _Cursor) -> None:
        """Another region is home now: this cursor ships nothing more, kept or in flight."""
        cur.state = CursorState.FENCED
        cur.inflight.clear()
        cur.replay.clear()
        self.stats.fenced += 1

    def _rewind(self, cur: _Cursor, to_seq: Seq, *, replay: bool) -> None:
        """Empty the window and ship again from ``to_seq``; with ``replay``, the batches it
        held are kept to be sent again unchanged when the resend reaches their first seq."""
        if replay:
            for f in cur.inflight:
                if f.batch.src_start >= to_seq:
                    cur.replay[f.batch.src_start] = f.batch
            # bounded by the window: beyond it the highest starts go (the resend begins at
            # the watermark and reaches them last)
            window = self._links[cur.dst].window
            while len(cur.replay) > window:
                del cur.replay[max(cur.replay)]
        else:
            cur.replay.clear()
        cur.inflight.clear()
        cur.next_seq = to_seq

    def _replayed(self, cur: _Cursor, part: _Partition) -> GeoBatch | None:
        """The batch a rewind kept for ``cur.next_seq``, if it still fits: same epoch, within
        the commit point, and its dictionary (if any) is the stream's current one."""
        batch = cur.replay.pop(cur.next_seq, None)
        if batch is None:
            return None
        if batch.epoch != part.epoch or batch.src_end > part.commit:
            return None
        if batch.dict_id:
            d = self._dictionaries.get(part.stream)
            if d is None or d.dict_id != batch.dict_id:
                return None
        self.stats.count_retransmits(cur.dst, 1)
        self.stats.replayed += 1
        return batch

    def _record_latency(
        self, part: _Partition, key: PartitionKey, cur: _Cursor, seq: Seq, now_ms: int
    ) -> None:
        prev = cur.acked
        for last, t, _ in part.marks:
            if last <= prev:
                continue
            hi = min(last, seq)
            self._latencies.append((key, cur.dst, hi - prev, now_ms - t))
            cur.last_ack_latency_ms = now_ms - t
            prev = hi
            if last >= seq:
                break

    def _prune(self, part: _Partition, key: PartitionKey) -> None:
        low = min(self._cursors[(key, d)].acked for d in self._dsts)
        while len(part.marks) > 1 and part.marks[0][0] <= low:
            part.marks.popleft()

    def _commit_time(self, part: _Partition, seq: Seq) -> int:
        for last, t, _ in part.marks:
            if last >= seq:
                return t
        return part.marks[-1][1] if part.marks else 0

    @staticmethod
    def _commit_marks(part: _Partition, start: Seq, end: Seq) -> tuple[tuple[Seq, int], ...]:
        """The (last seq, wall ms) marks covering ``start..end``, at most COMMIT_MARKS_MAX
        (the latest kept: the events of a dropped earlier mark count from a later commit, so
        a long batch under-reports rather than invents lag)."""
        out: list[tuple[Seq, int]] = []
        for last, _, wall in part.marks:
            if last < start:
                continue
            out.append((Seq(min(last, end)), wall))
            if last >= end:
                break
        if out and out[-1][0] < end:  # no report covers the tail (cannot happen: G2)
            out.append((end, out[-1][1]))
        return tuple(out[-COMMIT_MARKS_MAX:])

    def _queue_dictionary(
        self, dst: RegionId, stream: StreamName, dict_id: int, now_ms: int
    ) -> None:
        d = self._dictionaries.get(stream)
        if d is None or d.dict_id != dict_id:
            return  # not a dictionary of ours: the receiver must get it elsewhere
        link = self._links[dst]
        if (
            link.last_dictionary_ms is not None
            and now_ms - link.last_dictionary_ms < link.rto_min_ms
        ):
            return
        if d not in link.dictionaries:
            link.dictionaries.append(d)
            link.last_dictionary_ms = now_ms

    def _fill_events(self, part: _Partition) -> int:
        """Events at which a lingering batch leaves: the most a dictionary serves, when the
        stream has one (a batch just past it would go without), else ``batch_events_max``."""
        s = self.settings
        if self._codec != CODEC_NONE and part.stream in self._dictionaries:
            return min(s.batch_events_max, s.dictionary_batch_events_max)
        return s.batch_events_max

    def _build(self, part: _Partition, start: Seq, dst: RegionId) -> GeoBatch:
        s = self.settings
        # Light load (under two dictionary batches pending): keep batches the dictionary
        # serves; a backlog (a full window) still gets batches of up to batch_events_max.
        fill = self._fill_events(part)
        events_max = fill if part.commit - start + 1 < 2 * fill else s.batch_events_max
        d_now = self._dictionaries.get(part.stream) if self._codec != CODEC_NONE else None
        # Destinations usually get the same range in the same tick: read and encode it once
        # (the columnar layout costs a few CBOR passes per event), reuse it for the next one.
        # Everything the batch depends on is in the key: the range asked for and its bounds,
        # the epoch and the dictionary the stream has now.
        key = (
            part.stream,
            part.partition,
            part.epoch,
            start,
            part.commit,
            events_max,
            d_now.dict_id if d_now is not None else 0,
        )
        if self._last_built is not None and self._last_built[0] == key:
            batch, raw = self._last_built[1], self._last_built[2]
        else:
            entries = self._log.read_committed(
                part.stream, part.partition, start, part.commit, events_max, s.batch_bytes_max
            )
            if not entries or entries[0].seq != start:
                raise GeoLogError(
                    f"{part.stream}/{part.partition}: no committed entry starts at {start}"
                )
            if entries[-1].last_seq > part.commit:
                raise GeoLogError(f"{part.stream}/{part.partition}: log read past the commit point")
            events = sum(e.record_count for e in entries)
            d = d_now if events <= s.dictionary_batch_events_max else None
            batch = make_batch(
                part.stream,
                part.partition,
                part.epoch,
                entries,
                codec=self._codec,
                level=s.zstd_level,
                dictionary=d,
            )
            # raw: what the batch would carry uncompressed (codec none), for an honest ratio
            raw = len(batch.payload) if batch.codec == CODEC_NONE else len(encode_entries(entries))
            self._last_built = (key, batch, raw)
        marks = self._commit_marks(part, batch.src_start, batch.src_end)
        if marks:
            batch = dataclasses.replace(batch, commit_marks=marks)
        if batch.dict_id > 0:
            self.stats.batches_with_dictionary += 1
        self.stats.count_batch(dst, batch, raw)
        return batch

    def heartbeat(self) -> GeoHeartbeat:
        """Every home partition's position (what an idle link carries; a receiver acks it)."""
        return GeoHeartbeat(
            tuple(
                GeoPosition(p.stream, p.partition, p.epoch, p.commit) for p in self._parts.values()
            )
        )
