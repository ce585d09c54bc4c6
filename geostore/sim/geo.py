"""Deterministic simulation of geo replication: the geo core over a WAN, with its checkers.

Theory of operation:

- **One seed fixes everything**: the regions (two or three, with the RTTs and bandwidths of
  the three-continents topology), the partitions and their home regions, the shipping
  settings (batch bounds, linger, window, compression, dictionary), the client load and the
  fault plan. Each subsystem draws from its own ``random.Random("{seed}:geo:{name}")``;
  events run in (virtual time, sequence) order from one heap.
- **A region** is modelled as a durable, ordered log with a leader: a proposal becomes
  durable and is applied a few ms later (the region's Raft commit), or, when the leader
  crashed meanwhile, either still commits (it reached a majority) or is lost. The leader
  hosts the real :class:`~geostore.geo.Shipper` (for the partitions the region is home of)
  and :class:`~geostore.geo.Receiver` (for the others); a crash drops both, and the new
  leader builds them from durable state only (commit points and watermarks).
- **Apply** of a geo command uses :func:`~geostore.geo.apply_geo_batch` and writes the
  entries and the watermark in one step (the atomic apply). The negative control
  ``watermark_not_durable`` writes the watermark first and the data a moment later, with a
  crash point between; ``accept_noncontiguous`` makes receiver and apply accept any batch.
- **Links** (reusing :class:`~geostore.sim.network.SimNetwork`): one-way delay from the RTT,
  jitter, serialisation at the link's bandwidth; faults cut and heal links, add delay,
  drop, duplicate and reorder envelopes, corrupt batches (flipped bytes; truncated payloads
  and lying counts with a recomputed CRC; damaged envelope bytes), and inject batches of an
  older epoch. Envelopes travel as encoded bytes, so the codec is on the path.
- **Checkers**: G1 (every remote copy is always a prefix of the home's committed log, checked
  at each apply), G2 (every shipped batch ends at or below the home's commit point, and is
  shipped by the home), G3 (contiguous apply; re-deliveries change nothing), G4 (after every
  restart, each watermark equals the last durable applied seq), G5 (only the home region
  commits client data of a partition), G9 (after the last heal every copy converges, and the
  shipper reports zero lag, within a bound of virtual time) and G10 (a proposed batch holds
  exactly the home's entries for its range).
- **Coverage** counters name each fault and each rare path; the CI seed set requires all of
  :data:`GEO_REQUIRED` to be non-zero.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import heapq
import itertools
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from geostore.codec import (
    CodecError,
    CompressionDictionary,
    decode_message,
    dumps_plain,
    encode_message,
    train_dictionary,
)
from geostore.config import GeoSettings
from geostore.geo import (
    SEQ_NONE,
    WATERMARK_ZERO,
    GeoApply,
    GeoApplyResult,
    GeoBatch,
    GeoEntry,
    GeoEnvelope,
    LearnDictionary,
    ProposeBatch,
    Receiver,
    ReceiverEffect,
    ReceiverStats,
    SendEnvelope,
    Shipper,
    ShipperStats,
    Watermark,
    apply_geo_batch,
    encode_entries,
    make_batch,
    resealed,
)
from geostore.ids import Epoch, NodeId, PartitionId, RegionId, Seq, StreamName
from geostore.sim.network import SimNetwork
from geostore.sim.pool import format_failure, run_pool

#: safety: 4-9 faults in the window, convergence within ``safety_catchup_ms`` of the heal;
#: liveness: 2-5 faults, convergence (G9) within the tighter ``catchup_ms``.
GEO_MODES: tuple[str, ...] = ("safety", "liveness")
GEO_UNSAFE: tuple[str, ...] = ("accept_noncontiguous", "watermark_not_durable")

GEO_FAULTS: tuple[str, ...] = (
    "cut",
    "delay",
    "loss",
    "duplicate",
    "reorder",
    "corrupt",
    "crash",
    "crash_point",
    "stale_epoch",
    "proposal_loss",
)

#: Rare paths the CI seed set must take (C4), besides one of each fault.
GEO_PATHS: tuple[str, ...] = (
    "gaps_nacked",
    "duplicates_reacked",
    "corrupt_rejected",
    "fenced_nacked",
    "leader_change_home",
    "leader_change_remote",
    "retransmits",
    "dictionary_fetches",
    "propose_resets",
    "proposals_lost",
    "envelopes_undecodable",
    "fault_crash_point_hit",
)

GEO_REQUIRED: tuple[str, ...] = tuple(f"fault_{k}" for k in GEO_FAULTS) + GEO_PATHS

#: The three-continents topology's figures (regions/three-continents.toml): RTT ms, KB/s.
REGIONS: tuple[RegionId, ...] = (
    RegionId("us-east-1"),
    RegionId("eu-west-1"),
    RegionId("ap-southeast-1"),
)
_LINKS: dict[frozenset[str], tuple[float, float, int]] = {
    frozenset({"us-east-1", "eu-west-1"}): (69.6, 2.2, 16556),
    frozenset({"us-east-1", "ap-southeast-1"}): (218.9, 3.6, 4776),
    frozenset({"eu-west-1", "ap-southeast-1"}): (182.2, 9.1, 5808),
}

STREAM = StreamName("s")
EPOCH = Epoch(2)  # the current epoch; batches of epoch 1 are stale (fenced)
TICK_MS = 5
US_PER_MS = 1000


@dataclass(frozen=True, slots=True)
class GeoSimSettings:
    """Sizes of a run (tests may shrink them)."""

    load_ms: int = 2500
    fault_window_ms: int = 2500
    catchup_ms: int = 6000  # G9: convergence bound after the last heal (liveness mode)
    safety_catchup_ms: int = 12000  # the looser bound of safety mode (denser faults)
    append_interval_ms_mean: float = 25.0


@dataclass(slots=True)
class GeoRunResult:
    """A run's verdict; small, so worker processes can send it back."""

    seed: int
    mode: str
    unsafe: str | None
    passed: bool
    violations: list[str]
    plan: str
    coverage: dict[str, int]
    trace_hash: str
    virtual_ms: int
    events: int
    commits: int
    cpu_s: float

    @property
    def title(self) -> str:
        return (
            f"geo seed {self.seed} ({self.mode}{', unsafe ' + self.unsafe if self.unsafe else ''})"
        )

    @property
    def replay(self) -> str:
        return replay_command(self.seed, self.mode, self.unsafe)


def replay_command(seed: int, mode: str, unsafe: str | None = None) -> str:
    cmd = f"geostore sim --geo --seeds 1 --start {seed} --mode {mode}"
    if unsafe:
        cmd += f" --geo-unsafe {unsafe}"
    return cmd


@dataclass(frozen=True, slots=True)
class _Fault:
    start_ms: int
    duration_ms: int
    kind: str
    regions: tuple[RegionId, ...] = ()
    rate: float = 0.0

    def describe(self) -> str:
        what = f"{self.start_ms}ms+{self.duration_ms}ms {self.kind}"
        if self.regions:
            what += " " + "->".join(self.regions)
        if self.rate:
            what += f" p={self.rate:.2f}"
        return what


_DICTIONARY: CompressionDictionary | None = None


def _sim_events(rng: random.Random, part: int, n: int, count: int) -> bytes:
    """A small block of unique, compressible events, shaped as the store's event blocks
    (``[1, ts[], keys[], {}, ends[], bodies]``), so batches take the columnar layout."""
    rows = [
        {"p": part, "n": n + i, "origin": rng.choice(("EWR", "JFK", "LGA")), "dep": 500 + i}
        for i in range(count)
    ]
    bodies = [dumps_plain(r) for r in rows]
    ends = list(itertools.accumulate(map(len, bodies)))
    ts = [1_000 * (n + i) for i in range(count)]
    keys = [r["origin"] for r in rows]
    return dumps_plain([1, ts, keys, {}, ends, b"".join(bodies)])


def sim_dictionary() -> CompressionDictionary:
    """A dictionary trained once per process on sample payloads of the simulated events."""
    global _DICTIONARY
    if _DICTIONARY is None:
        rng = random.Random("geo-dictionary")
        samples = []
        for k in range(300):
            entries = [
                GeoEntry(Seq(i), 1, _sim_events(rng, k % 3, k * 10 + i, 1), f"c{k % 3}", k)
                for i in range(3)
            ]
            samples.append(encode_entries(entries))
        _DICTIONARY = train_dictionary(samples, 4096)
    return _DICTIONARY


@dataclass(slots=True)
class _Part:
    """One partition in one region: durable entries (committed at home, applied elsewhere)."""

    entries: list[GeoEntry] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    watermark: Watermark = WATERMARK_ZERO  # durable (remote copies only)

    @property
    def last_seq(self) -> Seq:
        return self.entries[-1].last_seq if self.entries else SEQ_NONE

    def append(self, e: GeoEntry) -> None:
        self.entries.append(e)
        self.starts.append(e.seq)

    def at(self, seq: int) -> GeoEntry | None:
        i = bisect.bisect_left(self.starts, seq)
        if i < len(self.starts) and self.starts[i] == seq:
            return self.entries[i]
        return None


@dataclass(slots=True)
class _Region:
    name: RegionId
    parts: dict[PartitionId, _Part]
    up: bool = True
    incarnation: int = 0
    shipper: Shipper | None = None
    receiver: Receiver | None = None
    crash_point_armed: bool = False
    last_commit_us: int = 0  # the log commits in order: no proposal overtakes another
    next_producer_seq: int = 0

    def read_committed(
        self,
        stream: StreamName,
        partition: PartitionId,
        from_seq: Seq,
        through_seq: Seq,
        events_max: int,
        bytes_max: int,
    ) -> Sequence[GeoEntry]:
        part = self.parts[partition]
        i = bisect.bisect_left(part.starts, from_seq)
        out: list[GeoEntry] = []
        events = size = 0
        while i < len(part.entries):
            e = part.entries[i]
            if e.last_seq > through_seq or (out and (events >= events_max or size >= bytes_max)):
                break
            if out and events + e.record_count > events_max:
                break
            out.append(e)
            events += e.record_count
            size += len(e.events)
            i += 1
        return out


class GeoSimulation:
    """One seeded run of the geo core over a simulated WAN."""

    def __init__(
        self,
        seed: int,
        mode: str = "safety",
        unsafe: str | None = None,
        settings: GeoSimSettings | None = None,
    ) -> None:
        assert mode in GEO_MODES, mode
        assert unsafe is None or unsafe in GEO_UNSAFE, unsafe
        self.seed, self.mode, self.unsafe = seed, mode, unsafe
        self.settings = settings or GeoSimSettings()

        def rng(name: str) -> random.Random:
            return random.Random(f"{seed}:geo:{name}")

        self.rng_setup, self.rng_load = rng("setup"), rng("load")
        self.rng_faults, self.rng_region = rng("faults"), rng("region")
        self.rng_corrupt = rng("corrupt")
        r = self.rng_setup
        n_regions = r.choice((2, 3, 3))
        self.regions_order = REGIONS[:n_regions]
        n_parts = r.randint(1, 3)
        self.homes: dict[PartitionId, RegionId] = {
            PartitionId(p): self.regions_order[(p + r.randrange(n_regions)) % n_regions]
            for p in range(n_parts)
        }
        batch_events = r.choice((4, 16, 64))
        window = r.choice((1, 2, 4, 8))
        # The window must carry the load with room to catch up (as window_for_link sizes it in
        # a deployment): at least 4x the mean append rate over the widest RTT.
        rtt_max_ms = max(
            _LINKS[frozenset({a, b})][0]
            for a in self.regions_order
            for b in self.regions_order
            if a != b
        )
        events_per_s = 3.0 * 1000.0 / self.settings.append_interval_ms_mean
        while window * batch_events * 1000.0 / rtt_max_ms < 4 * events_per_s:
            window *= 2
        self.geo = GeoSettings(
            batch_events_max=batch_events,
            batch_bytes_max=r.choice((2048, 65536)),
            linger_ms=r.choice((0, 5, 20)),
            inflight_batches_max=window,
            zstd_level=r.choice((1, 3)),
            use_dictionary=r.random() < 0.5,
            heartbeat_ms=r.choice((50, 100)),
        )
        self.compression = r.random() < 0.85 or self.geo.use_dictionary
        self.commit_ms = (r.uniform(1.0, 3.0), r.uniform(3.0, 8.0))
        self.regions: dict[RegionId, _Region] = {
            name: _Region(name, {p: _Part() for p in self.homes}) for name in self.regions_order
        }
        rtt: dict[tuple[NodeId, NodeId], float] = {}
        jitter = 0.0
        self.bandwidth: dict[tuple[RegionId, RegionId], int] = {}
        for a in self.regions_order:
            for b in self.regions_order:
                if a != b:
                    ms, jit, kbps = _LINKS[frozenset({a, b})]
                    rtt[(NodeId(a), NodeId(b))] = ms
                    self.bandwidth[(a, b)] = kbps
                    jitter = max(jitter, jit)
        self.net = SimNetwork(rng("net"), rtt, jitter_ms_mean=max(0.5, jitter / 2))
        self.rtt = dict(rtt)
        self.extra_delay: dict[tuple[RegionId, RegionId], float] = {}
        self._fifo_us: dict[tuple[RegionId, RegionId], int] = {}
        self.rates: dict[str, list[float]] = {"loss": [], "duplicate": [], "reorder": []}
        self.corrupt_p: list[float] = []
        self.proposal_loss_p: list[float] = []  # the region's log drops a proposal, leader lives

        self.now_us = 0
        self._heap: list[tuple[int, int, Callable[[Any], None], object]] = []
        self._seq = 0
        self.events = 0
        self.commits = 0
        self.violations: list[str] = []
        self.coverage: Counter[str] = Counter()
        self._ship_stats: list[ShipperStats] = []
        self._recv_stats: list[ReceiverStats] = []
        self._hash = hashlib.blake2b(digest_size=16)
        self.heal_ms = self.settings.fault_window_ms
        self.converged_ms: int | None = None
        self.faults = self._draw_faults()
        self.dictionary = sim_dictionary() if self.geo.use_dictionary else None
        for region in self.regions.values():
            self._start_leader(region)

    # --- scheduling -----------------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        return self.now_us // US_PER_MS

    def at(self, delay_ms: float, fn: Callable[[Any], None], arg: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now_us + int(delay_ms * US_PER_MS), self._seq, fn, arg))

    def trace(self, text: str) -> None:
        self._hash.update(f"{self.now_us} {text}\n".encode())

    def fail(self, code: str, detail: str) -> None:
        if len(self.violations) < 20:
            self.violations.append(f"{code} at {self.now_ms} ms: {detail}")

    # --- fault plan -----------------------------------------------------------------------------

    def _draw_faults(self) -> list[_Fault]:
        r = self.rng_faults
        window = self.settings.fault_window_ms
        dense = self.mode == "safety"
        kinds = list(GEO_FAULTS)
        profile = r.sample(kinds, r.randint(3, len(kinds)))  # swarm: a subset per seed
        count = r.randint(4, 9) if dense else r.randint(2, 5)
        faults: list[_Fault] = []
        names = self.regions_order
        for _ in range(count):
            kind = r.choice(profile)
            start = r.randint(100, window - 200)
            duration = min(r.randint(100, 1500), window - start)
            if kind in ("cut", "delay"):
                a, b = r.sample(names, 2)
                ends = (a, b) if r.random() < 0.5 else (a, b, a)  # one way, or both ways
                faults.append(_Fault(start, duration, kind, ends))
            elif kind in ("crash", "crash_point"):
                faults.append(_Fault(start, r.randint(50, 800), kind, (r.choice(names),)))
            elif kind in ("loss", "duplicate", "reorder", "corrupt", "proposal_loss"):
                faults.append(_Fault(start, duration, kind, (), r.uniform(0.05, 0.4)))
            else:
                faults.append(_Fault(start, 0, kind, (r.choice(names),)))
        faults.sort(key=lambda f: (f.start_ms, f.kind))
        for f in faults:
            self.at(f.start_ms, self._fault_start, f)
        return faults

    def _fault_start(self, f: _Fault) -> None:
        self.coverage[f"fault_{f.kind}"] += 1
        self.trace(f"fault {f.describe()}")
        if f.kind in ("cut", "delay"):
            links = [(f.regions[0], f.regions[1])]
            if len(f.regions) == 3:
                links.append((f.regions[1], f.regions[0]))
            for a, b in links:
                if f.kind == "cut":
                    self.net.cut(NodeId(a), NodeId(b))
                else:
                    self.extra_delay[(a, b)] = self.extra_delay.get((a, b), 0.0) + 300.0
            self.at(f.duration_ms, self._fault_end, (f, links))
        elif f.kind in self.rates:
            self.rates[f.kind].append(f.rate)
            self._set_rates()
            self.at(f.duration_ms, self._fault_end, (f, []))
        elif f.kind == "corrupt":
            self.corrupt_p.append(f.rate)
            self.at(f.duration_ms, self._fault_end, (f, []))
        elif f.kind == "proposal_loss":
            self.proposal_loss_p.append(f.rate)
            self.at(f.duration_ms, self._fault_end, (f, []))
        elif f.kind == "crash":
            self._crash(self.regions[f.regions[0]], f.duration_ms)
        elif f.kind == "crash_point":
            self.regions[f.regions[0]].crash_point_armed = True
        elif f.kind == "stale_epoch":
            self._inject_stale(self.regions[f.regions[0]])

    def _fault_end(self, arg: tuple[_Fault, list[tuple[RegionId, RegionId]]]) -> None:
        f, links = arg
        self.trace(f"heal {f.describe()}")
        # The global heal may have cleared everything already: each end is tolerant of it.
        for a, b in links:
            if f.kind == "cut":
                if self.net.is_cut(NodeId(a), NodeId(b)):
                    self.net.uncut(NodeId(a), NodeId(b))
            elif (a, b) in self.extra_delay:
                self.extra_delay[(a, b)] = max(0.0, self.extra_delay[(a, b)] - 300.0)
        if f.kind in self.rates:
            if f.rate in self.rates[f.kind]:
                self.rates[f.kind].remove(f.rate)
            self._set_rates()
        elif f.kind == "corrupt" and f.rate in self.corrupt_p:
            self.corrupt_p.remove(f.rate)
        elif f.kind == "proposal_loss" and f.rate in self.proposal_loss_p:
            self.proposal_loss_p.remove(f.rate)

    def _set_rates(self) -> None:
        self.net.loss_p = max(self.rates["loss"], default=0.0)
        self.net.dup_p = max(self.rates["duplicate"], default=0.0)
        self.net.reorder_p = max(self.rates["reorder"], default=0.0)
        self.net.reorder_jitter_ms = 150.0

    def _inject_stale(self, region: _Region) -> None:
        """A batch of the previous epoch (a zombie home) arrives at ``region``."""
        homes = [p for p, h in self.homes.items() if h != region.name]
        if not homes:
            return
        p = homes[0]
        home = self.regions[self.homes[p]]
        part = home.parts[p]
        if not part.entries:
            return
        e = part.entries[0]
        b = make_batch(STREAM, p, Epoch(EPOCH - 1), [e])
        env = GeoEnvelope(home.name, region.name, (b,))
        self._send(home.name, region.name, env)

    # --- leaders --------------------------------------------------------------------------------

    def _start_leader(self, region: _Region) -> None:
        region.up = True
        region.incarnation += 1
        self.trace(f"leader {region.name} #{region.incarnation}")
        # G4: the durable watermark equals the last durable applied seq.
        for p, part in region.parts.items():
            if self.homes[p] == region.name:
                continue
            if part.watermark.seq != part.last_seq:
                self.fail(
                    "G4",
                    f"{region.name} p{p}: watermark {part.watermark.seq} but durable data ends "
                    f"at {part.last_seq}",
                )
        dsts = {
            d: self.rtt[(NodeId(region.name), NodeId(d))] for d in self.regions if d != region.name
        }
        dicts = {STREAM: self.dictionary} if self.dictionary is not None else None
        mine = [p for p, h in self.homes.items() if h == region.name]
        if mine:
            shipper = Shipper(
                region.name,
                dsts,
                self.geo,
                region,
                dictionaries=dicts,
                compression=self.compression,
            )
            for p in mine:
                shipper.on_committed(STREAM, p, EPOCH, region.parts[p].last_seq, self.now_ms)
            region.shipper = shipper
        others = {
            (STREAM, p): region.parts[p].watermark
            for p, h in self.homes.items()
            if h != region.name
        }
        if others:
            region.receiver = Receiver(
                region.name,
                others,
                known_epochs={k: EPOCH for k in others},
                propose_timeout_ms=1500,
                unsafe_accept_noncontiguous=self.unsafe == "accept_noncontiguous",
            )

    def _crash(self, region: _Region, downtime_ms: int) -> None:
        if not region.up:
            return
        self.trace(f"crash {region.name}")
        region.up = False
        region.incarnation += 1
        if region.shipper is not None:
            self.coverage["leader_change_home"] += 1
            self._ship_stats.append(region.shipper.stats)
        if region.receiver is not None:
            self.coverage["leader_change_remote"] += 1
            self._recv_stats.append(region.receiver.stats)
        region.shipper = region.receiver = None
        self.at(downtime_ms, self._restart, region)

    def _restart(self, region: _Region) -> None:
        if not region.up:
            self._start_leader(region)

    # --- load -----------------------------------------------------------------------------------

    def _client(self, p: PartitionId) -> None:
        if self.now_ms >= self.settings.load_ms:
            return
        region = self.regions[self.homes[p]]
        r = self.rng_load
        if region.up:
            count = r.randint(1, 5)
            region.next_producer_seq += 1
            events = _sim_events(r, p, region.next_producer_seq * 10, count)
            producer = (f"c{p}", region.next_producer_seq) if r.random() < 0.7 else (None, None)
            self.at(
                self._commit_delay(region),
                self._home_commit,
                (region, p, count, events, producer, region.incarnation),
            )
        self.at(r.expovariate(1.0 / self.settings.append_interval_ms_mean), self._client, p)

    def _commit_delay(self, region: _Region) -> float:
        """Delay until a proposal made now commits: a region's log commits in proposal order."""
        lo, hi = self.commit_ms
        at_us = max(
            self.now_us + int(self.rng_region.uniform(lo, hi) * US_PER_MS),
            region.last_commit_us + 1,
        )
        region.last_commit_us = at_us
        return (at_us - self.now_us) / US_PER_MS

    def _survives(self, region: _Region, incarnation: int) -> bool:
        """A proposal whose leader crashed may still commit (it reached a majority) or not."""
        if region.incarnation == incarnation:
            return True
        if self.rng_region.random() < 0.5:
            return True
        self.coverage["proposals_lost"] += 1
        return False

    def _home_commit(
        self, arg: tuple[_Region, PartitionId, int, bytes, tuple[Any, Any], int]
    ) -> None:
        region, p, count, events, producer, inc = arg
        if not self._survives(region, inc):
            return
        if self.homes[p] != region.name:
            self.fail(
                "G5", f"{region.name} committed client data of p{p}, homed at {self.homes[p]}"
            )
        part = region.parts[p]
        e = GeoEntry(Seq(part.last_seq + 1), count, events, producer[0], producer[1])
        part.append(e)
        self.commits += 1
        self.trace(f"commit {region.name} p{p} {e.seq}+{count}")
        if region.up and region.shipper is not None:
            region.shipper.on_committed(STREAM, p, EPOCH, part.last_seq, self.now_ms)
            self._ship(region)

    # --- network --------------------------------------------------------------------------------

    def _ship(self, region: _Region) -> None:
        assert region.shipper is not None
        for env in region.shipper.tick(self.now_ms):
            self._check_shipped(region, env)
            self._send(region.name, env.dst_region, env)

    def _check_shipped(self, region: _Region, env: GeoEnvelope) -> None:
        for item in env.items:
            if type(item) is GeoBatch:
                p = item.partition
                if self.homes.get(p) != region.name:
                    self.fail("G2", f"{region.name} shipped p{p}, homed at {self.homes.get(p)}")
                    continue
                commit = region.parts[p].last_seq
                if item.src_end > commit:
                    self.fail("G2", f"p{p} batch ends at {item.src_end} past commit {commit}")

    def _send(self, src: RegionId, dst: RegionId, env: GeoEnvelope) -> None:
        data = encode_message(env)
        if (
            self.corrupt_p
            and any(type(i) is GeoBatch for i in env.items)
            and self.rng_corrupt.random() < max(self.corrupt_p)
        ):
            data = self._corrupt(env, data)
        reordered_before = self.net.stats.reordered
        delays = self.net.fate(NodeId(src), NodeId(dst))
        if not delays:
            self.trace(f"drop {src}->{dst}")
            return
        kbps = self.bandwidth[(src, dst)]
        serial_ms = len(data) / (kbps * 1.024)
        extra = self.extra_delay.get((src, dst), 0.0) + serial_ms
        for i, d in enumerate(delays):
            at_us = self.now_us + int((d + extra) * US_PER_MS)
            if i == 0 and self.net.stats.reordered == reordered_before:
                # One connection per link is FIFO: only a reorder fault (or a duplicate, the
                # later copies) lets an envelope overtake an earlier one.
                at_us = max(at_us, self._fifo_us.get((src, dst), 0) + 1)
                self._fifo_us[(src, dst)] = at_us
            self.at((at_us - self.now_us) / US_PER_MS, self._deliver, (dst, data))
        self.trace(f"send {src}->{dst} {len(data)}B x{len(delays)}")

    def _corrupt(self, env: GeoEnvelope, data: bytes) -> bytes:
        r = self.rng_corrupt
        how = r.randrange(4)
        if how == 3:
            # damaged envelope bytes: the decoder refuses them, or a batch fails its CRC
            buf = bytearray(data)
            i = r.randrange(len(buf))
            buf[i] ^= 1 << r.randrange(8)
            self.trace("corrupt envelope bytes")
            return bytes(buf)
        items = list(env.items)
        idx = [i for i, it in enumerate(items) if type(it) is GeoBatch]
        i = r.choice(idx)
        b = items[i]
        assert type(b) is GeoBatch
        if how == 0 and b.payload:
            buf = bytearray(b.payload)
            j = r.randrange(len(buf))
            buf[j] ^= 1 << r.randrange(8)
            b = dataclasses.replace(b, payload=bytes(buf))  # the CRC no longer matches
        else:
            if how == 1:  # truncated payload, CRC recomputed (a sender bug): decoding must fail
                b = dataclasses.replace(b, payload=b.payload[: max(1, len(b.payload) // 2)])
            else:  # a lying count and range, CRC recomputed: the entries must not add up
                b = dataclasses.replace(
                    b, src_end=Seq(b.src_end + 1), record_count=b.record_count + 1
                )
            b = resealed(b)
        items[i] = b
        self.trace(f"corrupt batch {how}")
        return encode_message(GeoEnvelope(env.src_region, env.dst_region, tuple(items)))

    def _deliver(self, arg: tuple[RegionId, bytes]) -> None:
        dst, data = arg
        region = self.regions[dst]
        if not region.up:
            self.trace(f"lost at {dst} (down)")
            return
        try:
            env = decode_message(data)
        except CodecError:
            self.coverage["envelopes_undecodable"] += 1
            self.trace(f"undecodable at {dst}")
            return
        # The transport knows the peer: an envelope naming another sender or receiver is refused.
        if (
            type(env) is not GeoEnvelope
            or env.dst_region != dst
            or env.src_region not in self.regions
        ):
            self.coverage["envelopes_undecodable"] += 1
            return
        self.trace(f"deliver {env.src_region}->{dst} {len(env.items)}")
        if region.shipper is not None:
            region.shipper.on_envelope(env, self.now_ms)
        if region.receiver is not None:
            self._effects(region, region.receiver.on_envelope(env, self.now_ms))
        if region.up and region.shipper is not None:
            self._ship(region)

    def _effects(self, region: _Region, effects: list[ReceiverEffect]) -> None:
        for eff in effects:
            if type(eff) is SendEnvelope:
                self._send(region.name, eff.envelope.dst_region, eff.envelope)
            elif type(eff) is ProposeBatch:
                self._check_proposed(region, eff.cmd)
                self.trace(f"propose {region.name} p{eff.cmd.partition} {eff.cmd.src_start}")
                if self.proposal_loss_p and self.rng_region.random() < max(self.proposal_loss_p):
                    # Lost without a leader change (a refused or overwritten entry): the host
                    # reports it half of the time; otherwise the receiver finds out by itself.
                    self.coverage["proposals_dropped"] += 1
                    if self.rng_region.random() < 0.5 and region.receiver is not None:
                        region.receiver.on_propose_failed(eff.cmd.stream, eff.cmd.partition)
                    continue
                self.at(
                    self._commit_delay(region),
                    self._geo_commit,
                    (region, eff.cmd, region.incarnation),
                )
            elif type(eff) is LearnDictionary:
                self.coverage["dictionary_fetches"] += 1

    def _check_proposed(self, region: _Region, cmd: GeoApply) -> None:
        """G10 ghost: a proposed batch holds exactly the home's entries for its range."""
        if self.homes[cmd.partition] == region.name:
            self.fail("G5", f"{region.name} received a batch of its own partition p{cmd.partition}")
            return
        home = self.regions[self.homes[cmd.partition]].parts[cmd.partition]
        for e in cmd.entries:
            if home.at(e.seq) != e:
                self.fail(
                    "G10", f"{region.name} p{cmd.partition}: proposed entry at {e.seq} differs"
                )
                return

    # --- apply in the receiving region ----------------------------------------------------------

    def _geo_commit(self, arg: tuple[_Region, GeoApply, int]) -> None:
        region, cmd, inc = arg
        if not self._survives(region, inc):
            return
        part = region.parts[cmd.partition]
        result = apply_geo_batch(
            part.watermark, cmd, unsafe_accept_noncontiguous=self.unsafe == "accept_noncontiguous"
        )
        self.trace(
            f"apply {region.name} p{cmd.partition} {cmd.src_start}-{cmd.src_end} {result.verdict}"
        )
        if result.applied:
            if self.unsafe == "watermark_not_durable":
                # The bug: the watermark is written (durably) on its own, before the data.
                part.watermark = result.watermark
                if region.crash_point_armed and region.up:
                    region.crash_point_armed = False
                    self.coverage["fault_crash_point_hit"] += 1
                    self._notify_applied(region, cmd, result)
                    self._crash(region, self.rng_region.randint(50, 500))
                    return  # the data write never happens
                self.at(1.0, self._data_write, (region, cmd, region.incarnation))
            else:
                # The atomic apply: entries and watermark in the same applied entry.
                self._write_entries(region, cmd)
                part.watermark = result.watermark
            if region.crash_point_armed and region.up:
                region.crash_point_armed = False
                self.coverage["fault_crash_point_hit"] += 1
                self._crash(region, self.rng_region.randint(50, 500))
                return
        self._notify_applied(region, cmd, result)

    def _data_write(self, arg: tuple[_Region, GeoApply, int]) -> None:
        region, cmd, inc = arg
        if region.incarnation == inc:  # a crash since the watermark write loses the data
            self._write_entries(region, cmd)

    def _write_entries(self, region: _Region, cmd: GeoApply) -> None:
        part = region.parts[cmd.partition]
        home = self.regions[self.homes[cmd.partition]].parts[cmd.partition]
        for e in cmd.entries:
            # G1: the copy stays a prefix of the home's committed log, at every write.
            if e.seq != part.last_seq + 1:
                self.fail(
                    "G1",
                    f"{region.name} p{cmd.partition}: entry at {e.seq} after {part.last_seq} "
                    "(a gap or an overlap)",
                )
            elif home.at(e.seq) != e:
                self.fail(
                    "G1", f"{region.name} p{cmd.partition}: entry at {e.seq} differs from home"
                )
            part.append(e)

    def _notify_applied(self, region: _Region, cmd: GeoApply, result: GeoApplyResult) -> None:
        if region.up and region.receiver is not None:
            self._effects(region, region.receiver.on_applied(cmd, result, self.now_ms))

    # --- ticks and the end ----------------------------------------------------------------------

    def _tick(self, _: object) -> None:
        for region in self.regions.values():
            if not region.up:
                continue
            if region.receiver is not None:
                self._effects(region, region.receiver.tick(self.now_ms))
            if region.shipper is not None:
                self._ship(region)
        self.at(TICK_MS, self._tick)

    def _heal(self, _: object) -> None:
        self.trace("heal all")
        self.net.heal()
        self.net.cuts.clear()
        self.extra_delay.clear()
        for rates in self.rates.values():
            rates.clear()
        self.corrupt_p.clear()
        self.proposal_loss_p.clear()
        for region in self.regions.values():
            region.crash_point_armed = False

    def _converged(self) -> bool:
        if self.now_ms < self.settings.load_ms:
            return False
        for p, home_name in self.homes.items():
            home = self.regions[home_name]
            if not home.up or home.shipper is None:
                return False
            last = home.parts[p].last_seq
            for name, region in self.regions.items():
                if name == home_name:
                    continue
                part = region.parts[p]
                if part.last_seq != last or part.watermark.seq != last:
                    return False
                lag = home.shipper.lag(STREAM, p, name, self.now_ms)
                if lag.events != 0 or lag.ms != 0:
                    return False
        return True

    def run(self) -> GeoRunResult:
        cpu0 = time.process_time()
        for p in self.homes:
            self.at(self.rng_load.uniform(0, 10), self._client, p)
        self.at(TICK_MS, self._tick)
        self.at(self.heal_ms, self._heal)
        bound = (
            self.settings.catchup_ms if self.mode == "liveness" else self.settings.safety_catchup_ms
        )
        deadline_us = (max(self.heal_ms, self.settings.load_ms) + bound) * US_PER_MS
        next_check_us = self.settings.load_ms * US_PER_MS
        while self._heap:
            t, _, fn, arg = heapq.heappop(self._heap)
            if t > deadline_us:
                break
            self.now_us = t
            self.events += 1
            fn(arg)
            if self.violations and self.unsafe is not None:
                break  # a negative control needs only the first violation
            if t >= next_check_us:
                next_check_us = t + 20 * US_PER_MS
                if t >= self.heal_ms * US_PER_MS and self._converged():
                    self.converged_ms = self.now_ms
                    break
        if self.converged_ms is None and not self.violations:
            self.fail(
                "G9",
                f"no convergence within {bound} ms of the heal at {self.heal_ms} ms "
                f"({self._progress()})",
            )
        return self._result(time.process_time() - cpu0)

    def _progress(self) -> str:
        parts = []
        for p, home_name in self.homes.items():
            home = self.regions[home_name].parts[p].last_seq
            copies = ",".join(
                f"{n}={r.parts[p].last_seq}" for n, r in self.regions.items() if n != home_name
            )
            parts.append(f"p{p} home {home_name}={home} {copies}")
        return "; ".join(parts)

    def _result(self, cpu_s: float) -> GeoRunResult:
        ship = list(self._ship_stats)
        recv = list(self._recv_stats)
        for region in self.regions.values():
            if region.shipper is not None:
                ship.append(region.shipper.stats)
            if region.receiver is not None:
                recv.append(region.receiver.stats)
        cov = self.coverage
        for s in ship:
            cov["retransmits"] += s.retransmits
            cov["rewinds"] += s.rewinds
            cov["batches_sent"] += s.batches_sent
        for rs in recv:
            cov["gaps_nacked"] += rs.gaps_nacked
            cov["duplicates_reacked"] += rs.duplicates_reacked
            cov["corrupt_rejected"] += rs.corrupt_rejected
            cov["fenced_nacked"] += rs.fenced_nacked
            cov["propose_resets"] += rs.propose_resets
            cov["unknown_dictionary_nacked"] += rs.unknown_dictionary
        cov["net_dropped"] += self.net.stats.dropped_cut + self.net.stats.dropped_loss
        cov["net_duplicated"] += self.net.stats.duplicated
        cov["net_reordered"] += self.net.stats.reordered
        plan = (
            f"regions={','.join(self.regions_order)} homes="
            + ",".join(f"p{p}@{h}" for p, h in self.homes.items())
            + f" batch={self.geo.batch_events_max}ev/{self.geo.batch_bytes_max}B"
            f" linger={self.geo.linger_ms} window={self.geo.inflight_batches_max}"
            f" zstd={self.compression} dict={self.geo.use_dictionary}\n  "
            + "\n  ".join(f.describe() for f in self.faults)
        )
        return GeoRunResult(
            seed=self.seed,
            mode=self.mode,
            unsafe=self.unsafe,
            passed=not self.violations,
            violations=list(self.violations),
            plan=plan,
            coverage=dict(cov),
            trace_hash=self._hash.hexdigest(),
            virtual_ms=self.now_ms,
            events=self.events,
            commits=self.commits,
            cpu_s=cpu_s,
        )


# --- running seeds ------------------------------------------------------------------------------


def auto_mode(seed: int) -> str:
    return GEO_MODES[seed % 2]


def run_geo_seed(
    seed: int,
    mode: str | None = None,
    unsafe: str | None = None,
    settings: GeoSimSettings | None = None,
) -> GeoRunResult:
    """Run one seed (mode None: alternates with the seed)."""
    return GeoSimulation(seed, mode or auto_mode(seed), unsafe, settings).run()


def _run_spec(spec: tuple[int, str | None, str | None]) -> GeoRunResult:
    return run_geo_seed(*spec)


def run_geo_range(
    start: int,
    count: int,
    mode: str | None = None,
    unsafe: str | None = None,
    jobs: int = 1,
    on_result: Callable[[GeoRunResult], None] | None = None,
) -> list[GeoRunResult]:
    """Run seeds ``start .. start+count-1`` in ``jobs`` processes; results sorted by seed."""
    specs = [(s, mode, unsafe) for s in range(start, start + count)]
    if jobs > 1 and count > 1:
        sim_dictionary()  # trained once, inherited by the forked workers
    out = run_pool(_run_spec, specs, jobs, on_result)
    out.sort(key=lambda r: r.seed)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m geostore.sim.geo", description=__doc__)
    parser.add_argument("seed", type=int)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--mode", choices=GEO_MODES, default=None)
    parser.add_argument("--unsafe", choices=GEO_UNSAFE, default=None)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    results = run_geo_range(args.seed, args.count, args.mode, args.unsafe, args.jobs)
    wall = time.perf_counter() - t0
    failed = [r for r in results if not r.passed]
    for r in failed:
        print(format_failure(r))
    if args.count == 1:
        r = results[0]
        print(f"plan: {r.plan}\ntrace {r.trace_hash} virtual {r.virtual_ms} ms, {r.events} events")
    total: Counter[str] = Counter()
    for r in results:
        total.update(r.coverage)
    for name in sorted(total):
        print(f"  {name:28} {total[name]}")
    print(
        f"{len(results) - len(failed)} passed, {len(failed)} failed, "
        f"{len(results) / wall:.1f} seeds/s ({wall:.1f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
