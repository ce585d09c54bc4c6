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
from geostore.raft.core import ConfChange, ConfChangeOp, Proposed, RaftConfig, Role
from geostore.raft.types import SnapshotMeta
from tests.scenarios.harness import Cluster, Node, SafetyViolation, encode_sm, nid

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


def _known_commit(c: Cluster) -> int:
    live = [n.c.status().commit for n in c.nodes.values() if n.core is not None]
    return max([*live, *c.commit_terms.keys(), 0])


def _membership(c: Cluster, rng: random.Random, leader: NodeId) -> None:
    core = c.nodes[leader].c
    conf = core.status().conf
    x = rng.choice(sorted(c.nodes))
    if x in conf.learners:
        change = ConfChange(ConfChangeOp.PROMOTE, x)
    elif x in conf.voters:
        if len(conf.voters) <= 2:
            return
        change = ConfChange(ConfChangeOp.REMOVE, x)
    else:
        op = ConfChangeOp.ADD_LEARNER if rng.random() < 0.7 else ConfChangeOp.ADD_VOTER
        change = ConfChange(op, x)
    core.propose_conf_change(change)


def _chaos(
    c: Cluster,
    rng: random.Random,
    steps: int,
    acked: list[tuple[int, int]],
    reads: dict[bytes, int],
    *,
    membership: bool,
) -> None:
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
        elif r < 0.97:
            _compact(c, rng.choice(live))
        elif r < 0.985:
            leaders = [n for n in live if c.nodes[n].c.role is Role.LEADER]
            if leaders:
                who = rng.choice(leaders)  # possibly a stale one
                ctx = f"r{step}".encode()
                reads[ctx] = _known_commit(c)
                c.nodes[who].c.read_index(ctx)
        elif r < 0.993:
            leader = c.leader()
            if leader is not None:
                c.nodes[leader].c.transfer_leadership(rng.choice(ids))
        elif membership:
            leader = c.leader()
            if leader is not None:
                _membership(c, rng, leader)


def _heal_and_settle(c: Cluster) -> list[Node]:
    """Heal, restart everyone, and show liveness; returns the final members."""
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
    for _ in range(100):  # a leadership transfer may be under way: it ends or aborts
        leader = c.leader()
        assert leader is not None
        res = c.nodes[leader].c.propose(b"final")
        if isinstance(res, Proposed):
            break
        c.tick_all(1)
    assert isinstance(res, Proposed), res
    conf = c.nodes[leader].c.status().conf
    members = [c.nodes[n] for n in sorted(conf.voters | conf.learners)]
    for _ in range(100):
        c.tick_all(1)
        if all(node.applied_index() >= res.index for node in members):
            break
    for node in members:
        assert node.applied_index() >= res.index, (node.id, node.c.status())
    return members


def _run(seed: int, nodes: int, steps: int, **unsafe: object) -> Cluster:
    rng = random.Random(seed)
    membership = seed % 3 == 0
    ids = [nid(i) for i in range(1, nodes + 1)]
    voters = ids[:-1] if membership else ids  # the last node starts as a learner
    learners = ids[-1:] if membership else []
    c = Cluster(ids, seed=seed, config=_config(**unsafe), voters=voters, learners=learners)
    acked: list[tuple[int, int]] = []
    reads: dict[bytes, int] = {}
    _chaos(c, rng, steps, acked, reads, membership=membership)
    members = _heal_and_settle(c)
    # ReadIndex: a confirmed read's index covers everything committed when it was asked
    for node in c.nodes.values():
        for ctx, idx in node.read_states:
            assert idx >= reads[ctx], (node.id, ctx, idx, reads[ctx])
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
                for node in members
            )
    return c


@pytest.mark.parametrize("seed", range(100))
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


FORGET_VOTE = """
> nodes 3 prevote off checkquorum off unsafe forget-vote
> campaign 1
> deliver 1->2
> process 2
> crash 2
> restart 2
> drop 1->3
> campaign 3
> deliver 3->2
> deliver 2->3
> deliver 2->1
> stabilize
"""


def test_negative_control_forgetting_the_vote_is_caught() -> None:
    from tests.scenarios.runner import Interpreter, parse

    interp = Interpreter()
    with pytest.raises(SafetyViolation, match="two leaders in term 1"):
        for step in parse(FORGET_VOTE).steps:
            interp.run(step.command)
    interp = Interpreter()
    for step in parse(FORGET_VOTE.replace(" unsafe forget-vote", "")).steps:
        interp.run(step.command)
