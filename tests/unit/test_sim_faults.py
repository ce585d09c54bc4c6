"""Swarm fault plans and the simulated network: each seed draws its own mix (at least three
faults, healed by the heal time in liveness mode), deterministically; the network drops,
duplicates, reorders and cuts links as told, and overlapping cuts heal independently."""

from __future__ import annotations

import random

from geostore.ids import NodeId
from geostore.sim.faults import FaultKind, PlanSpec, draw_plan
from geostore.sim.network import SimNetwork, draw_rtt_matrix

VOTERS = [NodeId(f"n{i}") for i in (1, 2, 3)]
SPARES = [NodeId("n4")]


def plan(seed: int, liveness: bool = False, spec: PlanSpec | None = None):  # type: ignore[no-untyped-def]
    return draw_plan(random.Random(seed), VOTERS, SPARES, liveness, spec or PlanSpec(), 5000)


def test_plans_are_deterministic_and_varied() -> None:
    assert plan(1).describe() == plan(1).describe()
    mixes = {tuple(k for k, _ in plan(s).profile.weights) for s in range(50)}
    assert len(mixes) > 20  # swarm: seeds enable different subsets of fault kinds


def test_plans_hold_at_least_three_faults() -> None:
    for seed in range(100):
        p = plan(seed)
        assert len(p.faults) >= 3
        assert all(f.kind in dict(p.profile.weights) for f in p.faults)


def test_liveness_plans_heal_by_the_heal_time() -> None:
    for seed in range(100):
        p = plan(seed, liveness=True)
        assert p.heal_ms is not None
        assert all(f.start_ms + f.duration_ms <= p.heal_ms for f in p.faults)


def test_forced_kinds_only() -> None:
    spec = PlanSpec(
        forced_kinds=(FaultKind.CRASH,), only_forced=True, membership=True, promote=False
    )
    for seed in range(20):
        p = plan(seed, spec=spec)
        assert {f.kind for f in p.faults} == {FaultKind.CRASH}
        assert [a.kind.value for a in p.admin if a.kind.value != "transfer"] == ["add_learner"]


def test_rtt_matrix_is_symmetric_and_complete() -> None:
    ids = VOTERS + SPARES
    rtt = draw_rtt_matrix(random.Random(3), ids)
    assert len(rtt) == len(ids) * (len(ids) - 1)
    for (a, b), ms in rtt.items():
        assert rtt[(b, a)] == ms > 0


def net(**kw: float) -> SimNetwork:
    ids = VOTERS
    return SimNetwork(random.Random(0), {(a, b): 10.0 for a in ids for b in ids if a != b}, **kw)


def test_network_delay_loss_and_duplication() -> None:
    a, b = VOTERS[0], VOTERS[1]
    n = net()
    delays = n.fate(a, b)
    assert len(delays) == 1 and delays[0] >= 5.0
    lossy = net(loss_p=1.0)
    assert lossy.fate(a, b) == [] and lossy.stats.dropped_loss == 1
    dup = net(dup_p=1.0)
    assert len(dup.fate(a, b)) == 2 and dup.stats.duplicated == 1
    reorder = net(reorder_p=1.0, reorder_jitter_ms=100.0)
    spread = [reorder.fate(a, b)[0] for _ in range(50)]
    assert max(spread) - min(spread) > 20.0


def test_overlapping_cuts_heal_independently() -> None:
    a, b = VOTERS[0], VOTERS[1]
    n = net()
    n.cut(a, b)
    n.cut(a, b)
    assert n.fate(a, b) == [] and n.fate(b, a) != []
    n.uncut(a, b)
    assert n.is_cut(a, b)
    n.uncut(a, b)
    assert not n.is_cut(a, b) and n.fate(a, b) != []
    n.cut(b, a)
    n.loss_p = 0.5
    n.heal()
    assert not n.is_cut(b, a) and n.loss_p == 0.0
