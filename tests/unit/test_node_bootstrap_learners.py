"""A group bootstrapped with founding learners (the metadata group's layout) writes voters
then learners into its committed prefix; the learners replicate and apply every entry but
never campaign, and a leader elected among the voters commits without them."""

from __future__ import annotations

import random
from collections import deque

from geostore.ids import GroupId, LogIndex, NodeId
from geostore.node.raft_host import HostConfig, RaftHost, bootstrap_storage
from geostore.raft.core import RaftConfig
from geostore.raft.messages import Message
from geostore.raft.records import ConfChange, ConfChangeOp, Proposed, Role
from geostore.sim.machine import LogMachine
from geostore.storage.memory import MemoryHardStateStore, MemoryLogStore, MemorySnapshotStore

GROUP = GroupId("meta")
VOTERS = [NodeId("a1"), NodeId("b1")]
LEARNERS = [NodeId("a2"), NodeId("b2")]


def test_bootstrap_writes_voters_then_learners() -> None:
    log, hard = MemoryLogStore(), MemoryHardStateStore()
    assert bootstrap_storage(log, hard, VOTERS, [*LEARNERS, VOTERS[0]])  # a voter stays one
    changes = [ConfChange.decode(e.data) for e in log.entries(LogIndex(1), LogIndex(5))]
    assert changes == [
        ConfChange(ConfChangeOp.ADD_VOTER, NodeId("a1")),
        ConfChange(ConfChangeOp.ADD_VOTER, NodeId("b1")),
        ConfChange(ConfChangeOp.ADD_LEARNER, NodeId("a2")),
        ConfChange(ConfChangeOp.ADD_LEARNER, NodeId("b2")),
    ]
    assert hard.load().commit == 4


def test_learners_replicate_but_never_campaign() -> None:
    queue: deque[Message] = deque()
    hosts: dict[NodeId, RaftHost] = {}
    machines: dict[NodeId, LogMachine] = {}

    class Sender:
        def send(self, peer: NodeId, msg: object) -> bool:
            queue.append(msg)  # type: ignore[arg-type]
            return True

    for i, nid in enumerate(VOTERS + LEARNERS):
        log, hard = MemoryLogStore(), MemoryHardStateStore()
        assert bootstrap_storage(log, hard, VOTERS, LEARNERS)
        machines[nid] = LogMachine()
        hosts[nid] = RaftHost(
            RaftConfig(node_id=nid, group=GROUP, election_ticks=10, heartbeat_ticks=2),
            HostConfig(),
            log,
            hard,
            MemorySnapshotStore(),
            Sender(),
            machines[nid],
            random.Random(i),
        )

    def run(ticks: int) -> None:
        for _ in range(ticks):
            for nid in sorted(hosts):
                hosts[nid].tick()
            while queue:
                msg = queue.popleft()
                hosts[msg.dst].step(msg)

    run(60)
    leaders = [n for n, h in hosts.items() if h.status().role is Role.LEADER]
    assert len(leaders) == 1 and leaders[0] in VOTERS
    for nid in LEARNERS:
        st = hosts[nid].status()
        assert st.role is not Role.LEADER and st.term == hosts[leaders[0]].status().term
        assert st.conf.learners == frozenset(LEARNERS) and st.conf.voters == frozenset(VOTERS)
    leader = hosts[leaders[0]]
    assert isinstance(leader.propose(b"x"), Proposed)
    run(10)
    index = leader.status().commit
    for nid in LEARNERS:
        assert hosts[nid].applied == index, "a learner applies what the voters commit"
