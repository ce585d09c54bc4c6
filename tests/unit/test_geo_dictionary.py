"""Trained dictionaries and commit marks in the geo cores: when a home trains, which batches
name the dictionary, how a receiver that lacks it fetches it, how many it keeps, and the home
commit times every batch carries for the per-event lag.

Pure: a list-backed committed log, a shipper and a receiver wired by hand (no IO, no clock).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import cbor2
import pytest

from geostore.codec import CompressionDictionary, dumps_plain
from geostore.config import GeoSettings
from geostore.errors import CodecError
from geostore.geo import (
    GeoAck,
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
    SendEnvelope,
    Shipper,
    Watermark,
    apply_geo_batch,
    open_batch,
)
from geostore.geo.dictionary import (
    DictionarySet,
    DictionaryTrainer,
    train,
    training_samples,
)
from geostore.geo.messages import COMMIT_MARKS_MAX
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName

S = StreamName("flights")
P = PartitionId(0)
E = Epoch(1)
HOME = RegionId("us")
EU = RegionId("eu")


def flight(rng: random.Random, i: int) -> bytes:
    """An event block shaped like a stored flight: the same keys, varying values."""
    carrier = rng.choice(["UA", "AA", "B6", "DL", "EV", "MQ", "US", "WN"])
    return dumps_plain(
        [
            {
                "key": rng.choice(["EWR", "JFK", "LGA"]),
                "ts": 1_357_000_000_000_000 + i * 60_000_000,
                "body": {
                    "year": 2013,
                    "month": 1 + i % 12,
                    "carrier": carrier,
                    "flight": rng.randint(1, 6000),
                    "tailnum": f"N{rng.randint(100, 999)}{carrier}",
                    "dest": rng.choice(["ATL", "ORD", "LAX", "BOS", "MCO", "SFO"]),
                    "dep_delay": rng.randint(-10, 120),
                    "distance": rng.randint(200, 2500),
                },
            }
        ]
    )


class Log:
    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.entries: list[GeoEntry] = []

    def commit(self, n: int) -> Seq:
        for _ in range(n):
            seq = Seq(len(self.entries))
            self.entries.append(GeoEntry(seq, 1, flight(self.rng, seq), "p", seq))
        return Seq(len(self.entries) - 1)

    def read_committed(
        self,
        stream: StreamName,
        partition: PartitionId,
        from_seq: Seq,
        through_seq: Seq,
        events_max: int,
        bytes_max: int,
    ) -> Sequence[GeoEntry]:
        out = [e for e in self.entries[from_seq : through_seq + 1]]
        return out[:events_max]


def settings(**kw: Any) -> GeoSettings:
    base: dict[str, Any] = {
        "batch_events_max": 10,
        "linger_ms": 0,
        "inflight_batches_max": 4,
        "dictionary_batch_events_max": 20,
    }
    base.update(kw)
    return GeoSettings(**base)


def trained(log: Log, events: int = 200) -> CompressionDictionary:
    return train(training_samples(log.entries[:events]), 8192)


def probed(sh: Shipper, seq: int = -1) -> None:
    pos = GeoPosition(S, P, E, Seq(seq))
    sh.on_envelope(GeoEnvelope(EU, HOME, (GeoHeartbeat((pos,), reply=True),)), 0)


def items(envs: list[GeoEnvelope]) -> list[object]:
    return [i for e in envs for i in e.items]


def test_trainer_waits_for_enough_events_trains_once_and_retries_a_failure() -> None:
    t = DictionaryTrainer(train_events=100, attempts_max=2)
    assert not t.due(S, 99)
    assert t.due(S, 100)
    t.started(S)
    assert not t.due(S, 500), "one training at a time"
    t.finished(S, 100, None)  # zstd could not train: wait for twice as many events
    assert not t.due(S, 150) and t.due(S, 200)
    t.started(S)
    t.finished(S, 200, None)
    assert not t.due(S, 10_000), "attempts are bounded"
    t2 = DictionaryTrainer(train_events=10)
    t2.started(S) if t2.due(S, 10) else pytest.fail("due")
    t2.finished(S, 10, CompressionDictionary.from_bytes(b"x" * 64))
    assert t2.trained(S) and not t2.due(S, 1000)


def test_train_refuses_too_few_samples_and_names_the_dictionary_by_its_bytes() -> None:
    log = Log()
    log.commit(300)
    with pytest.raises(CodecError):
        train(training_samples(log.entries[:3]), 8192)
    d = trained(log)
    assert len(d.data) <= 8192
    assert d == trained(log), "same samples, same bytes, same id"
    # a sample is exactly the payload of a one-entry batch
    assert cbor2.loads(training_samples(log.entries[:1])[0])[0][1] == log.entries[0].events


def test_dictionary_set_evicts_least_recently_used_by_count_and_bytes() -> None:
    ds = [CompressionDictionary.from_bytes(bytes([i]) * 100) for i in range(5)]
    s = DictionarySet(count_max=3, bytes_max=1000)
    assert s.add(ds[0]) == () and s.add(ds[1]) == () and s.add(ds[2]) == ()
    assert s.get(ds[0].dict_id) == ds[0]  # a use: ds[1] is now the least recently used
    assert s.add(ds[3]) == (ds[1].dict_id,)
    assert list(s) == [ds[2].dict_id, ds[0].dict_id, ds[3].dict_id]
    by_bytes = DictionarySet(count_max=10, bytes_max=250)
    by_bytes.add(ds[0])
    by_bytes.add(ds[1])
    assert by_bytes.add(ds[2]) == (ds[0].dict_id,) and by_bytes.bytes == 200
    too_big = CompressionDictionary.from_bytes(b"z" * 300)
    assert by_bytes.add(too_big) == (too_big.dict_id,) and too_big.dict_id not in by_bytes


def test_only_small_batches_name_the_dictionary() -> None:
    log = _committed(Log(), 300)
    d = trained(log)
    sh = Shipper(HOME, {EU: 70.0}, settings(dictionary_batch_events_max=5), log)
    sh.set_dictionary(S, d)
    assert sh.dictionary_ids() == {S: d.dict_id}
    sh.on_committed(S, P, E, Seq(len(log.entries) - 1), 0)
    probed(sh)
    small = [b for b in items(sh.tick(1)) if isinstance(b, GeoBatch)]
    # batches of 10 events: over the threshold of 5, no dictionary
    assert small and all(b.dict_id == 0 for b in small)
    sh2 = Shipper(HOME, {EU: 70.0}, settings(dictionary_batch_events_max=10), log)
    sh2.set_dictionary(S, d)
    sh2.on_committed(S, P, E, Seq(len(log.entries) - 1), 0)
    probed(sh2)
    named = [b for b in items(sh2.tick(1)) if isinstance(b, GeoBatch)]
    assert named and all(b.dict_id == d.dict_id for b in named)
    assert sh2.stats.batches_with_dictionary == len(named)
    # and the dictionary makes them smaller than the same batches without it
    assert sum(len(b.payload) for b in named) < sum(len(b.payload) for b in small)
    off = Shipper(HOME, {EU: 70.0}, settings(use_dictionary=False), log)
    off.set_dictionary(S, d)
    assert off.dictionary_ids() == {}


def _committed(log: Log, n: int) -> Log:
    log.commit(n)
    return log


def test_a_receiver_without_the_dictionary_fetches_it_and_accepts_the_resent_batch() -> None:
    log = _committed(Log(), 300)
    d = trained(log)
    # a shipper that had the dictionary already (a new leader of the home region: a fresh
    # dictionary goes out on its own, ahead of its first batch) and a receiver without it
    sh = Shipper(HOME, {EU: 70.0}, settings(), log, dictionaries={S: d})
    sh.on_committed(S, P, E, Seq(299), 0)
    r = Receiver(EU, {(S, P): Watermark(E, Seq(-1))}, dictionary_bytes_max=8192)
    now = 0
    learned: list[LearnDictionary] = []
    applied = Watermark(E, Seq(-1))
    nacked = 0
    probed(sh)
    while applied.seq < 299 and now < 10_000:
        now += 10
        for env in sh.tick(now):
            for eff in r.on_envelope(env, now):
                if isinstance(eff, LearnDictionary):
                    learned.append(eff)
                elif isinstance(eff, SendEnvelope):
                    nacked += sum(
                        1
                        for i in eff.envelope.items
                        if isinstance(i, GeoNack) and i.reason is NackReason.UNKNOWN_DICTIONARY
                    )
                    sh.on_envelope(eff.envelope, now)
                elif isinstance(eff, ProposeBatch):
                    res = apply_geo_batch(applied, eff.cmd)
                    applied = res.watermark
                    for out in r.on_applied(eff.cmd, res, now):
                        assert isinstance(out, SendEnvelope)
                        sh.on_envelope(out.envelope, now)
    assert applied.seq == 299
    assert nacked >= 1 and sh.stats.dictionaries_sent >= 1
    assert [e.dictionary for e in learned] == [d], "learned once, checked against its id"
    assert r.dictionary_ids() == (d.dict_id,)


def test_receiver_refuses_a_dictionary_over_its_bound_or_not_matching_its_id() -> None:
    d = trained(_committed(Log(), 300))
    r = Receiver(EU, dictionary_bytes_max=len(d.data) - 1)
    assert r.on_envelope(GeoEnvelope(HOME, EU, (GeoDictionary(d.dict_id, d.data),)), 0) == []
    r2 = Receiver(EU, dictionary_bytes_max=len(d.data))
    wrong = GeoDictionary(d.dict_id ^ 1, d.data)
    assert r2.on_envelope(GeoEnvelope(HOME, EU, (wrong,)), 0) == []
    assert r.stats.dictionaries_refused == 1 and r2.stats.dictionaries_refused == 1
    (eff,) = r2.on_envelope(GeoEnvelope(HOME, EU, (GeoDictionary(d.dict_id, d.data),)), 0)
    assert eff == LearnDictionary(d)


def test_receiver_keeps_a_bounded_set_and_reports_what_it_evicted() -> None:
    ds = [CompressionDictionary.from_bytes(bytes([i]) * 64) for i in range(3)]
    r = Receiver(EU, dictionaries=ds[:2], dictionaries_max=2)
    assert r.dictionary_ids() == (ds[0].dict_id, ds[1].dict_id)
    (eff,) = r.on_envelope(GeoEnvelope(HOME, EU, (GeoDictionary(ds[2].dict_id, ds[2].data),)), 0)
    assert eff == LearnDictionary(ds[2], (ds[0].dict_id,))
    assert r.stats.dictionaries_evicted == 1


def test_batches_carry_the_home_commit_marks_that_cover_them() -> None:
    log = _committed(Log(), 12)
    sh = Shipper(HOME, {EU: 70.0}, settings(batch_events_max=6, linger_ms=0), log)
    sh.on_committed(S, P, E, Seq(3), 5, commit_wall_ms=1_000)
    sh.on_committed(S, P, E, Seq(7), 6, commit_wall_ms=1_010)
    sh.on_committed(S, P, E, Seq(11), 7, commit_wall_ms=1_020)
    probed(sh)
    first, second = (b for b in items(sh.tick(8)) if isinstance(b, GeoBatch))
    assert (first.src_start, first.src_end) == (0, 5)
    assert first.commit_marks == ((3, 1_000), (5, 1_010))
    assert second.commit_marks == ((7, 1_010), (11, 1_020))
    # the marks travel to the proposal; they are outside the CRC, the entries are intact
    r = Receiver(EU, {(S, P): Watermark(E, Seq(-1))})
    (prop,) = [e for e in r.on_envelope(GeoEnvelope(HOME, EU, (first,)), 9)
               if isinstance(e, ProposeBatch)]  # fmt: skip
    assert prop.commit_marks == first.commit_marks and prop.src_region == HOME
    assert open_batch(first) == tuple(log.entries[:6])
    # without a wall clock the marks use the shipper's own time
    sh2 = Shipper(HOME, {EU: 70.0}, settings(), log)
    sh2.on_committed(S, P, E, Seq(11), 42)
    probed(sh2)
    (b,) = [b for b in items(sh2.tick(43)) if isinstance(b, GeoBatch)][:1]
    assert b.commit_marks == ((9, 42),)


def test_a_batch_carries_at_most_the_latest_commit_marks() -> None:
    log = _committed(Log(), 40)
    sh = Shipper(HOME, {EU: 70.0}, settings(batch_events_max=40), log)
    for seq in range(40):
        sh.on_committed(S, P, E, Seq(seq), seq, commit_wall_ms=10_000 + seq)
    probed(sh)
    (b,) = [b for b in items(sh.tick(100)) if isinstance(b, GeoBatch)]
    assert len(b.commit_marks) == COMMIT_MARKS_MAX
    assert b.commit_marks[-1] == (39, 10_039)
    assert b.commit_marks[0] == (40 - COMMIT_MARKS_MAX, 10_040 - COMMIT_MARKS_MAX)


def test_acks_still_advance_by_watermark_with_dictionaries_and_marks() -> None:
    log = _committed(Log(), 30)
    sh = Shipper(HOME, {EU: 70.0}, settings(), log)
    sh.set_dictionary(S, trained(log, 30))
    sh.on_committed(S, P, E, Seq(29), 0, commit_wall_ms=5)
    probed(sh, 9)
    bs = [b for b in items(sh.tick(1)) if isinstance(b, GeoBatch)]
    assert bs[0].src_start == 10
    sh.on_envelope(GeoEnvelope(EU, HOME, (GeoAck(S, P, E, Seq(10), Seq(19), Watermark(E, Seq(19))),)), 2)  # fmt: skip
    assert sh.lag(S, P, EU, 3).acked == 19
