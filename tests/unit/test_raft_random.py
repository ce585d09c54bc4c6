"""Randomised runs of whole Raft groups under message loss, duplication, reordering,
partitions, crashes, restarts and compaction stay safe, and recover liveness after healing.

The harness checks election safety, state-machine safety (no two different entries applied
at one index, across restarts), index sanity and term/vote durability after every host-loop
step. Negative controls show that the same checks catch each deliberately unsafe switch.
"""

from __future__ import annotations

import random

import pytest

from geostore.ids import GroupId, LogIndex, NodeId
from geostore.raft.core import Proposed, RaftConfig, Role
from geostore.raft.types import SnapshotMeta
from tests.scenarios.harness import Cluster, SafetyViolation, encode_sm, nid

GROUP = GroupId("g")


def _config(**kw: object):  # type: ignore[no-untyped-def]
    def make(n: NodeId) -> RaftConfig:
        return RaftConfig(
            node_id=n,
            group=GROUP,
            election_ticks=10,
            max_entries_per_msg=4,
            max_inflight_msgs=4,
            snapshot_chunk_bytes=16,
            **kw,  # type: ignore[arg-type]
        )

    return make


def _compact(c: Cluster, n: NodeId) -> None:
    node = c.nodes[n]
    if node.core is None or n in c.held:
        return
    idx = node.applied_index()
    if idx <= node.snap_meta.index:
        return
    term = node.store.term_at(LogIndex(idx))
    assert term is not None
    meta = SnapshotMeta(index=LogIndex(idx), term=term, conf=node.c.status().conf)
    node.snap_data = encode_sm(node.applied, node.snap_data)
    node.snap_meta = meta
    node.applied = []
    node.c.snapshot_taken(meta)


def _chaos(c: Cluster, rng: random.Random, steps: int, acked: list[tuple[int, int]]) -> None:
    ids = sorted(c.nodes)
    for step in range(steps):
        r = rng.random()
        live = [n for n in ids if c.nodes[n].core is not None]
        if r < 0.30:
            n = rng.choice(live)
            c.nodes[n].c.tick()
        elif r < 0.45:
            leader = c.leader()
            if leader is not None:
                res = c.nodes[leader].c.propose(f"v{step}".encode())
                if isinstance(res, Proposed):
                    acked.append((res.index, res.term))
        elif r < 0.85:
            for n in live:
                c.process(n)
            if c.queue:
                k = rng.randrange(len(c.queue))
                m = c.queue.pop(k)
                fate = rng.random()
                if fate < 0.1:
                    continue  # lost
                if fate < 0.15:
                    c.queue.append(m)  # duplicated
                node = c.nodes[m.dst]
                if node.core is not None and (m.src, m.dst) not in c.blocked:
                    node.c.step(m)
        elif r < 0.88:
            groups = list(ids)
            rng.shuffle(groups)
            cut = rng.randrange(1, len(groups))
            c.partition(groups[:cut], groups[cut:])
        elif r < 0.92:
            c.heal()
        elif r < 0.95:
            down = [n for n in ids if c.nodes[n].core is None]
            if down:
                c.restart(rng.choice(down))
            elif len(live) > 1:
                c.crash(rng.choice(live))
        else:
            _compact(c, rng.choice(live))


def _heal_and_settle(c: Cluster) -> None:
    c.heal()
    for n in sorted(c.nodes):
        if c.nodes[n].core is None:
            c.restart(n)
    c.stabilize()
    for _ in range(200):
        c.tick_all(1)
        leader = c.leader()
        if leader is not None and c.nodes[leader].c.status().commit >= (
            c.nodes[leader].c.status().last_index
        ):
            break
    leader = c.leader()
    assert leader is not None, "no leader within 200 ticks of healing"
    res = c.nodes[leader].c.propose(b"final")
    assert isinstance(res, Proposed)
    for _ in range(100):
        c.tick_all(1)
        if all(node.applied_index() >= res.index for node in c.nodes.values()):
            break
    for node in c.nodes.values():
        assert node.applied_index() >= res.index, (node.id, node.c.status())


def _run(seed: int, nodes: int, steps: int, **unsafe: object) -> Cluster:
    rng = random.Random(seed)
    c = Cluster([nid(i) for i in range(1, nodes + 1)], seed=seed, config=_config(**unsafe))
    acked: list[tuple[int, int]] = []
    _chaos(c, rng, steps, acked)
    _heal_and_settle(c)
    # every proposal whose (index, term) got applied anywhere is the entry at that index
    for idx, term in acked:
        seen = c.committed.get(idx)
        if seen is not None and seen[0] == term:
            assert all(
                node.snap_meta.index >= idx
                or (
                    idx - node.snap_meta.index <= len(node.applied)
                    and node.applied[idx - node.snap_meta.index - 1].term == term
                )
                for node in c.nodes.values()
            )
    return c


@pytest.mark.parametrize("seed", range(40))
def test_random_faults_stay_safe_and_recover(seed: int) -> None:
    c = _run(seed, 3 if seed % 2 else 5, 1500)
    leader = c.leader()
    assert leader is not None
    assert c.nodes[leader].c.role is Role.LEADER


def _caught(seeds: range, nodes: int, steps: int, **unsafe: object) -> bool:
    for seed in seeds:
        try:
            _run(seed, nodes, steps, **unsafe)
        except SafetyViolation:
            return True
    return False


def test_negative_control_commit_without_quorum_is_caught() -> None:
    assert _caught(range(30), 3, 1500, unsafe_commit_without_quorum=True)


LEARNER_VOTE = """
> nodes 3 learners 4 checkquorum off unsafe count-learner-votes
> campaign 1
> stabilize
> partition 1 2 | 3 4
> propose 1 x
> stabilize
> campaign 3
> stabilize
"""


def test_negative_control_counting_learner_votes_is_caught() -> None:
    from tests.scenarios.runner import Interpreter, parse

    interp = Interpreter()
    with pytest.raises(SafetyViolation, match="leader completeness"):
        for step in parse(LEARNER_VOTE).steps:
            interp.run(step.command)
    interp = Interpreter()
    for step in parse(LEARNER_VOTE.replace(" unsafe count-learner-votes", "")).steps:
        interp.run(step.command)
    assert interp.c.nodes[nid(3)].c.role is not Role.LEADER


FIGURE8 = """
> nodes 5 maxents 1 checkquorum off unsafe ignore-figure8
> campaign 1
> stabilize
> partition 1 2 | 3 4 5
> propose 1 a
> stabilize
> crash 1
> partition 3 4 5 | 1 2
> campaign 5
> deliver
> deliver
> deliver
> deliver
> partition 5 | 1 2 3 4
> propose 5 b
> stabilize
> crash 5
> restart 1
> partition 1 2 3 | 4 5
> campaign 1
> stabilize
> campaign 1
> deliver
> deliver
> deliver
> deliver
> deliver 1->3
> deliver 1->2
> deliver 2->1
> deliver 3->1
> deliver 1->3
> deliver 3->1
> process 1
> crash 1
> heal
> partition 5 2 3 4 | 1
> restart 5
> campaign 5
> stabilize
> campaign 5
> stabilize
"""


def test_negative_control_ignoring_figure8_is_caught_in_the_figure8_history() -> None:
    from tests.scenarios.runner import Interpreter, parse

    interp = Interpreter()
    with pytest.raises(SafetyViolation, match=r"completeness|agreement|state machine safety"):
        for step in parse(FIGURE8).steps:
            interp.run(step.command)
    # and without the switch the very same history is safe
    interp = Interpreter()
    for step in parse(FIGURE8.replace(" unsafe ignore-figure8", "")).steps:
        interp.run(step.command)
