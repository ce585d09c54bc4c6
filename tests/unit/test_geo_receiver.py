"""The receiver's transitions and the apply rule: every (state, input) either moves or is a typed rejection.

Each test sets up a receiver state (durable watermark, pending proposals, applied batches,
known epoch, dictionaries) and feeds one input, then checks the exact effects: a proposal,
an ack carrying the durable watermark, a NACK with its reason, or nothing; and that a
refusal never moves the watermark (G3, G10). The pure :func:`apply_geo_batch` is checked
against every position of a batch relative to the watermark.
"""

from __future__ import annotations

import dataclasses

import pytest

from geostore.codec import train_dictionary
from geostore.geo import (
    WATERMARK_ZERO,
    ApplyVerdict,
    GeoAck,
    GeoApply,
    GeoBatch,
    GeoDictionary,
    GeoEntry,
    GeoEnvelope,
    GeoHeartbeat,
    GeoNack,
    GeoPosition,
    LearnDictionary,
    NackReason,
    ProposeBatch,
    Receiver,
    ReceiverEffect,
    SendEnvelope,
    Watermark,
    apply_geo_batch,
    make_batch,
    resealed,
)
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName

S = StreamName("s")
P = PartitionId(0)
E = Epoch(2)
HOME = RegionId("home")
HERE = RegionId("here")


def entries(start: int, n: int) -> list[GeoEntry]:
    return [GeoEntry(Seq(start + i), 1, f"v{start + i}".encode() * 4) for i in range(n)]


def batch(start: int, n: int, epoch: int = E, **kw: object) -> GeoBatch:
    return make_batch(S, P, Epoch(epoch), entries(start, n), **kw)  # type: ignore[arg-type]


def env(*items: object) -> GeoEnvelope:
    return GeoEnvelope(HOME, HERE, tuple(items))  # type: ignore[arg-type]


def replies(effects: list[ReceiverEffect]) -> list[object]:
    out: list[object] = []
    for e in effects:
        if isinstance(e, SendEnvelope):
            assert e.envelope.src_region == HERE and e.envelope.dst_region == HOME
            out.extend(e.envelope.items)
    return out


def proposals(effects: list[ReceiverEffect]) -> list[GeoApply]:
    return [e.cmd for e in effects if isinstance(e, ProposeBatch)]


def apply_all(r: Receiver, wm: Watermark, cmds: list[GeoApply]) -> tuple[Watermark, list[object]]:
    """What the host does: apply each committed command and report it."""
    out: list[object] = []
    for cmd in cmds:
        res = apply_geo_batch(wm, cmd)
        wm = res.watermark
        out += replies(r.on_applied(cmd, res, 0))
    return wm, out


def receiver(seq: int = -1, **kw: object) -> Receiver:
    wm = Watermark(E, Seq(seq)) if seq >= 0 else WATERMARK_ZERO
    return Receiver(HERE, {(S, P): wm}, known_epochs={(S, P): E}, **kw)  # type: ignore[arg-type]


def one_nack(effects: list[ReceiverEffect]) -> GeoNack:
    rs = replies(effects)
    assert len(rs) == 1 and isinstance(rs[0], GeoNack), rs
    assert not proposals(effects)
    return rs[0]


def test_contiguous_batch_is_proposed_and_acked_only_after_apply() -> None:
    r = receiver()
    eff = r.on_envelope(env(batch(0, 3)), 0)
    cmds = proposals(eff)
    assert len(cmds) == 1 and replies(eff) == []
    assert cmds[0].entries == tuple(entries(0, 3))
    assert r.watermark(S, P) == WATERMARK_ZERO  # nothing durable before the apply
    wm, out = apply_all(r, WATERMARK_ZERO, cmds)
    assert wm == Watermark(E, Seq(2))
    assert out == [GeoAck(S, P, E, Seq(0), Seq(2), wm)]
    assert r.watermark(S, P) == wm


def test_pipelined_batches_are_proposed_in_order_and_pending_duplicates_ignored() -> None:
    r = receiver()
    eff = r.on_envelope(env(batch(0, 2), batch(2, 2), batch(4, 1)), 0)
    cmds = proposals(eff)
    assert [(c.src_start, c.src_end) for c in cmds] == [(0, 1), (2, 3), (4, 4)]
    # a retransmission of a pending batch: no second proposal, no answer yet
    again = r.on_envelope(env(batch(2, 2)), 1)
    assert again == [] and r.stats.duplicates_pending == 1
    wm, out = apply_all(r, WATERMARK_ZERO, cmds)
    assert wm.seq == 4 and [a.src_end for a in out if isinstance(a, GeoAck)] == [1, 3, 4]


def test_already_applied_batch_is_reacked_without_change() -> None:
    r = receiver()
    b = batch(0, 3)
    wm, _ = apply_all(r, WATERMARK_ZERO, proposals(r.on_envelope(env(b), 0)))
    eff = r.on_envelope(env(b), 5)
    assert proposals(eff) == []
    assert replies(eff) == [GeoAck(S, P, E, Seq(0), Seq(2), wm)]
    assert r.watermark(S, P) == wm and r.stats.duplicates_reacked == 1


def test_covered_batch_with_another_checksum_or_cut_is_a_gap_not_an_ack() -> None:
    r = receiver()
    b = batch(0, 3)
    wm, _ = apply_all(r, WATERMARK_ZERO, proposals(r.on_envelope(env(b), 0)))
    other = make_batch(S, P, E, [GeoEntry(Seq(0), 3, b"different")])
    n = one_nack(r.on_envelope(env(other), 1))
    assert (n.reason, n.watermark) == (NackReason.GAP, wm)
    n = one_nack(r.on_envelope(env(batch(1, 2)), 1))  # covered, cut differently
    assert (n.reason, n.watermark) == (NackReason.GAP, wm)
    assert r.watermark(S, P) == wm


def test_after_a_leader_change_a_covered_duplicate_is_a_gap_with_the_watermark() -> None:
    r = receiver(seq=9)  # a new leader: no memory of the batches applied before
    n = one_nack(r.on_envelope(env(batch(5, 5)), 0))
    assert n.reason is NackReason.GAP and n.watermark == Watermark(E, Seq(9))


@pytest.mark.parametrize(("start", "n"), [(11, 2), (20, 1), (8, 4), (9, 1)])
def test_gap_or_overlap_is_nacked_with_the_watermark(start: int, n: int) -> None:
    r = receiver(seq=9)
    nack = one_nack(r.on_envelope(env(batch(start, n)), 0))
    assert nack.reason is NackReason.GAP
    assert nack.watermark == Watermark(E, Seq(9))
    assert (nack.src_start, nack.src_end) == (start, start + n - 1)
    assert r.watermark(S, P).seq == 9 and r.stats.gaps_nacked == 1


def test_older_epoch_is_fenced() -> None:
    r = receiver(seq=9)
    nack = one_nack(r.on_envelope(env(batch(10, 1, epoch=1)), 0))
    assert nack.reason is NackReason.FENCED and nack.known_epoch == E
    r.set_known_epoch(S, P, Epoch(5))
    nack = one_nack(r.on_envelope(env(batch(10, 1, epoch=4)), 0))
    assert nack.reason is NackReason.FENCED and nack.known_epoch == 5


def test_newer_epoch_continues_the_copy() -> None:
    r = receiver(seq=9)
    cmds = proposals(r.on_envelope(env(batch(10, 2, epoch=3)), 0))
    wm, _ = apply_all(r, Watermark(E, Seq(9)), cmds)
    assert wm == Watermark(Epoch(3), Seq(11))


@pytest.mark.parametrize("damage", ["flip", "truncate", "count", "range"])
def test_corrupt_batches_are_rejected_and_never_proposed(damage: str) -> None:
    r = receiver()
    b = batch(0, 3)
    if damage == "flip":
        payload = bytearray(b.payload)
        payload[len(payload) // 2] ^= 4
        bad = dataclasses.replace(b, payload=bytes(payload))
    else:
        if damage == "truncate":
            bad = dataclasses.replace(b, payload=b.payload[:-3])
        elif damage == "count":
            bad = dataclasses.replace(b, src_end=Seq(3), record_count=4)
        else:
            bad = dataclasses.replace(b, record_count=2)
        bad = resealed(bad)
    nack = one_nack(r.on_envelope(env(bad), 0))
    assert nack.reason is NackReason.CORRUPT and nack.watermark == WATERMARK_ZERO
    assert r.stats.corrupt_rejected == 1
    # the intact batch is then accepted: the damaged one left no trace
    assert len(proposals(r.on_envelope(env(b), 1))) == 1


def test_unknown_dictionary_is_nacked_then_learned() -> None:
    samples = [f"origin=EWR dep={i} carrier=UA{i % 7}".encode() * 3 for i in range(300)]
    d = train_dictionary(samples, 1024)
    b = make_batch(S, P, E, [GeoEntry(Seq(0), 1, samples[5])], dictionary=d)
    assert b.dict_id == d.dict_id
    r = receiver()
    nack = one_nack(r.on_envelope(env(b), 0))
    assert nack.reason is NackReason.UNKNOWN_DICTIONARY and nack.dict_id == d.dict_id
    # a damaged dictionary is ignored, the real one learned
    assert r.on_envelope(env(GeoDictionary(d.dict_id, d.data[:-1])), 1) == []
    eff = r.on_envelope(env(GeoDictionary(d.dict_id, d.data), b), 2)
    assert any(isinstance(e, LearnDictionary) and e.dictionary == d for e in eff)
    assert len(proposals(eff)) == 1


def test_lost_proposal_rejected_at_apply_resets_and_nacks() -> None:
    r = receiver()
    cmds = proposals(r.on_envelope(env(batch(0, 2), batch(2, 2)), 0))
    # the first proposal is lost in a leader change; the second commits and applies
    res = apply_geo_batch(WATERMARK_ZERO, cmds[1])
    assert res.verdict is ApplyVerdict.GAP
    out = replies(r.on_applied(cmds[1], res, 1))
    assert len(out) == 1 and isinstance(out[0], GeoNack) and out[0].reason is NackReason.GAP
    assert r.pending(S, P) == 0
    # the shipper resends from watermark + 1, which is accepted again
    assert len(proposals(r.on_envelope(env(batch(0, 2)), 2))) == 1


def test_stale_pending_proposals_time_out_and_propose_failed_resets() -> None:
    r = receiver(propose_timeout_ms=100)
    assert proposals(r.on_envelope(env(batch(0, 2)), 0))
    n = one_nack(r.on_envelope(env(batch(3, 2)), 0))  # leaves a hole after the pending one
    assert n.reason is NackReason.GAP and n.watermark == WATERMARK_ZERO
    r.tick(50)
    assert r.pending(S, P) == 1
    r.tick(100)
    assert r.pending(S, P) == 0 and r.stats.propose_resets == 1
    assert proposals(r.on_envelope(env(batch(0, 2)), 101))
    r.on_propose_failed(S, P)
    assert r.pending(S, P) == 0
    assert proposals(r.on_envelope(env(batch(0, 2)), 102))


def test_heartbeat_is_answered_with_durable_watermarks() -> None:
    r = receiver(seq=4)
    hb = GeoHeartbeat((GeoPosition(S, P, E, Seq(20)), GeoPosition(S, PartitionId(7), E, Seq(3))))
    out = replies(r.on_envelope(env(hb), 0))
    assert out == [
        GeoHeartbeat(
            (GeoPosition(S, P, E, Seq(4)), GeoPosition(S, PartitionId(7), Epoch(0), Seq(-1))),
            reply=True,
        )
    ]
    assert r.lag_events(S, P) == 16
    # replies and acks addressed to a shipper are not the receiver's business
    assert (
        r.on_envelope(
            env(GeoHeartbeat((), reply=True), GeoAck(S, P, E, Seq(0), Seq(0), WATERMARK_ZERO)), 0
        )
        == []
    )


def test_unsafe_switch_accepts_a_gap() -> None:
    r = receiver(seq=9, unsafe_accept_noncontiguous=True)
    assert len(proposals(r.on_envelope(env(batch(15, 1)), 0))) == 1


@pytest.mark.parametrize(
    ("wm", "start", "end", "epoch", "verdict"),
    [
        (-1, 0, 3, 2, ApplyVerdict.APPLIED),
        (9, 10, 12, 2, ApplyVerdict.APPLIED),
        (9, 10, 12, 3, ApplyVerdict.APPLIED),
        (9, 11, 12, 2, ApplyVerdict.GAP),
        (9, 8, 12, 2, ApplyVerdict.GAP),
        (9, 5, 9, 2, ApplyVerdict.DUPLICATE),
        (9, 0, 3, 2, ApplyVerdict.DUPLICATE),
        (9, 10, 12, 1, ApplyVerdict.FENCED),
    ],
)
def test_apply_rule(wm: int, start: int, end: int, epoch: int, verdict: ApplyVerdict) -> None:
    w = Watermark(E, Seq(wm))
    cmd = GeoApply(
        S, P, Epoch(epoch), Seq(start), Seq(end), 0, tuple(entries(start, end - start + 1))
    )
    res = apply_geo_batch(w, cmd)
    assert res.verdict is verdict
    if verdict is ApplyVerdict.APPLIED:
        assert res.watermark == Watermark(Epoch(epoch), Seq(end))
    else:
        assert res.watermark == w  # a refusal never moves the watermark
    unsafe = apply_geo_batch(w, cmd, unsafe_accept_noncontiguous=True)
    if verdict in (ApplyVerdict.GAP, ApplyVerdict.DUPLICATE):
        assert unsafe.applied
