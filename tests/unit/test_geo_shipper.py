"""The shipper's transitions: probing, batching bounds, window, acks by watermark only, rewinds, fencing, lag.

A list-backed committed log stands in for the home store. Each test drives one input
(commit report, ack, nack, heartbeat reply, tick) and checks the envelopes that come out:
only committed data, never past what the receiver holds durably (Pulsar #26113 and the
skip-forward family), resends from ``watermark + 1``, dictionaries on request, heartbeats
on idle links, lag in events and ms. A last test runs shipper and receiver together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from geostore.codec import train_dictionary
from geostore.config import GeoSettings
from geostore.geo import (
    WATERMARK_ZERO,
    CursorState,
    GeoAck,
    GeoBatch,
    GeoDictionary,
    GeoEntry,
    GeoEnvelope,
    GeoHeartbeat,
    GeoLogError,
    GeoNack,
    GeoPosition,
    NackReason,
    ProposeBatch,
    Receiver,
    SendEnvelope,
    Shipper,
    Watermark,
    apply_geo_batch,
    encode_entries,
    open_batch,
    retransmit_timeout_ms,
    window_for_link,
)
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName

S = StreamName("s")
P = PartitionId(0)
E = Epoch(2)
HOME = RegionId("home")
EU = RegionId("eu")
AP = RegionId("ap")


class ListLog:
    """Committed entries per partition, one event each unless told otherwise."""

    def __init__(self) -> None:
        self.parts: dict[PartitionId, list[GeoEntry]] = {}
        self.reads: list[tuple[int, int]] = []

    def commit(self, p: PartitionId, n: int, per_entry: int = 1) -> Seq:
        es = self.parts.setdefault(p, [])
        for _ in range(n):
            seq = es[-1].last_seq + 1 if es else 0
            es.append(GeoEntry(Seq(seq), per_entry, f"p{p}e{seq}".encode() * 3))
        return es[-1].last_seq

    def read_committed(
        self,
        stream: StreamName,
        partition: PartitionId,
        from_seq: Seq,
        through_seq: Seq,
        events_max: int,
        bytes_max: int,
    ) -> Sequence[GeoEntry]:
        self.reads.append((from_seq, through_seq))
        out: list[GeoEntry] = []
        events = size = 0
        for e in self.parts.get(partition, []):
            if e.seq < from_seq:
                continue
            if e.last_seq > through_seq or (
                out and (events + e.record_count > events_max or size >= bytes_max)
            ):
                break
            out.append(e)
            events += e.record_count
            size += len(e.events)
        return out


def settings(**kw: Any) -> GeoSettings:
    base: dict[str, object] = {
        "batch_events_max": 4,
        "linger_ms": 0,
        "inflight_batches_max": 2,
        "heartbeat_ms": 100,
    }
    base.update(kw)
    return GeoSettings(**base)  # type: ignore[arg-type]


def shipper(log: ListLog, dsts: Sequence[RegionId] = (EU,), **kw: Any) -> Shipper:
    return Shipper(HOME, {d: 70.0 for d in dsts}, settings(**kw), log)


def batches(envs: list[GeoEnvelope], dst: RegionId = EU) -> list[GeoBatch]:
    return [i for e in envs if e.dst_region == dst for i in e.items if isinstance(i, GeoBatch)]


def ranges(envs: list[GeoEnvelope], dst: RegionId = EU) -> list[tuple[int, int]]:
    return [(b.src_start, b.src_end) for b in batches(envs, dst)]


def reply(*items: object, src: RegionId = EU) -> GeoEnvelope:
    return GeoEnvelope(src, HOME, tuple(items))  # type: ignore[arg-type]


def wm(seq: int) -> Watermark:
    return Watermark(E, Seq(seq))


def started(log: ListLog, committed: int, learned: int = -1, **kw: Any) -> Shipper:
    """A shipper that has learned the destination's watermark ``learned``."""
    sh = shipper(log, **kw)
    last = log.commit(P, committed) if committed else Seq(-1)
    sh.on_committed(S, P, E, last, 0)
    sh.on_envelope(reply(GeoHeartbeat((GeoPosition(S, P, E, Seq(learned)),), reply=True)), 0)
    return sh


RTO = retransmit_timeout_ms(70.0)
#: the links' RTT in these tests: an answer arrives no sooner than half of it after the send
#: (the shipper takes an earlier one for the answer to an earlier copy of the batch)
RTT = 70


def test_new_shipper_probes_until_it_learns_the_durable_watermark() -> None:
    log = ListLog()
    sh = shipper(log)
    sh.on_committed(S, P, E, log.commit(P, 10), 0)
    out = sh.tick(0)
    assert ranges(out) == []
    hbs = [i for e in out for i in e.items if isinstance(i, GeoHeartbeat)]
    assert hbs == [GeoHeartbeat((GeoPosition(S, P, E, Seq(9)),))]
    assert sh.tick(1) == []  # probes are paced by the retransmission timeout
    assert len(sh.tick(RTO)) == 1
    assert sh.lag(S, P, EU, RTO).state is CursorState.PROBING
    # the receiver holds 0..5 durably: resume at 6, not at 0 and not at 10
    sh.on_envelope(reply(GeoHeartbeat((GeoPosition(S, P, E, Seq(5)),), reply=True)), RTO + 1)
    assert ranges(sh.tick(RTO + 2)) == [(6, 9)]


def test_first_nack_or_ack_also_teaches_the_watermark() -> None:
    log = ListLog()
    sh = shipper(log)
    sh.on_committed(S, P, E, log.commit(P, 10), 0)
    sh.tick(0)
    sh.on_envelope(reply(GeoNack(S, P, E, Seq(0), Seq(3), NackReason.GAP, wm(2), E)), 1)
    assert ranges(sh.tick(2)) == [(3, 6), (7, 9)]


def test_only_committed_data_is_read_and_batches_respect_the_bounds() -> None:
    log = ListLog()
    sh = started(log, 3)
    log.commit(P, 20)  # in the log but not reported committed yet
    out = sh.tick(1)
    assert ranges(out) == [(0, 2)]
    assert all(through <= 2 for _, through in log.reads)
    sh.on_committed(S, P, E, Seq(22), 2)
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(0), Seq(2), wm(2))), 3)
    out = sh.tick(3)
    assert ranges(out) == [(3, 6), (7, 10)]  # 4 events per batch, window of 2


def test_byte_bound_and_whole_entries() -> None:
    log = ListLog()
    sh = started(log, 0, batch_events_max=100, batch_bytes_max=10)
    sh.on_committed(S, P, E, log.commit(P, 3, per_entry=5), 1)
    out = sh.tick(1)
    assert ranges(out) == [(0, 4), (5, 9)]  # an entry is never split; one over the byte bound


def test_linger_waits_for_a_fuller_batch() -> None:
    log = ListLog()
    sh = started(log, 0, linger_ms=20, batch_events_max=4)
    sh.on_committed(S, P, E, log.commit(P, 2), 100)
    assert ranges(sh.tick(110)) == []
    sh.on_committed(S, P, E, log.commit(P, 1), 115)
    assert ranges(sh.tick(119)) == []
    assert ranges(sh.tick(120)) == [(0, 2)]  # the oldest waited linger_ms
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(0), Seq(2), wm(2))), 121)
    sh.on_committed(S, P, E, log.commit(P, 4), 122)
    assert ranges(sh.tick(122)) == [(3, 6)]  # a full batch goes at once


def test_linger_due_names_when_a_waiting_batch_leaves() -> None:
    log = ListLog()
    sh = started(log, 0, linger_ms=20, batch_events_max=4, inflight_batches_max=1)
    assert sh.linger_due_ms() is None  # nothing waits
    sh.on_committed(S, P, E, log.commit(P, 2), 100)
    assert ranges(sh.tick(105)) == []
    assert sh.linger_due_ms() == 120  # the oldest waiting event's commit + linger_ms
    assert ranges(sh.tick(120)) == [(0, 1)]
    assert sh.linger_due_ms() is None  # all sent
    sh.on_committed(S, P, E, log.commit(P, 1), 125)
    assert ranges(sh.tick(126)) == []
    assert sh.linger_due_ms() is None  # the window is full: an ack, not the clock, frees it
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(0), Seq(1), wm(1))), 130)
    assert sh.linger_due_ms() == 145
    assert started(ListLog(), 0, linger_ms=0).linger_due_ms() is None


def test_ack_advances_by_the_watermark_only() -> None:
    log = ListLog()
    sh = started(log, 9)
    assert ranges(sh.tick(1)) == [(0, 3), (4, 7)]
    # "duplicate" ack whose watermark does not cover the batch: not delivered (Pulsar #26113)
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(0), Seq(3), wm(-1))), 2)
    assert sh.lag(S, P, EU, 2).inflight_batches == 2 and sh.lag(S, P, EU, 2).acked == -1
    assert ranges(sh.tick(3)) == []  # window still full
    assert ranges(sh.tick(1 + RTO)) == [(0, 3), (4, 7)]  # resent on timeout
    assert sh.stats.retransmits == 2
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(0), Seq(3), wm(3))), 200)
    lag = sh.lag(S, P, EU, 200)
    assert (lag.acked, lag.inflight_batches, lag.events) == (3, 1, 5)
    assert ranges(sh.tick(200)) == [(8, 8)]


def test_ack_that_covers_more_than_sent_moves_past_it_safely() -> None:
    log = ListLog()
    sh = started(log, 12)
    sh.tick(1)
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(0), Seq(3), wm(9))), 2)  # e.g. an earlier leader
    assert ranges(sh.tick(3)) == [(10, 11)]


def test_gap_nack_rewinds_to_the_watermark_never_forward() -> None:
    log = ListLog()
    sh = started(log, 12, inflight_batches_max=3)
    assert ranges(sh.tick(1)) == [(0, 3), (4, 7), (8, 11)]
    sh.on_envelope(reply(GeoNack(S, P, E, Seq(4), Seq(7), NackReason.GAP, wm(-1), E)), 1 + RTT)
    assert ranges(sh.tick(1 + RTT)) == [(0, 3), (4, 7), (8, 11)]
    assert sh.stats.rewinds == 1
    # a stale nack, for a batch no longer in flight as such, changes nothing
    sh.on_envelope(reply(GeoNack(S, P, E, Seq(5), Seq(6), NackReason.GAP, wm(-1), E)), 2 + RTT)
    assert ranges(sh.tick(2 + RTT)) == [] and sh.stats.rewinds == 1
    # nor does the nack of another batch of the same window, refused before the resend:
    # the resent copy was sent less than half a round trip ago
    sh.on_envelope(reply(GeoNack(S, P, E, Seq(8), Seq(11), NackReason.GAP, wm(-1), E)), 3 + RTT)
    assert ranges(sh.tick(3 + RTT)) == [] and sh.stats.rewinds == 1
    # a round trip after the resend, a refusal is about the resent copy: resend again
    sh.on_envelope(reply(GeoNack(S, P, E, Seq(8), Seq(11), NackReason.GAP, wm(3), E)), 1 + 2 * RTT)
    assert ranges(sh.tick(1 + 2 * RTT)) == [(4, 7), (8, 11)] and sh.stats.rewinds == 2


def test_corrupt_nack_resends() -> None:
    log = ListLog()
    sh = started(log, 4)
    first = batches(sh.tick(1))
    sh.on_envelope(reply(GeoNack(S, P, E, Seq(0), Seq(3), NackReason.CORRUPT, wm(-1), E)), 1 + RTT)
    again = batches(sh.tick(1 + RTT))
    assert again == first and open_batch(again[0])


def test_unknown_dictionary_nack_sends_the_dictionary_then_the_batch() -> None:
    samples = [f"origin=JFK dep={i} carrier=B6{i % 5}".encode() * 3 for i in range(300)]
    d = train_dictionary(samples, 1024)
    log = ListLog()
    sh = Shipper(HOME, {EU: 70.0}, settings(use_dictionary=True), log, dictionaries={S: d})
    sh.on_committed(S, P, E, log.commit(P, 2), 0)
    sh.on_envelope(reply(GeoHeartbeat((GeoPosition(S, P, E, Seq(-1)),), reply=True)), 0)
    b = batches(sh.tick(1))[0]
    sh.on_envelope(
        reply(
            GeoNack(
                S, P, E, b.src_start, b.src_end, NackReason.UNKNOWN_DICTIONARY, wm(-1), E, d.dict_id
            )
        ),
        1 + RTT,
    )
    out = sh.tick(1 + RTT)
    items = [i for e in out for i in e.items]
    assert items[0] == GeoDictionary(d.dict_id, d.data)
    assert [i for i in items if isinstance(i, GeoBatch)] == [b]
    # an unknown id (not ours) is not answered with a dictionary
    sh.on_envelope(
        reply(
            GeoNack(
                S, P, E, b.src_start, b.src_end, NackReason.UNKNOWN_DICTIONARY, wm(-1), E, 12345
            )
        ),
        1 + 2 * RTT,
    )
    assert not any(isinstance(i, GeoDictionary) for e in sh.tick(1 + 2 * RTT) for i in e.items)


def test_fenced_by_a_newer_epoch_stops_the_cursor() -> None:
    log = ListLog()
    sh = started(log, 4)
    sh.tick(1)
    sh.on_envelope(reply(GeoNack(S, P, E, Seq(0), Seq(3), NackReason.FENCED, wm(-1), Epoch(3))), 2)
    assert sh.lag(S, P, EU, 2).state is CursorState.FENCED
    sh.on_committed(S, P, E, log.commit(P, 8), 3)
    assert ranges(sh.tick(3 + RTO)) == []
    # a FENCED nack that names no newer epoch is stale and ignored
    sh2 = started(ListLog(), 4)
    sh2.tick(1)
    sh2.on_envelope(reply(GeoNack(S, P, E, Seq(0), Seq(3), NackReason.FENCED, wm(-1), E)), 2)
    assert sh2.lag(S, P, EU, 2).state is CursorState.SHIPPING


def test_a_watermark_beyond_the_commit_point_is_not_trusted() -> None:
    log = ListLog()
    sh = started(log, 4)
    sh.tick(1)
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(0), Seq(3), wm(50))), 2)
    assert sh.lag(S, P, EU, 2).acked == -1 and sh.stats.stale_answers == 1


def test_heartbeat_on_idle_link_and_lag_in_events_and_ms() -> None:
    log = ListLog()
    sh = started(log, 0)
    assert len(sh.tick(0)) == 1  # first contact: nothing sent yet, heartbeat
    assert sh.tick(50) == []
    hb = sh.tick(100)
    assert len(hb) == 1 and isinstance(hb[0].items[0], GeoHeartbeat)
    sh.on_committed(S, P, E, log.commit(P, 3), 1000)
    sh.tick(1000)
    lag = sh.lag(S, P, EU, 1070)
    assert (lag.events, lag.ms, lag.commit) == (3, 70, 2)
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(0), Seq(2), wm(2))), 1075)
    assert sh.lag(S, P, EU, 1080).events == 0 and sh.lag(S, P, EU, 1080).ms == 0
    assert sh.drain_latencies() == [((S, P), EU, 3, 75)]
    assert sh.drain_latencies() == []


def test_partitions_share_one_envelope_per_destination() -> None:
    log = ListLog()
    sh = shipper(log, dsts=(EU, AP))
    for p in (PartitionId(0), PartitionId(1)):
        sh.on_committed(S, p, E, log.commit(p, 2), 0)
    sh.tick(0)
    for src in (EU, AP):
        sh.on_envelope(
            reply(
                GeoHeartbeat(
                    (
                        GeoPosition(S, PartitionId(0), E, Seq(-1)),
                        GeoPosition(S, PartitionId(1), E, Seq(0)),
                    ),
                    reply=True,
                ),
                src=src,
            ),
            1,
        )
    out = sh.tick(2)
    assert sorted(e.dst_region for e in out) == [AP, EU]
    for e in out:
        assert [
            (b.partition, b.src_start, b.src_end) for b in e.items if isinstance(b, GeoBatch)
        ] == [
            (0, 0, 1),
            (1, 1, 1),
        ]


def test_misaligned_log_is_a_typed_error() -> None:
    log = ListLog()
    sh = started(log, 0)
    log.commit(P, 2, per_entry=3)
    sh.on_committed(S, P, E, Seq(5), 1)
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(0), Seq(0), wm(1))), 2)  # mid-entry: no entry at 2
    with pytest.raises(GeoLogError):
        sh.tick(3)


def test_window_from_the_bandwidth_delay_product() -> None:
    # us-east-1 <-> ap-southeast-1: 218.9 ms, 4776 KB/s: about 1 MiB in flight
    assert window_for_link(218.9, 4776, 64 * 1024) == 18
    assert window_for_link(69.6, 16556, 1 << 20) == 3
    assert window_for_link(1.0, 100, 1 << 20) == 2  # floor
    assert window_for_link(500.0, 10**6, 1024) == 64  # cap
    assert window_for_link(100.0, None, 1024) == 2


def test_shipper_and_receiver_converge_through_rewinds_and_losses() -> None:
    """Both cores with a host loop that drops every third envelope and applies at once; the
    answers take a round trip (40 ms steps, RTT 70 ms)."""
    log = ListLog()
    sh = shipper(log, inflight_batches_max=3)
    rcv = Receiver(EU, {(S, P): WATERMARK_ZERO})
    store: list[GeoEntry] = []
    water = WATERMARK_ZERO
    sent = 0
    now = 0
    on_the_way: list[GeoEnvelope] = []
    for step in range(400):
        now = step * 40
        if step < 200 and step % 2 == 0:
            sh.on_committed(S, P, E, log.commit(P, 1, per_entry=1 + step % 3), now)
        arrived, on_the_way = on_the_way, []
        for a in arrived:
            sh.on_envelope(a, now)
        for env in sh.tick(now):
            sent += 1
            if sent % 3 == 0:
                continue
            for eff in rcv.on_envelope(env, now):
                answers: list[GeoEnvelope] = []
                if isinstance(eff, SendEnvelope):
                    answers.append(eff.envelope)
                elif isinstance(eff, ProposeBatch):
                    res = apply_geo_batch(water, eff.cmd)
                    if res.applied:
                        store.extend(eff.cmd.entries)
                    water = res.watermark
                    answers += [
                        e.envelope
                        for e in rcv.on_applied(eff.cmd, res, now)
                        if isinstance(e, SendEnvelope)
                    ]
                on_the_way += answers
    assert store == log.parts[P]
    assert sh.lag(S, P, EU, now).events == 0
    assert sh.stats.retransmits > 0


def test_watermark_cutting_through_a_batch_in_flight_resends_from_the_mark() -> None:
    """Regression: the window was cleared without moving next_seq back, leaving a hole."""
    log = ListLog()
    sh = started(log, 10)
    assert ranges(sh.tick(1)) == [(0, 3), (4, 7)]
    # an earlier leader's batches were cut differently: the receiver holds 0..5 durably
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(0), Seq(5), wm(5))), 2)
    lag = sh.lag(S, P, EU, 2)
    assert (lag.acked, lag.inflight_batches) == (5, 0)
    assert ranges(sh.tick(3)) == [(6, 9)]


def test_timeout_adapts_to_a_receiver_slower_than_the_rtt() -> None:
    """Acks that take longer than the static timeout (the receiving region's Raft commit is
    slow) first cause a resend and a back-off; once the measured ack latency is folded in,
    batches acknowledged at that pace are no longer resent."""
    log = ListLog()
    sh = started(log, 0, inflight_batches_max=1, batch_events_max=1)
    slow_ms = 3 * RTO  # the receiver acks each batch three static timeouts after it was sent
    now = 1
    resends_at_start = sh.stats.retransmits
    for i in range(40):
        sh.on_committed(S, P, E, log.commit(P, 1), now)
        assert ranges(sh.tick(now)) == [(i, i)]
        sent_at = now
        # ticks while waiting for the ack: only the first few batches may time out
        for t in range(sent_at + 1, sent_at + slow_ms, 10):
            sh.tick(t)
        now = sent_at + slow_ms
        sh.on_envelope(reply(GeoAck(S, P, E, Seq(i), Seq(i), wm(i))), now)
        now += 1
        if i == 0:
            assert sh.stats.retransmits > resends_at_start  # the static timeout was too short
    resends_warm = sh.stats.retransmits
    for i in range(40, 60):
        sh.on_committed(S, P, E, log.commit(P, 1), now)
        assert ranges(sh.tick(now)) == [(i, i)]
        for t in range(now + 1, now + slow_ms, 10):
            sh.tick(t)
        now += slow_ms
        sh.on_envelope(reply(GeoAck(S, P, E, Seq(i), Seq(i), wm(i))), now)
        now += 1
    assert sh.stats.retransmits == resends_warm  # warmed up: no more spurious resends


def test_stats_count_each_destination_on_its_own() -> None:
    log = ListLog()
    sh = shipper(log, dsts=(EU, AP), inflight_batches_max=8)
    sh.on_committed(S, P, E, log.commit(P, 12), 0)
    sh.tick(0)
    # EU holds nothing yet, AP already holds 0..7: the two links ship different amounts
    sh.on_envelope(reply(GeoHeartbeat((GeoPosition(S, P, E, Seq(-1)),), reply=True), src=EU), 1)
    sh.on_envelope(reply(GeoHeartbeat((GeoPosition(S, P, E, Seq(7)),), reply=True), src=AP), 1)
    out = sh.tick(2)
    st = sh.stats
    assert set(st.destinations) == {EU, AP}  # one entry per destination, no more
    for dst in (EU, AP):
        sent = batches(out, dst)
        d = st.destinations[dst]
        assert d.batches_sent == len(sent)
        assert d.events_sent == sum(b.record_count for b in sent)
        assert d.bytes_payload == sum(len(b.payload) for b in sent)
        # raw: the row payload each batch would carry uncompressed (codec none)
        raw = sum(len(encode_entries(open_batch(b))) for b in sent)
        assert d.bytes_raw == raw
    assert (st.destinations[EU].events_sent, st.destinations[AP].events_sent) == (12, 4)
    assert st.destinations[EU].bytes_raw > 2 * st.destinations[AP].bytes_raw
    assert st.bytes_raw == sum(d.bytes_raw for d in st.destinations.values())
    assert st.bytes_payload == sum(d.bytes_payload for d in st.destinations.values())
    assert st.batches_sent == sum(d.batches_sent for d in st.destinations.values())
    # only AP acknowledges: only EU's window is sent again, and only EU counts the resends
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(8), Seq(11), wm(11)), src=AP), 3)
    resent = batches(sh.tick(2 + RTO), EU)
    assert len(resent) == 3 and batches(sh.tick(2 + RTO), AP) == []
    assert st.destinations[EU].retransmits == 3 and st.destinations[AP].retransmits == 0
    assert st.retransmits == 3
    assert st.destinations[EU].batches_sent == 3  # a resend is no new batch


def test_receiver_rewound_by_a_failback_is_followed_back_to_its_fork() -> None:
    """A receiver that acknowledged 0..7 and then failed back to fork 3 reports watermark 3:
    a gap NACK about a batch in flight (or an idle heartbeat reply) moves the cursor back,
    so seqs 4.. are shipped again; a stale lower answer with nothing to say is ignored."""
    log = ListLog()
    sh = started(log, 8, inflight_batches_max=1)
    assert ranges(sh.tick(1)) == [(0, 3)]
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(0), Seq(3), wm(3))), 2)
    assert ranges(sh.tick(3)) == [(4, 7)]
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(4), Seq(7), wm(7))), 4)
    sh.on_committed(S, P, E, log.commit(P, 4), 5)
    assert ranges(sh.tick(5)) == [(8, 11)]
    # stale: a nack for a batch not in flight, with a lower watermark, changes nothing
    sh.on_envelope(reply(GeoNack(S, P, E, Seq(4), Seq(7), NackReason.GAP, wm(3), E)), 6)
    assert sh.lag(S, P, EU, 6).acked == 7 and sh.stats.receiver_rewinds == 0
    # the receiver failed back to 3: its gap nack about the batch in flight moves us back
    t = 5 + RTT
    sh.on_envelope(reply(GeoNack(S, P, E, Seq(8), Seq(11), NackReason.GAP, wm(3), E)), t)
    assert sh.lag(S, P, EU, t).acked == 3 and sh.stats.receiver_rewinds == 1
    assert ranges(sh.tick(t + 1)) == [(4, 7)]
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(4), Seq(7), wm(7))), t + 2)
    assert ranges(sh.tick(t + 3)) == [(8, 11)]
    sh.on_envelope(reply(GeoAck(S, P, E, Seq(8), Seq(11), wm(11))), t + 4)
    # idle, then a heartbeat reply says the receiver went back to 5: ship 6.. again
    hb = GeoHeartbeat((GeoPosition(S, P, E, Seq(5)),), reply=True)
    sh.on_envelope(reply(hb), t + 5)
    assert sh.lag(S, P, EU, t + 5).acked == 5 and sh.stats.receiver_rewinds == 2
    assert ranges(sh.tick(t + 6)) == [(6, 9)]


def test_a_rewind_resends_the_batches_unchanged_so_pending_proposals_still_match() -> None:
    """Regression (bench.geo, three continents): a rewind rebuilt the window from the
    watermark with new boundaries (a backlog makes larger batches); the receiver, still
    holding the old batches as pending proposals, refused each rebuilt one as an overlap,
    which rewound the shipper again: hundreds of GAP NACKs in a few seconds after a
    dictionary switch. The kept batches go again as they were, and the receiver recognises
    the ones it holds."""
    log = ListLog()
    sh = started(log, 0, inflight_batches_max=4)
    rcv = Receiver(EU, {(S, P): WATERMARK_ZERO})
    sent: list[GeoBatch] = []
    for t in range(4):  # one event per tick: four one-event batches
        sh.on_committed(S, P, E, log.commit(P, 1), t)
        sent += batches(sh.tick(t))
    assert [(b.src_start, b.src_end) for b in sent] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    # 0 and 1 arrive and are proposed (their Raft commit is slow); 2 is lost; 3 leaves a hole
    proposals = [
        e
        for b in (sent[0], sent[1])
        for e in rcv.on_envelope(GeoEnvelope(HOME, EU, (b,)), 10)
        if isinstance(e, ProposeBatch)
    ]
    assert len(proposals) == 2
    (nack_env,) = rcv.on_envelope(GeoEnvelope(HOME, EU, (sent[3],)), 3 + RTT // 2)
    assert isinstance(nack_env, SendEnvelope) and rcv.stats.gaps_nacked == 1
    sh.on_envelope(nack_env.envelope, 3 + RTT)
    assert sh.stats.rewinds == 1
    resent = batches(sh.tick(3 + RTT))
    assert resent == sent  # byte for byte, not one rebuilt 0..3 batch
    assert sh.stats.replayed == 4 and sh.stats.retransmits >= 4
    effects = rcv.on_envelope(GeoEnvelope(HOME, EU, tuple(resent)), 3 + RTT + RTT // 2)
    assert rcv.stats.gaps_nacked == 1  # no second refusal
    assert rcv.stats.duplicates_pending == 2
    more = [e.cmd for e in effects if isinstance(e, ProposeBatch)]
    assert [(c.src_start, c.src_end) for c in more] == [(2, 2), (3, 3)]
    # the slow commits land: everything applies in order and the shipper learns it all
    water = WATERMARK_ZERO
    for cmd in [p.cmd for p in proposals if isinstance(p, ProposeBatch)] + more:
        res = apply_geo_batch(water, cmd)
        assert res.applied
        water = res.watermark
        for eff in rcv.on_applied(cmd, res, 200):
            assert isinstance(eff, SendEnvelope)
            sh.on_envelope(eff.envelope, 3 + 2 * RTT)
    assert water.seq == 3 and sh.lag(S, P, EU, 3 + 2 * RTT).events == 0
    assert sh.stats.replayed == 4


def test_a_new_dictionary_goes_to_every_destination_ahead_of_its_first_batch() -> None:
    """Regression (the mode comparison): the first batch naming a freshly trained dictionary
    was refused by every receiver (UNKNOWN_DICTIONARY) and waited a round trip for it, a lag
    spike on every link at the stream's 5,000th event."""
    samples = [f"origin=JFK dep={i} carrier=B6{i % 5}".encode() * 3 for i in range(300)]
    d = train_dictionary(samples, 1024)
    log = ListLog()
    sh = Shipper(HOME, {EU: 70.0, AP: 180.0}, settings(use_dictionary=True), log)
    sh.on_committed(S, P, E, log.commit(P, 2), 0)
    for dst in (EU, AP):
        hb = GeoHeartbeat((GeoPosition(S, P, E, Seq(-1)),), reply=True)
        sh.on_envelope(reply(hb, src=dst), 0)
    assert {b.dict_id for b in batches(sh.tick(1))} == {0}
    sh.set_dictionary(S, d)
    # events like the ones it was trained on, so that zstd uses it
    log.parts[P] += [GeoEntry(Seq(2 + i), 1, samples[i]) for i in range(2)]
    sh.on_committed(S, P, E, Seq(3), 2)
    out = sh.tick(2)
    for dst in (EU, AP):
        rcv = Receiver(dst, {(S, P): Watermark(E, Seq(1))})
        (env,) = [e for e in out if e.dst_region == dst]
        assert env.items[0] == GeoDictionary(d.dict_id, d.data)
        (b,) = [i for i in env.items if isinstance(i, GeoBatch)]
        assert b.dict_id == d.dict_id
        effects = rcv.on_envelope(env, 3)
        assert [type(e).__name__ for e in effects] == ["LearnDictionary", "ProposeBatch"]
        assert rcv.stats.unknown_dictionary == 0
    assert sh.stats.dictionaries_sent == 2
    assert batches(sh.tick(3)) == [] and sh.stats.dictionaries_sent == 2  # once per link
