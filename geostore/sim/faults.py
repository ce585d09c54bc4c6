"""Swarm fault plans: each seed draws which fault kinds it uses, how often, and when.

Theory of operation: uniform fault injection leaves blind spots (the same mild mix every
run), so each seed first draws a *profile* - a random subset of the fault kinds, each with
its own weight and rates - and then a timeline of fault events from that profile ("swarm
testing", Groce et al. 2012). A plan always holds at least three faults. In liveness mode
every fault ends by ``heal_ms``; in safety mode faults may run to the end of the run.
Administrative operations (membership changes, leadership transfers) are drawn the same way
and run while faults are active. A plan prints as a few readable lines so a failing seed
shows the mix that broke it.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from geostore.ids import NodeId


class FaultKind(enum.StrEnum):
    CRASH = "crash"  #: lose volatile state and unsynced writes (may tear); restart at end
    PAUSE = "pause"  #: stop ticking and receiving (SIGSTOP); resume at end
    ISOLATE = "isolate"  #: cut every link to and from one node
    PARTITION = "partition"  #: symmetric split into two sides
    ONE_WAY = "one_way"  #: cut one direction between two sides
    BRIDGE = "bridge"  #: two sides that reach each other only through one bridge node
    RING = "ring"  #: each node reaches only its ring neighbours (majorities ring)
    LOSS = "loss"  #: random message loss
    DUPLICATE = "duplicate"  #: random message duplication (replay)
    REORDER = "reorder"  #: extra random delay so messages overtake each other


class AdminKind(enum.StrEnum):
    ADD_LEARNER = "add_learner"
    PROMOTE = "promote"
    REMOVE_VOTER = "remove_voter"
    TRANSFER = "transfer"


@dataclass(frozen=True, slots=True)
class FaultEvent:
    start_ms: int
    duration_ms: int
    kind: FaultKind
    nodes: tuple[NodeId, ...] = ()  #: the target (crash, pause, isolate) or side A / ring order
    rate: float = 0.0  #: loss, duplicate and reorder probability

    def describe(self) -> str:
        target = ",".join(self.nodes)
        what = f"{self.kind}"
        if target:
            what += f" {target}"
        if self.rate:
            what += f" p={self.rate:.2f}"
        return f"{self.start_ms}ms+{self.duration_ms}ms {what}"


@dataclass(frozen=True, slots=True)
class AdminEvent:
    at_ms: int
    kind: AdminKind
    node: NodeId | None = None  #: the node added / promoted / removed / transferred to


@dataclass(frozen=True, slots=True)
class Profile:
    """Which fault kinds a seed may draw, and their relative weights."""

    weights: tuple[tuple[FaultKind, float], ...]
    membership: bool
    transfers: bool
    snapshot_every_entries: int
    #: probability that a host crashes between writing entries and syncing them
    crash_point_p: float = 0.0

    def describe(self) -> str:
        kinds = " ".join(f"{k}:{w:.1f}" for k, w in self.weights)
        return (
            f"kinds[{kinds}] membership={self.membership} transfers={self.transfers} "
            f"snapshot_every={self.snapshot_every_entries} crash_point_p={self.crash_point_p}"
        )


@dataclass(frozen=True, slots=True)
class FaultPlan:
    profile: Profile
    faults: tuple[FaultEvent, ...]
    admin: tuple[AdminEvent, ...]
    heal_ms: int | None  #: liveness mode: everything is healed at this time
    end_ms: int

    def describe(self) -> str:
        lines = [f"profile: {self.profile.describe()}"]
        lines.append("faults: " + "; ".join(f.describe() for f in self.faults))
        if self.admin:
            lines.append(
                "admin: " + "; ".join(f"{a.at_ms}ms {a.kind} {a.node or ''}" for a in self.admin)
            )
        if self.heal_ms is not None:
            lines.append(f"heal at {self.heal_ms}ms")
        return "\n".join(lines)


#: A fixed order to draw from (never iterate an enum set where order decides behaviour).
ALL_KINDS: tuple[FaultKind, ...] = tuple(FaultKind)


@dataclass(frozen=True, slots=True)
class PlanSpec:
    """Knobs for drawing a plan; negative controls pin kinds that expose their bug."""

    fault_window_ms: int = 3000
    faults_min: int = 3
    faults_max: int = 10
    forced_kinds: tuple[FaultKind, ...] = ()  #: always enabled, with a high weight
    only_forced: bool = False
    membership: bool | None = None  #: None: the seed decides
    promote: bool = True  #: False: a spare joins as a learner and stays one
    transfers: bool | None = None
    crash_ms: tuple[int, int] = (50, 800)
    #: the chance that a seed enables crash points (torn writes)
    crash_point_chance: float = 0.3
    partition_ms: tuple[int, int] = (100, 1500)


def draw_profile(rng: random.Random, spec: PlanSpec) -> Profile:
    weights: list[tuple[FaultKind, float]] = []
    for kind in ALL_KINDS:
        if kind in spec.forced_kinds:
            weights.append((kind, 3.0))
        elif not spec.only_forced and rng.random() < 0.5:
            weights.append((kind, rng.uniform(0.2, 1.0)))
    if not weights:
        weights.append((ALL_KINDS[rng.randrange(len(ALL_KINDS))], 1.0))
    membership = rng.random() < 0.6 if spec.membership is None else spec.membership
    transfers = rng.random() < 0.6 if spec.transfers is None else spec.transfers
    snapshot_every = rng.choice((12, 20, 32, 48))
    crash_points = rng.random() < spec.crash_point_chance
    crash_point_p = rng.choice((0.002, 0.005, 0.01)) if crash_points else 0.0
    return Profile(tuple(weights), membership, transfers, snapshot_every, crash_point_p)


def _split(rng: random.Random, nodes: list[NodeId]) -> tuple[NodeId, ...]:
    """Side A of a random split (1 .. n-1 nodes), in a seed-determined order."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    return tuple(shuffled[: rng.randint(1, len(nodes) - 1)])


def draw_plan(
    rng: random.Random,
    voters: list[NodeId],
    spares: list[NodeId],
    liveness: bool,
    spec: PlanSpec,
    end_ms: int,
) -> FaultPlan:
    """A fault plan for one run over ``voters`` (the initial members) and ``spares``."""
    profile = draw_profile(rng, spec)
    kinds = [k for k, _ in profile.weights]
    weights = [w for _, w in profile.weights]
    window = spec.fault_window_ms
    count = rng.randint(spec.faults_min, spec.faults_max)
    everyone = voters + spares
    events: list[FaultEvent] = []
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        start = rng.randrange(0, window)
        if kind in (FaultKind.CRASH, FaultKind.PAUSE):
            duration = rng.randint(*spec.crash_ms)
        else:
            duration = rng.randint(*spec.partition_ms)
        if liveness:
            duration = max(1, min(duration, window - start))
        nodes: tuple[NodeId, ...] = ()
        rate = 0.0
        if kind in (FaultKind.CRASH, FaultKind.PAUSE, FaultKind.ISOLATE):
            nodes = (everyone[rng.randrange(len(everyone))],)
        elif kind in (FaultKind.PARTITION, FaultKind.ONE_WAY):
            nodes = _split(rng, everyone)
        elif kind in (FaultKind.BRIDGE, FaultKind.RING):
            order = list(everyone)
            rng.shuffle(order)
            nodes = tuple(order)
        elif kind is FaultKind.LOSS or kind is FaultKind.DUPLICATE:
            rate = rng.uniform(0.02, 0.3)
        else:
            rate = rng.uniform(0.05, 0.5)
        events.append(FaultEvent(start, duration, kind, nodes, rate))
    events.sort(key=lambda e: (e.start_ms, e.kind, e.nodes))

    admin: list[AdminEvent] = []
    if profile.membership and spares:
        # A spare joins as a learner, is promoted, then some voter (maybe the leader) leaves.
        t = rng.randrange(0, window // 3)
        spare = spares[0]
        admin.append(AdminEvent(t, AdminKind.ADD_LEARNER, spare))
        if spec.promote:
            t += rng.randint(200, 800)
            admin.append(AdminEvent(t, AdminKind.PROMOTE, spare))
            t += rng.randint(200, 800)
            admin.append(AdminEvent(t, AdminKind.REMOVE_VOTER, None))
    if profile.transfers:
        for _ in range(rng.randint(1, 3)):
            admin.append(AdminEvent(rng.randrange(0, window), AdminKind.TRANSFER, None))
    admin.sort(key=lambda a: (a.at_ms, a.kind))
    return FaultPlan(profile, tuple(events), tuple(admin), window if liveness else None, end_ms)
