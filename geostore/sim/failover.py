"""Deterministic simulation of region failover and failback, with the G5-G8 checkers.

Theory of operation:

- **One seed fixes everything**: three regions (the three-continents RTTs), one or two
  partitions with their homes, the store's block sizing, the lease, drift and RPO settings,
  the client load and an episode plan: region losses (a crash, or an isolation that leaves
  the region up and serving its local clients) at random moments under load, each followed
  by an operator failover, the region's return and its failback; and planned moves. Each
  subsystem draws from its own ``random.Random("{seed}:fo:{name}")``; events run in
  (virtual time, sequence) order from one heap, so a seed replays exactly.
- **Regions** hold a real :class:`~geostore.store.EventStore` each (in-memory blocks, small
  blocks so rewinds cross block boundaries). Client appends at the home go through
  ``validate_append`` and ``apply``; the home ships ``committed_entries`` after each
  remote's acknowledged watermark (stop-and-wait per link, a retransmit timeout, heartbeats
  while idle, since a failback moves a remote's watermark back to the fork) and
  the remote applies them as ``ApplyRemote``; SetHome commands from the metadata group are
  applied in each region as they reach it, and a returning region applies those it missed
  in epoch order: that is where the store moves orphaned events to its quarantine.
- **The metadata group** is modelled as always reachable from every region that is up and
  not isolated (it has a majority: the lost region is one of three). It grants home leases
  (``lease_ms``, renewed every ``renew_ms``); a home counts its lease from the moment it
  asked, on a clock that may run slow by up to ``drift`` (so in true time it may believe it
  a little longer); a home refuses appends without a valid lease, and an append whose
  lease lapsed before it committed is answered ``info`` (unknown), never ``ok``. A failover
  waits for :func:`~geostore.store.failover.lease_expired` (lease plus drift margin) and
  forks at the fullest survivor's watermark (:func:`~geostore.store.failover.plan_failover`).
  A planned move runs :class:`~geostore.store.failover.PlannedMove`: fence the home (503
  ``moving``), wait until the target acknowledged the fence seq, commit the SetHome.
- **Backpressure**: a home measures its replication lag (age of the oldest acknowledged
  event the fullest remote has not acknowledged) and asks
  :func:`~geostore.store.failover.admit_append` before each append.
- **Consumers** in every region read their local copy in order, carrying ``(epoch, seq)`` of
  the last event read; before each read they ask ``check_position`` and, when it answers
  ``superseded_epoch``, rewind to the fork (a failback, reported).
- **Checkers**: G5 (every ok append of ``(p, epoch)`` comes from one region, and none is
  acknowledged under an epoch after a newer one was committed), G6 (the acknowledged appends
  lost are exactly, per failover, the old epoch's acks beyond the fork, and the realised RPO
  is within the replication lag at the moment of loss plus 100 ms), G7 (after the final heal
  all regions hold identical logs and hashes; each failback quarantined exactly the events
  the region held beyond the fork; a quarantined event is never in the final log at its seq),
  G8 (consumers read gap-free, in order, and every event they read is in the final log at
  that seq unless ``superseded_epoch`` told them it was orphaned and it sits in quarantine).
- **Negative controls** (``unsafe``): ``no_lease_wait`` fails over as soon as the loss is
  noticed (caught by G5), ``no_quarantine`` applies the SetHome of a failback without its
  fork (caught by G7), ``stale_watermark`` forks at a watermark read long before the loss
  (caught by G6).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from geostore.errors import ApiError, ErrorCode
from geostore.ids import Epoch, LogIndex, PartitionId, RegionId, Seq, StreamName
from geostore.sim.pool import run_pool
from geostore.store import (
    AppendResult,
    ApplyRemote,
    EventStore,
    MemoryBlockStore,
    RemoteResult,
    SetHome,
    StoreTuning,
    StoreWatermark,
)
from geostore.store.failover import (
    Admission,
    LagPolicy,
    MovePhase,
    PlannedMove,
    admit_append,
    lease_expired,
    plan_failover,
)
from geostore.store.model import HomeResult, Rejected

FO_UNSAFE: tuple[str, ...] = ("no_lease_wait", "no_quarantine", "stale_watermark")
#: Rare paths the CI seed set must take (C4). Also counted, not required (too rare for 60
#: seeds: backpressure usually stops an isolated home before its lease lapses):
#: ``appends_info_lease``, an append committed after its lease lapsed, answered "unknown".
FO_REQUIRED: tuple[str, ...] = (
    "loss_crash",
    "loss_isolate",
    "failovers",
    "failbacks_with_quarantine",
    "planned_moves",
    "consumer_rewinds",
    "appends_refused_lease",
    "appends_refused_moving",
    "batches_fenced",
    "batches_unlearned_epoch",
    "third_region_quarantine",
)

REGIONS: tuple[RegionId, ...] = (
    RegionId("us-east-1"),
    RegionId("eu-west-1"),
    RegionId("ap-southeast-1"),
)
_RTT_MS: dict[frozenset[str], float] = {
    frozenset({"us-east-1", "eu-west-1"}): 69.6,
    frozenset({"us-east-1", "ap-southeast-1"}): 218.9,
    frozenset({"eu-west-1", "ap-southeast-1"}): 182.2,
}
STREAM = StreamName("s")
US_PER_MS = 1000
TICK_MS = 20
HEARTBEAT_MS = 250


@dataclass(slots=True)
class FoRunResult:
    """A run's verdict; small, so worker processes can send it back."""

    seed: int
    unsafe: str | None
    passed: bool
    violations: list[str]
    plan: str
    coverage: dict[str, int]
    trace_hash: str
    virtual_ms: int
    acked: int
    lost: int
    rpo_ms: list[int]
    pauses_ms: list[int]
    cpu_s: float

    @property
    def title(self) -> str:
        return f"failover seed {self.seed}{' (unsafe ' + self.unsafe + ')' if self.unsafe else ''}"

    @property
    def replay(self) -> str:
        return replay_command(self.seed, self.unsafe)


def replay_command(seed: int, unsafe: str | None = None) -> str:
    cmd = f"geostore sim --failover --seeds 1 --start {seed}"
    if unsafe:
        cmd += f" --failover-unsafe {unsafe}"
    return cmd


@dataclass(slots=True)
class _Ack:
    value: str
    partition: PartitionId
    region: RegionId
    epoch: Epoch
    seq: int
    ack_ms: float


@dataclass(slots=True)
class _Link:
    """The home's view of one remote for one partition (stop-and-wait shipping)."""

    acked: int = -1  # the remote's watermark seq as last reported
    inflight_until_ms: float = -1.0  # retransmit deadline of the batch in flight
    probe_at_ms: float = 0.0  # next heartbeat while idle (the remote's watermark may go back)


@dataclass(slots=True)
class _Consumer:
    next_seq: int = 0
    last: tuple[int, int] | None = None  # (epoch, seq) of the last event read
    seen: list[tuple[int, str]] = field(default_factory=list)  # (seq, value) read
    told: set[tuple[int, str]] = field(default_factory=set)  # reads a rewind took back


@dataclass(slots=True)
class _Region:
    name: RegionId
    store: EventStore
    up: bool = True
    isolated: bool = False
    incarnation: int = 0
    lease_until_ms: dict[PartitionId, float] = field(default_factory=dict)
    links: dict[tuple[PartitionId, RegionId], _Link] = field(default_factory=dict)
    learned: int = 0  # how many metadata SetHomes it applied (they apply in order)
    consumers: dict[PartitionId, _Consumer] = field(default_factory=dict)
    drift: float = 0.0
    #: (last seq, commit time) of each local append, for the lag the home measures.
    commits: dict[PartitionId, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        return self.up and not self.isolated


@dataclass(slots=True)
class _Meta:
    """The metadata group's record of one partition."""

    home: RegionId
    epoch: Epoch
    lease_until_ms: float = 0.0  # granted in the group's (true) time
    move: PlannedMove | None = None
    epoch_committed_ms: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Failover:
    partition: PartitionId
    lost: RegionId
    survivor: RegionId
    old_epoch: Epoch
    fork: int
    loss_ms: float
    commit_ms: float
    lag_at_loss_ms: float


class FailoverSimulation:
    """One seeded run of failover, failback and planned moves over the real store."""

    def __init__(self, seed: int, unsafe: str | None = None, *, episodes: int | None = None):
        assert unsafe is None or unsafe in FO_UNSAFE, unsafe
        self.seed, self.unsafe = seed, unsafe

        def rng(name: str) -> random.Random:
            return random.Random(f"{seed}:fo:{name}")

        r = self.rng_setup = rng("setup")
        self.rng_load, self.rng_net, self.rng_plan = rng("load"), rng("net"), rng("plan")
        n_parts = r.choice((1, 2))
        self.parts = [PartitionId(p) for p in range(n_parts)]
        tuning = StoreTuning(
            block_events_max=r.choice((8, 32, 128)), block_bytes_max=r.choice((512, 4096))
        )
        self.lease_ms = r.choice((400, 800, 1200))
        self.renew_ms = self.lease_ms // 4
        self.drift_max = 0.05
        self.drift_margin_ms = int(self.lease_ms * self.drift_max) + 1
        self.policy = LagPolicy(rpo_ms=r.choice((500, 1000, 2000)))
        self.batch_events = r.choice((32, 128, 512))  # one batch in flight per link
        self.append_interval_ms = r.uniform(12.0, 40.0)
        self.regions: dict[RegionId, _Region] = {}
        for name in REGIONS:
            reg = _Region(name, EventStore(MemoryBlockStore(), tuning=tuning))
            reg.drift = r.uniform(0.0, self.drift_max)
            self.regions[name] = reg
        homes = {p: REGIONS[r.randrange(3)] for p in self.parts}
        create = self.regions[REGIONS[0]].store.validate_create(
            {"name": STREAM, "partitions": n_parts, "homes": {str(p): h for p, h in homes.items()}}
        )
        self.meta = {p: _Meta(homes[p], Epoch(1)) for p in self.parts}
        self.client_home = dict(homes)
        for reg in self.regions.values():
            self._apply(reg, create)
            for p in self.parts:
                reg.consumers[p] = _Consumer()
                for other in REGIONS:
                    if other != reg.name:
                        reg.links[(p, other)] = _Link()
        #: Every SetHome the metadata group committed, in order (regions apply a prefix).
        self.set_homes: list[SetHome] = []

        self.now_us = 0
        self._heap: list[tuple[int, int, Callable[[Any], None], object]] = []
        self._n = 0
        self.violations: list[str] = []
        self.coverage: Counter[str] = Counter()
        self._hash = hashlib.blake2b(digest_size=16)
        self.acks: list[_Ack] = []
        self.values = 0
        self.failovers: list[_Failover] = []
        self.pauses_ms: list[int] = []
        self.rpo_ms: list[int] = []
        #: Ghost: per (region, partition) the (seq, value) it quarantined, as the store did it.
        self.expected_quarantine: dict[tuple[RegionId, PartitionId], list[tuple[int, str]]] = {}
        self.episodes = self._plan(episodes)

    # --- plumbing --------------------------------------------------------------------------------

    @property
    def now_ms(self) -> float:
        return self.now_us / US_PER_MS

    def at(self, delay_ms: float, fn: Callable[[Any], None], arg: object = None) -> None:
        self._n += 1
        t = self.now_us + max(0, int(delay_ms * US_PER_MS))
        heapq.heappush(self._heap, (t, self._n, fn, arg))

    def trace(self, text: str) -> None:
        self._hash.update(f"{self.now_us} {text}\n".encode())

    def fail(self, code: str, detail: str) -> None:
        if len(self.violations) < 20:
            self.violations.append(f"{code} at {self.now_ms:.0f} ms: {detail}")

    def _apply(self, reg: _Region, cmd: Any) -> Any:
        return reg.store.apply(LogIndex(reg.store.applied_index + 1), cmd)

    def _one_way_ms(self, a: RegionId, b: RegionId) -> float:
        return _RTT_MS[frozenset({a, b})] / 2 + self.rng_net.expovariate(1 / 3.0)

    def _send(
        self, src: RegionId, dst: RegionId, fn: Callable[[_Region, Any], None], arg: object
    ) -> None:
        """Deliver ``fn(dst, arg)`` after the link delay, unless the sender is cut off or down
        now or the receiver then (what is already on the wire still arrives)."""
        if not self.regions[src].reachable:
            return
        inc = self.regions[dst].incarnation
        self.at(self._one_way_ms(src, dst), self._deliver, (dst, inc, fn, arg))

    def _deliver(self, arg: tuple[RegionId, int, Callable[[_Region, Any], None], object]) -> None:
        dst, inc, fn, payload = arg
        reg = self.regions[dst]
        if reg.reachable and reg.incarnation == inc:
            fn(reg, payload)

    def _meta_delay_ms(self, region: RegionId) -> float:
        return 20.0 + self.rng_net.uniform(0.0, 40.0)

    # --- the plan ---------------------------------------------------------------------------------

    def _plan(self, episodes: int | None) -> list[str]:
        r = self.rng_plan
        n = episodes if episodes is not None else r.randint(2, 3)
        t = r.uniform(300.0, 900.0)
        out: list[str] = []
        kinds = ["crash", "isolate", "move"]
        for k in range(n):
            kind = r.choice(kinds) if k else r.choice(("crash", "isolate"))
            if kind == "move":
                self.at(t, self._start_move, None)
                out.append(f"{t:.0f}ms move")
                t += r.uniform(600.0, 1200.0)
            else:
                # a home region mostly: that is when a failover and a failback happen
                homes = sorted({m.home for m in self.meta.values()})
                victim = r.choice(homes) if r.random() < 0.85 else r.choice(REGIONS)
                # noticed fast (an automatic policy) or slowly (an operator)
                detect = r.uniform(50.0, 300.0) if r.random() < 0.5 else r.uniform(300.0, 1500.0)
                down = r.uniform(300.0, 1500.0)
                self.at(t, self._lose, (victim, kind, detect, down))
                out.append(f"{t:.0f}ms {kind} {victim} notice+{detect:.0f} back+{down:.0f}")
                t += detect + down + self.lease_ms + r.uniform(500.0, 1200.0)
        self.load_until_ms = t
        return out

    # --- load and the home's rules ----------------------------------------------------------------

    def _client(self, p: PartitionId) -> None:
        if self.now_ms >= self.load_until_ms:
            return
        self.at(self.rng_load.expovariate(1 / self.append_interval_ms), self._client, p)
        # Clients keep using the home they know (those in an isolated region reach only it),
        # and ask the metadata group again only when it is down or refuses them.
        home = self.regions[self.client_home[p]]
        if not home.up:
            self.client_home[p] = self.meta[p].home
            return
        # Clients in the home's region reach it even when the region is cut off from the WAN.
        self.values += 1
        value = f"v{self.values}"
        try:
            self._admit(home, p)
            prep = home.store.validate_append(
                STREAM,
                [{"ts": self.now_us, "partition": p, "body": {"v": value}}],
                now_us=self.now_us,
            )
        except ApiError as err:
            self.trace(f"refused {value} {err.code}")
            if err.code is not ErrorCode.MOVING and home.reachable:
                self.client_home[p] = self.meta[p].home
            return
        self.at(
            self.rng_load.uniform(2.0, 20.0), self._commit, (home, home.incarnation, prep, value)
        )

    def _admit(self, home: _Region, p: PartitionId) -> None:
        ph = home.store.home_of(STREAM, p)
        if ph.home != home.name:
            raise ApiError(ErrorCode.WRONG_REGION, "not home here")
        if home.store.is_fenced(STREAM, p):
            self.coverage["appends_refused_moving"] += 1
            raise ApiError(ErrorCode.MOVING, "moving")
        if self.now_ms >= home.lease_until_ms.get(p, 0.0):
            self.coverage["appends_refused_lease"] += 1
            raise ApiError(ErrorCode.LEASE_LAPSED, "no lease")
        adm, _ = admit_append(int(self._perceived_lag_ms(home, p)), self.policy)
        if adm is Admission.REFUSE:
            self.coverage["appends_refused_lag"] += 1
            raise ApiError(ErrorCode.REPLICATION_LAG, "lag")
        if adm is Admission.SLOW:
            self.coverage["appends_slowed"] += 1

    def _perceived_lag_ms(self, home: _Region, p: PartitionId) -> float:
        """Age of the oldest event the fullest remote has not acknowledged (home's view)."""
        best = max(home.links[(p, o)].acked for o in REGIONS if o != home.name)
        commits = home.commits.setdefault(p, [])
        k = bisect.bisect_right(commits, (best, math.inf))
        return self.now_ms - commits[k][1] if k < len(commits) else 0.0

    def _commit(self, arg: tuple[_Region, int, Any, str]) -> None:
        home, inc, prep, value = arg
        if home.incarnation != inc or not home.up:
            return  # lost with the leader: never acknowledged
        (batch,) = prep.batches
        res = self._apply(home, batch)
        if not isinstance(res, AppendResult):
            if isinstance(res, Rejected) and res.error.code is ErrorCode.MOVING:
                self.coverage["appends_refused_moving"] += 1  # fenced while committing
            self.trace(f"rejected {value}")
            return
        p = batch.partition
        home.commits.setdefault(p, []).append((res.last_seq, self.now_ms))
        if self.now_ms >= home.lease_until_ms.get(p, 0.0):
            # Stored, but the lease lapsed before the commit: the client hears "unknown".
            self.coverage["appends_info_lease"] += 1
            return
        self.acks.append(_Ack(value, p, home.name, res.epoch, res.first_seq, self.now_ms))
        self.trace(f"ack {value} p{p} {home.name} e{res.epoch} s{res.first_seq}")
        self._check_g5_ack(self.acks[-1])

    # --- leases ------------------------------------------------------------------------------------

    def _renew(self, _: object) -> None:
        for reg in self.regions.values():
            if not reg.reachable:
                continue
            for p in self.parts:
                ph = reg.store.home_of(STREAM, p)
                if ph.home == reg.name:
                    self.at(
                        self._meta_delay_ms(reg.name),
                        self._grant,
                        (reg.name, reg.incarnation, p, ph.epoch, self.now_ms),
                    )
        self.at(self.renew_ms, self._renew)

    def _grant(self, arg: tuple[RegionId, int, PartitionId, Epoch, float]) -> None:
        name, inc, p, epoch, asked_ms = arg
        m = self.meta[p]
        if m.home != name or m.epoch != epoch or not self.regions[name].reachable:
            return
        m.lease_until_ms = max(m.lease_until_ms, self.now_ms + self.lease_ms)
        self.at(self._meta_delay_ms(name), self._granted, (name, inc, p, epoch, asked_ms))

    def _granted(self, arg: tuple[RegionId, int, PartitionId, Epoch, float]) -> None:
        name, inc, p, epoch, asked_ms = arg
        reg = self.regions[name]
        if not reg.reachable or reg.incarnation != inc:
            return
        if reg.store.home_of(STREAM, p).epoch != epoch:
            return
        # Counted from the request, on a clock that may run slow: in true time a little longer.
        until = asked_ms + self.lease_ms * (1.0 + reg.drift)
        reg.lease_until_ms[p] = max(reg.lease_until_ms.get(p, 0.0), until)

    # --- shipping ------------------------------------------------------------------------------------

    def _ship(self, reg: _Region) -> None:
        for p in self.parts:
            ph = reg.store.home_of(STREAM, p)
            if ph.home != reg.name:
                continue
            last = reg.store.partition_info(STREAM, p).last_seq
            for other in REGIONS:
                if other == reg.name:
                    continue
                link = reg.links[(p, other)]
                if self.now_ms < link.inflight_until_ms:
                    continue
                if link.acked >= last:
                    # Idle: a heartbeat now and then learns the remote's watermark, which a
                    # failback there may have moved back to a fork.
                    if self.now_ms >= link.probe_at_ms:
                        link.probe_at_ms = self.now_ms + HEARTBEAT_MS
                        self._send(reg.name, other, self._on_probe, (reg.name, p))
                    continue
                es = reg.store.committed_entries(
                    STREAM, p, link.acked + 1, last, self.batch_events, 1 << 20
                )
                if not es:
                    continue
                cmd = ApplyRemote(STREAM, p, ph.epoch, es[0].seq, es[-1].last_seq, 0, tuple(es))
                link.inflight_until_ms = self.now_ms + 3 * _RTT_MS[frozenset({reg.name, other})]
                self._send(reg.name, other, self._on_batch, (reg.name, cmd))

    def _on_batch(self, dst: _Region, arg: tuple[RegionId, ApplyRemote]) -> None:
        src, cmd = arg
        res = self._apply(dst, cmd)
        assert isinstance(res, RemoteResult), res
        self.trace(f"apply {dst.name} p{cmd.partition} {cmd.src_start}-{cmd.src_end} {res.verdict}")
        if res.verdict == "fenced":
            self.coverage["batches_fenced"] += 1
        elif res.verdict == "gap" and res.watermark.seq + 1 == cmd.src_start:
            self.coverage["batches_unlearned_epoch"] += 1
        self._send(dst.name, src, self._on_ack, (dst.name, cmd.partition, res.watermark))

    def _on_probe(self, dst: _Region, arg: tuple[RegionId, PartitionId]) -> None:
        src, p = arg
        self._send(dst.name, src, self._on_ack, (dst.name, p, dst.store.watermark(STREAM, p)))

    def _on_ack(self, home: _Region, arg: tuple[RegionId, PartitionId, StoreWatermark]) -> None:
        remote, p, wm = arg
        link = home.links[(p, remote)]
        link.acked = wm.seq
        link.inflight_until_ms = -1.0
        self._ship(home)

    # --- the metadata group: SetHome broadcast ---------------------------------------------------

    def _commit_set_home(self, cmd: SetHome) -> None:
        m = self.meta[cmd.partition]
        assert cmd.epoch == m.epoch + 1
        assert cmd.home is not None
        m.home, m.epoch = cmd.home, cmd.epoch
        m.lease_until_ms = 0.0
        m.epoch_committed_ms[cmd.epoch] = self.now_ms
        self.set_homes.append(cmd)
        self.trace(f"sethome p{cmd.partition} {cmd.home} e{cmd.epoch} fork {cmd.fork_seq}")
        for reg in self.regions.values():
            self.at(self._meta_delay_ms(reg.name), self._learn, (reg.name, reg.incarnation))

    def _learn(self, arg: tuple[RegionId, int]) -> None:
        """A region applies the SetHomes it has not applied yet, in order (if reachable)."""
        name, inc = arg
        reg = self.regions[name]
        if not reg.reachable or reg.incarnation != inc:
            return
        while reg.learned < len(self.set_homes):
            cmd = self.set_homes[reg.learned]
            reg.learned += 1
            self._learn_one(reg, cmd)

    def _learn_one(self, reg: _Region, cmd: SetHome) -> None:
        p = cmd.partition
        assert cmd.fork_seq is not None
        held = _read_all(reg.store, p, cmd.fork_seq + 1)
        orphans = [(e.seq, e.body["v"]) for e in held if e.epoch < cmd.epoch]
        if self.unsafe == "no_quarantine" and orphans:
            cmd = SetHome(cmd.stream, p, cmd.home, cmd.epoch)  # the bug: no fork
        res = self._apply(reg, cmd)
        if isinstance(res, Rejected):
            self.fail("G7", f"{reg.name} refused SetHome {cmd}: {res.error}")
            return
        assert isinstance(res, HomeResult)
        if res.quarantined:
            self.coverage["failbacks_with_quarantine"] += 1
            if reg.name != self._lost_of(p, cmd.epoch):
                self.coverage["third_region_quarantine"] += 1
        self.expected_quarantine.setdefault((reg.name, p), []).extend(
            orphans if self.unsafe != "no_quarantine" else []
        )
        got = [(e["seq"], e["body"]["v"]) for e in reg.store.quarantine_events(STREAM, p)]
        want = self.expected_quarantine.get((reg.name, p), [])
        if got != want:
            self.fail(
                "G7",
                f"{reg.name} p{p}: quarantine holds {len(got)} events, the orphaned suffix "
                f"beyond fork {cmd.fork_seq} is {len(want)}",
            )
        reg.links.update({(p, o): _Link() for o in REGIONS if o != reg.name})
        self.trace(f"learned {reg.name} p{p} e{cmd.epoch} q{res.quarantined}")

    def _lost_of(self, p: PartitionId, epoch: int) -> RegionId | None:
        for f in self.failovers:
            if f.partition == p and f.old_epoch + 1 == epoch:
                return f.lost
        return None

    # --- losses, failovers, returns ----------------------------------------------------------------

    def _lose(self, arg: tuple[RegionId, str, float, float]) -> None:
        name, kind, detect_ms, down_ms = arg
        reg = self.regions[name]
        self.coverage[f"loss_{kind}"] += 1
        self.trace(f"lose {name} {kind}")
        lag = {p: self._true_lags_ms(p) for p in self.parts if self.meta[p].home == name}
        if kind == "crash":
            reg.up = False
            reg.incarnation += 1
            reg.lease_until_ms.clear()  # a fence stays: it is in the store (the durable log)
        else:
            reg.isolated = True
        loss_ms = self.now_ms
        self.at(detect_ms, self._operator_failover, (name, loss_ms, lag))
        self.at(detect_ms + down_ms, self._return, name)

    def _true_lags_ms(self, p: PartitionId) -> dict[RegionId, float]:
        """Ghost: per other region, the age of the oldest ok append of the home's epoch that
        the region does not hold (the replication lag to it, in true time)."""
        home, epoch = self.meta[p].home, self.meta[p].epoch
        mine = [a for a in self.acks if a.partition == p and a.region == home and a.epoch == epoch]
        out: dict[RegionId, float] = {}
        for o in REGIONS:
            if o != home:
                held = self.regions[o].store.partition_info(STREAM, p).last_seq
                pending = [a.ack_ms for a in mine if a.seq > held]
                out[o] = self.now_ms - min(pending) if pending else 0.0
        return out

    def _operator_failover(
        self,
        arg: tuple[RegionId, float, dict[PartitionId, dict[RegionId, float]]],
    ) -> None:
        lost, loss_ms, lag = arg
        if self.regions[lost].reachable and self.unsafe != "no_lease_wait":
            self.trace(f"{lost} is back before the failover: none")
            return
        for p in self.parts:
            m = self.meta[p]
            if m.home != lost:
                continue
            if m.move is not None:
                if m.move.phase is MovePhase.BUMPING:
                    continue
                m.move = None  # abort: the failover takes over (the fence stays until learned)
            wait = m.lease_until_ms + self.drift_margin_ms - self.now_ms
            if self.unsafe == "no_lease_wait" or lease_expired(
                int(m.lease_until_ms), self.drift_margin_ms, int(self.now_ms)
            ):
                self._failover(p, lost, loss_ms, lag.get(p, {}))
            else:
                self.at(wait + 1.0, self._retry_failover, (p, lost, loss_ms, lag.get(p, {})))

    def _retry_failover(
        self, arg: tuple[PartitionId, RegionId, float, dict[RegionId, float]]
    ) -> None:
        p, lost, loss_ms, lags = arg
        if self.meta[p].home != lost:
            return
        if self.regions[lost].reachable:
            self.trace(f"{lost} is back before the failover: none")
            return
        if not lease_expired(
            int(self.meta[p].lease_until_ms), self.drift_margin_ms, int(self.now_ms)
        ):
            self.at(10.0, self._retry_failover, arg)
            return
        self._failover(p, lost, loss_ms, lags)

    def _failover(
        self,
        p: PartitionId,
        lost: RegionId,
        loss_ms: float,
        lags: dict[RegionId, float],
    ) -> None:
        m = self.meta[p]
        survivors = {
            r.name: r.store.watermark(STREAM, p)
            for r in self.regions.values()
            if r.name != lost and r.reachable
        }
        if not survivors:
            return
        if self.unsafe == "stale_watermark":  # the bug: a watermark read long ago
            survivors = {n: StoreWatermark(w.epoch, Seq(w.seq // 2)) for n, w in survivors.items()}
        lost_reg = self.regions[lost]
        # Mostly the fullest survivor; sometimes the operator names another (``--to``).
        to = None if self.rng_plan.random() < 0.6 else self.rng_plan.choice(sorted(survivors))
        plan = plan_failover(
            STREAM,
            p,
            lost,
            self.regions[next(iter(survivors))].store.history(STREAM, p),
            survivors,
            to=to,
            lost_last_seq=lost_reg.store.partition_info(STREAM, p).last_seq,
        )
        assert plan.set_home.epoch == m.epoch + 1
        self.coverage["failovers"] += 1
        self.failovers.append(
            _Failover(
                p,
                lost,
                plan.survivor,
                m.epoch,
                plan.fork_seq,
                loss_ms,
                self.now_ms,
                lags.get(plan.survivor, 0.0),
            )
        )
        self.trace(f"failover p{p} {lost}->{plan.survivor} fork {plan.fork_seq}")
        self._commit_set_home(plan.set_home)

    def _return(self, name: RegionId) -> None:
        reg = self.regions[name]
        self.trace(f"return {name}")
        if not reg.up:
            reg.up = True
            reg.incarnation += 1
        reg.isolated = False
        for link in reg.links.values():
            link.inflight_until_ms = -1.0
        # Reaching the metadata group again may take a while (reconnects, a new leader):
        # meanwhile the new homes' batches arrive, and must wait for the SetHome.
        self.at(self.rng_net.uniform(20.0, 800.0), self._learn, (name, reg.incarnation))

    # --- planned moves ------------------------------------------------------------------------------

    def _start_move(self, _: object) -> None:
        r = self.rng_plan
        p = r.choice(self.parts)
        m = self.meta[p]
        src = self.regions[m.home]
        targets = [n for n in REGIONS if n != m.home and self.regions[n].reachable]
        if not src.reachable or not targets or m.move is not None:
            return
        target = r.choice(targets)
        m.move = PlannedMove.start(STREAM, p, src.name, target, m.epoch, int(self.now_ms))
        self.coverage["planned_moves"] += 1
        self.trace(f"move p{p} {src.name}->{target}")
        self.at(self._meta_delay_ms(src.name), self._fence, p)

    def _fence(self, p: PartitionId) -> None:
        m = self.meta[p]
        assert m.move is not None
        src = self.regions[m.move.source]
        if not src.reachable:
            m.move = m.move.abort(int(self.now_ms))
            m.move = None
            return
        # The fence goes through the old home's own log: any of its leaders refuses appends
        # from here on, and the answer names the exact last seq (the fork of the move).
        res = self._apply(src, m.move.fence_command())
        assert isinstance(res, HomeResult), res
        m.move = m.move.fenced(res.fork_seq, int(self.now_ms))
        self._drain(p)

    def _drain(self, p: PartitionId) -> None:
        m = self.meta[p]
        assert m.move is not None
        src = self.regions[m.move.source]
        acked = src.links[(p, m.move.target)].acked
        m.move = m.move.on_target_watermark(Seq(acked), int(self.now_ms))
        if m.move.phase is MovePhase.BUMPING:
            cmd = m.move.set_home()
            self._commit_set_home(cmd)
            m.move = m.move.bumped(int(self.now_ms))
            self.pauses_ms.append(sum(ms for _, ms in m.move.pauses_ms))
            m.move = None
            return
        self.at(TICK_MS, self._drain, p)

    # --- consumers -------------------------------------------------------------------------------------

    def _consume(self, _: object) -> None:
        for reg in self.regions.values():
            if not reg.up:
                continue
            for p in self.parts:
                self._consume_one(reg, p, reg.consumers[p])
        self.at(self.rng_load.uniform(50.0, 250.0), self._consume)

    def _consume_one(self, reg: _Region, p: PartitionId, c: _Consumer) -> None:
        if c.last is not None:
            try:
                reg.store.check_position(STREAM, p, c.last[0], c.last[1])
            except ApiError as err:
                assert err.code is ErrorCode.SUPERSEDED_EPOCH
                fork = int(err.details["fork_seq"])
                self.coverage["consumer_rewinds"] += 1
                for s, v in c.seen:
                    if s > fork:
                        c.told.add((s, v))
                c.next_seq = fork + 1
                c.last = None
        res = reg.store.read(STREAM, p, c.next_seq, 50)
        for e in res.events:
            if e.seq != c.next_seq:
                self.fail(
                    "G8", f"{reg.name} p{p}: consumer expected seq {c.next_seq}, read {e.seq}"
                )
                return
            c.seen.append((e.seq, e.body["v"]))
            c.next_seq = e.seq + 1
            c.last = (e.epoch, e.seq)

    # --- online checks --------------------------------------------------------------------------------

    def _check_g5_ack(self, a: _Ack) -> None:
        m = self.meta[a.partition]
        newer = m.epoch_committed_ms.get(a.epoch + 1)
        if newer is not None and a.ack_ms >= newer:
            self.fail(
                "G5",
                f"{a.value} acknowledged by {a.region} under epoch {a.epoch} after epoch "
                f"{a.epoch + 1} was committed (two writing regions at once)",
            )

    # --- the run --------------------------------------------------------------------------------------

    def _tick(self, _: object) -> None:
        for reg in self.regions.values():
            if reg.reachable:
                self._ship(reg)
        self.at(TICK_MS, self._tick)

    def _heal(self, _: object) -> None:
        self.trace("heal all")
        for reg in self.regions.values():
            if not reg.reachable:
                self._return(reg.name)

    def _converged(self) -> bool:
        """All regions learned every SetHome and hold the home's log; a copy as long as the
        home's with another hash has diverged (G7), which is final: stop there."""
        for p in self.parts:
            m = self.meta[p]
            ref = self.regions[m.home].store.partition_info(STREAM, p)
            for reg in self.regions.values():
                if reg.learned < len(self.set_homes):
                    return False
                info = reg.store.partition_info(STREAM, p)
                if info.last_seq == ref.last_seq and info.log_hash != ref.log_hash:
                    self.fail("G7", f"{reg.name} p{p} diverged from the home {m.home}")
                    return True
                if (info.last_seq, info.log_hash) != (ref.last_seq, ref.log_hash):
                    return False
        return True

    def run(self) -> FoRunResult:
        cpu0 = time.process_time()
        for p in self.parts:
            self.at(self.rng_load.uniform(0, 10), self._client, p)
        self.at(0, self._renew)
        self.at(TICK_MS, self._tick)
        self.at(50, self._consume)
        self.at(self.load_until_ms, self._heal)
        deadline_us = int((self.load_until_ms + 15_000) * US_PER_MS)
        converged = False
        next_check = int(self.load_until_ms * US_PER_MS)
        while self._heap:
            t, _, fn, arg = heapq.heappop(self._heap)
            if t > deadline_us:
                break
            self.now_us = t
            fn(arg)
            if self.violations and self.unsafe is not None:
                break
            if t >= next_check:
                next_check = t + 50 * US_PER_MS
                if self._converged():
                    converged = not self.violations
                    break
        if not converged and not self.violations:
            self.fail("G7", "no convergence within 15 s of the final heal")
        if converged:
            for reg in self.regions.values():
                for p in self.parts:
                    self._consume_one(reg, p, reg.consumers[p])
            self._final_checks()
        return self._result(time.process_time() - cpu0)

    def _final_checks(self) -> None:
        final: dict[PartitionId, dict[int, str]] = {}
        for p in self.parts:
            logs = [
                [(e.seq, e.epoch, e.body["v"]) for e in _read_all(reg.store, p, 0)]
                for reg in self.regions.values()
            ]
            if any(log != logs[0] for log in logs):
                self.fail("G7", f"p{p}: regions converged on hashes but read different logs")
            final[p] = {s: v for s, _, v in logs[0]}
            # G7: a quarantined event is never in the partition at its seq
            for reg in self.regions.values():
                for q in reg.store.quarantine_events(STREAM, p):
                    if final[p].get(q["seq"]) == q["body"]["v"]:
                        self.fail(
                            "G7", f"{reg.name} p{p}: {q['body']['v']} is quarantined and served"
                        )
        # G5: one region per (partition, epoch)
        writers: dict[tuple[int, int], set[str]] = {}
        for a in self.acks:
            writers.setdefault((a.partition, a.epoch), set()).add(a.region)
        for (part, e), regions in sorted(writers.items()):
            if len(regions) > 1:
                self.fail("G5", f"p{part} epoch {e} was written by {sorted(regions)}")
        # G6: lost acks are exactly the old epochs' acks beyond each fork
        lost = [a for a in self.acks if final[a.partition].get(a.seq) != a.value]
        orphan_keys: set[str] = set()
        for f in self.failovers:
            mine = [a for a in self.acks if a.partition == f.partition and a.epoch == f.old_epoch]
            beyond = {a.value for a in mine if a.seq > f.fork}
            orphan_keys |= beyond
            gone = [a for a in lost if a.partition == f.partition and a.epoch == f.old_epoch]
            if {a.value for a in gone} != beyond:
                self.fail(
                    "G6",
                    f"p{f.partition} failover at fork {f.fork}: lost acks are not exactly the "
                    f"suffix beyond it ({len(gone)} lost, {len(beyond)} beyond)",
                )
            before_loss = [a.ack_ms for a in mine if a.seq > f.fork and a.ack_ms <= f.loss_ms]
            if before_loss:
                rpo = f.loss_ms - min(before_loss)
                self.rpo_ms.append(int(rpo))
                if rpo > f.lag_at_loss_ms + 100.0:
                    self.fail(
                        "G6",
                        f"p{f.partition}: RPO {rpo:.0f} ms over the replication lag at the loss "
                        f"({f.lag_at_loss_ms:.0f} ms) + 100 ms",
                    )
        for a in lost:
            if a.value not in orphan_keys:
                self.fail(
                    "G6", f"{a.value} (p{a.partition} e{a.epoch} s{a.seq}) lost without a failover"
                )
        # G8: what consumers read is in the final log, or was taken back by a rewind
        for reg in self.regions.values():
            for p in self.parts:
                c = reg.consumers[p]
                quarantined = {
                    (q["seq"], q["body"]["v"]) for q in reg.store.quarantine_events(STREAM, p)
                }
                for s, v in c.seen:
                    if final[p].get(s) == v:
                        continue
                    if (s, v) not in c.told or (s, v) not in quarantined:
                        self.fail(
                            "G8", f"{reg.name} p{p}: consumer read {v} at {s}, later gone silently"
                        )
                        break

    def _result(self, cpu_s: float) -> FoRunResult:
        lost = 0
        if not self.violations:
            lost = sum(len(v) for k, v in self.expected_quarantine.items())
        plan = (
            f"parts={len(self.parts)} homes="
            + ",".join(f"p{p}@{m.home}" for p, m in self.meta.items())
            + f" lease={self.lease_ms} rpo={self.policy.rpo_ms} batch={self.batch_events}\n  "
            + "\n  ".join(self.episodes)
        )
        return FoRunResult(
            seed=self.seed,
            unsafe=self.unsafe,
            passed=not self.violations,
            violations=list(self.violations),
            plan=plan,
            coverage=dict(self.coverage),
            trace_hash=self._hash.hexdigest(),
            virtual_ms=int(self.now_ms),
            acked=len(self.acks),
            lost=lost,
            rpo_ms=list(self.rpo_ms),
            pauses_ms=list(self.pauses_ms),
            cpu_s=cpu_s,
        )


def _read_all(store: EventStore, p: PartitionId, from_seq: int) -> list[Any]:
    out: list[Any] = []
    while True:
        page = store.read(STREAM, p, from_seq, 10_000).events
        out.extend(page)
        if len(page) < 10_000:
            return out
        from_seq = page[-1].seq + 1


# --- running seeds --------------------------------------------------------------------------------


def run_failover_seed(seed: int, unsafe: str | None = None) -> FoRunResult:
    return FailoverSimulation(seed, unsafe).run()


def _run_spec(spec: tuple[int, str | None]) -> FoRunResult:
    return run_failover_seed(*spec)


def run_failover_range(
    start: int,
    count: int,
    unsafe: str | None = None,
    jobs: int = 1,
    on_result: Callable[[FoRunResult], None] | None = None,
) -> list[FoRunResult]:
    """Run seeds ``start .. start+count-1`` in ``jobs`` processes; results sorted by seed."""
    specs = [(s, unsafe) for s in range(start, start + count)]
    out = run_pool(_run_spec, specs, jobs, on_result)
    out.sort(key=lambda r: r.seed)
    return out
